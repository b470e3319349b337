"""The agent measuring real models with real runtimes, and every failure kind it reports itself."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnxruntime
import pytest
from agent_models import FAST, conv_net, endless_loop, request, save, spec, tflite_fully_connected, write_request
from conftest import REPO, skip_or_fail

from device_agents.cli import load_request
from device_agents.records import (
    BatchEnd,
    FailureKind,
    Flag,
    MeasureResult,
    Protocol,
    RecordError,
    TensorRTBuild,
    parse_agent_line,
)
from device_agents.runner import BatchRunner

FP = "0123456789abcdef"


def run_batch(req, on_event=None):
    out = []
    BatchRunner(req, out.append, on_event=on_event, device_fingerprint=FP).run()
    return out


def agent(*args, cwd=None, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "device_agents", *args], cwd=cwd, env=env, capture_output=True, check=False,
                          text=True, timeout=timeout)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead for our purposes
    except OSError:
        return False


@pytest.fixture()
def models(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    small = save(conv_net(8, 2, 16), work / "small.onnx")
    large = save(conv_net(32, 6, 64, seed=1), work / "large.onnx")
    return work, small, large


def test_measure_command_end_to_end(models, tmp_path):
    work, small, large = models
    req = request(work, [spec("a-small", "small.onnx", small), spec("a-large", "large.onnx", large,
                                                                     in_shape=(1, 3, 64, 64))])
    req_path = write_request(tmp_path / "request.json", req)
    done = agent("measure", "--request", str(req_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    records = [parse_agent_line(ln) for ln in lines]  # stdout holds records only
    *results, end = records
    assert isinstance(end, BatchEnd) and (end.n_models, end.n_ok, end.n_failed) == (2, 2, 0)
    assert "[2/2] a-large: ok" in done.stderr
    by_id = {r.arch_id: r for r in results}
    for r in results:
        assert isinstance(r, MeasureResult) and r.ok, r.error_msg
        assert r.protocol == FAST and r.batch_id == "b-test" and r.device_key == "local"
        assert r.runtime_version == onnxruntime.__version__ and r.device_fingerprint
        s = r.stats
        assert s.n_total >= FAST.blocks * FAST.runs_per_block and len(s.block_min_ms) == FAST.blocks
        assert 0 < s.min_ms <= s.estimate_ms <= s.median_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
        assert s.cv >= 0 and s.std_ms >= 0
        assert r.session_init_ms > 0 and r.first_inference_ms > 0
        assert r.peak_rss_mib > 20  # python + onnxruntime
        assert r.output_shapes == ((1, 10),) and r.attempts == 1
        assert r.telemetry_before is not None and r.telemetry_after.time_unix >= r.telemetry_before.time_unix
        assert r.arch == {"test": r.arch_id}
    # ~150x the MACs: the order survives any noise on a shared machine
    assert by_id["a-large"].stats.estimate_ms > 5 * by_id["a-small"].stats.estimate_ms


def test_failures_are_records_and_the_batch_goes_on(models):
    work, small, _ = models
    corrupt = work / "corrupt.onnx"
    corrupt.write_bytes((work / "small.onnx").read_bytes()[:-1] + b"\x00")
    specs = [
        spec("a-checksum", "corrupt.onnx", small),
        spec("a-missing", "never-uploaded.onnx", small),
        spec("a-trt", "small.onnx", small, runtime="tensorrt", tensorrt=TensorRTBuild("fp16", 256)),
        spec("a-shape", "small.onnx", small, out_shape=(1, 1000)),
        spec("a-input", "small.onnx", small, in_shape=(1, 3, 32, 32)),
        spec("a-ok", "small.onnx", small),
    ]
    results = {r.arch_id: r for r in run_batch(request(work, specs))}
    assert len(results) == 6
    r = results["a-checksum"]
    assert r.error_kind is FailureKind.CHECKSUM_MISMATCH and small in r.error_msg and r.arch_id == "a-checksum"
    assert results["a-missing"].error_kind is FailureKind.UPLOAD_ERROR
    r = results["a-trt"]
    if r.error_kind is not FailureKind.RUNTIME_MISSING:
        pytest.skip("TensorRT is importable here; the runtime-missing path needs a machine without it")
    assert r.error_msg.startswith("runtime not available on this device") and "Traceback" not in r.error_msg
    r = results["a-shape"]
    assert r.error_kind is FailureKind.WRONG_OUTPUT_SHAPE and r.output_shapes == ((1, 10),)
    assert "[[1, 10]]" in r.error_msg and "[[1, 1000]]" in r.error_msg
    r = results["a-input"]
    assert r.error_kind is FailureKind.MODEL_LOAD_ERROR and "[1, 3, 16, 16]" in r.error_msg
    assert results["a-ok"].ok
    for r in results.values():
        MeasureResult.from_dict(json.loads(r.to_json_line()))  # what the host will do


def test_a_hanging_model_is_killed_at_the_timeout(models):
    work, small, _ = models
    loop_sha = save(endless_loop(), work / "loop.onnx")
    proto = dataclasses.replace(FAST, timeout_s=3.0, interleave=1)
    pids = {}

    def on_event(name, info):
        if name == "ready":
            pids[info["arch_id"]] = info["pid"]

    t0 = time.monotonic()
    hang, after = run_batch(request(work, [spec("a-hang", "loop.onnx", loop_sha, in_shape=(1, 4), out_shape=(1, 4)),
                                           spec("a-after", "small.onnx", small)], proto), on_event)
    assert hang.error_kind is FailureKind.RUN_TIMEOUT and "3 s" in hang.error_msg and "killed" in hang.error_msg
    assert after.ok
    assert time.monotonic() - t0 < 60
    assert "a-hang" not in pids  # it never got past its first inference


def children_of(pid: int) -> list:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_hung_worker_dies_with_a_killed_agent(models, tmp_path):
    """An SSH drop kills the agent; its worker, stuck in C code, must not spin on forever."""
    work, _, _ = models
    loop_sha = save(endless_loop(), work / "loop.onnx")
    req = write_request(tmp_path / "request.json", request(
        work, [spec("a-hang", "loop.onnx", loop_sha, in_shape=(1, 4), out_shape=(1, 4))],
        dataclasses.replace(FAST, timeout_s=600.0)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    agent_proc = subprocess.Popen([sys.executable, "-m", "device_agents", "measure", "--request", str(req)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers = []
        while time.monotonic() < deadline and not workers:
            workers = children_of(agent_proc.pid)
            time.sleep(0.1)
        assert workers, "the agent started no worker"
        time.sleep(2.0)  # the worker is now inside the endless Loop
        assert all(pid_alive(w) for w in workers)
    finally:
        agent_proc.kill()
        agent_proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(pid_alive(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if pid_alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "the worker outlived the agent"


def test_a_worker_killed_mid_run_is_a_crash_and_the_batch_goes_on(models):
    work, small, large = models
    proto = dataclasses.replace(FAST, interleave=2, block_min_s=0.3)
    killed = {}

    def on_event(name, info):
        if name == "block" and info["arch_id"] == "a-victim" and info["block"] == 1 and not killed:
            killed["pid"] = info["pid"]
            # lands while the worker is inside its timed loop (the block lasts >= 0.3 s)
            threading.Timer(0.1, os.kill, (info["pid"], signal.SIGKILL)).start()

    specs = [spec("a-victim", "small.onnx", small), spec("a-peer", "large.onnx", large, in_shape=(1, 3, 64, 64)),
             spec("a-next", "small.onnx", small)]
    results = {r.arch_id: r for r in run_batch(request(work, specs, proto), on_event)}
    victim = results["a-victim"]
    assert victim.error_kind is FailureKind.CRASH and "SIGKILL" in victim.error_msg, victim.error_msg
    assert not pid_alive(killed["pid"])
    assert results["a-peer"].ok and results["a-next"].ok


def test_blocks_are_interleaved_round_robin(models):
    work, small, _ = models
    proto = dataclasses.replace(FAST, interleave=3, blocks=3)
    order = []
    specs = [spec(f"a-{i}", "small.onnx", small, out_shape=(1, 10)) for i in "xyz"]
    # three distinct files so the three specs are distinct models
    for i in "xyz":
        (work / f"m{i}.onnx").write_bytes((work / "small.onnx").read_bytes())
    specs = [dataclasses.replace(s, model_file=f"m{s.arch_id[-1]}.onnx") for s in specs]
    run_batch(request(work, specs, proto), lambda n, i: order.append(i["arch_id"]) if n == "block" else None)
    assert order == ["a-x", "a-y", "a-z", "a-y", "a-z", "a-x", "a-z", "a-x", "a-y"]


def test_unstable_results_are_measured_again_then_flagged(models):
    work, small, _ = models
    # limits no real measurement can meet: every attempt is unstable
    proto = dataclasses.replace(FAST, max_cv=1e-9, max_block_spread=1e-9, remeasure=2)
    again = []
    (r,) = run_batch(request(work, [spec("a-noisy", "small.onnx", small)], proto),
                     lambda n, i: again.append(i["attempt"]) if n == "remeasure" else None)
    assert r.ok and r.attempts == 3 and Flag.UNSTABLE in r.flags
    assert again == [2, 3]
    assert len(r.stats.block_min_ms) == 3 * FAST.blocks  # unstable throughout: all attempts pooled
    stable = dataclasses.replace(FAST, max_cv=10.0, max_block_spread=10.0, remeasure=2)
    (r,) = run_batch(request(work, [spec("a-calm", "small.onnx", small)], stable))
    assert r.attempts == 1 and Flag.UNSTABLE not in r.flags and len(r.stats.block_min_ms) == FAST.blocks


def test_cpu_affinity_is_applied(models, tmp_path):
    work, small, _ = models
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this OS")
    cpu = min(os.sched_getaffinity(0))
    (r,) = run_batch(request(work, [spec("a-pinned", "small.onnx", small)],
                             dataclasses.replace(FAST, cpu_affinity=(cpu,))))
    assert r.ok and r.cpu_affinity_used == (cpu,)
    bad = write_request(tmp_path / "bad.json", request(work, [spec("a-1", "small.onnx", small)],
                                                       dataclasses.replace(FAST, cpu_affinity=(4095,))))
    with pytest.raises(RecordError, match="CPU\\(s\\) \\[4095\\]"):
        load_request(str(bad))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema_version=7), "schema_version 7"),
    (lambda d: d["protocol"].pop("blocks"), "missing field"),
    (lambda d: d["models"][0].update(model_file="../x.onnx"), "plain file name"),
    (lambda d: d.update(work_dir="/nonexistent/work"), "not a directory"),
])
def test_invalid_requests_exit_2_with_a_clear_message(models, tmp_path, mutate, message):
    work, small, _ = models
    doc = request(work, [spec("a-1", "small.onnx", small)]).to_dict()
    mutate(doc)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(doc))
    done = agent("measure", "--request", str(path))
    assert done.returncode == 2 and done.stdout == ""
    assert "invalid request" in done.stderr and message in done.stderr


def test_relative_work_dir_is_relative_to_the_request(models):
    work, small, _ = models
    req = dataclasses.replace(request(work, [spec("a-1", "small.onnx", small)]), work_dir=".")
    path = write_request(work / "request.json", req)
    assert load_request(str(path)).work_dir == str(work)


@pytest.mark.tflite
def test_litert_measures_a_tflite_model(tmp_path):
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        skip_or_fail("tflite", "ai_edge_litert is not installed (pip install .[tflite])")
    import hashlib

    model = tflite_fully_connected(16, 8)
    (tmp_path / "fc.tflite").write_bytes(model)
    sha = hashlib.sha256(model).hexdigest()
    results = {r.arch_id: r for r in run_batch(request(tmp_path, [
        spec("a-lite", "fc.tflite", sha, runtime="litert", in_shape=(1, 16), out_shape=(1, 8)),
        spec("a-lite-bad", "fc.tflite", sha, runtime="litert", in_shape=(1, 16), out_shape=(1, 9)),
    ]))}
    ok, wrong = results["a-lite"], results["a-lite-bad"]
    assert ok.ok, ok.error_msg
    assert ok.runtime_version.startswith("ai_edge_litert ") and ok.output_shapes == ((1, 8),)
    assert ok.stats.n_total >= FAST.min_timed_runs and ok.stats.min_ms > 0
    assert wrong.error_kind is FailureKind.WRONG_OUTPUT_SHAPE


def test_protocol_defaults_never_time_one_run():
    p = Protocol()
    assert p.min_timed_runs >= 50 and p.blocks * p.block_min_s >= 1.0 and p.warmup_runs >= 1
    assert p.estimator == "block_min_median" and p.interleave > 1
