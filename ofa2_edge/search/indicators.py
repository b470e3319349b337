"""Front quality: non-dominated filtering, hypervolume, and how two fronts compare.

All on minimised objectives (top-1 as error). Hypervolume is pymoo's indicator (moocore
underneath) on raw values against an explicit reference point, as OFA² reports it: exact
up to `EXACT_HV_MAX_OBJ` objectives, a bounded-time Monte Carlo estimate with its standard
error above (`front_indicator`); the 2-D hypervolume of each (objective 0, objective j)
projection (`pair_hypervolumes`, a device's top-1 vs latency front) is always exact.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def nondominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of F (duplicates of a point are all kept)."""
    import moocore

    F = np.asarray(F, dtype=np.float64)
    if len(F) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(moocore.is_nondominated(F, keep_weakly=True))


def hypervolume(F: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of F w.r.t. `ref`; points that do not dominate `ref` add nothing.

    This is what ``pymoo.indicators.hv.HV(ref_point=ref)(F)`` computes (pymoo hands raw
    values to `moocore.hypervolume` when no normalisation is given; the tests check the
    two agree), called directly because it runs every generation."""
    import moocore

    F = np.asarray(F, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if len(F) == 0:
        return 0.0
    inside = (F < ref[None, :]).all(axis=1)
    if not inside.any():
        return 0.0
    return float(moocore.hypervolume(F[inside], ref=ref))


def coverage(A: np.ndarray, B: np.ndarray) -> float:
    """Zitzler's C(A, B): the share of B's points weakly dominated by some point of A."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if len(B) == 0:
        return 0.0
    if len(A) == 0:
        return 0.0
    dominated = (A[:, None, :] <= B[None, :, :]).all(axis=2).any(axis=0)
    return float(dominated.mean())


# --------------------------------------------------------------------- many objectives
#: Up to this many objectives the hypervolume is computed exactly (moocore); above it the
#: exact computation grows exponentially with the number of objectives (a 9-objective front
#: of thousands of points ran for more than 20 minutes), so it is estimated (`hypervolume_mc`).
EXACT_HV_MAX_OBJ = 4
#: Monte Carlo estimate of a many-objective hypervolume: samples and wall-time budget.
MC_SAMPLES = 20_000
MC_BUDGET_S = 2.0
EXACT = "hypervolume"
MC = "hypervolume-monte-carlo"
PAIR_MEAN = "mean-2d-hypervolume"


def pair_hypervolumes(F: np.ndarray, ref: np.ndarray, pairs: list[tuple[int, int]]) -> list[float]:
    """Exact 2-D hypervolume of F projected on each pair of objectives (dominated points
    add nothing), against the projected reference point. Cheap: O(n log n) a pair."""
    F = np.asarray(F, dtype=np.float64)
    return [hypervolume(F[:, [a, b]], np.asarray(ref, dtype=np.float64)[[a, b]]) if len(F) else 0.0 for a, b in pairs]


def hypervolume_mc(
    F: np.ndarray, ref: np.ndarray, samples: int = MC_SAMPLES, seed: int = 0, budget_s: float = MC_BUDGET_S
) -> dict[str, Any]:
    """Monte Carlo estimate of the hypervolume of F w.r.t. `ref`, in bounded time.

    Uniform samples in the box [ideal point of F, ref]; the estimate is the box volume
    times the share of samples some point of F weakly dominates, and its standard error
    the binomial one (volume * sqrt(p (1 - p) / n)). Samples are drawn in chunks from a
    generator seeded by `seed` (same F, seed and sample count: the same estimate); when the
    chunks so far have used up `budget_s`, the estimate stops at the samples drawn, and
    says how many that was."""
    start = time.perf_counter()
    F = np.asarray(F, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    inside = F[(F < ref[None, :]).all(axis=1)] if len(F) else F
    out = {"kind": MC, "value": 0.0, "std_error": 0.0, "samples": 0, "samples_asked": int(samples), "budget_s": budget_s}
    if not len(inside):
        out["seconds"] = time.perf_counter() - start
        return out
    lo = inside.min(axis=0)
    volume = float(np.prod(ref - lo))
    rng = np.random.default_rng(seed)
    # Chunks of samples small enough that the (chunk x points x objectives) test stays ~8 MB.
    chunk = int(max(16, min(4096, 8_000_000 // max(1, inside.size))))
    hits = drawn = 0
    while drawn < samples:
        n = min(chunk, samples - drawn)
        S = lo + rng.random((n, len(ref))) * (ref - lo)
        hits += int((inside[None, :, :] <= S[:, None, :]).all(axis=2).any(axis=1).sum())
        drawn += n
        if time.perf_counter() - start > budget_s:
            break
    p = hits / drawn
    out.update(value=volume * p, std_error=volume * float(np.sqrt(p * (1 - p) / drawn)), samples=drawn)
    out["seconds"] = time.perf_counter() - start
    return out


def front_indicator(F: np.ndarray, ref: np.ndarray, seed: int = 0, samples: int = MC_SAMPLES, budget_s: float = MC_BUDGET_S) -> dict[str, Any]:
    """The joint front's indicator: exact hypervolume up to `EXACT_HV_MAX_OBJ` objectives,
    a Monte Carlo estimate (`hypervolume_mc`, with its standard error) above."""
    F = np.asarray(F, dtype=np.float64)
    if len(ref) <= EXACT_HV_MAX_OBJ:
        start = time.perf_counter()
        value = hypervolume(F, ref)
        return {"kind": EXACT, "value": value, "std_error": 0.0, "seconds": time.perf_counter() - start}
    return hypervolume_mc(F, ref, samples=samples, seed=seed, budget_s=budget_s)
