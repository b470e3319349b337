"""Agent records: strict JSON validation (what the host runs on every record it receives)."""

from __future__ import annotations

import json

import pytest
from agent_models import FAST, request, spec
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agents.records import (
    BatchEnd,
    FailureKind,
    Flag,
    MeasureRequest,
    MeasureResult,
    Protocol,
    RecordError,
    Stats,
    TensorRTBuild,
    ThrottleState,
    parse_agent_line,
)

SHA = "0" * 64


def _stats() -> Stats:
    return Stats(estimate_ms=1.025, n=4, n_total=5, n_outliers=1, min_ms=1.0, p10_ms=1.0, median_ms=1.1, mean_ms=1.1,
                 p90_ms=1.3, p99_ms=4.0, max_ms=4.2, std_ms=0.1, cv=0.09, block_min_ms=(1.0, 1.05),
                 block_median_ms=(1.1, 1.2), block_min_median_ms=1.025, block_min_spread=0.05, samples_ms=None)


def _ok_result(**changes) -> MeasureResult:
    fields = {
        "batch_id": "b1", "device_key": "rpi4", "device_fingerprint": "ab" * 8, "agent_version": "0.1.0", "arch_id": "a-0123456789ab",
        "arch": {"ks": [3] * 20}, "model_file": "m.onnx", "model_sha256": SHA, "runtime": "onnxruntime", "runtime_version": "1.32.0",
        "tensorrt": None, "protocol": Protocol(), "error_kind": None, "error_msg": None, "flags": (Flag.UNSTABLE,), "attempts": 2,
        "stats": _stats(), "session_init_ms": 20.0, "first_inference_ms": 3.0, "peak_rss_mib": 70.5, "output_shapes": ((1, 1000),),
        "cpu_affinity_used": (0, 1), "energy": None, "telemetry_before": None, "telemetry_after": None,
        "started_at": "2026-01-01T00:00:00.000+00:00", "finished_at": "2026-01-01T00:00:01.000+00:00",
    }
    fields.update(changes)
    return MeasureResult(**fields)


def test_result_round_trips_through_a_json_line():
    r = _ok_result()
    line = r.to_json_line()
    assert "\n" not in line
    back = parse_agent_line(line)
    assert back == r and back.ok and back.estimate_ms == 1.025 and back.flags == (Flag.UNSTABLE,)


def test_failure_record_for_host_side_errors():
    s = spec("a-0123456789ab", "m.onnx", SHA)
    r = MeasureResult.failure(FailureKind.EXPORT_ERROR, "parity failed", s, Protocol(), batch_id="b1",
                              started_at="t0", finished_at="t1")
    assert not r.ok and r.stats is None and r.estimate_ms is None and r.arch == {"test": "a-0123456789ab"}
    assert parse_agent_line(r.to_json_line()) == r


def test_unknown_schema_version_is_refused_clearly():
    doc = _ok_result().to_dict()
    doc["schema_version"] = 3
    with pytest.raises(RecordError, match=r"schema_version 3 of 'agent.measure_result' is not supported"):
        MeasureResult.from_dict(doc)
    doc["schema_version"] = True  # bool is not a version
    with pytest.raises(RecordError, match="schema_version"):
        MeasureResult.from_dict(doc)
    doc = _ok_result().to_dict()
    doc["schema"] = "agent.probe"
    with pytest.raises(RecordError, match="expected schema 'agent.measure_result'"):
        MeasureResult.from_dict(doc)


@pytest.mark.parametrize("path, value, message", [
    (("stats", "n"), "4", r"result\.stats\.n: expected an integer, got str"),
    (("stats", "min_ms"), float("nan"), r"result\.stats\.min_ms: expected a finite number"),
    (("protocol", "blocks"), True, r"result\.protocol\.blocks: expected an integer, got bool"),
    (("error_kind",), "exploded", r"result\.error_kind: 'exploded' is not one of"),
    (("flags",), ["hot", "hot"], r"flags must not repeat"),
    (("output_shapes",), [[1, "x"]], r"result\.output_shapes\[0\]\[1\]: expected an integer"),
    (("protocol", "estimator"), "mean", r"estimator 'mean' is not one of"),
])
def test_field_errors_name_the_path(path, value, message):
    doc = json.loads(json.dumps(_ok_result().to_dict()))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(RecordError, match=message):
        MeasureResult.from_dict(doc)


def test_missing_and_unknown_fields_are_refused():
    doc = _ok_result().to_dict()
    del doc["stats"]
    with pytest.raises(RecordError, match="missing field.*stats"):
        MeasureResult.from_dict(doc)
    doc = _ok_result().to_dict()
    doc["protocol"]["warmup"] = 3
    with pytest.raises(RecordError, match=r"result\.protocol: unknown field\(s\) warmup"):
        MeasureResult.from_dict(doc)


def test_success_and_failure_invariants():
    with pytest.raises(ValueError, match="carries no stats"):
        _ok_result(error_kind=FailureKind.CRASH, error_msg="boom")
    with pytest.raises(ValueError, match="needs stats"):
        _ok_result(stats=None)
    with pytest.raises(ValueError, match="needs an error_msg"):
        _ok_result(stats=None, error_kind=FailureKind.CRASH, error_msg="")


@pytest.mark.parametrize("changes, message", [
    ({"model_file": "../etc/passwd"}, "plain file name"),
    ({"model_file": "sub/m.onnx"}, "plain file name"),
    ({"sha256": "ABC"}, "64 lowercase hex"),
    ({"runtime": "pytorch"}, "runtime 'pytorch' is not one of"),
    ({"arch_id": "a b"}, "arch_id"),
])
def test_model_spec_refuses_unsafe_or_unknown_values(changes, message):
    base = {"arch_id": "a-1", "model_file": "m.onnx", "sha256": SHA, "runtime": "onnxruntime"}
    base.update(changes)
    with pytest.raises(ValueError, match=message):
        spec(base["arch_id"], base["model_file"], base["sha256"], runtime=base["runtime"])


def test_tensorrt_spec_only_with_tensorrt():
    with pytest.raises(ValueError, match="needs a tensorrt build spec"):
        spec("a-1", "m.onnx", SHA, runtime="tensorrt")
    with pytest.raises(ValueError, match="makes no sense"):
        spec("a-1", "m.onnx", SHA, tensorrt=TensorRTBuild())
    with pytest.raises(ValueError, match="precision 'fp8'"):
        TensorRTBuild(precision="fp8")


def test_request_round_trip_and_duplicates(tmp_path):
    req = request(tmp_path, [spec("a-1", "m.onnx", SHA), spec("a-2", "m.onnx", SHA)])
    assert MeasureRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req
    with pytest.raises(ValueError, match="appears twice"):
        request(tmp_path, [spec("a-1", "m.onnx", SHA), spec("a-1", "m.onnx", SHA)])
    with pytest.raises(ValueError, match="at least one model"):
        request(tmp_path, [])


@pytest.mark.parametrize("changes, message", [
    ({"warmup_runs": 0}, "never time a cold model"),
    ({"blocks": 1, "runs_per_block": 1}, "never one run"),
    ({"version": 99}, "protocol version 99 is not known"),
    ({"cpu_affinity": ()}, "at least one CPU"),
    ({"timeout_s": 0.0}, "timeout_s must be > 0"),
])
def test_protocol_refuses_bad_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        Protocol(**changes)


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.integers(1, 50), runs=st.integers(2, 100), threads=st.integers(1, 64),
    affinity=st.one_of(st.none(), st.lists(st.integers(0, 127), min_size=1, max_size=8).map(tuple)),
    block_min_s=st.floats(0, 10, allow_nan=False), keep=st.booleans(),
    estimator=st.sampled_from(["block_min_median", "min", "p10", "median"]),
)
def test_protocol_json_round_trip(blocks, runs, threads, affinity, block_min_s, keep, estimator):
    p = Protocol(blocks=blocks, runs_per_block=runs, threads=threads, cpu_affinity=affinity, block_min_s=block_min_s,
                 keep_samples=keep, estimator=estimator)
    assert Protocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@given(st.integers(0, 0xFFFFF))
def test_throttle_bits_decode_and_validate(raw):
    t = ThrottleState.from_raw(raw)
    assert ("under_voltage" in t.now) == bool(raw & 1)
    assert ("throttled" in t.since_boot) == bool(raw & (1 << 18))
    with pytest.raises(ValueError, match="decode to"):
        ThrottleState(raw=raw, now=t.now + ("bogus",), since_boot=t.since_boot)


def test_batch_end_and_other_lines():
    end = BatchEnd("b1", 3, 2, 1, 1.5)
    assert parse_agent_line(json.dumps(end.to_dict())) == end
    with pytest.raises(ValueError, match="n_ok \\+ n_failed"):
        BatchEnd("b1", 3, 3, 1, 1.0)
    with pytest.raises(RecordError, match="not a JSON line"):
        parse_agent_line('{"schema": "agent.measure_res')
    with pytest.raises(RecordError, match="found 'other'"):
        parse_agent_line('{"schema": "other"}')


def test_worst_case_bounds_the_batch(tmp_path):
    proto = Protocol(timeout_s=100.0, build_timeout_s=1000.0, cooldown_s=2.0, interleave=2)
    req = request(tmp_path, [spec("a-1", "m.onnx", SHA), spec("a-2", "m.onnx", SHA),
                             spec("a-3", "m.onnx", SHA, runtime="tensorrt", tensorrt=TensorRTBuild())], proto)
    # 3 models x (timeout + 30 s for each of 2 attempts), one engine build, and the quiet
    # gate: 2 x 2 groups of (cooldown + 5 s of tool calls), plus the batch's wait (10 s + 5.5 s)
    assert req.worst_case_s() == 3 * 160.0 + 1000.0 + 4 * 7.0 + 15.5


def test_fast_protocol_used_by_tests_is_valid():
    assert FAST.min_timed_runs == 15
