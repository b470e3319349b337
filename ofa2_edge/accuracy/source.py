"""A trained supernet as `evaluate` and `bundle build --supernet` see it: weights plus manifest.

`supernets/<NAME>/` holds `supernet.pth` (OFA's state_dict layout, tensors only) and
`manifest.json` (dataset fingerprint, classes, preprocessing, trained resolutions, width;
written by `ofa2-edge train`). A bare checkpoint file is accepted too (e.g. OFA's released
ImageNet supernet): then nothing binds it to a dataset and its resolutions are OFA's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.persist import sha256_file
from ofa2_edge.data.preprocessing import Preprocessing
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS
from ofa2_edge.supernet import Supernet
from ofa2_edge.supernet.manifest import SupernetManifest

if TYPE_CHECKING:
    from ofa2_edge.data import DataSpec

WEIGHTS = "supernet.pth"


@dataclass
class TrainedSupernet:
    """A loaded supernet, the sha256 of its weights file and what its manifest says."""

    folder: Path
    weights: Path
    net: Supernet
    sha256: str
    manifest: SupernetManifest | None

    @property
    def width_mult(self) -> float:
        return float(self.net.width_mult)

    @property
    def n_classes(self) -> int:
        return int(self.net.n_classes)

    @property
    def classes(self) -> tuple[str, ...] | None:
        return tuple(self.manifest.classes) if self.manifest is not None else None

    @property
    def dataset_fingerprint(self) -> str | None:
        return self.manifest.dataset_fingerprint if self.manifest is not None else None

    @property
    def resolutions(self) -> tuple[int, ...]:
        res = self.manifest.resolutions if self.manifest is not None else ()
        return tuple(sorted(int(r) for r in res)) if res else DEFAULT_RESOLUTIONS

    def preprocessing(self, r: int) -> Preprocessing:
        """The input recipe the supernet was trained with at `r` px (OFA's ImageNet one without a manifest)."""
        return self.net.preprocessing_for(r)

    def data_spec(self, data: "DataSpec | str | Path | None" = None) -> "DataSpec":
        """The dataset it was trained on, split as it was (`DataSpec.like` its manifest)."""
        from ofa2_edge.data import DataSpec

        recorded = self.manifest.dataset if self.manifest is not None else None
        return DataSpec.like(data, recorded, f"supernet {self.folder}")

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
    """`supernets/NAME` (or its `supernet.pth`, or any OFA checkpoint file), loaded and hashed;
    a manifest that does not match its weights is refused by the loader."""
    from ofa2_edge.supernet.checkpoint import load_supernet

    p = Path(path)
    weights = p / WEIGHTS if p.is_dir() else p
    if not weights.is_file():
        raise InvalidInputError(
            f"{p}: no trained supernet here (expected {weights}); train one with `ofa2-edge train --data DATA -o {p}`"
        )
    net = load_supernet(weights)
    sha = sha256_file(weights)
    return TrainedSupernet(p if p.is_dir() else p.parent, weights, net, sha, net.manifest)
