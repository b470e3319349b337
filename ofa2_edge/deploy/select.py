"""Choose a trade-off at deployment time: the run's front, priced for one device, filtered.

The search leaves a front; the engineer brings two limits (maximum latency, minimum
accuracy). Latency is re-predicted with the device's *current* predictor (it may have been
refitted since the run) and, with `safe`, limits apply to its upper prediction quantile,
so a "<= 30 ms" pick holds with that stated confidence. Measured latency from the device's
table is shown beside the prediction wherever that arch was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.search.indicators import nondominated
from ofa2_edge.search.runstore import RunFolder
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.costs import arch_costs
from ofa2_edge.surrogates.base import LatencySurrogate
from ofa2_edge.tables.device import DeviceTable

#: Coverage of the prediction interval shown with every candidate.
INTERVAL_COVERAGE = 0.8


@dataclass(frozen=True)
class Candidate:
    arch: Arch
    top1_pct: float
    latency_ms: float  # the predictor's point estimate on the device
    latency_lower_ms: float
    latency_upper_ms: float  # the interval at INTERVAL_COVERAGE
    limit_latency_ms: float  # what the latency limit is checked against (upper quantile with `safe`)
    measured_ms: float | None
    macs_m: float
    params_m: float
    peak_mem_mb: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch_id": self.arch.id,
            "arch": self.arch.to_dict(),
            "top1_pct": self.top1_pct,
            "latency_ms": self.latency_ms,
            "latency_interval_ms": [self.latency_lower_ms, self.latency_upper_ms],
            "interval_coverage": INTERVAL_COVERAGE,
            "limit_latency_ms": self.limit_latency_ms,
            "measured_ms": self.measured_ms,
            "macs_m": self.macs_m,
            "params_m": self.params_m,
            "peak_mem_mb": self.peak_mem_mb,
        }


def measured_latencies(table: DeviceTable) -> dict[str, float]:
    """Latest successful end-to-end measurement per arch id in a device's table."""
    if not table.exists():
        return {}
    return {r.arch_id: float(r.estimate_ms) for r in table.records() if r.ok and r.estimate_ms is not None}


def price_front(
    run: RunFolder, surrogate: LatencySurrogate, table: DeviceTable, safe: float | None = None
) -> list[Candidate]:
    """Every feasible front arch of `run` with the device's predicted and measured latency."""
    rows = [r for r in run.front()["rows"] if r.get("feasible", True)]  # validated by the run store
    if not rows:
        raise InvalidInputError(f"{run.path}: the run's front is empty (no feasible arch)")
    if "top1_pct" not in rows[0]:
        raise InvalidInputError(f"{run.path}: the run has no top1 objective; select needs accuracy to rank candidates")
    archs = [Arch.from_dict(r["arch"]) for r in rows]
    if safe is not None and not 0.5 <= safe < 1:
        raise InvalidInputError(f"--safe {safe}: expected a quantile in [0.5, 1), e.g. 0.9")
    widths = {a.w for a in archs}
    if widths != {surrogate.width_mult}:
        raise InvalidInputError(
            f"the device's predictor is for w{surrogate.width_mult}; the run's archs are w{sorted(widths)}"
        )
    point = surrogate.predict(archs)
    lower, upper = surrogate.predict_interval(archs, INTERVAL_COVERAGE)
    limit = surrogate.predict_quantile(archs, safe) if safe is not None else point
    measured = measured_latencies(table)
    costs = arch_costs(archs)
    return [
        Candidate(
            arch=a,
            top1_pct=float(r["top1_pct"]),
            latency_ms=float(p),
            latency_lower_ms=float(lo),
            latency_upper_ms=float(hi),
            limit_latency_ms=float(lim),
            measured_ms=measured.get(a.id),
            **c,
        )
        for a, r, p, lo, hi, lim, c in zip(archs, rows, point, lower, upper, limit, costs, strict=True)
    ]


def non_dominated(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both accuracy (higher) and limit latency (lower)."""
    if not cands:
        return []
    F = np.array([[-c.top1_pct, c.limit_latency_ms] for c in cands], dtype=np.float64)
    return [cands[i] for i in nondominated(F)]


@dataclass(frozen=True)
class Limits:
    max_latency_ms: float | None = None
    min_top1_pct: float | None = None
    max_macs_m: float | None = None

    def passes(self, c: Candidate) -> bool:
        return (
            (self.max_latency_ms is None or c.limit_latency_ms <= self.max_latency_ms)
            and (self.min_top1_pct is None or c.top1_pct >= self.min_top1_pct)
            and (self.max_macs_m is None or c.macs_m <= self.max_macs_m)
        )

    def describe(self, safe: float | None) -> str:
        parts = []
        if self.max_latency_ms is not None:
            what = f"latency (q{safe:.2f} bound)" if safe is not None else "latency"
            parts.append(f"{what} <= {self.max_latency_ms:g} ms")
        if self.min_top1_pct is not None:
            parts.append(f"top-1 >= {self.min_top1_pct:g} %")
        if self.max_macs_m is not None:
            parts.append(f"MACs <= {self.max_macs_m:g} M")
        return " and ".join(parts) or "no limits"


def select(cands: Sequence[Candidate], limits: Limits, top: int | None = None) -> list[Candidate]:
    """Non-dominated candidates that meet the limits, best accuracy first."""
    passing = non_dominated([c for c in cands if limits.passes(c)])
    passing.sort(key=lambda c: (-c.top1_pct, c.limit_latency_ms))
    return passing[:top] if top else passing


def nearest_tradeoffs(cands: Sequence[Candidate], limits: Limits, safe: float | None) -> str:
    """Why nothing passes, in terms of what the front does offer."""
    lines = [f"no candidate meets {limits.describe(safe)}."]
    if limits.max_latency_ms is not None:
        fast = [c for c in cands if c.limit_latency_ms <= limits.max_latency_ms]
        if fast:
            best = max(fast, key=lambda c: c.top1_pct)
            lines.append(
                f"the most accurate within {limits.max_latency_ms:g} ms reaches {best.top1_pct:.2f} % ({best.arch.id})."
            )
        else:
            quickest = min(cands, key=lambda c: c.limit_latency_ms)
            lines.append(
                f"the fastest candidate needs {quickest.limit_latency_ms:.2f} ms ({quickest.arch.id}, {quickest.top1_pct:.2f} %)."
            )
    if limits.min_top1_pct is not None:
        good = [c for c in cands if c.top1_pct >= limits.min_top1_pct]
        if good:
            best = min(good, key=lambda c: c.limit_latency_ms)
            lines.append(
                f"the fastest with top-1 >= {limits.min_top1_pct:g} % needs {best.limit_latency_ms:.2f} ms ({best.arch.id})."
            )
        else:
            top = max(cands, key=lambda c: c.top1_pct)
            lines.append(f"the most accurate candidate reaches {top.top1_pct:.2f} % ({top.arch.id}).")
    if limits.max_macs_m is not None:
        small = min(cands, key=lambda c: c.macs_m)
        lines.append(f"the smallest candidate has {small.macs_m:.0f} M MACs ({small.arch.id}).")
    return " ".join(lines)
