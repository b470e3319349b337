"""The export formats, one registry: what each is called, its file suffix, how it is built.

A format either builds from a static subnet (``onnx``, ``tflite``) or derives from the
file of another format (``tflite-int8`` quantises the fp32 ``tflite`` file with a
representative set). Builders are imported only when used, so the heavy converters stay
optional. Adding a format is one module with a builder plus one `register_format` call
here; `export_subnet`, the cache, sidecars, `ofa2-edge export` and bundles read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ofa2_edge import __version__
from ofa2_edge.core.errors import InvalidInputError

if TYPE_CHECKING:
    from exporters.records import BuiltModel
    from exporters.representative import RepresentativeSet
    from ofa2_edge.supernet import StaticSubnet


@dataclass(frozen=True)
class ExportFormat:
    """One export format. Exactly one of `build` (from a subnet) and `derive` (from the
    bytes and metadata of the `base` format's file) is set."""

    name: str
    suffix: str
    versions: Callable[[], dict[str, Any]] = field(repr=False)
    build: Callable[["StaticSubnet"], "BuiltModel"] | None = field(default=None, repr=False)
    base: str | None = None
    derive: Callable[[bytes, dict[str, Any], "RepresentativeSet"], "BuiltModel"] | None = field(
        default=None, repr=False
    )
    require: Callable[[], None] = field(default=lambda: None, repr=False)
    help: str = ""


_FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    if fmt.name in _FORMATS:
        raise ValueError(f"export format {fmt.name!r} is registered twice")
    if (fmt.build is None) == (fmt.derive is None) or (fmt.derive is not None and fmt.base not in _FORMATS):
        raise ValueError(f"export format {fmt.name!r}: give a build, or a derive from a registered base format")
    _FORMATS[fmt.name] = fmt
    return fmt


def format_names() -> tuple[str, ...]:
    return tuple(_FORMATS)


def export_format(name: str) -> ExportFormat:
    """The registered format `name`; an unknown name is an error that lists the known ones."""
    fmt = _FORMATS.get(name)
    if fmt is None:
        raise InvalidInputError(f"export format {name!r} is not supported; choose from {', '.join(_FORMATS)}")
    return fmt


# ------------------------------------------------------------------ the built-in formats
def _onnx_versions() -> dict[str, Any]:
    from exporters.onnx_export import exporter_info

    return {"ofa2_edge": __version__, **exporter_info()}


def _onnx_build(subnet: "StaticSubnet") -> "BuiltModel":
    from exporters.onnx_export import build_onnx

    return build_onnx(subnet)


def _tflite_versions() -> dict[str, Any]:
    import torch

    from exporters.tflite_export import versions

    return {"ofa2_edge": __version__, "torch": torch.__version__, **versions()}


def _tflite_build(subnet: "StaticSubnet") -> "BuiltModel":
    from exporters.tflite_export import build_tflite_fp32

    return build_tflite_fp32(subnet)


def _tflite_int8(data: bytes, metadata: dict[str, Any], rep: "RepresentativeSet") -> "BuiltModel":
    from exporters.tflite_export import build_tflite_int8

    return build_tflite_int8(data, metadata, rep)


def _require_litert() -> None:
    from exporters.tflite_export import require_litert

    require_litert()


register_format(ExportFormat("onnx", ".onnx", _onnx_versions, build=_onnx_build, help="ONNX (opset 17), fp32"))
register_format(
    ExportFormat("tflite", ".tflite", _tflite_versions, build=_tflite_build, require=_require_litert,
                 help="TFLite fp32 (LiteRT)")
)
register_format(
    ExportFormat("tflite-int8", ".tflite", _tflite_versions, base="tflite", derive=_tflite_int8,
                 require=_require_litert, help="TFLite int8 post-training quantisation of the fp32 file")
)
