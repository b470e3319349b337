"""What an export produces: the model file, its tensors, its metadata, its parity figures.

Every exported file travels with a sidecar JSON (schema ``ofa2-edge/export``) that holds
the same metadata the model carries inside it where the format allows (ONNX
`metadata_props`), plus what only the host knows: the file's sha256 and size, the parity
figures, and the cache key it was built under. Bundles, the device agents and the cache
all read the sidecar through :func:`read_sidecar`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agents.records import DTYPES
from exporters.formats import format_names
from ofa2_edge.core.errors import ExportError, SchemaError
from ofa2_edge.core.persist import read_json, sha256_file, write_json

SIDECAR_SCHEMA = "ofa2-edge/export"
SIDECAR_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported model, as a runtime sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(
            name=str(data["name"]),
            shape=tuple(int(v) for v in data["shape"]),
            dtype=str(data.get("dtype", "float32")),
            layout=data.get("layout"),
        )


@dataclass(frozen=True)
class ExportedModel:
    """A verified model file on disk and everything known about it.

    `metadata` is what the model carries (arch, preprocessing, weights and BN sources,
    toolkit and exporter versions); `parity` the numerical check run at export time;
    `cache_key` the content address it is stored under (None outside a cache); `cached`
    whether this call found it in the cache rather than building it.
    """

    path: Path
    format: str
    sha256: str
    bytes: int
    metadata: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity: dict[str, Any]
    cache_key: str | None = None
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def arch_id(self) -> str:
        return str(self.metadata["arch_id"])

    @property
    def latency_only(self) -> bool:
        """True when the weights are random: fine for latency, meaningless for accuracy."""
        return bool(self.metadata.get("latency_only", False))

    def sidecar_doc(self) -> dict[str, Any]:
        """The sidecar payload (without the schema header that `write_json` adds)."""
        return {
            "arch_id": self.metadata["arch_id"],
            "arch": self.metadata["arch"],
            "format": self.format,
            "file": self.path.name,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "metadata": self.metadata,
            "parity": self.parity,
            "cache_key": self.cache_key,
            **self.extra,
        }

    def copy_to(self, dest: str | Path) -> ExportedModel:
        """Copy the model to `dest` and write its sidecar to ``<dest>.json``, both atomically.

        The copy is checked against the sha256; if anything fails, no new file is left
        behind (an older file at `dest` is replaced only once the copy is verified).
        """
        dest = Path(dest)
        sidecar = sidecar_path(dest)
        tmp = dest.with_name(f".{dest.name}.part")
        placed = False
        try:
            shutil.copyfile(self.path, tmp)
            digest = sha256_file(tmp)
            if digest != self.sha256:
                raise ExportError(
                    f"{self.path} changed while it was copied (sha256 {digest[:12]} instead of {self.sha256[:12]}); "
                    "export again"
                )
            tmp.replace(dest)
            placed = True
            copied = ExportedModel(
                path=dest,
                format=self.format,
                sha256=self.sha256,
                bytes=self.bytes,
                metadata=self.metadata,
                inputs=self.inputs,
                outputs=self.outputs,
                parity=self.parity,
                cache_key=self.cache_key,
                cached=self.cached,
                extra=self.extra,
            )
            write_json(sidecar, SIDECAR_SCHEMA, SIDECAR_VERSION, copied.sidecar_doc())
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if placed:  # a model without its sidecar would be a partial export
                dest.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise ExportError(f"cannot write {dest}: {exc.strerror or exc}; nothing was written") from exc
            raise
        return copied


@dataclass(frozen=True)
class BuiltModel:
    """What an exporter hands the cache: the model bytes and their facts, before they are stored."""

    data: bytes
    format: str
    metadata: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity: dict[str, Any]


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def _sidecar_fault(path: Path, what: str) -> SchemaError:
    return SchemaError(
        f"{path}: malformed export sidecar: {what}; export the model again (`ofa2-edge export`), or delete the "
        "sidecar and its model file (a cache entry is rebuilt by itself)"
    )


def _plain_file_name(value: Any) -> bool:
    """A file name beside the sidecar: no folder part, no NUL, not `.` or `..`."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not any(c in value for c in "/\\\x00")
        and len(value.encode("utf-8", "surrogatepass")) <= 255
    )


def _count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < 2**63


def _tensor(path: Path, where: str, doc: Any) -> TensorSpec:
    if not isinstance(doc, dict):
        raise _sidecar_fault(path, f"{where} must be an object with name, shape, dtype")
    name, shape, dtype, layout = doc.get("name"), doc.get("shape"), doc.get("dtype", "float32"), doc.get("layout")
    if not isinstance(name, str) or not name:
        raise _sidecar_fault(path, f"{where}.name must be a non-empty text")
    if not isinstance(shape, list) or not shape or len(shape) > 8 or not all(_count(v, 1) for v in shape):
        raise _sidecar_fault(path, f"{where}.shape must be a list of 1 to 8 positive integers, got {_short(shape)}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _sidecar_fault(path, f"{where}.dtype must be one of {', '.join(DTYPES)}, got {_short(dtype)}")
    if layout is not None and not isinstance(layout, str):
        raise _sidecar_fault(path, f"{where}.layout must be null or a text such as 'NCHW'")
    return TensorSpec(name=name, shape=tuple(shape), dtype=dtype, layout=layout)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_sidecar(path: str | Path, verify: bool = True) -> ExportedModel:
    """Read an export sidecar (``<model>.json``, or a cache entry's ``meta.json``).

    The model file is looked up beside the sidecar by the name it records. Every field is
    type-checked; anything malformed is a :class:`SchemaError` naming the sidecar and the
    field. With `verify`, the model's size and sha256 are checked too (a mismatch names
    both files). Reading never changes either file.
    """
    path = Path(path)
    doc = read_json(path, SIDECAR_SCHEMA, [SIDECAR_VERSION])
    fmt, name, sha, size = doc.get("format"), doc.get("file"), doc.get("sha256"), doc.get("bytes")
    if not isinstance(fmt, str) or fmt not in format_names():
        raise _sidecar_fault(path, f"unknown export format {_short(fmt)}; known: {', '.join(format_names())}")
    if not _plain_file_name(name):
        raise _sidecar_fault(path, f"'file' must be the plain name of the model file beside it, got {_short(name)}")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise _sidecar_fault(path, f"'sha256' must be 64 lowercase hex digits, got {_short(sha)}")
    if not _count(size, 0):
        raise _sidecar_fault(path, f"'bytes' must be a non-negative integer, got {_short(size)}")
    metadata, parity, cache_key = doc.get("metadata"), doc.get("parity"), doc.get("cache_key")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("arch_id"), str) or not isinstance(
        metadata.get("arch"), dict
    ):
        raise _sidecar_fault(path, "'metadata' must be an object with a text 'arch_id' and an object 'arch'")
    if doc.get("arch_id") != metadata["arch_id"] or doc.get("arch") != metadata["arch"]:
        raise _sidecar_fault(path, "'arch_id' and 'arch' disagree with the model's 'metadata'")
    if not isinstance(parity, dict):
        raise _sidecar_fault(path, "'parity' must be an object")
    if cache_key is not None and not isinstance(cache_key, str):
        raise _sidecar_fault(path, f"'cache_key' must be null or a text, got {_short(cache_key)}")
    tensors = {}
    for field_name in ("inputs", "outputs"):
        specs = doc.get(field_name)
        if not isinstance(specs, list) or len(specs) != 1:
            raise _sidecar_fault(path, f"'{field_name}' must be a list of exactly one tensor")
        tensors[field_name] = tuple(_tensor(path, f"{field_name}[{i}]", t) for i, t in enumerate(specs))
    model = ExportedModel(
        path=path.parent / name,
        format=fmt,
        sha256=sha,
        bytes=size,
        metadata=metadata,
        inputs=tensors["inputs"],
        outputs=tensors["outputs"],
        parity=parity,
        cache_key=cache_key,
        extra={k: doc[k] for k in ("key", "created_at", "export_seconds") if k in doc},
    )
    if verify:
        verify_file(model, sidecar=path)
    return model


def verify_file(model: ExportedModel, sidecar: Path | None = None) -> None:
    """Raise :class:`SchemaError` unless the model file exists with its recorded size and sha256."""
    said = f"its sidecar {sidecar}" if sidecar is not None else "its sidecar"
    try:
        if not model.path.is_file():
            raise SchemaError(f"{model.path}: the model file named by {said} is missing (or not a file)")
        size = model.path.stat().st_size
        digest = sha256_file(model.path) if size == model.bytes else ""
    except OSError as exc:
        raise SchemaError(f"{model.path}: the model file named by {said} cannot be read ({exc})") from exc
    if size != model.bytes:
        raise SchemaError(f"{model.path}: {size} bytes on disk, {said} says {model.bytes}; the file is damaged")
    if digest != model.sha256:
        raise SchemaError(
            f"{model.path}: sha256 {digest[:16]}... does not match {said} ({model.sha256[:16]}...); "
            "the file is damaged or was replaced"
        )
