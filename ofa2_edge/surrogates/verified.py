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

Drift between sessions: one session's residuals carry that session's shift, and the next
session has its own (on a shared host, +3 % and +6 % in two verifications an hour apart).
From MIN_DRIFT_SESSIONS verification sessions on, the residuals are priced as a new
session would meet them (`SessionResiduals.quantile`): the shifts seen so far (each
session's median, with the calibration session's 0) give a Student-t predictive for the
next session's shift (few sessions: heavy tails, a wide interval; many: the spread seen),
mixed with the within-session errors (each residual less its session's median). An upper
bound stays at least the pooled residuals' (where the sessions agree, the drift-priced bound
alone was the narrower and broke more `--safe` limits: benchmarks/results/drift_pricing.md).

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
from scipy.optimize import brentq
from scipy.stats import t as student_t

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
#: Verification sessions from which their spread prices the next session's shift (with the
#: calibration session's, three shifts: a t predictive with 2 degrees of freedom).
MIN_DRIFT_SESSIONS = 2
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


def _check_residuals(r: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(r)) or (r.size and float(np.abs(r).max()) > MAX_ABS_LOG_RESIDUAL):
        raise InvalidInputError(f"verified residuals must be finite log ratios within +-{MAX_ABS_LOG_RESIDUAL}")
    return r


class SessionResiduals:
    """Verified log residuals kept by session: what they say about a NEW session's residual."""

    def __init__(self, groups: Iterable[Any] = ()) -> None:
        arrays = (np.sort(np.asarray(g, dtype=np.float64).reshape(-1)) for g in groups)
        self.groups: tuple[np.ndarray, ...] = tuple(_check_residuals(g) for g in arrays if g.size)

    @classmethod
    def of(cls, residuals: Residuals, exclude_session: str | None = None, exclude_arch: str | None = None) -> "SessionResiduals":
        """Every session's residuals but `exclude_session`'s, without those of `exclude_arch` (an
        arch verified in two sessions: its own error is not evidence about itself)."""
        return cls([x for a, x in by_arch.items() if a != exclude_arch]
                   for k, by_arch in sorted(residuals.items()) if k != exclude_session)  # fmt: skip

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups)

    def pooled(self) -> np.ndarray:
        """All residuals, sorted."""
        return np.sort(np.concatenate(self.groups)) if self.groups else np.empty(0)

    @property
    def prices_drift(self) -> bool:
        return len(self.groups) >= MIN_DRIFT_SESSIONS

    def shifts(self) -> np.ndarray:
        """The calibration session's shift (0: the predictor is fitted there) and each session's median."""
        return np.array([0.0, *(float(np.median(g)) for g in self.groups)])

    def quantile(self, q: float) -> float:
        """The `q` quantile of a new session's log residual. Below MIN_DRIFT_SESSIONS sessions:
        the pooled residuals' conformal quantile. From there: F(x) = mean over within-session
        errors e of T((x - mean shift - e) / (sd of shifts * sqrt(1 + 1/n))), T Student's t
        with n - 1 degrees of freedom over the n shifts (the calibration session's included)."""
        if not self.prices_drift:
            return residual_quantile(self.pooled(), q)
        m = self.shifts()
        e = np.concatenate([g - shift for g, shift in zip(self.groups, m[1:], strict=True)])
        mu, scale = float(m.mean()), float(m.std(ddof=1)) * math.sqrt(1.0 + 1.0 / m.size)
        if scale <= 1e-12:
            return mu + residual_quantile(np.sort(e), q)
        t = student_t(df=m.size - 1)

        def excess(x: float) -> float:
            return float(np.mean(t.cdf((x - mu - e) / scale))) - q

        reach = float(t.ppf(max(q, 1.0 - q))) * scale + float(np.abs(e).max()) + 1e-9
        x = brentq(excess, mu - reach, mu + reach, xtol=1e-9)
        return float(np.clip(x, -MAX_ABS_LOG_RESIDUAL, MAX_ABS_LOG_RESIDUAL))


def pooled(residuals: Residuals, exclude_session: str | None = None, exclude_arch: str | None = None) -> np.ndarray:
    """The residuals of every session but `exclude_session`, without those of `exclude_arch`, sorted."""
    return SessionResiduals.of(residuals, exclude_session, exclude_arch).pooled()


def residual_quantile(sorted_residuals: np.ndarray, q: float) -> float:
    """The conformal `q` quantile of sorted log residuals: rank ceil((n + 1) q) (floor below
    the median), clipped to the extreme residual where n is too small for the rank."""
    n = sorted_residuals.size
    rank = math.ceil((n + 1) * q) if q >= 0.5 else math.floor((n + 1) * q)
    return float(sorted_residuals[min(max(rank, 1), n) - 1])


def widen(own: np.ndarray, point: np.ndarray, residuals: SessionResiduals, q: float) -> np.ndarray:
    """The `q` bound with the verified residuals folded in; `own` where there are fewer than
    MIN_RESIDUALS. An upper bound (q >= 0.5, what `select --safe` holds a limit to) is the
    widest of the predictor's own, point x exp(the residuals' quantile for a new session) and
    point x exp(the pooled residuals' conformal quantile): it only ever moves to the safe
    side. A lower bound is the residuals' alone where they price drift or are enough for the
    conformal rank (floor((n + 1) q) >= 1), else the wider of the two: a lower bound guards
    no limit, and the predictor's own, centred on the calibration session, would hold a
    whole tail of a shifted session (front_verify: 94.5 % in an 80 % interval)."""
    if residuals.size < MIN_RESIDUALS:
        return own
    seen = point * math.exp(residuals.quantile(q))
    if q >= 0.5:  # pricing the drift only ever widens the pooled residuals' bound (its model may be wrong)
        return np.maximum(own, np.maximum(seen, point * math.exp(residual_quantile(residuals.pooled(), q))))
    if residuals.prices_drift or math.floor((residuals.size + 1) * q) >= 1:
        return seen
    return np.minimum(own, seen)


@register_surrogate("verified")
class VerifiedSurrogate(WrappedSurrogate):
    """`base` for the point; its quantiles with the residuals verification measured on the
    board folded in (`widen`)."""

    missing_base = "run `ofa2-edge fit` first"

    def __init__(
        self, width_mult: float = DEFAULT_WIDTH_MULT, base: LatencySurrogate | None = None,
        sessions: Iterable[Any] = (),
    ) -> None:  # fmt: skip
        """`sessions`: each verification session's log residuals."""
        super().__init__(width_mult, base)
        self.verified = SessionResiduals(sessions)

    def predict_quantile(self, archs: ArchBatch, q: float) -> np.ndarray:
        q = check_quantile(q)
        g = self.genomes(archs)
        own = np.asarray(self._base().predict_quantile(g, q), dtype=np.float64)
        return widen(own, np.asarray(self._base().predict(g), dtype=np.float64), self.verified, q)

    def params(self) -> dict[str, Any]:
        return {"base": self._base().to_doc(), "session_residuals": [g.tolist() for g in self.verified.groups]}

    @classmethod
    def from_params(cls, params: dict[str, Any], width_mult: float) -> "VerifiedSurrogate":
        """Reads both layouts: per-session residuals, and the pooled `residuals` written before
        sessions were kept apart (read as one session: no drift priced, as when written)."""
        base = surrogate_from_doc(params["base"], "params.base")
        if "session_residuals" in params:
            raw = params["session_residuals"]
            if not isinstance(raw, list):
                raise ValueError(f"params.session_residuals: expected a list of sessions, got {type(raw).__name__}")
            groups = [finite_array(g, f"params.session_residuals[{i}]") for i, g in enumerate(raw)]
            where = "params.session_residuals"
        else:
            groups, where = [finite_array(params["residuals"], "params.residuals")], "params.residuals"
        if any(g.ndim != 1 for g in groups) or sum(g.size for g in groups) > MAX_RESIDUALS:
            raise ValueError(f"{where}: expected at most {MAX_RESIDUALS} log residuals, one list per session")
        if any(g.size and float(np.abs(g).max()) > MAX_ABS_LOG_RESIDUAL for g in groups):
            raise ValueError(f"{where}: a log residual beyond +-{MAX_ABS_LOG_RESIDUAL}")
        return cls(width_mult, base, groups)


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
    r = SessionResiduals.of(residuals)
    if r.size < MIN_RESIDUALS:
        return base
    wrapped = VerifiedSurrogate(base.width_mult, base, r.groups)
    wrapped.report = {**base.report, "verified": {"residuals": r.size, "sessions": shifts_doc(residuals),
                                                  "prices_drift": r.prices_drift}}  # fmt: skip
    return wrapped
