"""A trained supernet's folder: OFA-layout weights plus the manifest that says what they are.

``supernets/<NAME>/supernet.pth`` holds ``{"state_dict": ...}`` with exactly OFA's key
layout (only the classifier's size differs: one output per class of the dataset), saved
with ``torch.save`` of tensors only and read with ``weights_only=True``; ``manifest.json``
beside it records the dataset (fingerprint, classes, description), the preprocessing the
weights were trained with, the trained resolutions, the width, the recipe, how far the
training got (phase, step, complete) and the sha256 of ``supernet.pth``. Downstream code
(`load_supernet`, `extract`, exporters, bundles) reads the manifest to label and
preprocess what it ships. The weights are written first and the manifest last, both
atomically; a manifest whose sha256 does not match the weights is refused.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ofa2_edge.core.errors import CheckpointError, SchemaError
from ofa2_edge.core.persist import atomic_write_bytes, read_json, write_json
from ofa2_edge.data.preprocessing import Preprocessing

MANIFEST_SCHEMA, MANIFEST_VERSION = "ofa2-edge.supernet-manifest", 1
WEIGHTS_NAME = "supernet.pth"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SupernetManifest:
    """What a trained `supernet.pth` is: dataset, preprocessing, recipe and progress."""

    width_mult: float
    classes: tuple[str, ...]
    dataset_fingerprint: str
    #: mean/std/crop_pct/interpolation of the dataset, plus ``by_resolution`` {r: Preprocessing dict}
    preprocessing: dict[str, Any]
    resolutions: tuple[int, ...]
    recipe: dict[str, Any]
    phase: str
    step: int
    complete: bool
    sha256: str
    dataset: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    weights_source: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def preprocessing_for(self, r: int) -> Preprocessing:
        """The recipe at `r` px (the trained resolutions are recorded; others follow the same rule)."""
        known = self.preprocessing.get("by_resolution", {})
        if str(r) in known:
            return Preprocessing.from_dict(known[str(r)])
        p = self.preprocessing
        crop = float(p.get("crop_pct", 1.0))
        return Preprocessing(
            input_size=int(r),
            resize_size=int(math.ceil(int(r) / crop)),
            mean=tuple(p["mean"]),
            std=tuple(p["std"]),
            crop_pct=crop,
            interpolation=p.get("interpolation", "bilinear"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"], d["resolutions"] = list(self.classes), list(self.resolutions)
        return d

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str) -> "SupernetManifest":
        try:
            return cls(
                width_mult=float(doc["width_mult"]),
                classes=tuple(str(c) for c in doc["classes"]),
                dataset_fingerprint=str(doc["dataset_fingerprint"]),
                preprocessing=dict(doc["preprocessing"]),
                resolutions=tuple(int(r) for r in doc["resolutions"]),
                recipe=dict(doc["recipe"]),
                phase=str(doc["phase"]),
                step=int(doc["step"]),
                complete=bool(doc["complete"]),
                sha256=str(doc["sha256"]),
                dataset=dict(doc.get("dataset", {})),
                init=doc.get("init"),
                weights_source=str(doc.get("weights_source", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: not a valid supernet manifest ({type(exc).__name__}: {exc})") from exc


def dataset_preprocessing(
    mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float, resolutions: tuple[int, ...]
) -> dict[str, Any]:
    """The manifest's preprocessing record of a dataset at its trained resolutions."""
    rule = {"mean": list(mean), "std": list(std), "crop_pct": crop_pct, "interpolation": "bilinear"}
    tmp = SupernetManifest(0.0, (), "", rule, (), {}, "", 0, False, "")
    rule["by_resolution"] = {str(r): tmp.preprocessing_for(r).to_dict() for r in resolutions}
    return rule


def manifest_path(source: str | Path) -> Path:
    """The manifest beside a weights file, or inside a supernet folder."""
    p = Path(source)
    return (p if p.is_dir() else p.parent) / MANIFEST_NAME


def read_manifest(source: str | Path) -> SupernetManifest | None:
    """The manifest of a trained supernet (folder or its `supernet.pth`); None when there is
    none (e.g. OFA's released checkpoints)."""
    path = manifest_path(source)
    if not path.is_file():
        return None
    doc = read_json(path, MANIFEST_SCHEMA, [MANIFEST_VERSION])
    return SupernetManifest.from_dict(doc, str(path))


def state_dict_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """``torch.save({"state_dict": ...})`` of detached CPU tensors, as bytes."""
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu().clone() for k, v in state.items()}}, buf)
    return buf.getvalue()


def write_trained(
    folder: str | Path, state: Mapping[str, torch.Tensor], manifest: SupernetManifest
) -> SupernetManifest:
    """Write `supernet.pth` then `manifest.json` (with the weights' sha256) into `folder`."""
    import hashlib

    folder = Path(folder)
    data = state_dict_bytes(state)
    sha = hashlib.sha256(data).hexdigest()
    manifest = SupernetManifest(**{**manifest.__dict__, "sha256": sha, "weights_source": f"sha256:{sha}"})
    atomic_write_bytes(folder / WEIGHTS_NAME, data)
    write_json(folder / MANIFEST_NAME, MANIFEST_SCHEMA, MANIFEST_VERSION, manifest.to_dict())
    return manifest


def check_manifest_matches(manifest: SupernetManifest, weights_source: str, where: Path) -> None:
    if weights_source != f"sha256:{manifest.sha256}":
        raise CheckpointError(
            f"{manifest_path(where)} describes weights with sha256 {manifest.sha256[:12]}..., but {where} is "
            f"{weights_source.removeprefix('sha256:')[:12]}...: the folder was changed by hand, or a training "
            "stopped between writing the two files; rerun the same `ofa2-edge train` command to finish it"
        )
