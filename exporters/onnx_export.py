"""A static subnet to ONNX: batch 1, fp32, opset 17, checked, parity-verified.

Exporter choice (torch 2.13, measured here, see benchmarks/export_speed.py): the
TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) takes 0.3-1.4 s per subnet
and gives byte-identical files for the same weights; the dynamo exporter took 7.7-8.9 s on
the same subnets, needs `onnxscript`, and the graphs it writes run no faster in
onnxruntime (which fuses Conv+BN+activation at session creation either way). The
TorchScript path is deprecated upstream but present and stable in the torch versions
this package allows (< 2.14); it is used in one place, here.

No graph simplifier runs: onnxslim removed the ~30 Identity nodes that constant folding
leaves (107 -> 104 nodes on the min net) but onnxruntime's latency did not change,
because its own session-time optimisations remove them too.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from exporters.metadata import from_props, layer_metadata, model_metadata, to_props
from exporters.onnx_compat import DEFAULT_TARGET, OnnxTarget
from exporters.parity import check_parity, parity_tensors, torch_outputs
from exporters.records import BuiltModel, TensorSpec
from ofa2_edge.core.errors import ExportError, SchemaError
from ofa2_edge.supernet import StaticSubnet
from ofa2_edge.supernet.layer import LayerNet

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: The output of a single exported layer (block tables).
LAYER_OUTPUT_NAME = "output"
#: Parity: onnxruntime vs torch, max abs diff <= max(ATOL, RTOL x output scale).
ATOL = 1e-4
RTOL = 5e-5
EXPORTER_NAME = "torch.onnx.export (TorchScript)"


def exporter_info() -> dict[str, Any]:
    """Exporter name, versions and options: part of the metadata and of the cache key."""
    return {"name": EXPORTER_NAME, "torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET}


def ort_session(model: bytes | str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session with `threads` intra-op threads and full graph optimisation."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), opts, providers=["CPUExecutionProvider"]
    )


def _trace(
    module: torch.nn.Module, input_shape: tuple[int, ...], output_name: str, what: str, opset: int = OPSET
) -> bytes:
    sample = torch.zeros(input_shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation on every call; the choice is deliberate (module doc)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            torch.onnx.export(
                module,
                (sample,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; all mean "could not export"
            raise ExportError(f"ONNX export of {what} failed: {type(exc).__name__}: {exc}") from exc
    return buf.getvalue()


def _build(
    module: torch.nn.Module,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    metadata: dict[str, Any],
    doc: str,
    what: str,
    target: OnnxTarget = DEFAULT_TARGET,
    atol: float | None = None,
    rtol: float | None = None,
) -> BuiltModel:
    """Trace `module` for `target` (opset; IR version at most the target's), attach
    `metadata`, run the full checker and the parity check (tolerance `atol`, `rtol`)."""
    (inp,), (out,) = inputs, outputs
    model = onnx.load_from_string(_trace(module, inp.shape, out.name, what, target.opset))
    if model.ir_version > target.ir_version:
        model.ir_version = target.ir_version  # the checker below says whether the graph fits it
    del model.metadata_props[:]
    for key, value in to_props(metadata).items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = doc
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"ONNX checker rejected the export of {what}: {exc}") from exc
    data = model.SerializeToString()

    images = parity_tensors(inp.shape[1:])
    session = ort_session(data)
    got = np.concatenate([session.run([out.name], {INPUT_NAME: x[None]})[0] for x in images])
    atol, rtol = (ATOL if atol is None else atol), (RTOL if rtol is None else rtol)  # module values read now
    parity = check_parity(torch_outputs(module, images), got, atol, rtol, f"ONNX export of {what}")
    parity["runtime"] = f"onnxruntime {ort.__version__}"
    return BuiltModel(data, "onnx", metadata, inputs, outputs, parity)


def build_onnx(subnet: StaticSubnet, target: OnnxTarget = DEFAULT_TARGET) -> BuiltModel:
    """Export `subnet` to ONNX bytes for `target` (the device's onnxruntime, :mod:`exporters.onnx_compat`)
    with metadata, run the full checker and the parity check.

    Raises :class:`ExportError` if the checker rejects the graph or onnxruntime disagrees with torch.
    """
    subnet.eval()
    r = subnet.arch.r
    inputs = (TensorSpec(INPUT_NAME, subnet.input_shape, "float32", "NCHW"),)
    outputs = (TensorSpec(OUTPUT_NAME, (1, subnet.classifier.linear.out_features), "float32", None),)
    info = exporter_info()
    if target != DEFAULT_TARGET:
        info = {**info, "opset": target.opset, "ir_version": target.ir_version}
    metadata = model_metadata(subnet, inputs, outputs, info)
    doc = f"OFA-MobileNetV3 subnet {subnet.arch.id} at {r}px, exported by ofa2-edge"
    return _build(subnet, inputs, outputs, metadata, doc, subnet.arch.id, target)


def build_layer_onnx(net: LayerNet) -> BuiltModel:
    """Export one plan layer (a block-table entry) like a subnet: checker, parity, metadata.

    Its output is named ``output`` (it is a feature map, or the logits for the classifier).
    """
    net.eval()
    inputs = (TensorSpec(INPUT_NAME, net.input_shape, "float32", "NCHW"),)
    layout = "NCHW" if len(net.output_shape) == 4 else None
    outputs = (TensorSpec(LAYER_OUTPUT_NAME, net.output_shape, "float32", layout),)
    metadata = layer_metadata(net, inputs, outputs, exporter_info())
    doc = f"OFA-MobileNetV3 layer {net.layer.lut_key()} (w{net.w}), exported by ofa2-edge for a block latency table"
    return _build(net, inputs, outputs, metadata, doc, f"layer {net.id} ({net.layer.lut_key()})")


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ofa2-edge metadata an exported ONNX file carries in its `metadata_props`."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise SchemaError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    return from_props({p.key: p.value for p in model.metadata_props}, str(path))
