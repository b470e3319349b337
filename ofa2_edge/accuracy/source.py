"""A trained supernet as `evaluate` and `bundle build --supernet` see it: weights plus manifest.

`supernets/<NAME>/` holds `supernet.pth` (OFA's state_dict layout, tensors only) and
`manifest.json` (dataset fingerprint, classes, preprocessing, trained resolutions, width;
written by `ofa2-edge train`). A bare checkpoint file is accepted too (e.g. OFA's released
ImageNet supernet): then nothing binds it to a dataset and its resolutions are OFA's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ofa2_edge.core.errors import CheckpointError, InvalidInputError
from ofa2_edge.core.persist import sha256_file
from ofa2_edge.data.preprocessing import Preprocessing
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS
from ofa2_edge.supernet import Supernet

WEIGHTS = "supernet.pth"


@dataclass
class TrainedSupernet:
    """A loaded supernet, the sha256 of its weights file and what its manifest says."""

    folder: Path
    weights: Path
    net: Supernet
    sha256: str
    manifest: Any | None  # ofa2_edge.supernet.checkpoint.SupernetManifest when the folder has one

    @property
    def width_mult(self) -> float:
        return float(self.net.width_mult)

    @property
    def n_classes(self) -> int:
        return int(self.net.classifier.linear.out_features)

    @property
    def classes(self) -> tuple[str, ...] | None:
        classes = getattr(self.manifest, "classes", None)
        return tuple(classes) if classes else None

    @property
    def dataset_fingerprint(self) -> str | None:
        return getattr(self.manifest, "dataset_fingerprint", None)

    @property
    def resolutions(self) -> tuple[int, ...]:
        res = getattr(self.manifest, "resolutions", None)
        return tuple(sorted(int(r) for r in res)) if res else DEFAULT_RESOLUTIONS

    def preprocessing(self, r: int) -> Preprocessing | None:
        """The input recipe the supernet was trained with at `r` px (None without a manifest)."""
        prep = getattr(self.manifest, "preprocessing", None)
        if not prep:
            return None
        if isinstance(prep, dict) and str(r) in prep:
            doc = prep[str(r)]
        elif isinstance(prep, dict) and r in prep:
            doc = prep[r]
        else:
            doc = prep
        if isinstance(doc, Preprocessing):
            return doc
        try:
            return Preprocessing.from_dict(doc)
        except (InvalidInputError, TypeError) as exc:
            raise CheckpointError(f"{self.folder}: the manifest's preprocessing at {r} px is not readable ({exc})") from exc

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.folder.name,
            "sha256": self.sha256,
            "width_mult": self.width_mult,
            "n_classes": self.n_classes,
            "resolutions": list(self.resolutions),
            "dataset_fingerprint": self.dataset_fingerprint,
        }


def open_supernet(path: str | Path) -> TrainedSupernet:
    """`supernets/NAME` (or its `supernet.pth`, or any OFA checkpoint file), loaded and hashed."""
    from ofa2_edge.supernet import checkpoint

    p = Path(path)
    weights = p / WEIGHTS if p.is_dir() else p
    if not weights.is_file():
        raise InvalidInputError(
            f"{p}: no trained supernet here (expected {weights}); train one with `ofa2-edge train --data DATA -o {p}`"
        )
    read_manifest = getattr(checkpoint, "read_manifest", None)
    manifest = read_manifest(weights) if read_manifest is not None else None
    sha = sha256_file(weights)
    recorded = getattr(manifest, "sha256", None)
    if recorded and recorded != sha:
        raise CheckpointError(
            f"{weights}: sha256 {sha[:16]}... differs from its manifest's {str(recorded)[:16]}...; the weights were "
            "replaced or damaged: restore them, or train again"
        )
    width = float(getattr(manifest, "width_mult", None) or 1.2)
    net = checkpoint.load_supernet(weights, width_mult=width)
    if isinstance(net, tuple):  # an API that returns (supernet, manifest)
        net = net[0]
    return TrainedSupernet(p if p.is_dir() else p.parent, weights, net, sha, manifest)
