"""Predict subnets' latency on a device, refusing resolutions no table can speak for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ofa2_edge.core.errors import InvalidArchError, Ofa2EdgeError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.space.arch import OFA_RESOLUTIONS, Arch
from ofa2_edge.surrogates.base import LatencySurrogate
from ofa2_edge.tables.device import DeviceTable


@dataclass
class Prediction:
    device: str
    model: LatencySurrogate
    coverage: float
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "surrogate": self.model.kind, "coverage": self.coverage,
                "predictions": self.rows}  # fmt: skip


def calibrated_resolutions(table: DeviceTable, model: LatencySurrogate) -> set[int]:
    """The resolutions the predictor or the table's measurements and block tables cover."""
    found = {int(r) for r in getattr(model, "resolutions", ())}
    try:
        found |= table.resolutions()
    except Ofa2EdgeError:  # a damaged table is reported by the commands that read it; predict needs the predictor
        pass
    return found


def resolution_warnings(table: DeviceTable, model: LatencySurrogate, archs: list[Arch]) -> list[str]:
    """Refuse a resolution outside the space (OFA's trained resolutions and the table's);
    return a warning for each one the table was not calibrated on (the prediction extrapolates)."""
    calibrated = calibrated_resolutions(table, model)
    known = set(OFA_RESOLUTIONS) | calibrated
    low, high = min(known), max(known)
    listed = ", ".join(map(str, sorted(calibrated))) or "none"
    where = f"latency_tables/{table.key}"
    warnings = []
    for r in sorted({a.r for a in archs}):
        if not low <= r <= high:
            raise InvalidArchError(
                f"r: resolution {r} px is outside the space a latency can be predicted for ({low}..{high} px: OFA's "
                f"trained resolutions {OFA_RESOLUTIONS[0]}..{OFA_RESOLUTIONS[-1]} and those {where} was "
                f"calibrated on: {listed}); calibrate at {r} px first (`ofa2-edge calibrate --resolutions {r}`)"
            )
        if r not in calibrated:
            inside = bool(calibrated) and min(calibrated) < r < max(calibrated)
            warnings.append(
                f"{r} px is not among the resolutions {where} was calibrated on ({listed}); the prediction "
                f"{'interpolates between' if inside else 'extrapolates beyond'} them"
            )
    return warnings


def predict_latency(workspace: Workspace, key: str, archs: list[Arch], coverage: float = 0.8) -> Prediction:
    """Mean and `coverage` prediction interval of each arch's latency on device `key`."""
    table = DeviceTable.of(workspace, key)
    model = table.predictor()
    warnings = resolution_warnings(table, model, archs)
    mean = model.predict(archs)
    lo, hi = model.predict_interval(archs, coverage)
    rows = [
        {"arch_id": a.id, "arch": a.to_dict(), "latency_ms": float(m), "lower_ms": float(lo_), "upper_ms": float(hi_)}
        for a, m, lo_, hi_ in zip(archs, mean, lo, hi, strict=True)
    ]
    return Prediction(key, model, coverage, rows, warnings)
