"""The representative set of int8 post-training quantisation: seeded noise or a user's image folder.

Quantisation ranges come from the activations this set produces, so it is part of the
export's identity: its description (and, for a folder, a digest of every image file's
path and bytes) goes into the cache key and the metadata. Images pass through the
subnet's own preprocessing (`ofa2_edge.data.imagefolder`), exactly as a device would feed them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.data.imagefolder import image_batches, list_images
from ofa2_edge.data.preprocessing import Preprocessing

DEFAULT_SAMPLES = 32
DEFAULT_SEED = 7


def folder_digest(folder: Path) -> str:
    """sha256 over every image file's relative path and content, in sorted order."""
    h = hashlib.sha256()
    for path in list_images(folder):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class RepresentativeSet:
    """`samples` images: seeded N(0, 1) noise (`folder` None) or a seeded subset of `folder`."""

    samples: int = DEFAULT_SAMPLES
    seed: int = DEFAULT_SEED
    folder: Path | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise InvalidInputError(f"calibration samples: expected a positive integer, got {self.samples!r}")

    @classmethod
    def from_folder(
        cls, folder: str | Path, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED
    ) -> RepresentativeSet:
        """A representative set drawn from the JPEG/PNG files under `folder` (digested now)."""
        root = Path(folder).resolve()
        return cls(samples=samples, seed=seed, folder=root, digest=folder_digest(root))

    def describe(self) -> dict[str, Any]:
        """What identifies the set (cache key, metadata)."""
        if self.folder is None:
            return {"source": "noise", "samples": self.samples, "seed": self.seed}
        return {"source": "images", "samples": self.samples, "seed": self.seed, "folder_sha256": self.digest}

    def images(self, prep: Preprocessing) -> Iterator[np.ndarray]:
        """Yield (1, 3, r, r) float32 inputs in the model's preprocessing."""
        if self.folder is None:
            gen = torch.Generator().manual_seed(self.seed)
            for _ in range(self.samples):
                yield torch.randn(prep.input_shape, generator=gen).numpy()
            return
        n = 0
        for batch in image_batches(
            self.folder, prep, batch_size=1, max_images=self.samples, rng=np.random.default_rng(self.seed)
        ):
            n += 1
            yield batch.numpy()
        if n == 0:
            raise InvalidInputError(f"image folder {self.folder} gave no calibration images")
