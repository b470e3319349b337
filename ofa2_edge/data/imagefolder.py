"""Batches of preprocessed images from a user's folder of JPEG/PNG files.

BatchNorm recalibration and int8 calibration both need a few thousand real images in the
exact preprocessing of the model. Pillow decodes (torchvision does not install beside the
pinned torch); :func:`ofa2_edge.data.preprocessing.preprocess_image` does the rest with torch ops.
Files are taken in sorted order, or a seeded random subset of them, so a run is repeatable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.data.preprocessing import Preprocessing, preprocess_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_images(folder: str | Path) -> list[Path]:
    """Every JPEG/PNG file under `folder` (recursively, e.g. ImageNet's class folders), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"image folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def load_image(path: Path, prep: Preprocessing) -> torch.Tensor:
    """Decode one image file to RGB and preprocess it; (3, r, r) float32."""
    from PIL import Image, UnidentifiedImageError  # imported here: only image paths need Pillow

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}; remove or replace the file") from exc
    return preprocess_image(rgb, prep)


def image_batches(
    folder: str | Path,
    prep: Preprocessing,
    batch_size: int = 64,
    max_images: int | None = None,
    rng: np.random.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield (B, 3, r, r) float32 batches of the folder's images (the last one may be smaller).

    With `max_images`, a subset is taken: the first files in sorted order, or a uniform
    random subset drawn with `rng` when one is given (OFA draws a random subset of the
    training set for BN recalibration).
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size: expected a positive integer, got {batch_size}")
    files = list_images(folder)
    if max_images is not None:
        if max_images < 1:
            raise InvalidInputError(f"max_images: expected a positive integer, got {max_images}")
        if rng is not None and max_images < len(files):
            picked = np.sort(rng.choice(len(files), size=max_images, replace=False))
            files = [files[i] for i in picked]
        else:
            files = files[:max_images]
    log.debug("reading %d images from %s", len(files), folder)
    for start in range(0, len(files), batch_size):
        yield torch.stack([load_image(p, prep) for p in files[start : start + batch_size]])
