"""TensorRT runtime: everything around the engine build here, the live build where TensorRT exists."""

from __future__ import annotations

import struct
import types

import pytest
from agent_models import FAST, conv_net, request, save, spec
from conftest import skip_or_fail

from device_agents.records import TensorRTBuild
from device_agents.runner import BatchRunner
from device_agents.runtimes import get_runtime, runtime_names
from device_agents.runtimes.base import LoadContext
from device_agents.runtimes.trt import (
    builder_flag_names,
    engine_file_name,
    load_or_build_engine,
    pattern_bytes,
    trt_major,
)

SHA = "ab" * 32


def test_registry_has_the_four_runtimes():
    assert runtime_names() == ["litert", "onnxruntime", "onnxruntime-parallel", "tensorrt"]
    assert get_runtime("tensorrt").name == "tensorrt"
    with pytest.raises(KeyError, match="unknown runtime 'tvm'; known: litert, onnxruntime, onnxruntime-parallel, tensorrt"):
        get_runtime("tvm")


def test_engine_cache_key_covers_everything_that_changes_an_engine():
    base = engine_file_name(SHA, TensorRTBuild("fp16", 1024), "10.3.0.26", "0123456789abcdef")
    assert base == f"{SHA[:32]}-fp16-ws1024-trt10.3.0.26-0123456789abcdef.engine"
    variants = {
        engine_file_name("cd" * 32, TensorRTBuild("fp16", 1024), "10.3.0.26", "0123456789abcdef"),
        engine_file_name(SHA, TensorRTBuild("int8", 1024), "10.3.0.26", "0123456789abcdef"),
        engine_file_name(SHA, TensorRTBuild("fp16", 512), "10.3.0.26", "0123456789abcdef"),
        engine_file_name(SHA, TensorRTBuild("fp16", 1024), "8.6.1", "0123456789abcdef"),
        engine_file_name(SHA, TensorRTBuild("fp16", 1024), "10.3.0.26", "fedcba9876543210"),
    }
    assert base not in variants and len(variants) == 5
    assert "/" not in engine_file_name(SHA, TensorRTBuild(), "10.0/../x", "a/b")


def test_builder_flags_follow_trtexec():
    assert builder_flag_names(TensorRTBuild("fp32")) == []
    assert builder_flag_names(TensorRTBuild("fp16")) == ["FP16"]
    assert builder_flag_names(TensorRTBuild("int8")) == ["INT8"]
    assert (trt_major("8.6.1.6"), trt_major("10.13.3.9")) == (8, 10)


def test_pattern_inputs_are_deterministic_and_finite():
    a = pattern_bytes("FLOAT", 100, 7)
    assert a == pattern_bytes("FLOAT", 100, 7) and a != pattern_bytes("FLOAT", 100, 8)
    values = struct.unpack("<100f", a)
    assert all(abs(v) < 10 for v in values) and len(set(values)) > 90
    assert len(pattern_bytes("HALF", 10, 0)) == 20 and len(pattern_bytes("INT64", 3, 0)) == 24
    assert set(pattern_bytes("BOOL", 50, 0)) <= {0, 1}


def test_a_cached_engine_is_reused_without_building(tmp_path):
    s = spec("a-trt", "m.onnx", SHA, runtime="tensorrt", tensorrt=TensorRTBuild("fp16", 256))
    trt_version = types.SimpleNamespace(__version__="10.3.0")  # only the version is read on a cache hit
    (tmp_path / engine_file_name(SHA, s.tensorrt, "10.3.0", "f" * 16)).write_bytes(b"serialized engine")
    stages = []
    ctx = LoadContext(str(tmp_path), "f" * 16, stages.append)
    assert load_or_build_engine(trt_version, str(tmp_path / "m.onnx"), s, ctx) == b"serialized engine"
    assert stages == []


@pytest.mark.tensorrt
def test_live_tensorrt_build_measure_and_cache(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        skip_or_fail("tensorrt", "TensorRT is not importable here (it runs on Jetsons and GPU hosts)")
    sha = save(conv_net(16, 3, 32), tmp_path / "m.onnx")
    events = []
    req = request(tmp_path, [spec("a-trt", "m.onnx", sha, runtime="tensorrt", in_shape=(1, 3, 32, 32),
                                  tensorrt=TensorRTBuild("fp16", 256))], FAST)
    for _ in range(2):
        out = []
        BatchRunner(req, out.append, on_event=lambda n, i: events.append(n), device_fingerprint="f" * 16).run()
        (r,) = out
        assert r.ok, r.error_msg
        assert r.output_shapes == ((1, 10),) and r.stats.min_ms > 0
    assert events.count("building") == 1  # the second run found the cached engine
    assert len(list((tmp_path / "engine_cache").glob("*.engine"))) == 1
