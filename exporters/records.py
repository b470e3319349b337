"""What an export produces: the model file, its tensors, its metadata, its parity figures.

Every exported file travels with a sidecar JSON (schema ``ofa2-edge/export``) that holds
the same metadata the model carries inside it where the format allows (ONNX
`metadata_props`), plus what only the host knows: the file's sha256 and size, the parity
figures, and the cache key it was built under. Bundles, the device agents and the cache
all read the sidecar through :func:`read_sidecar`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.formats import format_names
from ofa2_edge.core.errors import ExportError, SchemaError
from ofa2_edge.core.persist import read_json, sha256_file, write_json

SIDECAR_SCHEMA = "ofa2-edge/export"
SIDECAR_VERSION = 1


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


def read_sidecar(path: str | Path, verify: bool = True) -> ExportedModel:
    """Read an export sidecar (``<model>.json``, or a cache entry's ``meta.json``).

    The model file is looked up beside the sidecar by the name it records. With `verify`,
    its size and sha256 are checked; a mismatch raises :class:`SchemaError` naming both.
    """
    path = Path(path)
    doc = read_json(path, SIDECAR_SCHEMA, [SIDECAR_VERSION])
    try:
        model = ExportedModel(
            path=path.parent / str(doc["file"]),
            format=str(doc["format"]),
            sha256=str(doc["sha256"]),
            bytes=int(doc["bytes"]),
            metadata=dict(doc["metadata"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in doc["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in doc["outputs"]),
            parity=dict(doc["parity"]),
            cache_key=doc.get("cache_key"),
            extra={k: doc[k] for k in ("key", "created_at", "export_seconds") if k in doc},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"{path}: malformed export sidecar ({type(exc).__name__}: {exc})") from exc
    if model.format not in format_names():
        raise SchemaError(f"{path}: unknown export format {model.format!r}; known: {', '.join(format_names())}")
    if verify:
        verify_file(model)
    return model


def verify_file(model: ExportedModel) -> None:
    """Raise :class:`SchemaError` unless the model file exists with its recorded size and sha256."""
    try:
        size = model.path.stat().st_size
    except OSError as exc:
        raise SchemaError(f"{model.path}: the model file named by its sidecar is missing ({exc})") from exc
    if size != model.bytes:
        raise SchemaError(f"{model.path}: {size} bytes on disk, its sidecar says {model.bytes}; the file is damaged")
    digest = sha256_file(model.path)
    if digest != model.sha256:
        raise SchemaError(
            f"{model.path}: sha256 {digest[:16]}... does not match its sidecar ({model.sha256[:16]}...); "
            "the file is damaged or was replaced"
        )
