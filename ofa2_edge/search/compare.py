"""Compare the fronts of two runs on their shared objectives and a common reference point."""

from __future__ import annotations

from typing import Any

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.search.indicators import coverage, hypervolume, nondominated
from ofa2_edge.search.runstore import RunFolder


def _front_matrix(front: dict[str, Any], names: list[str]) -> np.ndarray:
    """Minimised values of the front's rows on `names` (top-1 as error), non-dominated only."""
    meta = {m["name"]: m for m in front["objectives"]}
    cols = []
    for name in names:
        m = meta[name]
        vals = np.array([row[m["field"]] for row in front["rows"]], dtype=np.float64)
        cols.append(100.0 - vals if m["sense"] == "max" else vals)
    F = np.column_stack(cols) if cols and front["rows"] else np.zeros((0, len(names)))
    return F[nondominated(F)] if len(F) else F


def compare_runs(a: RunFolder, b: RunFolder) -> dict[str, Any]:
    """HV of each front on a common reference point, sizes, and mutual coverage/dominance.

    Only the objectives both runs share are compared (fronts are projected onto them and
    filtered again). The reference point is, per objective, the worse of the two runs'
    reference points, so both fronts are measured against the same box."""
    fa, fb = a.front(), b.front()
    names_a = [m["name"] for m in fa["objectives"]]
    names_b = {m["name"] for m in fb["objectives"]}
    shared = [n for n in names_a if n in names_b]
    if not shared:
        raise InvalidInputError(f"runs {a.run_id} and {b.run_id} share no objective: {names_a} vs {sorted(names_b)}")
    ref_a = dict(zip(names_a, a.hypervolume()["reference_point_minimised"]))
    ref_b = dict(zip([m["name"] for m in fb["objectives"]], b.hypervolume()["reference_point_minimised"]))
    ref = np.array([max(ref_a[n], ref_b[n]) for n in shared])
    A, B = _front_matrix(fa, shared), _front_matrix(fb, shared)
    sense = {m["name"]: m["sense"] for m in fa["objectives"]}
    return {
        "objectives": shared,
        "projected": len(shared) < max(len(names_a), len(names_b)),
        "reference_point": {n: (100.0 - r if sense[n] == "max" else r) for n, r in zip(shared, ref.tolist())},
        "runs": {
            a.run_id: {"front_size": len(A), "hv": hypervolume(A, ref), "coverage_of_other": coverage(A, B)},
            b.run_id: {"front_size": len(B), "hv": hypervolume(B, ref), "coverage_of_other": coverage(B, A)},
        },
        "note": "coverage_of_other = share of the other run's front weakly dominated by this run's front",
    }
