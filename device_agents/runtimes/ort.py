"""onnxruntime on the CPU: one session, fixed threads, sequential execution.

`onnxruntime-parallel` is the same runtime with the parallel executor: independent branches
of the graph (the members of an ensemble model) run at once on `protocol.threads` inter-op
threads, each operator on one thread. It is timed on the wall clock only (the work is not on
the calling thread)."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from device_agents.records import ModelSpec, Protocol
from device_agents.runtimes import register
from device_agents.runtimes.base import (
    LoadContext,
    ModelLoadFailed,
    Runtime,
    RuntimeUnavailable,
    Session,
    Shape,
    resolve_inputs,
)

# onnxruntime's tensor type strings -> request dtypes.
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def _import() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable(f"onnxruntime is not importable ({exc})") from None
    return onnxruntime


def make_inputs(shapes_dtypes: List[Any], seed: int) -> List[Any]:
    """Deterministic inputs: standard normal floats, small non-negative integers (numpy, lazily)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in shapes_dtypes:
        if dtype in ("float32", "float16"):
            out.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == "bool":
            out.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            out.append(rng.integers(0, 10, size=shape).astype(dtype))
    return out


class OrtSession(Session):
    def __init__(self, sess: Any, feeds: dict) -> None:
        self._sess = sess
        self._feeds = feeds
        self._names = [o.name for o in sess.get_outputs()]

    def infer(self) -> None:
        self._sess.run(self._names, self._feeds)

    def infer_output_shapes(self) -> List[Shape]:
        return [tuple(int(d) for d in out.shape) for out in self._sess.run(self._names, self._feeds)]

    def output_names(self) -> List[Optional[str]]:
        return list(self._names)

    def outputs_for(self, arrays: Sequence[Any]) -> List[Any]:
        return list(self._sess.run(self._names, dict(zip(self._feeds, arrays))))


@register("onnxruntime")
class OnnxRuntime(Runtime):
    def version(self) -> str:
        return str(_import().__version__)

    parallel = False

    def load(self, model_path: str, spec: ModelSpec, protocol: Protocol, ctx: LoadContext) -> Session:
        ort = _import()
        opts = ort.SessionOptions()
        if self.parallel:
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = protocol.threads
            opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        else:
            opts.intra_op_num_threads = protocol.threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types all mean "cannot load"
            raise ModelLoadFailed(f"onnxruntime cannot load {spec.model_file}: {exc}") from None
        model_inputs = [(i.name, list(i.shape), ORT_DTYPES.get(i.type, i.type)) for i in sess.get_inputs()]
        resolved = resolve_inputs(model_inputs, spec.inputs)
        arrays = make_inputs([(shape, dtype) for _, shape, dtype in resolved], protocol.input_seed)
        return OrtSession(sess, {name: arr for (name, _, _), arr in zip(resolved, arrays)})


@register("onnxruntime-parallel")
class OnnxRuntimeParallel(OnnxRuntime):
    """The parallel executor: graph branches at once on `protocol.threads` inter-op threads."""

    parallel = True
