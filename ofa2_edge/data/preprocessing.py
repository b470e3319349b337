"""What a subnet expects of its input image: the deployment facts that travel with the weights.

OFA evaluates its subnets with torchvision's ``Resize(ceil(r / 0.875))`` (shorter side,
bilinear), ``CenterCrop(r)``, ``ToTensor()`` (RGB, 0..1) and ImageNet mean/std
normalisation, in NCHW float32. A model file is only usable with exactly that recipe, so
the recipe is a value (as timm keeps a pretrained config next to its weights): exporters
write it into model metadata, bundles into their manifest, and :func:`preprocess_image`
applies it with torch ops, so a device-side reimplementation can be checked against it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ofa2_edge.core.errors import InvalidInputError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: OFA's evaluation crop: resize the shorter side to ceil(r / 0.875), centre-crop r.
OFA_CROP_PCT = 0.875
INTERPOLATIONS = ("bilinear",)


@dataclass(frozen=True)
class Preprocessing:
    """The input recipe of one subnet at resolution `input_size` (square, pixels)."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = OFA_CROP_PCT
    channel_order: str = "RGB"
    pixel_scale: float = 1.0 / 255.0  # uint8 pixels are divided by 255 before normalising
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("input_size", "resize_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"preprocessing.{name}: expected a positive integer, got {value!r}")
        if self.resize_size < self.input_size:
            raise InvalidInputError(
                f"preprocessing: resize_size {self.resize_size} is smaller than the crop {self.input_size}"
            )
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise InvalidInputError(f"preprocessing.{name}: expected 3 values (R, G, B), got {len(value)}")
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            raise InvalidInputError(f"preprocessing.std: values must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidInputError(
                f"preprocessing.interpolation: {self.interpolation!r} is not supported; choose from "
                f"{', '.join(INTERPOLATIONS)}"
            )
        fixed = {"channel_order": "RGB", "layout": "NCHW", "dtype": "float32"}
        for name, allowed in fixed.items():
            if getattr(self, name) != allowed:
                raise InvalidInputError(
                    f"preprocessing.{name}: only {allowed!r} is supported, got {getattr(self, name)!r}"
                )

    @classmethod
    def for_resolution(cls, r: int) -> "Preprocessing":
        """OFA's evaluation recipe at `r` px."""
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise InvalidInputError(f"resolution: expected a positive integer, got {r!r}")
        return cls(input_size=int(r), resize_size=int(math.ceil(int(r) / OFA_CROP_PCT)))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one preprocessed image as the model takes it (batch 1)."""
        return (1, 3, self.input_size, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessing":
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"preprocessing: expected a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"preprocessing: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("input_size", "resize_size") if k not in data]
        if missing:
            raise InvalidInputError(f"preprocessing: missing field(s) {', '.join(missing)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def resized_hw(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes `shorter`, the aspect ratio is kept
    (the longer side is truncated, as torchvision does)."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def preprocess_image(image: np.ndarray | torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Apply `prep` to one decoded RGB image (H, W, 3) uint8; returns (3, r, r) float32.

    Resizing is antialiased bilinear on float pixels (torch's match for PIL's bilinear
    filter, which torchvision uses on PIL images); it differs from the PIL path only by
    PIL's rounding of the resized image to uint8, i.e. by less than one grey level.
    """
    if not isinstance(image, torch.Tensor):
        image = np.asarray(image)
        image = image if image.flags.writeable else image.copy()  # e.g. a view of a PIL image
    x = torch.as_tensor(image)
    if x.ndim != 3 or x.shape[2] != 3 or x.dtype != torch.uint8:
        raise InvalidInputError(
            f"preprocess_image: expected an (H, W, 3) uint8 RGB image, got {tuple(x.shape)} {x.dtype}"
        )
    h, w = int(x.shape[0]), int(x.shape[1])
    rh, rw = resized_hw(h, w, prep.resize_size)
    x = x.permute(2, 0, 1).unsqueeze(0).to(torch.float32) * prep.pixel_scale
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode=prep.interpolation, align_corners=False, antialias=True)
    # torchvision CenterCrop: offsets rounded to nearest
    top = int(round((rh - prep.input_size) / 2.0))
    left = int(round((rw - prep.input_size) / 2.0))
    x = x[0, :, top : top + prep.input_size, left : left + prep.input_size]
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).contiguous()
