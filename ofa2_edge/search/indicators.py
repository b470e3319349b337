"""Front quality: non-dominated filtering, hypervolume, and how two fronts compare.

All on minimised objectives (top-1 as error). Hypervolume is pymoo's indicator (moocore
underneath) on raw values against an explicit reference point, as OFA² reports it.
"""

from __future__ import annotations

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
