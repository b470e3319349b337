"""An ensemble of subnets as ONE model: members side by side on a shared input.

The graph takes one image at the largest member resolution R (preprocessed as for that
member). Each member of a smaller resolution r gets it resized in-graph (bilinear, ONNX
`Resize`) to r x r; every member's logits go through softmax, and the output is the mean of
the members' probabilities (soft vote, OFA³'s rule): output ``probs``, (1, classes).

The members are independent branches of the graph, so onnxruntime's parallel executor can
run them at once (`onnxruntime-parallel` on the device agent); the sequential executor runs
them one after another. The export is checked like a subnet's: ONNX checker, then
onnxruntime vs torch on the seeded parity input.

Accuracy caveat, recorded in the metadata: the accuracy table scored each member on images
preprocessed at its own resolution; in the ensemble file a smaller member sees the R-pixel
input resized in-graph, which is close but not bit-identical (the benchmark reports the
measured difference on the test split).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from exporters.metadata import METADATA_VERSION
from exporters.onnx_compat import DEFAULT_TARGET, OnnxTarget
from exporters.onnx_export import INPUT_NAME, _build, exporter_info
from exporters.records import BuiltModel, TensorSpec
from ofa2_edge import __version__
from ofa2_edge.core.errors import ExportError
from ofa2_edge.supernet import StaticSubnet

OUTPUT_NAME = "probs"
RULE = "soft-vote"
#: Parity on probabilities. A member's logits are checked to 1e-4 absolute or 5e-5 of their
#: scale; seeded random weights give logits in the hundreds, and a softmax of those turns the
#: same float32 rounding into up to ~2e-4 of probability (measured on the min net at 32 px).
#: A wiring fault (a member missing, a wrong resize) moves probabilities by 1e-2 and more.
PROBS_ATOL = 1e-3
RESIZE = "bilinear, align_corners=False, no antialias (ONNX Resize linear, half_pixel)"


class EnsembleNet(torch.nn.Module):
    """Members on one input: resize where needed, softmax, mean of the probabilities."""

    def __init__(self, members: Sequence[StaticSubnet]) -> None:
        super().__init__()
        if not members:
            raise ExportError("an ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)
        self.resolutions = [int(m.arch.r) for m in members]
        self.r = max(self.resolutions)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.r, self.r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member, r in zip(self.members, self.resolutions):
            xi = x if r == self.r else torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
            p = torch.softmax(member(xi), dim=1)
            total = p if total is None else total + p
        assert total is not None
        return total / float(len(self.members))


def ensemble_metadata(net: EnsembleNet, ensemble_id: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], exporter: dict[str, Any]) -> dict[str, Any]:
    """The model's metadata under the subnet keys: `arch` describes the ensemble."""
    members = list(net.members)
    top = members[net.resolutions.index(net.r)]
    weights = sorted({m.weights_source for m in members})
    return {
        "ofa2_edge_metadata_version": METADATA_VERSION,
        "arch_id": ensemble_id,
        "arch": {
            "ensemble": {
                "members": [m.arch.to_dict() for m in members],
                "member_ids": [m.arch.id for m in members],
                "rule": RULE,
                "resize": RESIZE,
            }
        },
        "resolution": net.r,
        "input": inputs[0].to_dict(),
        "output": outputs[0].to_dict(),
        "preprocessing": top.preprocessing.to_dict(),
        "weights_source": weights[0] if len(weights) == 1 else ",".join(weights),
        "bn_stats_source": ";".join(f"{m.arch.id}:{m.bn_stats_source}" for m in members),
        "latency_only": any(m.weights_source.startswith("random:") for m in members),
        "toolkit": {"name": "ofa2-edge", "version": __version__},
        "exporter": {**exporter, "ensemble": True},
    }


def build_ensemble_onnx(members: Sequence[StaticSubnet], ensemble_id: str, target: OnnxTarget = DEFAULT_TARGET) -> BuiltModel:
    """Export the ensemble to ONNX bytes (checker + parity vs torch, as every export)."""
    net = EnsembleNet(members).eval()
    n_classes = {m.classifier.linear.out_features for m in members}
    if len(n_classes) != 1:
        raise ExportError(f"ensemble {ensemble_id}: members classify different numbers of classes {sorted(n_classes)}")
    inputs = (TensorSpec(INPUT_NAME, net.input_shape, "float32", "NCHW"),)
    outputs = (TensorSpec(OUTPUT_NAME, (1, n_classes.pop()), "float32", None),)
    info = exporter_info()
    if target != DEFAULT_TARGET:
        info = {**info, "opset": target.opset, "ir_version": target.ir_version}
    metadata = ensemble_metadata(net, ensemble_id, inputs, outputs, info)
    doc = f"ensemble {ensemble_id} of {len(members)} OFA-MobileNetV3 subnets ({RULE}), exported by ofa2-edge"
    return _build(net, inputs, outputs, metadata, doc, f"ensemble {ensemble_id}", target, atol=PROBS_ATOL, rtol=0.0)


class _NamedProbs(torch.nn.Module):
    """The ensemble with a named output, as LiteRT signatures want (``probs``)."""

    def __init__(self, net: EnsembleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:
        return {OUTPUT_NAME: self.net(input)}


def build_ensemble_tflite(members: Sequence[StaticSubnet], ensemble_id: str) -> BuiltModel:
    """The ensemble as one fp32 .tflite (litert-torch), checked against torch in the LiteRT
    interpreter (probabilities within `PROBS_ATOL`). Needs the `[tflite]` extra."""
    import numpy as np

    from exporters.parity import check_parity, parity_inputs, torch_outputs
    from exporters.tflite_export import INPUT_NAME as TFL_INPUT
    from exporters.tflite_export import SIGNATURE, _quiet_converter, require_litert, versions

    require_litert()
    import litert_torch

    net = EnsembleNet(members).eval()
    n_classes = members[0].classifier.linear.out_features
    inputs = (TensorSpec(TFL_INPUT, net.input_shape, "float32", "NCHW"),)
    outputs = (TensorSpec(OUTPUT_NAME, (1, n_classes), "float32", None),)
    exporter = {"name": "litert_torch.convert", "torch": torch.__version__, **versions(), "signature": SIGNATURE}
    metadata = ensemble_metadata(net, ensemble_id, inputs, outputs, exporter)
    try:
        with _quiet_converter():
            data = bytes(litert_torch.convert(_NamedProbs(net).eval(), sample_kwargs={TFL_INPUT: torch.zeros(net.input_shape)}).model_content())
    except Exception as exc:  # the converter stack raises many types; all mean "could not convert"
        raise ExportError(f"TFLite conversion of ensemble {ensemble_id} failed: {type(exc).__name__}: {exc}") from exc
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=data, num_threads=1).get_signature_runner(SIGNATURE)
    images = parity_inputs(net.r)
    got = np.concatenate([runner(**{TFL_INPUT: x[None]})[OUTPUT_NAME] for x in images])
    parity = check_parity(torch_outputs(net, images), got, PROBS_ATOL, 0.0, f"TFLite export of ensemble {ensemble_id}")
    parity["runtime"] = f"ai-edge-litert {versions()['ai-edge-litert']}"
    return BuiltModel(data, "tflite", metadata, inputs, outputs, parity)
