"""Small real models and requests for the agent tests (ONNX via onnx.helper, TFLite via LiteRT's schema)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from device_agents.records import MeasureRequest, ModelSpec, Protocol, TensorRTBuild, TensorSpec

# A short protocol: real blocks and interleaving, sized for a shared 2-core test machine. The
# quiet gate looks but never waits, so no test's duration or verdict depends on the load.
FAST = Protocol(warmup_runs=2, warmup_min_s=0.0, blocks=3, runs_per_block=5, block_min_s=0.0, block_warmup_runs=1,
                interleave=2, cooldown_s=0.0, timeout_s=60.0, remeasure=0, quiet_wait_s=0.0)


#: IR 8 / opset 17 like the project's exports: onnx 1.23 would stamp IR 14, which the
#: onnxruntime of a Python 3.9 board (1.19.2) refuses to load.
TEST_IR_VERSION = 8


def save(model: onnx.ModelProto, path: Path) -> str:
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def conv_net(channels: int, depth: int, size: int, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Conv-ReLU stack, global average pool, linear classifier: input [1,3,size,size] -> [1,classes]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, c_in = "x", 3
    for i in range(depth):
        w = numpy_helper.from_array((rng.standard_normal((channels, c_in, 3, 3)) * 0.1).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, c_in = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array((rng.standard_normal((channels, classes)) * 0.1).astype(np.float32), "fc"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc"], ["y"]))
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=TEST_IR_VERSION)


def endless_loop() -> onnx.ModelProto:
    """A Loop with trip count 2**62: onnxruntime runs it (in C++) essentially forever."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.ones((1, 4), np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.array(2 ** 62, np.int64), "trip"),
                     numpy_helper.from_array(np.array(True), "cond")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=TEST_IR_VERSION)


def tflite_fully_connected(n_in: int = 16, n_out: int = 8, seed: int = 0) -> bytes:
    """A one-op TFLite model (FULLY_CONNECTED, float32 [1,n_in] -> [1,n_out]) built with
    LiteRT's own flatbuffer schema, so LiteRT tests need no converter."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((n_out, n_in)) * 0.1).astype(np.float32)
    bias = np.zeros((n_out,), np.float32)

    def buffer(data: np.ndarray | None) -> Any:
        b = s.BufferT()
        if data is not None:
            b.data = np.frombuffer(data.tobytes(), dtype=np.uint8)
        return b

    def tensor(name: str, shape: Sequence[int], buf: int) -> Any:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buf
        return t

    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    sub = s.SubGraphT()
    sub.tensors = [tensor("x", [1, n_in], 0), tensor("w", [n_out, n_in], 1), tensor("b", [n_out], 2),
                   tensor("y", [1, n_out], 0)]
    sub.inputs, sub.outputs, sub.operators, sub.name = [0], [3], [op], "main"
    code = s.OperatorCodeT()
    code.builtinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sub]
    model.buffers = [buffer(None), buffer(weights), buffer(bias)]
    model.description = "agent test"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def spec(arch_id: str, model_file: str, sha256: str, runtime: str = "onnxruntime",
         in_shape: Sequence[int] = (1, 3, 16, 16), out_shape: Sequence[int] = (1, 10),
         tensorrt: TensorRTBuild | None = None) -> ModelSpec:
    return ModelSpec(arch_id=arch_id, arch={"test": arch_id}, model_file=model_file, sha256=sha256, runtime=runtime,
                     inputs=(TensorSpec(None, tuple(in_shape), "float32"),),
                     outputs=(TensorSpec(None, tuple(out_shape), "float32"),), tensorrt=tensorrt)


def request(work_dir: Path, models: list[ModelSpec], protocol: Protocol = FAST, batch_id: str = "b-test",
            device_key: str | None = "local") -> MeasureRequest:
    return MeasureRequest(batch_id=batch_id, device_key=device_key, work_dir=str(work_dir), protocol=protocol,
                          models=tuple(models))


def write_request(path: Path, req: MeasureRequest) -> Path:
    path.write_text(json.dumps(req.to_dict()))
    return path


def lines_to_dicts(text: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
