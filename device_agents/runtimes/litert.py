"""LiteRT (``ai_edge_litert.interpreter``), else the older ``tflite_runtime.interpreter``."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from device_agents.records import ModelSpec, Protocol, TensorSpec
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
from device_agents.runtimes.ort import make_inputs

#: The signature name TFLite converters (litert-torch, TensorFlow) give a model's entry point.
SIGNATURE = "serving_default"


def _import() -> Tuple[Any, str]:
    """(Interpreter class, "package version")."""
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai_edge_litert {getattr(ai_edge_litert, '__version__', 'unknown')}"
    except ImportError as first:
        try:
            import tflite_runtime
            from tflite_runtime.interpreter import Interpreter

            return Interpreter, f"tflite_runtime {getattr(tflite_runtime, '__version__', 'unknown')}"
        except ImportError as second:
            raise RuntimeUnavailable(
                f"neither ai_edge_litert ({first}) nor tflite_runtime ({second}) is importable"
            ) from None


def _signature_names(wanted: Sequence[TensorSpec], names: Sequence[str]) -> List[TensorSpec]:
    """Requested input names as the interpreter spells them: a converter that keeps a signature
    prefixes its tensors (``input`` -> ``serving_default_input``, maybe with ``:0``)."""
    out = []
    for t in wanted:
        if t.name is not None and t.name not in names:
            match = [n for n in names if n.split(":")[0] == "%s_%s" % (SIGNATURE, t.name)]
            if len(match) == 1:
                t = TensorSpec(match[0], t.shape, t.dtype)
        out.append(t)
    return out


class LiteRtSession(Session):
    def __init__(self, interp: Any, input_indices: Sequence[int] = ()) -> None:
        self._interp = interp
        self._outputs = interp.get_output_details()
        self._inputs = list(input_indices)

    def infer(self) -> None:
        self._interp.invoke()

    def infer_output_shapes(self) -> List[Shape]:
        self._interp.invoke()
        return [tuple(int(d) for d in self._interp.get_tensor(o["index"]).shape) for o in self._outputs]

    def output_names(self) -> List[Optional[str]]:
        return [o.get("name") for o in self._outputs]

    def outputs_for(self, arrays: Sequence[Any]) -> List[Any]:
        for index, arr in zip(self._inputs, arrays):
            self._interp.set_tensor(index, arr)
        self._interp.invoke()
        return [self._interp.get_tensor(o["index"]).copy() for o in self._outputs]


@register("litert")
class LiteRt(Runtime):
    def version(self) -> str:
        return _import()[1]

    def load(self, model_path: str, spec: ModelSpec, protocol: Protocol, ctx: LoadContext) -> Session:
        interpreter_cls, _ = _import()
        try:
            interp = interpreter_cls(model_path=model_path, num_threads=protocol.threads)
        except Exception as exc:  # noqa: BLE001 - the interpreter raises several types for bad files
            raise ModelLoadFailed(f"LiteRT cannot load {spec.model_file}: {exc}") from None
        details = interp.get_input_details()
        model_inputs = [(d["name"], list(d["shape_signature"] if len(d.get("shape_signature", ())) else d["shape"]),
                         getattr(d["dtype"], "__name__", str(d["dtype"]))) for d in details]
        model_inputs = [(n, [None if int(x) < 0 else int(x) for x in shape], dt) for n, shape, dt in model_inputs]
        resolved = resolve_inputs(model_inputs, _signature_names(spec.inputs, [n for n, _, _ in model_inputs]))
        by_name = {d["name"]: d for d in details}
        for name, shape, _ in resolved:
            if tuple(by_name[name]["shape"]) != shape:
                interp.resize_tensor_input(by_name[name]["index"], list(shape))
        try:
            interp.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - any failure here means the model cannot run
            raise ModelLoadFailed(f"LiteRT cannot allocate tensors for {spec.model_file}: {exc}") from None
        arrays = make_inputs([(shape, dtype) for _, shape, dtype in resolved], protocol.input_seed)
        for (name, _, _), arr in zip(resolved, arrays):
            interp.set_tensor(by_name[name]["index"], arr)
        return LiteRtSession(interp, [by_name[name]["index"] for name, _, _ in resolved])
