"""`ofa2-edge export` through the real entry point: outputs, JSON, and bad input that leaves no file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import skip_or_fail

from exporters import TensorRTBuildSpec, onnx_export, random_supernet, read_sidecar, records, trtexec_argv
from exporters.onnx_export import read_onnx_metadata
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE
from ofa2_edge.space.arch import SearchSpace

MIN = SearchSpace().smallest()


@pytest.fixture(autouse=True)
def shared_cache(export_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(export_cache_dir))


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr with rich's line wrapping undone."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_onnx_export_with_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "min.onnx"
    code, stdout, err = run_cli(capsys, "-W", str(tmp_path), "export", "min", "-o", str(out), "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["path"] == str(out) and doc["arch_id"] == MIN.id and doc["format"] == "onnx"
    assert doc["metadata"]["latency_only"] is True and doc["parity"]["max_abs_diff"] <= 1e-4
    side = read_sidecar(tmp_path / "min.onnx.json")  # verifies the sha256 of the file too
    assert side.sha256 == doc["sha256"] and read_onnx_metadata(out) == side.metadata
    assert _files(tmp_path) == ["min.onnx", "min.onnx.json"]
    code, stdout, _ = run_cli(capsys, "-W", str(tmp_path), "export", "min", "-o", str(out))
    assert code == 0 and "from the export cache" in stdout and "latency only" in stdout


def test_tensorrt_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "net.json"
    code, stdout, err = run_cli(
        capsys, "export", "min", "-f", "tensorrt-spec", "--precision", "int8", "--workspace-mib", "2048", "-o", str(out)
    )
    assert code == 0, err
    assert _files(tmp_path) == ["net.json", "net.onnx", "net.onnx.json"]
    spec = TensorRTBuildSpec.read(out)
    assert spec.onnx_file == "net.onnx" and spec.precision == "int8" and spec.workspace_mib == 2048
    assert spec.onnx_sha256 == read_sidecar(tmp_path / "net.onnx.json").sha256 and spec.placeholder_int8_ranges
    assert "--memPoolSize=workspace:2048 --int8 --fp16 --skipInference" in stdout


def test_tensorrt_spec_ships_the_int8_calibration_cache(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    calib = tmp_path / "elsewhere" / "min.calib"
    calib.parent.mkdir()
    calib.write_text("TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["export", "min", "-f", "tensorrt-spec", "--precision", "int8", "--trt-calib-cache", str(calib)]
    code, _, err = run_cli(capsys, *args, "-o", str(out_dir / "net.json"))
    assert code == 0, err
    assert _files(out_dir) == ["min.calib", "net.json", "net.onnx", "net.onnx.json"]
    spec = TensorRTBuildSpec.read(out_dir / "net.json")
    assert spec.calibration_file == "min.calib" and not spec.placeholder_int8_ranges
    assert f"--calib={out_dir / 'min.calib'}" in trtexec_argv(
        spec, out_dir / "net.onnx", out_dir / "net.engine", "10.3"
    )
    fp16 = ["export", "min", "-f", "tensorrt-spec", "--precision", "fp16", "--trt-calib-cache", str(calib)]
    code, _, err = run_cli(capsys, *fp16, "-o", str(out_dir / "b.json"))
    assert code == EXIT_FAILURE and "applies to --precision int8 only" in err and not (out_dir / "b.json").exists()


def test_checkpoint_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ckpt = tmp_path / "ofa.pth"
    torch.save({"state_dict": random_supernet(1.2, seed=5).state_dict()}, ckpt)
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(capsys, "export", "min", "--supernet", str(ckpt), "-o", str(out), "--json")
    assert code == 0, err
    meta = json.loads(stdout)["metadata"]
    assert meta["weights_source"].startswith("sha256:") and meta["latency_only"] is False
    assert meta["bn_stats_source"] == "supernet"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (['{"ks": [4], "e": [3], "d": [2], "r": 224}'], EXIT_FAILURE, "d: expected 5 values"),
        (["min", "--format", "coreml"], EXIT_FAILURE, "--format 'coreml' is not supported"),
        (["min", "--supernet", "{tmp}/missing.pth"], EXIT_FAILURE, "not found"),
        (["min", "--supernet", "{tmp}/garbage.pth"], EXIT_FAILURE, "not a torch checkpoint"),
        (["min", "--calib-images", "{tmp}"], EXIT_FAILURE, "tflite-int8 only"),
        (["min", "--precision", "fp32"], EXIT_FAILURE, "tensorrt-spec only"),
        (["min", "-f", "tensorrt-spec", "--precision", "int4"], EXIT_FAILURE, "--precision 'int4'"),
    ],
    ids=[
        "invalid-arch",
        "unknown-format",
        "missing-checkpoint",
        "corrupt-checkpoint",
        "calib-without-int8",
        "precision-without-trt",
        "bad-precision",
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 100)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    suffix = ".json" if "tensorrt-spec" in args else ".onnx"
    argv = ["export", *[a.replace("{tmp}", str(tmp_path)) for a in args], "-o", str(out_dir / f"m{suffix}")]
    got, _, err = run_cli(capsys, *argv)
    assert got == code and message in err and "Traceback" not in err
    assert _files(out_dir) == []


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("nowhere/m.onnx", "does not exist"),
        ("afile.txt/m.onnx", "is not a folder"),
        ("adir", "is a folder"),
        ("m.tflite", "must end in .onnx"),
        ("spec.onnx", "must end in .json"),
    ],
)
def test_unwritable_output_is_refused_before_exporting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, output: str, message: str
) -> None:
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "adir").mkdir()
    before = _files(tmp_path)
    fmt = "tensorrt-spec" if output == "spec.onnx" else "onnx"
    code, _, err = run_cli(capsys, "export", "min", "-f", fmt, "-o", str(tmp_path / output))
    assert code == EXIT_FAILURE and message in err
    assert _files(tmp_path) == before


def test_read_only_output_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        probe = folder / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:  # root ignores permission bits
            probe.unlink()
            pytest.skip("running as root: permission bits do not stop writes here")
        code, _, err = run_cli(capsys, "export", "min", "-o", str(folder / "m.onnx"))
        assert code == EXIT_FAILURE and "cannot write" in err and _files(folder) == []
    finally:
        folder.chmod(0o700)


def test_failed_parity_leaves_no_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "ATOL", 0.0)
    monkeypatch.setattr(onnx_export, "RTOL", 0.0)
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(tmp_path / "cache"))  # a fresh cache: the export must really run
    code, _, err = run_cli(capsys, "export", "min", "-o", str(tmp_path / "m.onnx"))
    assert code == EXIT_FAILURE and "exceeds the tolerance" in err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # neither the output nor a cache entry


def test_a_failed_copy_leaves_no_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records, "write_json", disk_full)  # the sidecar write fails after the model was placed
    code, _, err = run_cli(capsys, "export", "min", "-o", str(tmp_path / "m.onnx"))
    assert code == EXIT_FAILURE and "No space left on device; nothing was written" in err
    assert _files(tmp_path) == []


def test_missing_tflite_extra(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # what an install without the extra looks like
    code, _, err = run_cli(capsys, "export", "min", "-f", "tflite", "-o", str(tmp_path / "m.tflite"))
    assert code == EXIT_FAILURE and "pip install 'ofa2-edge[tflite]'" in err
    assert _files(tmp_path) == []


@pytest.mark.tflite
@pytest.mark.slow
def test_tflite_int8_json_keeps_stdout_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if importlib.util.find_spec("litert_torch") is None:
        skip_or_fail("tflite", "litert-torch is not installed (pip install 'ofa2-edge[tflite]')")
    out = tmp_path / "min.tflite"
    code, stdout, err = run_cli(capsys, "export", "min", "-f", "tflite-int8", "-o", str(out), "--json")
    assert code == 0, err
    doc = json.loads(stdout)  # the converters' progress output did not leak into stdout
    assert doc["format"] == "tflite-int8" and 0.0 <= doc["parity"]["top1_agreement"] <= 1.0
    assert read_sidecar(tmp_path / "min.tflite.json").sha256 == doc["sha256"]
