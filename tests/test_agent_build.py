"""The shippable agent: a deterministic zipapp that runs where the repository is not, on Python 3.8+."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from agent_models import conv_net, request, save, spec, write_request
from conftest import REPO

from device_agents.build import build_pyz, source_files
from device_agents.records import FailureKind, ProbeReport, TensorRTBuild, parse_agent_line


def clean_env() -> dict:
    """The environment of a device shell: no PYTHONPATH, nothing pointing at this repository."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "OFA2_EDGE_ASSETS"}


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "agent.pyz"
    build_pyz(str(path))
    return path


def test_build_is_deterministic(tmp_path):
    a, b = tmp_path / "a.pyz", tmp_path / "b" / "agent.pyz"
    sha_a = build_pyz(str(a))
    sha_b = build_pyz(str(b))
    assert sha_a == sha_b == hashlib.sha256(a.read_bytes()).hexdigest()
    assert a.read_bytes() == b.read_bytes() and a.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(a, os.X_OK)
    with zipfile.ZipFile(a) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names[0] == "__main__.py" and names[1:] == sorted(names[1:])
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert "device_agents/records.py" in names and "device_agents/runtimes/trt.py" in names
    assert "device_agents/build.py" not in names and not any("__pycache__" in n for n in names)
    assert not any(n.startswith(("tests/", "ofa2_edge/")) for n in names)


# Exactly what the agent runs: the command line and everything it imports. The parsers of
# benchmark tools (trtexec, benchmark_model, onnxruntime_perf_test, tegrastats) have no
# caller on the device and stay host-side; so does the builder.
SHIPPED = [
    "__main__.py",
    "device_agents/__init__.py", "device_agents/classify.py", "device_agents/cli.py", "device_agents/infer.py",
    "device_agents/jsonrecord.py",
    "device_agents/parsers/__init__.py", "device_agents/parsers/cpu.py", "device_agents/parsers/jetson.py",
    "device_agents/parsers/text.py", "device_agents/parsers/thermal.py", "device_agents/parsers/vcgencmd.py",
    "device_agents/probe.py", "device_agents/quiet.py", "device_agents/rails.py", "device_agents/records.py",
    "device_agents/runner.py",
    "device_agents/runtimes/__init__.py", "device_agents/runtimes/base.py", "device_agents/runtimes/litert.py",
    "device_agents/runtimes/ort.py", "device_agents/runtimes/trt.py", "device_agents/stats.py",
    "device_agents/telemetry.py", "device_agents/worker.py",
]
HOST_SIDE = ["device_agents/build.py", "device_agents/parsers/ort_perf_test.py", "device_agents/parsers/tegrastats.py",
             "device_agents/parsers/tflite_benchmark.py", "device_agents/parsers/trtexec.py"]


def test_the_zipapp_holds_exactly_what_the_agent_runs(pyz, tmp_path):
    with zipfile.ZipFile(pyz) as zf:
        names = zf.namelist()
    assert names == SHIPPED
    on_disk = sorted(str(p.relative_to(REPO)) for p in (REPO / "device_agents").rglob("*.py"))
    # every module is either shipped or host-side on purpose (plus `python -m device_agents`)
    assert sorted(set(on_disk) - set(SHIPPED)) == sorted([*HOST_SIDE, "device_agents/__main__.py"])
    # and nothing shipped imports what is left out: every shipped module imports from the archive alone
    mods = [n[:-3].replace("/", ".").removesuffix(".__init__") for n in SHIPPED[1:]]
    code = f"import importlib, json, sys; [importlib.import_module(m) for m in {mods!r}]; " \
           "print(json.dumps(sorted(m for m in sys.modules if m.startswith('device_agents'))))"
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, check=False, text=True,
                          timeout=120, env={**clean_env(), "PYTHONPATH": str(pyz)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sorted(mods)


def test_host_side_parsers_stay_importable_here():
    from device_agents.parsers import ort_perf_test, tegrastats, tflite_benchmark, trtexec

    assert all(m.__file__.startswith(str(REPO)) for m in (ort_perf_test, tegrastats, tflite_benchmark, trtexec))


def test_a_source_change_changes_the_hash(tmp_path):
    copy = tmp_path / "device_agents"
    shutil.copytree(REPO / "device_agents", copy, ignore=shutil.ignore_patterns("__pycache__"))
    same = build_pyz(str(tmp_path / "same.pyz"), str(copy))
    assert same == build_pyz(str(tmp_path / "orig.pyz"))
    with open(copy / "stats.py", "a") as fh:
        fh.write("\n# a change\n")
    assert build_pyz(str(tmp_path / "changed.pyz"), str(copy)) != same
    assert [n for n, _ in source_files(str(copy))] == [n for n, _ in source_files()]


def test_pyz_probe_without_site_packages_or_repo(pyz, tmp_path):
    done = subprocess.run([sys.executable, "-S", str(pyz), "probe", "--work-dir", str(tmp_path)], cwd=tmp_path,
                          env=clean_env(), capture_output=True, check=False, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = ProbeReport.from_dict(json.loads(done.stdout))  # checks the fingerprint against its facts
    assert report.python_version == ".".join(map(str, sys.version_info[:3]))
    assert report.cpu_cores == os.cpu_count() and report.disk_free_mib > 0 and report.mem_total_mib > 0
    assert set(report.runtimes) == {"onnxruntime", "onnxruntime-parallel", "litert", "tensorrt"}
    # -S hides site-packages: every runtime is reported missing, none crashes the probe
    assert not any(r.available for r in report.runtimes.values())
    assert all(r.detail.startswith("runtime not available on this device") for r in report.runtimes.values())
    assert set(report.fingerprint_facts) == {"machine", "os_name", "cpu_model", "cpu_cores", "cpu_max_freq_khz",
                                             "board_model", "mem_total_gib", "jetson_power_mode"}


def test_pyz_probe_sees_installed_runtimes(pyz, tmp_path):
    done = subprocess.run([sys.executable, str(pyz), "probe"], cwd=tmp_path, env=clean_env(), capture_output=True, check=False,
                          text=True, timeout=120)
    report = ProbeReport.from_dict(json.loads(done.stdout))
    import onnxruntime

    assert report.runtimes["onnxruntime"].available and report.runtimes["onnxruntime"].version == onnxruntime.__version__
    again = ProbeReport.from_dict(json.loads(subprocess.run(
        [sys.executable, str(pyz), "probe"], cwd=tmp_path, env=clean_env(), capture_output=True, check=False, text=True,
        timeout=120).stdout))
    assert again.fingerprint == report.fingerprint  # load and temperature changed; the fingerprint did not


def test_pyz_measures_from_a_foreign_folder(pyz, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    sha = save(conv_net(8, 2, 16), work / "m.onnx")
    req = write_request(tmp_path / "req.json", request(work, [spec("a-pyz", "m.onnx", sha)]))
    done = subprocess.run([sys.executable, str(pyz), "measure", "--request", str(req)], cwd=tmp_path,
                          env=clean_env(), capture_output=True, check=False, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result, end = [parse_agent_line(ln) for ln in done.stdout.splitlines()]
    assert result.ok, result.error_msg
    assert end.n_ok == 1


def find_python38() -> str | None:
    """A Python 3.8 interpreter: $OFA2_EDGE_PY38, pyenv's 3.8.x, or python3.8 on PATH."""
    candidates = [os.environ.get("OFA2_EDGE_PY38", "")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates.append(shutil.which("python3.8") or "")
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, check=False,
                                 text=True, timeout=30, env=clean_env())
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 8)":
            return exe
    return None


def test_pyz_runs_on_python_38(pyz, tmp_path):
    """The oldest Python the agent supports (JetPack 5, Raspberry Pi OS buster-era), for real."""
    py38 = find_python38()
    if py38 is None:
        pytest.skip("no Python 3.8 interpreter here (set OFA2_EDGE_PY38); the vermin test still checks syntax")
    done = subprocess.run([py38, str(pyz), "probe"], cwd=tmp_path, env=clean_env(), capture_output=True, check=False, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = ProbeReport.from_dict(json.loads(done.stdout))
    assert report.python_version.startswith("3.8.")
    # the whole measure path (validation, checksum, worker processes, timeout, records) on 3.8;
    # no runtime is installed for it, so the models end as runtime-missing records
    work = tmp_path / "work"
    work.mkdir()
    sha = save(conv_net(8, 2, 16), work / "m.onnx")
    corrupt = work / "bad.onnx"
    corrupt.write_bytes(b"not the model")
    req = write_request(tmp_path / "req.json", request(work, [
        spec("a-ort", "m.onnx", sha),
        spec("a-trt", "m.onnx", sha, runtime="tensorrt", tensorrt=TensorRTBuild("int8", 64)),
        spec("a-bad", "bad.onnx", sha),
    ]))
    done = subprocess.run([py38, str(pyz), "measure", "--request", str(req)], cwd=tmp_path, env=clean_env(),
                          capture_output=True, check=False, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *results, end = [parse_agent_line(ln) for ln in done.stdout.splitlines()]
    kinds = {r.arch_id: r.error_kind for r in results}
    assert kinds == {"a-ort": FailureKind.RUNTIME_MISSING, "a-trt": FailureKind.RUNTIME_MISSING,
                     "a-bad": FailureKind.CHECKSUM_MISMATCH}
    assert end.n_failed == 3


def _vermin() -> str:
    exe = shutil.which("vermin", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.fail("vermin is not installed: pip install '.[test]' (it checks the agent stays Python 3.8 compatible)")
    return exe


def test_agent_source_is_python38_compatible():
    cmd = [_vermin(), "-t=3.8-", "--eval-annotations", "--no-tips", "--violations", str(REPO / "device_agents")]
    done = subprocess.run(cmd, capture_output=True, check=False, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_vermin_catches_39_features(tmp_path):
    """The check above is real: a 3.9-only method and a 3.9 annotation are refused."""
    bad = tmp_path / "newer.py"
    bad.write_text('from __future__ import annotations\n\n\ndef f(x: dict[str, int]) -> str:\n'
                   '    return "ab".removeprefix("a")\n')
    done = subprocess.run([_vermin(), "-t=3.8-", "--eval-annotations", "--no-tips", "--violations", str(bad)],
                          capture_output=True, check=False, text=True, timeout=120)
    assert done.returncode != 0 and "removeprefix" in done.stdout
