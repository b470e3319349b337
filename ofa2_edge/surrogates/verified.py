"""What the board showed since calibration, folded into a predictor's intervals.

A predictor's own intervals come from one calibration session (out-of-fold residuals over
a space-filling design): they hold the error *within* that session, on design points. A
later measurement of a front member meets two things they do not hold: what changed since
on the board (load, clocks, thermal state: one verification on `local` ran 9.0 % slower
than its calibration on the same archs) and the predictor's error on front members, which
are not drawn like the design. The 80 % interval then held 17 % of the front
(benchmarks/results/front_verify.md).

`verify` measures front members apart from the calibration data, one session per call (the
records' batch ids carry the session's id, see :mod:`ofa2_edge.devices.session`). Their log
residuals, log(measured / predicted), are out of sample by construction: split-conformal
residuals drawn from the population `select` picks from, in later sessions. A
:class:`VerifiedSurrogate` bounds each quantile by the wider of the predictor's own and the
conformal quantile of those residuals (rank ceil((n + 1) q), the extreme residual where n
is too small for the rank), so verification only moves an upper bound to the safe side; a
lower bound is the residuals' own quantile where they are enough for its rank (see
`widen`). A session's shift (the median of its residuals) is reported beside it.

Honest scoring: `verify` judges each member with the residuals of the *other* sessions
only, so no interval is scored on the session that shaped it. With one verification
session there is nothing to fold in yet; from two on, each is judged on what the others
taught. Records of archs in the calibration data are left out (their residual is in sample).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Collection, Iterable, Mapping

import numpy as np

from device_agents.records import MeasureResult
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT, Arch
from ofa2_edge.surrogates.base import (
    ArchBatch,
    LatencySurrogate,
    WrappedSurrogate,
    finite_array,
    register_surrogate,
    surrogate_from_doc,
)
from ofa2_edge.surrogates.learned import MAX_ABS_LOG_RESIDUAL, MAX_RESIDUALS, check_quantile

#: Fewer verified residuals than this widen nothing (a quantile of fewer is one member's error).
MIN_RESIDUALS = 5
_SESSION_BATCH = re.compile(r"^b-(?P<session>[0-9a-f]{12})-[0-9a-f]{8}$")


def session_of(batch_id: str) -> str:
    """The measurement session a record's batch belongs to: the session id its batch id
    carries, or the batch id itself for records taken before batch ids carried one."""
    m = _SESSION_BATCH.match(batch_id)
    return m.group("session") if m else batch_id


#: Per session, per arch id: log(measured / predicted).
Residuals = Mapping[str, Mapping[str, float]]


def session_residuals(
    records: Iterable[MeasureResult], model: LatencySurrogate, fitted_on: Collection[str] = ()
) -> dict[str, dict[str, float]]:
    """Per session and arch, the log(measured / `model`'s point prediction) of its successful
    records of the model's width whose arch is not in `fitted_on` (the calibration data); an
    arch measured twice in one session counts once (its latest record)."""
    latest: dict[str, dict[str, MeasureResult]] = defaultdict(dict)
    for r in records:
        if r.ok and r.arch is not None and r.estimate_ms and r.arch_id not in fitted_on:
            if Arch.from_dict(r.arch).w == model.width_mult:
                latest[session_of(r.batch_id)][r.arch_id] = r
    out: dict[str, dict[str, float]] = {}
    for session, by_arch in sorted(latest.items()):
        rows = list(by_arch.values())
        predicted = np.maximum(np.asarray(model.predict([Arch.from_dict(r.arch) for r in rows]), dtype=np.float64), 1e-12)
        measured = np.array([r.estimate_ms for r in rows], dtype=np.float64)
        out[session] = {r.arch_id: float(x) for r, x in zip(rows, np.log(measured / predicted), strict=True)}
    return out


def pooled(residuals: Residuals, exclude_session: str | None = None, exclude_arch: str | None = None) -> np.ndarray:
    """The residuals of every session but `exclude_session`, without those of `exclude_arch`
    (an arch verified in two sessions: its own error is not evidence about itself), sorted."""
    values = [x for k, by_arch in residuals.items() if k != exclude_session for a, x in by_arch.items() if a != exclude_arch]
    return np.sort(np.array(values, dtype=np.float64))


def residual_quantile(sorted_residuals: np.ndarray, q: float) -> float:
    """The conformal `q` quantile of sorted log residuals: rank ceil((n + 1) q) (floor below
    the median), clipped to the extreme residual where n is too small for the rank."""
    n = sorted_residuals.size
    rank = math.ceil((n + 1) * q) if q >= 0.5 else math.floor((n + 1) * q)
    return float(sorted_residuals[min(max(rank, 1), n) - 1])


def widen(own: np.ndarray, point: np.ndarray, sorted_residuals: np.ndarray, q: float) -> np.ndarray:
    """The `q` bound with the verified residuals folded in; `own` where there are fewer than
    MIN_RESIDUALS. An upper bound (q >= 0.5, what `select --safe` holds a limit to) is the
    wider of the predictor's own and point x exp(the residuals' conformal quantile): it only
    ever moves to the safe side. A lower bound is the residuals' alone where they are enough
    for the conformal rank (floor((n + 1) q) >= 1), else the wider of the two: a lower bound
    guards no limit, and the predictor's own, centred on the calibration session, would
    hold a whole tail of a shifted session (front_verify: 94.5 % in an 80 % interval)."""
    if sorted_residuals.size < MIN_RESIDUALS:
        return own
    seen = point * math.exp(residual_quantile(sorted_residuals, q))
    if q >= 0.5:
        return np.maximum(own, seen)
    return seen if math.floor((sorted_residuals.size + 1) * q) >= 1 else np.minimum(own, seen)


@register_surrogate("verified")
class VerifiedSurrogate(WrappedSurrogate):
    """`base` for the point; its quantiles with the residuals verification measured on the
    board folded in (`widen`)."""

    missing_base = "run `ofa2-edge fit` first"

    def __init__(
        self, width_mult: float = DEFAULT_WIDTH_MULT, base: LatencySurrogate | None = None,
        residuals: Any = (), sessions: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(width_mult, base)
        r = np.sort(np.asarray(residuals, dtype=np.float64).reshape(-1))
        if not np.all(np.isfinite(r)) or (r.size and float(np.abs(r).max()) > MAX_ABS_LOG_RESIDUAL):
            raise InvalidInputError(f"verified residuals must be finite log ratios within +-{MAX_ABS_LOG_RESIDUAL}")
        self.residuals = r
        self.sessions = int(sessions)

    def predict_quantile(self, archs: ArchBatch, q: float) -> np.ndarray:
        q = check_quantile(q)
        g = self.genomes(archs)
        own = np.asarray(self._base().predict_quantile(g, q), dtype=np.float64)
        return widen(own, np.asarray(self._base().predict(g), dtype=np.float64), self.residuals, q)

    def params(self) -> dict[str, Any]:
        return {"base": self._base().to_doc(), "residuals": self.residuals.tolist(), "sessions": self.sessions}

    @classmethod
    def from_params(cls, params: dict[str, Any], width_mult: float) -> "VerifiedSurrogate":
        base = surrogate_from_doc(params["base"], "params.base")
        residuals = finite_array(params["residuals"], "params.residuals")
        if residuals.ndim != 1 or residuals.size > MAX_RESIDUALS:
            raise ValueError(f"params.residuals: expected at most {MAX_RESIDUALS} log residuals, got shape {residuals.shape}")
        if residuals.size and float(np.abs(residuals).max()) > MAX_ABS_LOG_RESIDUAL:
            raise ValueError(f"params.residuals: a log residual beyond +-{MAX_ABS_LOG_RESIDUAL}")
        sessions = params.get("sessions", 0)
        if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 0:
            raise ValueError(f"params.sessions: expected a count, got {sessions!r}")
        return cls(width_mult, base, residuals, sessions)


def without_verified(model: LatencySurrogate) -> LatencySurrogate:
    """The predictor under a verification wrapper (its intervals hold one session only)."""
    return model._base() if isinstance(model, VerifiedSurrogate) else model


def shifts_doc(residuals: Residuals) -> dict[str, Any]:
    """Each session's shift from the predictor (median, percent) and its count."""
    return {k: {"shift_pct": 100.0 * math.expm1(float(np.median(list(r.values())))), "n": len(r)}
            for k, r in residuals.items() if r}  # fmt: skip


def with_verified(model: LatencySurrogate, residuals: Residuals) -> LatencySurrogate:
    """`model` (any verification wrapper removed) with the verified `residuals` of every
    session folded in; itself when there are fewer than MIN_RESIDUALS."""
    base = without_verified(model)
    r = pooled(residuals)
    if r.size < MIN_RESIDUALS:
        return base
    wrapped = VerifiedSurrogate(base.width_mult, base, r, len(residuals))
    wrapped.report = {**base.report, "verified": {"residuals": int(r.size), "sessions": shifts_doc(residuals)}}
    return wrapped
