"""An ensemble exported as one verified ONNX file (`exporters.ensemble`), cached like a subnet.

Members come from a supernet: with random weights (latency work) each member's BatchNorm
statistics are recalibrated on seeded noise, as `exporters.export_subnet` does; with a
trained supernet and its dataset they are recalibrated exactly as the accuracy table's rows
were (the same train subset: `bn_seed`, `bn_images`), so the file computes what the table
scored (up to the in-graph resize of smaller members).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from exporters import ExportCache
from exporters.api import BN_NOISE_IMAGES, BN_NOISE_SEED, random_supernet, state_digest
from exporters.ensemble import build_ensemble_onnx, build_ensemble_tflite
from exporters.onnx_compat import DEFAULT_TARGET, OnnxTarget
from exporters.records import ExportedModel
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.ensemble.pool import RULE, ensemble_id
from ofa2_edge.space.arch import Arch
from ofa2_edge.supernet import StaticSubnet, Supernet, noise_batches, recalibrate_bn

if TYPE_CHECKING:
    from ofa2_edge.data import Dataset


@dataclass(frozen=True)
class EnsembleSubject:
    """What an ensemble model file stands for (the device session's `Subject`)."""

    members: tuple[Arch, ...]
    rule: str = RULE

    @property
    def id(self) -> str:
        return ensemble_id([a.id for a in self.members])

    def to_dict(self) -> dict[str, Any]:
        return {"ensemble": {"member_ids": [a.id for a in self.members], "members": [a.to_dict() for a in self.members], "rule": self.rule}}


def ordered(members: Sequence[Arch]) -> tuple[Arch, ...]:
    """Members in a canonical order (by arch id): one set, one file."""
    unique = {a.id: a for a in members}
    if not unique:
        raise InvalidInputError("an ensemble needs at least one member")
    if len({a.w for a in unique.values()}) != 1:
        raise InvalidInputError("ensemble members must come from one supernet (one width)")
    return tuple(unique[k] for k in sorted(unique))


def member_subnets(
    members: Sequence[Arch],
    supernet: Supernet | None = None,
    dataset: "Dataset | None" = None,
    bn_seed: int = 0,
    bn_images: int = 2000,
    batch_size: int = 250,
) -> list[StaticSubnet]:
    """The members as static subnets, BN recalibrated (see the module docstring)."""
    archs = ordered(members)
    net = supernet if supernet is not None else random_supernet(archs[0].w)
    out = []
    for arch in archs:
        sub = net.extract(arch)
        if dataset is not None:
            from ofa2_edge.accuracy.evaluate import bn_subset
            from ofa2_edge.data import batches

            idx = bn_subset(dataset, bn_images, bn_seed)
            recalibrate_bn(sub, (x for x, _ in batches(dataset, "train", arch.r, batch_size, indices=idx)), source=f"train subset seed {bn_seed}")
        elif net.weights_source.startswith("random:"):
            recalibrate_bn(sub, noise_batches(arch.r, BN_NOISE_SEED, batch_size=BN_NOISE_IMAGES), source=f"noise:{BN_NOISE_SEED}")
        out.append(sub)
    return out


def export_ensemble(
    members: Sequence[Arch],
    supernet: Supernet | None = None,
    cache: ExportCache | None = None,
    *,
    dataset: "Dataset | None" = None,
    bn_seed: int = 0,
    bn_images: int = 2000,
    batch_size: int = 250,
    onnx_target: OnnxTarget | None = None,
    fmt: str = "onnx",
) -> ExportedModel:
    """One verified model file of the ensemble, ONNX (default) or fp32 TFLite (`fmt="tflite"`,
    the `[tflite]` extra), from the cache when it is there."""
    if fmt not in ("onnx", "tflite"):
        raise InvalidInputError(f"an ensemble exports to onnx or tflite, not {fmt!r}")
    archs = ordered(members)
    subject = EnsembleSubject(archs)
    subnets = member_subnets(archs, supernet, dataset, bn_seed, bn_images, batch_size)
    target = onnx_target or DEFAULT_TARGET
    key_doc = {
        "ensemble_id": subject.id,
        "members": [a.to_dict() for a in archs],
        "rule": RULE,
        "weights_source": subnets[0].weights_source,
        "state_sha256": [state_digest(s) for s in subnets],
        "format": fmt,
        "exporter": "ensemble-v1",
        **({"onnx_target": target.to_dict()} if fmt == "onnx" and target != DEFAULT_TARGET else {}),
    }
    if fmt == "tflite":
        return (cache or ExportCache.default()).get_or_build(key_doc, lambda: build_ensemble_tflite(subnets, subject.id))
    return (cache or ExportCache.default()).get_or_build(key_doc, lambda: build_ensemble_onnx(subnets, subject.id, target))
