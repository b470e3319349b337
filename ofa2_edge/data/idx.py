"""IDX files (MNIST, Fashion-MNIST, KMNIST ...): validated readers, gzip or plain.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order. Only the
unsigned-byte type (0x08) is used by image datasets, and only that is accepted. Every
structural fact is checked (magic, dimensions, the file's exact length, label range), so
a truncated download or a swapped file is one :class:`InvalidInputError` naming the file.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ofa2_edge.core.errors import InvalidInputError

UBYTE = 0x08
#: `train-images-idx3-ubyte[.gz]`, `t10k-labels.idx1-ubyte` (MNIST's original names use a dot).
IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[.-]idx([13])-ubyte(\.gz)?$")
#: Fashion-MNIST's class names (IDX files hold only numbers; used when the folder is named so).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """The array of one IDX file (uint8), after checking its header and length."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InvalidInputError(
            f"IDX file {path} is truncated or not a valid gzip file ({exc}); download it again"
        ) from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InvalidInputError(f"{path} is not an IDX file (bad magic number {data[:4].hex()!r})")
    if data[2] != UBYTE:
        raise InvalidInputError(f"IDX file {path}: value type 0x{data[2]:02x} is not supported (only unsigned bytes)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise InvalidInputError(f"IDX file {path}: header with {ndim} dimensions is truncated or invalid")
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise InvalidInputError(
            f"IDX file {path} is {what}: {len(data)} bytes, its header {dims} needs {expected}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class IdxPair:
    """The images and labels of one IDX part (train or t10k)."""

    images: np.ndarray  # uint8 (n, H, W) or (n, H, W, 3)
    labels: np.ndarray  # int64 (n,)
    images_path: Path
    labels_path: Path


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
    """{(part, kind): path} of the IDX files in `folder` (part train|t10k, kind images|labels)."""
    found: dict[tuple[str, str], Path] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = IDX_NAME.match(p.name)
        if m and p.is_file():
            key = (m.group(1), m.group(2))
            if key in found:
                raise InvalidInputError(
                    f"IDX folder {folder} holds two {key[0]} {key[1]} files ({found[key].name}, {p.name}); keep one"
                )
            found[key] = p
    return found


def read_pair(images_path: Path, labels_path: Path) -> IdxPair:
    """Read and cross-check one images/labels pair."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise InvalidInputError(
            f"IDX file {images_path}: expected images of shape (n, H, W) or (n, H, W, 3), got {images.shape}"
        )
    if min(images.shape[:3]) < 1:
        raise InvalidInputError(f"IDX file {images_path} holds no images (shape {images.shape})")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if labels.ndim != 1:
        raise InvalidInputError(
            f"IDX file {labels_path}: expected one label per image (1 dimension), got {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise InvalidInputError(
            f"IDX file {labels_path} holds {labels.shape[0]} labels but {images_path.name} holds "
            f"{images.shape[0]} images; the two files do not belong together"
        )
    return IdxPair(images, labels.astype(np.int64), images_path, labels_path)
