"""TensorRT build spec and the trtexec command lines built from it (TensorRT itself only where importable)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import skip_or_fail
from hypothesis import given
from hypothesis import strategies as st

from exporters import ExportCache, TensorRTBuildSpec, build_spec, export_subnet, trtexec_argv
from exporters.records import TensorSpec
from exporters.tensorrt import parse_tensorrt_version
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.space.arch import SearchSpace

ARCH = SearchSpace().smallest()


@pytest.fixture(scope="module")
def onnx_model(export_cache_dir: Path):
    return export_subnet(ARCH, "onnx", cache=ExportCache(export_cache_dir / "exports"))


def _spec(**changes: object) -> TensorRTBuildSpec:
    base = TensorRTBuildSpec(
        arch_id=ARCH.id,
        arch=ARCH.to_dict(),
        onnx_file="net.onnx",
        onnx_sha256="ab" * 32,
        onnx_bytes=123,
        input=TensorSpec("input", (1, 3, 160, 160), "float32", "NCHW"),
        output=TensorSpec("logits", (1, 1000)),
    )
    return replace(base, **changes)


def test_spec_from_an_onnx_export_round_trips(onnx_model, tmp_path: Path) -> None:
    spec = build_spec(onnx_model, precision="fp16", workspace_mib=512, onnx_file="net.onnx")
    doc = spec.to_dict()
    assert doc["onnx"] == {"file": "net.onnx", "sha256": onnx_model.sha256, "bytes": onnx_model.bytes}
    assert doc["input"] == {"name": "input", "shape": [1, 3, ARCH.r, ARCH.r], "dtype": "float32", "layout": "NCHW"}
    assert doc["arch_id"] == ARCH.id and doc["arch"] == ARCH.to_dict()
    assert doc["trtexec_reference"] == {
        "tensorrt": "10",
        "argv": [
            "trtexec",
            "--onnx=net.onnx",
            "--saveEngine=net.engine",
            "--memPoolSize=workspace:512",
            "--fp16",
            "--skipInference",
        ],
    }
    path = spec.write(tmp_path / "net.json")
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == "ofa2-edge/tensorrt-build" and on_disk["schema_version"] == 1
    assert TensorRTBuildSpec.read(path) == spec


def test_build_id_covers_the_model_and_every_engine_option(tmp_path: Path) -> None:
    base = _spec(precision="int8")
    calib = tmp_path / "calib.cache"
    calib.write_text("TRT-8601-EntropyCalibration2\n")
    variants = [
        _spec(precision="fp16"),
        _spec(precision="int8", onnx_sha256="cd" * 32),
        _spec(precision="int8", workspace_mib=2048),
        _spec(precision="int8", tf32=False),
        _spec(precision="int8", calibration_file="calib.cache", calibration_sha256="ef" * 32),
    ]
    assert len({base.build_id, *(v.build_id for v in variants)}) == 1 + len(variants)
    assert _spec(precision="int8", onnx_file="other-name.onnx").build_id == base.build_id  # names do not matter
    assert base.placeholder_int8_ranges and not variants[-1].placeholder_int8_ranges


def test_edited_or_foreign_specs_are_refused(tmp_path: Path) -> None:
    path = _spec().write(tmp_path / "spec.json")
    doc = json.loads(path.read_text())
    doc["precision"] = "fp32"  # edited by hand: the build_id no longer matches
    path.write_text(json.dumps(doc))
    with pytest.raises(SchemaError, match="build_id does not match"):
        TensorRTBuildSpec.read(path)
    doc["schema_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(SchemaError, match="schema_version 99"):
        TensorRTBuildSpec.read(path)
    with pytest.raises(InvalidInputError, match="precision 'int4'"):
        _spec(precision="int4")
    with pytest.raises(InvalidInputError, match="static batch-1"):
        _spec(input=TensorSpec("input", (4, 3, 160, 160)))
    with pytest.raises(InvalidInputError, match="only applies to int8"):
        _spec(precision="fp16", calibration_file="c", calibration_sha256="00" * 32)


@pytest.mark.parametrize(
    ("version", "workspace_flag", "build_only_flag"),
    [
        ("8.2.1", "--workspace=1024", "--buildOnly"),  # JetPack 4.6 (Jetson Nano)
        ("8.4.1", "--memPoolSize=workspace:1024", "--buildOnly"),
        ("8.5.2.2", "--memPoolSize=workspace:1024", "--buildOnly"),  # JetPack 5.1
        ("8.6.1", "--memPoolSize=workspace:1024", "--skipInference"),
        ("v100300", "--memPoolSize=workspace:1024", "--skipInference"),  # JetPack 6 trtexec banner
        ("10.13", "--memPoolSize=workspace:1024", "--skipInference"),
    ],
)
def test_trtexec_flags_follow_the_tensorrt_version(version: str, workspace_flag: str, build_only_flag: str) -> None:
    argv = trtexec_argv(_spec(precision="fp16"), "/data/net.onnx", "/data/net.engine", version)
    assert argv == [
        "trtexec",
        "--onnx=/data/net.onnx",
        "--saveEngine=/data/net.engine",
        workspace_flag,
        "--fp16",
        build_only_flag,
    ]
    # never explicit shapes (trtexec rejects them for a static model) nor the removed --explicitBatch
    assert not any(
        a.startswith(("--shapes", "--optShapes", "--minShapes", "--maxShapes", "--explicitBatch")) for a in argv
    )


def test_precision_and_calibration_flags() -> None:
    fp32 = trtexec_argv(
        _spec(precision="fp32", tf32=False), "n.onnx", "n.engine", "10.3", trtexec="/usr/src/tensorrt/bin/trtexec"
    )
    assert fp32 == [
        "/usr/src/tensorrt/bin/trtexec",
        "--onnx=n.onnx",
        "--saveEngine=n.engine",
        "--memPoolSize=workspace:1024",
        "--noTF32",
        "--skipInference",
    ]
    placeholder = trtexec_argv(_spec(precision="int8"), "/m/n.onnx", "/m/n.engine", "8.6")
    assert placeholder[4:] == ["--int8", "--fp16", "--skipInference"]
    calibrated = _spec(precision="int8", calibration_file="n.calib", calibration_sha256="00" * 32)
    assert "--calib=/m/n.calib" in trtexec_argv(calibrated, "/m/n.onnx", "/m/n.engine", "8.6")
    assert "--calib=/x/c" in trtexec_argv(calibrated, "/m/n.onnx", "/m/n.engine", "8.6", calibration_path="/x/c")
    timed = trtexec_argv(_spec(), "n.onnx", "n.engine", "10", skip_inference=False)
    assert "--skipInference" not in timed and "--buildOnly" not in timed


def test_unsupported_tensorrt_versions_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="older than 8.0"):
        trtexec_argv(_spec(), "n.onnx", "n.engine", "7.1.3")
    with pytest.raises(InvalidInputError, match="removed --fp16"):
        trtexec_argv(_spec(precision="fp16"), "n.onnx", "n.engine", "11.0")
    assert "--fp16" not in trtexec_argv(_spec(precision="fp32"), "n.onnx", "n.engine", "11.0")
    with pytest.raises(InvalidInputError, match="not a version"):
        parse_tensorrt_version("latest")


@given(
    major=st.integers(8, 12),
    minor=st.integers(0, 20),
    patch=st.integers(0, 9),
)
def test_version_spellings_agree(major: int, minor: int, patch: int) -> None:
    dotted = parse_tensorrt_version(f"{major}.{minor}.{patch}")
    assert dotted == (major, minor)
    if major >= 10:
        assert parse_tensorrt_version(f"v{major * 10000 + minor * 100 + patch}") == dotted
    elif minor < 10:
        assert parse_tensorrt_version(f"v{major * 1000 + minor * 100 + patch}") == dotted


@given(
    precision=st.sampled_from(["fp32", "fp16", "int8"]),
    workspace=st.integers(1, 1 << 16),
    tf32=st.booleans(),
    r=st.integers(32, 1024),
)
def test_spec_dict_round_trip(precision: str, workspace: int, tf32: bool, r: int) -> None:
    spec = _spec(precision=precision, workspace_mib=workspace, tf32=tf32, input=TensorSpec("input", (1, 3, r, r)))
    assert TensorRTBuildSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.tensorrt
def test_engine_builds_on_a_real_tensorrt(onnx_model, tmp_path: Path) -> None:
    """Where TensorRT is importable (a Jetson or GPU host): the spec's argv really builds an engine
    whose I/O matches the spec, and the Python API agrees."""
    try:
        import tensorrt as trt
    except ImportError:
        skip_or_fail("tensorrt", "TensorRT is not importable on this machine")
    onnx_path = tmp_path / "net.onnx"
    shutil.copyfile(onnx_model.path, onnx_path)
    spec = build_spec(onnx_model, precision="fp16", workspace_mib=256, onnx_file="net.onnx")
    trtexec = shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec", "/usr/local/bin/trtexec") if Path(p).is_file()), None
    )
    if trtexec is not None:
        import subprocess

        engine = tmp_path / "net.engine"
        argv = trtexec_argv(spec, onnx_path, engine, trt.__version__, trtexec=trtexec)
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert engine.stat().st_size > 0
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = parse_tensorrt_version(trt.__version__)[0]
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    else:
        config.max_workspace_size = spec.workspace_mib << 20
    config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shapes = {n: tuple(engine.get_tensor_shape(n)) for n in names}
    else:
        shapes = {engine.get_binding_name(i): tuple(engine.get_binding_shape(i)) for i in range(engine.num_bindings)}
    assert shapes == {spec.input.name: spec.input.shape, spec.output.name: spec.output.shape}
