"""Compare the fronts of two runs on their shared objectives and a common reference point.

The joint indicator is exact hypervolume up to `indicators.EXACT_HV_MAX_OBJ` shared
objectives and a bounded-time Monte Carlo estimate (with its standard error) above; with 3
or more shared objectives each (first objective, cost) projection's exact 2-D hypervolume
is reported too: per device, which run's front is better for it."""

from __future__ import annotations

from typing import Any

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.search.indicators import coverage, front_indicator, nondominated, pair_hypervolumes
from ofa2_edge.search.perdevice import pairs_of
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
    pairs = pairs_of(len(shared)) if len(shared) >= 3 else []
    runs = {}
    for run, X, Y in ((a, A, B), (b, B, A)):
        ind = front_indicator(X, ref, seed=0)
        runs[run.run_id] = {
            "front_size": len(X),
            "hv": ind["value"],
            "hv_std_error": ind["std_error"],
            "coverage_of_other": coverage(X, Y),
            **({"hv_pairs": dict(zip((shared[j] for _, j in pairs), pair_hypervolumes(X, ref, pairs)))} if pairs else {}),
        }
    return {
        "objectives": shared,
        "projected": len(shared) < max(len(names_a), len(names_b)),
        "reference_point": {n: (100.0 - r if sense[n] == "max" else r) for n, r in zip(shared, ref.tolist())},
        "indicator": ind["kind"],
        **({"pairs": [[shared[i], shared[j]] for i, j in pairs]} if pairs else {}),
        "runs": runs,
        "note": "coverage_of_other = share of the other run's front weakly dominated by this run's front"
        + ("; hv is a Monte Carlo estimate (hv_std_error), exact only up to 4 objectives" if ind["kind"] != "hypervolume" else "")
        + ("; hv_pairs = exact 2-D hypervolume of (first objective, that cost) per run" if pairs else ""),
    }
