"""How well predicted latencies match measured ones: the figures every fit report carries.

Relative error is what matters for a latency limit (a 2 ms miss is fine on a 90 ms net and
fatal on a 6 ms one), so the headline figures are the share of subnets predicted within
+-5 % and +-10 %, the mean absolute percentage error and Spearman's rank correlation (the
search only needs the order right); RMSE in ms is kept for scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ofa2_edge.core.errors import InvalidInputError


def _json_float(value: float) -> float | None:
    """JSON has no NaN: an undefined figure (e.g. Spearman of one sample) is None."""
    return float(value) if math.isfinite(value) else None


def latency_metrics(measured_ms: np.ndarray, predicted_ms: np.ndarray) -> dict[str, Any]:
    """Agreement between measured and predicted latencies (JSON-able; undefined -> None)."""
    y = np.asarray(measured_ms, dtype=np.float64)
    p = np.asarray(predicted_ms, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise InvalidInputError(f"metrics need two 1-D arrays of one length, got shapes {y.shape} and {p.shape}")
    if y.size == 0:
        raise InvalidInputError("metrics need at least one measurement")
    rel = np.abs(p - y) / y
    if y.size >= 3 and np.ptp(y) > 0 and np.ptp(p) > 0:
        rho = float(spearmanr(y, p).statistic)
    else:
        rho = math.nan
    return {
        "n": int(y.size),
        "share_within_5pct": float(np.mean(rel <= 0.05)),
        "share_within_10pct": float(np.mean(rel <= 0.10)),
        "mape_pct": float(100 * rel.mean()),
        "median_ape_pct": float(100 * np.median(rel)),
        "max_ape_pct": float(100 * rel.max()),
        "rmse_ms": float(np.sqrt(np.mean((p - y) ** 2))),
        "spearman": _json_float(rho),
    }


def interval_coverage(measured_ms: np.ndarray, lower_ms: np.ndarray, upper_ms: np.ndarray) -> float:
    """Share of measurements inside [lower, upper] (use lower=0 for a one-sided bound)."""
    y = np.asarray(measured_ms, dtype=np.float64)
    return float(np.mean((y >= np.asarray(lower_ms)) & (y <= np.asarray(upper_ms))))
