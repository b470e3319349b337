"""Which ONNX files a device's onnxruntime can load, and the export target that fits it.

An onnxruntime release loads models up to an IR version and implements operators up to an
opset; a newer file is refused at load ("Unsupported model IR version: 14, max supported IR
version: 10" from onnxruntime 1.19.2, the last release for Python 3.9 on aarch64). The probe
reports the board's onnxruntime version; :func:`onnx_target` turns it into the IR version and
opset of the export (never above the project's default, IR 8 / opset 17), and
:func:`check_loadable` refuses to ship a file the board cannot load.

The table is onnxruntime's compatibility matrix (docs/Versioning.md, "ONNX opset support"):
release -> (highest IR version, highest opset). A release newer than the table's last row
is not limited here (it loads what the default target writes; its own load reports the rest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ofa2_edge.core.errors import ExportError

ORT_LIMITS: tuple[tuple[tuple[int, int], int, int], ...] = (
    ((1, 7), 7, 13),
    ((1, 8), 7, 14),
    ((1, 10), 8, 15),
    ((1, 11), 8, 16),
    ((1, 12), 8, 17),
    ((1, 14), 8, 18),
    ((1, 15), 9, 19),
    ((1, 17), 9, 20),
    ((1, 18), 10, 21),
    ((1, 21), 10, 22),
    ((1, 22), 11, 23),
)
#: HardSwish (every OFA-MobileNetV3 block) is an ONNX operator from opset 14 on.
MIN_OPSET = 14


@dataclass(frozen=True)
class OnnxTarget:
    """The IR version and opset an ONNX export is written for."""

    ir_version: int
    opset: int

    def to_dict(self) -> dict[str, Any]:
        return {"ir_version": self.ir_version, "opset": self.opset}


DEFAULT_TARGET = OnnxTarget(ir_version=8, opset=17)


def _release(version: str) -> tuple[int, int] | None:
    m = re.match(r"^\s*(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def ort_limits(version: str) -> tuple[int, int] | None:
    """(highest IR version, highest opset) an onnxruntime `version` loads; None if unknown or
    newer than the table."""
    release = _release(version)
    if release is None:
        return None
    if release > ORT_LIMITS[-1][0]:
        return None
    found = None
    for since, ir, opset in ORT_LIMITS:
        if release >= since:
            found = (ir, opset)
    return found


def onnx_target(runtime_version: str | None) -> OnnxTarget:
    """The export target for a device whose onnxruntime is `runtime_version` (None: unknown,
    the default). Raises ExportError for a release too old for the subnets' operators."""
    if runtime_version is None:
        return DEFAULT_TARGET
    release = _release(runtime_version)
    limits = ort_limits(runtime_version)
    if release is not None and release > ORT_LIMITS[-1][0]:
        return DEFAULT_TARGET
    if limits is None or limits[1] < MIN_OPSET:
        raise ExportError(
            f"onnxruntime {runtime_version} on the device cannot run OFA subnets (they need opset {MIN_OPSET}, "
            "onnxruntime >= 1.8): install a newer onnxruntime there (pip install onnxruntime)"
        )
    ir, opset = limits
    return OnnxTarget(min(ir, DEFAULT_TARGET.ir_version), min(opset, DEFAULT_TARGET.opset))


def check_loadable(ir_version: int, opset: int, runtime_version: str, what: str) -> None:
    """Refuse a file a device's onnxruntime cannot load, with what to do about it."""
    limits = ort_limits(runtime_version)
    if limits is None:
        return  # an unknown version string: the device's own load reports it
    max_ir, max_opset = limits
    if ir_version > max_ir or opset > max_opset:
        raise ExportError(
            f"{what} is ONNX IR {ir_version} / opset {opset}; the device's onnxruntime {runtime_version} loads IR <= "
            f"{max_ir} / opset <= {max_opset}. Export it for that device (the measure, calibrate and bundle commands "
            "choose the target from the probe) or upgrade onnxruntime there"
        )


def file_versions(path: Any) -> tuple[int, int]:
    """(IR version, default-domain opset) of an ONNX file, without loading its weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return int(model.ir_version), int(opset)
