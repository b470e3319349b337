"""A user's labelled images, opened, validated, split into three parts and fingerprinted.

Three parts are kept apart (design notes, round 2): **train** (weights and BN statistics),
**val** (the *selection* part: accuracy tables, predictors, searches and ensemble searches
may look at it) and **test** (only reported; no choice may look at it).

Formats (``DataSpec.format``; detected when None):

- ``idx``: a folder with MNIST-style ``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-...`` and ``t10k-labels-...`` (Debian's
  ``dataset-fashion-mnist`` installs them under /usr/share/datasets/fashion-mnist). The
  IDX train file is split (seeded, stratified) into train and val by ``val_fraction``; the
  t10k file is the test part. Class names come from a ``classes.txt`` beside the files,
  Fashion-MNIST's names for a folder named ``fashion-mnist``, else ``"0"``, ``"1"``, ...
- ``imagefolder``: one sub-folder per class holding JPEG/PNG files, either as
  ``train/`` + ``val/`` [+ ``test/``] (without ``test/`` the test part is carved out of
  ``train/`` by ``test_fraction``, stratified and seeded; ``val/`` stays the user's), or
  one folder of class folders split by the seed into stratified train/val/test parts.

Grayscale becomes 3 identical channels. The **fingerprint** is a sha256 over the format,
the class names and, per part, every image's content hash with its label, in part order:
the same files with the same split give the same fingerprint on any machine (paths and
modification times are not in it, so a copied dataset keeps its fingerprint). Per-channel
mean and std are measured on the train part (every image of an IDX set; a seeded sample
of at most ``STATS_MAX_IMAGES`` of an image folder) and cached in the user cache keyed by
the fingerprint. The split's file lists are written as
``<root>/.ofa2-edge-split-<fingerprint[:12]>.json`` when the data's folder is writable,
else into the cache; nothing else is ever written, and nothing at all before the whole
dataset has been validated. A user file is never modified.

Preprocessing: IDX images are small and object-filling, so they are resized (bilinear) to
the resolution with no crop (``crop_pct=1.0``); image folders use OFA's resize to
``ceil(r / 0.875)`` and centre crop. Training augmentation (``batches(augment=True)``) is
a random crop of the preprocessed image padded by ``r // 8`` pixels (padding value 0 after
normalisation, i.e. the train mean) and a random horizontal flip (p = 0.5).

Additions to the shared contract: ``DataSpec.format`` may be None (auto-detect);
``Dataset.images`` returns a list of (H, W, 3) arrays instead of one array when an image
folder's images differ in size (an IDX set always gives one array); ``Dataset.preprocessed``
and ``Dataset.native_size``; ``open_dataset(..., cache_dir=None)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import read_json, write_json
from ofa2_edge.data.idx import FASHION_MNIST_CLASSES, find_idx_files, read_pair
from ofa2_edge.data.imagefolder import IMAGE_SUFFIXES
from ofa2_edge.data.preprocessing import OFA_CROP_PCT, Preprocessing, preprocess_image, resized_hw

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
FORMATS = ("imagefolder", "idx")
STATS_MAX_IMAGES = 10000
SPLIT_SCHEMA, SPLIT_VERSION = "ofa2-edge.data-split", 1
STATS_SCHEMA, STATS_VERSION = "ofa2-edge.data-stats", 1


@dataclass(frozen=True)
class DataSpec:
    """What a config file or ``--data`` names: a path, its format and how to split it."""

    path: Path
    format: str | None = None  # "imagefolder" | "idx"; detected when None
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.format is not None and self.format not in FORMATS:
            raise InvalidInputError(f"data format {self.format!r} is not known; choose from {', '.join(FORMATS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"data seed: expected a non-negative integer, got {self.seed!r}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 0.5:
                raise InvalidInputError(f"data {name}: expected a number in (0, 0.5), got {v!r}")
            object.__setattr__(self, name, float(v))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }

    @classmethod
    def like(cls, data: "DataSpec | str | Path | None", recorded: dict[str, Any] | None, what: str) -> "DataSpec":
        """The dataset split as `recorded` says it was (a supernet manifest's or an accuracy
        table's `dataset`: format, split seed, val/test fractions), at `data` (default: the
        recorded path). So a supernet trained with `--seed 1` is evaluated and bundled on its
        own split, not split seed 0. A `DataSpec` given as `data` is taken as it is."""
        if isinstance(data, DataSpec):
            return data
        rec = recorded or {}
        path = data or rec.get("path")
        if not path:
            raise InvalidInputError(f"{what} does not record its dataset's folder; give it with --data")
        keys = {k: rec[k] for k in ("format", "seed", "val_fraction", "test_fraction") if rec.get(k) is not None}
        return cls(Path(path), **keys)


def detect_format(path: Path) -> str:
    """``idx`` if the folder holds IDX files, ``imagefolder`` if it holds sub-folders."""
    if not path.is_dir():
        raise InvalidInputError(f"dataset {path} does not exist or is not a folder; pass the folder of the data")
    if find_idx_files(path):
        return "idx"
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return "imagefolder"
    raise InvalidInputError(
        f"dataset {path}: neither IDX files (train-images-idx3-ubyte.gz ...) nor class sub-folders found; "
        "give a folder of one sub-folder per class, or of MNIST-style IDX files"
    )


def _stratified_take(labels: np.ndarray, fraction: float, rng: np.random.Generator, what: str) -> np.ndarray:
    """A boolean mask choosing round(fraction * n_c) (at least 1) items of every class c."""
    take = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        if k >= len(members):
            raise InvalidInputError(
                f"{what}: class {int(c)} has only {len(members)} image(s), too few to split off a part of "
                f"{fraction:.0%}; add images to that class"
            )
        take[rng.permutation(members)[:k]] = True
    return take


def _hash_array_rows(images: np.ndarray) -> list[bytes]:
    return [hashlib.sha256(row.tobytes()).digest() for row in images]


class Dataset:
    """An opened dataset. Use :func:`open_dataset`; the constructor does no checking."""

    spec: DataSpec
    classes: tuple[str, ...]
    fingerprint: str
    input_channels: int = 3

    def __init__(
        self,
        spec: DataSpec,
        fmt: str,
        classes: Sequence[str],
        labels: dict[str, np.ndarray],
        content_ids: dict[str, list[bytes]],
        *,
        arrays: dict[str, np.ndarray] | None = None,
        files: dict[str, list[Path]] | None = None,
        root: Path | None = None,
    ) -> None:
        self.spec = spec
        self.format = fmt
        self.classes = tuple(classes)
        self._labels = {p: np.ascontiguousarray(labels[p], dtype=np.int64) for p in PARTS}
        self._arrays = arrays
        self._files = files
        self.root = root or spec.path
        self.crop_pct = 1.0 if fmt == "idx" else OFA_CROP_PCT
        self.fingerprint = self._fingerprint(content_ids)
        self.mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
        self.std: tuple[float, float, float] = (0.25, 0.25, 0.25)
        self.stats_images = 0

    # ------------------------------------------------------------ identity
    def _fingerprint(self, content_ids: dict[str, list[bytes]]) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"format": self.format, "classes": list(self.classes)}).encode())
        for part in PARTS:
            h.update(f"|{part}|{len(self._labels[part])}|".encode())
            for cid, label in zip(content_ids[part], self._labels[part].tolist()):
                h.update(cid)
                h.update(int(label).to_bytes(4, "little"))
        return h.hexdigest()

    # ------------------------------------------------------------ access
    def _check_part(self, part: str) -> None:
        if part not in PARTS:
            raise InvalidInputError(f"dataset part {part!r} is not known; choose from {', '.join(PARTS)}")

    def size(self, part: str) -> int:
        self._check_part(part)
        return int(len(self._labels[part]))

    def labels(self, part: str) -> np.ndarray:
        """int64 (n,) labels of `part` (a read-only view)."""
        self._check_part(part)
        view = self._labels[part].view()
        view.flags.writeable = False
        return view

    def _check_indices(self, part: str, indices: Any) -> np.ndarray:
        self._check_part(part)
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise InvalidInputError(f"indices: expected a 1-D integer array, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size(part)):
            raise InvalidInputError(f"indices: out of range for the {part} part ({self.size(part)} images)")
        return idx

    def file(self, part: str, i: int) -> Path | None:
        """The image file of item `i` of `part` (None for IDX data)."""
        return None if self._files is None else self._files[part][int(i)]

    def image(self, part: str, i: int) -> np.ndarray:
        """One image, uint8 (H, W, 3) RGB at its native size."""
        if self._arrays is not None:
            img = self._arrays[part][int(i)]
            return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else np.array(img)
        assert self._files is not None
        return _decode(self._files[part][int(i)])

    def images(self, part: str, indices: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """uint8 (k, H, W, 3) RGB images at native size (a list when their sizes differ)."""
        idx = self._check_indices(part, indices)
        if self._arrays is not None:
            arr = self._arrays[part][idx]
            return np.repeat(arr[..., None], 3, axis=3) if arr.ndim == 3 else np.ascontiguousarray(arr)
        out = [self.image(part, i) for i in idx]
        if out and all(o.shape == out[0].shape for o in out):
            return np.stack(out)
        return out

    @property
    def native_size(self) -> tuple[int, int] | None:
        """(H, W) of every image when they all share it (IDX data), else None."""
        if self._arrays is not None:
            shape = self._arrays["train"].shape
            return int(shape[1]), int(shape[2])
        return None

    def preprocessing(self, resolution: int) -> Preprocessing:
        """The input recipe at `resolution` px with this dataset's train mean/std."""
        base = Preprocessing.for_resolution(resolution)
        return Preprocessing(
            input_size=base.input_size,
            resize_size=int(math.ceil(base.input_size / self.crop_pct)),
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
        )

    def preprocessed(self, part: str, indices: np.ndarray, resolution: int) -> torch.Tensor:
        """float32 (k, 3, r, r): the images preprocessed exactly as `preprocessing(resolution)`."""
        prep = self.preprocessing(resolution)
        imgs = self.images(part, indices)
        if isinstance(imgs, np.ndarray):
            return preprocess_batch(imgs, prep)
        return torch.stack([preprocess_image(img, prep) for img in imgs])

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: what the data is, its parts, statistics and identity."""
        return {
            "format": self.format,
            "path": str(self.spec.path.resolve()),
            "fingerprint": self.fingerprint,
            "classes": list(self.classes),
            "sizes": {p: self.size(p) for p in PARTS},
            "mean": list(self.mean),
            "std": list(self.std),
            "stats_images": self.stats_images,
            "crop_pct": self.crop_pct,
            "native_size": list(self.native_size) if self.native_size else None,
            "seed": self.spec.seed,
            "val_fraction": self.spec.val_fraction,
            "test_fraction": self.spec.test_fraction,
        }

    def __repr__(self) -> str:
        sizes = ", ".join(f"{p}={self.size(p)}" for p in PARTS)
        return f"Dataset({self.format} {self.spec.path}, {len(self.classes)} classes, {sizes}, {self.fingerprint[:12]})"


# ------------------------------------------------------------------ preprocessing
def preprocess_batch(images: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """`preprocess_image` on a (k, H, W, 3) uint8 batch of equal-sized images, in one call."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim != 4 or x.shape[3] != 3 or x.dtype != torch.uint8:
        raise InvalidInputError(f"preprocess_batch: expected (k, H, W, 3) uint8 images, got {tuple(x.shape)} {x.dtype}")
    h, w = int(x.shape[1]), int(x.shape[2])
    rh, rw = resized_hw(h, w, prep.resize_size)
    x = x.permute(0, 3, 1, 2).to(torch.float32) * prep.pixel_scale
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode=prep.interpolation, align_corners=False, antialias=True)
    top = int(round((rh - prep.input_size) / 2.0))
    left = int(round((rw - prep.input_size) / 2.0))
    x = x[:, :, top : top + prep.input_size, left : left + prep.input_size]
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def augment_params(k: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The draws of :func:`augment_batch` for `k` images of `size` px: crop offsets (k, 2) and flips (k,)."""
    pad = max(1, size // 8)
    return rng.integers(0, 2 * pad + 1, size=(k, 2)), rng.random(k) < 0.5


def apply_augment(x: torch.Tensor, offsets: np.ndarray, flips: np.ndarray) -> torch.Tensor:
    """Pad (r // 8, value 0 = the train mean), crop at `offsets`, flip where `flips`."""
    k, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i in range(k):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top : top + h, left : left + w]
        out[i] = crop.flip(2) if flips[i] else crop
    return out


def augment_batch(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random crop (padding r // 8, value 0 = the train mean) and horizontal flip, per image."""
    offsets, flips = augment_params(int(x.shape[0]), int(x.shape[2]), rng)
    return apply_augment(x, offsets, flips)


def batches(
    ds: Dataset,
    part: str,
    resolution: int,
    batch_size: int,
    *,
    indices: np.ndarray | None = None,
    shuffle_rng: np.random.Generator | None = None,
    augment: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 (B, 3, r, r), int64 (B,)) batches of `part` (the last may be smaller).

    Items are `indices` (default: the whole part) in the given order, permuted by
    `shuffle_rng` when one is given; augmentation draws from the same generator, so the
    sequence is a pure function of the generator's state.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size: expected a positive integer, got {batch_size!r}")
    order = np.arange(ds.size(part)) if indices is None else ds._check_indices(part, indices)
    if augment and shuffle_rng is None:
        raise InvalidInputError("batches(augment=True) needs a shuffle_rng to draw the augmentation from")
    if shuffle_rng is not None:
        order = order[shuffle_rng.permutation(len(order))]
    ds.preprocessing(resolution)  # validates the resolution before any work
    labels = ds.labels(part)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = ds.preprocessed(part, idx, resolution)
        if augment:
            assert shuffle_rng is not None
            x = augment_batch(x, shuffle_rng)
        yield x, torch.from_numpy(labels[idx].copy())


# ------------------------------------------------------------------ image files
def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # only image folders need Pillow

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB")).copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}; remove or replace the file") from exc


def _check_image_bytes(path: Path, data: bytes) -> None:
    """Open the image header (cheap) so a non-image is reported at open time."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}; remove or replace the file") from exc


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files} of a folder of class folders; empty classes are errors."""
    if not folder.is_dir():
        raise InvalidInputError(f"dataset folder {folder} does not exist or is not a folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InvalidInputError(f"dataset folder {folder} holds no class sub-folders (one folder per class)")
    out: dict[str, list[Path]] = {}
    for c in classes:
        files = sorted(
            p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise InvalidInputError(
                f"class folder {c} holds no {'/'.join(IMAGE_SUFFIXES)} images; add images or remove the folder"
            )
        out[c.name] = files
    return out


@dataclass
class _FolderParts:
    classes: list[str]
    files: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def _flatten(by_class: dict[str, list[Path]], classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for p in by_class.get(name, []):
            files.append(p)
            labels.append(label)
    return files, np.asarray(labels, dtype=np.int64)


def _folder_parts(spec: DataSpec) -> _FolderParts:
    root = spec.path
    rng = np.random.default_rng([spec.seed, 17])
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = _class_folders(root / "train")
        classes = list(train)
        parts = _FolderParts(classes)
        for part in ("val", "test"):
            folder = root / part
            if part == "test" and not folder.is_dir():
                continue
            got = _class_folders(folder)
            extra = sorted(set(got) - set(classes))
            if extra:
                raise InvalidInputError(f"class folder {folder / extra[0]} has no twin in {root / 'train'}")
            missing = [c for c in classes if c not in got]
            if missing:
                raise InvalidInputError(
                    f"class {missing[0]!r} is missing from {folder} (expected folder {folder / missing[0]}); "
                    "every class needs images in every part"
                )
            parts.files[part], parts.labels[part] = _flatten(got, classes)
        files, labels = _flatten(train, classes)
        if "test" not in parts.files:
            test = _stratified_take(labels, spec.test_fraction, rng, f"dataset {root / 'train'}")
            parts.files["test"] = [f for f, t in zip(files, test) if t]
            parts.labels["test"] = labels[test]
            files, labels = [f for f, t in zip(files, test) if not t], labels[~test]
        parts.files["train"], parts.labels["train"] = files, labels
        return parts
    if (root / "train").is_dir() or (root / "val").is_dir():
        raise InvalidInputError(
            f"dataset {root} has a {'train' if (root / 'train').is_dir() else 'val'}/ folder but not the other; "
            "give both train/ and val/ (one folder per class in each), or one folder of class folders"
        )
    by_class = _class_folders(root)
    classes = list(by_class)
    files, labels = _flatten(by_class, classes)
    test = _stratified_take(labels, spec.test_fraction, rng, f"dataset {root}")
    rest = np.flatnonzero(~test)
    val_rel = _stratified_take(labels[rest], spec.val_fraction / (1 - spec.test_fraction), rng, f"dataset {root}")
    val = np.zeros(len(labels), dtype=bool)
    val[rest[val_rel]] = True
    train = ~(test | val)
    parts = _FolderParts(classes)
    for part, mask in (("train", train), ("val", val), ("test", test)):
        parts.files[part] = [f for f, m in zip(files, mask) if m]
        parts.labels[part] = labels[mask]
    return parts


def _open_imagefolder(spec: DataSpec) -> Dataset:
    parts = _folder_parts(spec)
    content: dict[str, list[bytes]] = {}
    for part in PARTS:
        ids = []
        for path in parts.files[part]:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise InvalidInputError(f"cannot read image {path}: {exc}") from exc
            _check_image_bytes(path, data)
            ids.append(hashlib.sha256(data).digest())
        content[part] = ids
    return Dataset(spec, "imagefolder", parts.classes, parts.labels, content, files=parts.files)


# ------------------------------------------------------------------ IDX
def _idx_classes(folder: Path, n: int) -> list[str]:
    listed = folder / "classes.txt"
    if listed.is_file():
        try:
            names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read {listed}: {exc}") from exc
        if len(names) != n or len(set(names)) != n:
            raise InvalidInputError(
                f"{listed} names {len(names)} distinct classes, the labels have {n}; one name a line"
            )
        return names
    if "fashion" in folder.name.lower() and n == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(n)]


def _open_idx(spec: DataSpec) -> Dataset:
    folder = spec.path
    found = find_idx_files(folder)
    need = [(p, k) for p in ("train", "t10k") for k in ("images", "labels")]
    missing = [f"{p}-{k}" for p, k in need if (p, k) not in found]
    if missing:
        raise InvalidInputError(
            f"IDX folder {folder} lacks {', '.join(missing)} file(s) (e.g. train-images-idx3-ubyte.gz); "
            "give the folder holding all four MNIST-style files"
        )
    train = read_pair(found[("train", "images")], found[("train", "labels")])
    test = read_pair(found[("t10k", "images")], found[("t10k", "labels")])
    if train.images.shape[1:] != test.images.shape[1:]:
        raise InvalidInputError(
            f"IDX file {test.images_path}: images of shape {test.images.shape[1:]} but the train images are "
            f"{train.images.shape[1:]}"
        )
    n_classes = int(train.labels.max()) + 1
    present = np.unique(train.labels)
    if len(present) != n_classes:
        gap = sorted(set(range(n_classes)) - set(present.tolist()))[0]
        raise InvalidInputError(f"IDX file {train.labels_path}: no image has label {gap} (labels must be 0..n-1)")
    if int(test.labels.max()) >= n_classes:
        raise InvalidInputError(
            f"IDX file {test.labels_path}: label {int(test.labels.max())} is outside the train labels 0..{n_classes - 1}"
        )
    absent = sorted(set(range(n_classes)) - set(np.unique(test.labels).tolist()))
    if absent:
        raise InvalidInputError(f"IDX file {test.labels_path}: class {absent[0]} has no test image")
    rng = np.random.default_rng([spec.seed, 17])
    val = _stratified_take(train.labels, spec.val_fraction, rng, f"IDX file {train.labels_path}")
    arrays = {"train": train.images[~val], "val": train.images[val], "test": test.images}
    labels = {"train": train.labels[~val], "val": train.labels[val], "test": test.labels}
    content = {p: _hash_array_rows(arrays[p]) for p in PARTS}
    ds = Dataset(spec, "idx", _idx_classes(folder, n_classes), labels, content, arrays=arrays)
    ds._val_source_indices = np.flatnonzero(val)  # type: ignore[attr-defined]  # for the split record
    return ds


# ------------------------------------------------------------------ statistics, split record, open
def _measure_stats(ds: Dataset) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std (pixel / 255) of the train part (a seeded sample of an image folder)."""
    n = ds.size("train")
    if ds._arrays is not None:
        arr = ds._arrays["train"]
        total = np.zeros(3 if arr.ndim == 4 else 1)
        sq = np.zeros_like(total)
        count = 0
        for start in range(0, n, 4096):
            chunk = arr[start : start + 4096].astype(np.float64) / 255.0
            chunk = chunk.reshape(-1, total.size)
            total += chunk.sum(0)
            sq += (chunk**2).sum(0)
            count += chunk.shape[0]
        used = n
    else:
        rng = np.random.default_rng([ds.spec.seed, 18])
        pick = np.sort(rng.choice(n, size=min(n, STATS_MAX_IMAGES), replace=False))
        total, sq, count = np.zeros(3), np.zeros(3), 0
        for i in pick:
            px = ds.image("train", int(i)).reshape(-1, 3).astype(np.float64) / 255.0
            total += px.sum(0)
            sq += (px**2).sum(0)
            count += px.shape[0]
        used = len(pick)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
    if mean.size == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    return tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std), used


def default_cache_dir() -> Path:
    from ofa2_edge.core.workspace import Workspace

    return Workspace.resolve().cache_dir


def _split_record(ds: Dataset) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    if ds._files is not None:
        for p in PARTS:
            parts[p] = [[str(f.relative_to(ds.spec.path)), int(lab)] for f, lab in zip(ds._files[p], ds._labels[p])]
        body: dict[str, Any] = {"parts": parts}
    else:
        body = {"val_indices_of_train_file": ds._val_source_indices.tolist()}  # type: ignore[attr-defined]
    return {
        "fingerprint": ds.fingerprint,
        "data": ds.spec.to_dict() | {"format": ds.format},
        "classes": list(ds.classes),
        **body,
    }


def _folder_writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK) and not str(folder.resolve()).startswith("/usr/")


def split_path(ds: Dataset, cache_dir: Path) -> Path:
    """Where the split record of `ds` is (or would be) written."""
    name = f".ofa2-edge-split-{ds.fingerprint[:12]}.json"
    if ds.format == "imagefolder" and _folder_writable(ds.spec.path):
        return ds.spec.path / name
    return cache_dir / "datasets" / ds.fingerprint / name.lstrip(".")


def open_dataset(spec: DataSpec | str | Path, *, cache_dir: str | Path | None = None) -> Dataset:
    """Open, validate and fingerprint a dataset; measure (or read cached) train mean/std.

    Any bad input raises one :class:`InvalidInputError` naming the file, before anything is
    written. Afterwards the split record and the statistics cache are written (atomically)
    if they are not there yet.
    """
    if not isinstance(spec, DataSpec):
        spec = DataSpec(Path(spec))
    fmt = spec.format or detect_format(spec.path)
    if not spec.path.is_dir():
        raise InvalidInputError(f"dataset {spec.path} does not exist or is not a folder")
    ds = _open_idx(spec) if fmt == "idx" else _open_imagefolder(spec)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stats_path = cache / "datasets" / ds.fingerprint / "stats.json"
    stats = None
    if stats_path.is_file():
        try:
            doc = read_json(stats_path, STATS_SCHEMA, [STATS_VERSION])
            stats = (tuple(doc["mean"]), tuple(doc["std"]), int(doc["images"]))
        except (SchemaError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring unreadable statistics cache %s (%s); measuring again", stats_path, exc)
    if stats is None:
        stats = _measure_stats(ds)  # decodes images: an unreadable one fails here, before any write
        write_json(
            stats_path,
            STATS_SCHEMA,
            STATS_VERSION,
            {"fingerprint": ds.fingerprint, "mean": list(stats[0]), "std": list(stats[1]), "images": stats[2]},
        )
    ds.mean, ds.std, ds.stats_images = stats  # type: ignore[assignment]
    record = split_path(ds, cache)
    if not record.exists():
        try:
            write_json(record, SPLIT_SCHEMA, SPLIT_VERSION, _split_record(ds), indent=None)
        except OSError as exc:  # e.g. a read-only mount that os.access did not see
            log.warning("could not write the split record %s (%s)", record, exc)
    log.info("opened %r", ds)
    return ds
