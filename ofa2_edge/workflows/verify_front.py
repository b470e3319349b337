"""The front verified on the board: is the number on the dashboard the number on the device?

`ofa2-edge verify RUN --device KEY` measures members of a run's front on the device (through
the same export -> ship -> agent path as calibration), appends their records to the
device table's `verification.jsonl` (apart from `measurements.jsonl`: no predictor is fitted
on them), and scores the device's current predictor on them:

- measured vs predicted per member, and the actual coverage of the 80 % and 90 % predicted
  intervals against their nominal coverage;
- the violation rate of `select --safe Q` picks: for several latency limits, the pick
  `select` would make on the full front, and whether its measured latency exceeds the limit
  that selected it (and by more than the table's test-retest difference); and over every
  verified member some limit would pick, each at its tightest limit (`tightest_picks`),
  with a 95 % interval on the rate;
- the hypervolume of the verified members on measured latencies beside the predicted one.

Each verify call is one measurement session. Its records' residuals show how the board and
the front differ from what the calibration taught (:mod:`ofa2_edge.surrogates.verified`);
`ofa2-edge fit` folds them into the predictor's intervals. Scoring never uses the saved
ones: each member's intervals and `--safe` bound are the predictor's own with the residuals
of the *other* sessions folded in, so no member is judged on what its own session taught.

A member whose arch is also in `measurements.jsonl` (the calibration data the predictor was
fitted on) is measured and shown but never scored. The measurement resumes: members already
verified under the same device, runtime and protocol are not measured again. The report
goes to `runs/<id>/verification.<device>.json`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from device_agents.records import MeasureResult, Protocol
from exporters import ExportCache
from ofa2_edge.calibration.calibrate import bind_table
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.persist import write_json
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.select import Candidate, Limits, non_dominated, price_front, select
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.pipeline import MeasurePlan, measure_archs
from ofa2_edge.devices.session import DeviceSession
from ofa2_edge.search.indicators import hypervolume
from ofa2_edge.search.runstore import VERIFICATION_SCHEMA, RunFolder
from ofa2_edge.space.arch import Arch, genomes_of
from ofa2_edge.surrogates.base import LatencySurrogate
from ofa2_edge.surrogates.metrics import interval_coverage
from ofa2_edge.surrogates.verified import (
    MIN_DRIFT_SESSIONS,
    Residuals,
    SessionResiduals,
    VerifiedSurrogate,
    session_of,
    session_residuals,
    shifts_doc,
    widen,
    without_verified,
)
from ofa2_edge.tables.device import DeviceTable, MeasureKey

log = logging.getLogger(__name__)

VERSION = 1
#: Nominal coverages whose actual coverage is reported.
COVERAGES = (0.8, 0.9)
#: `select --safe Q` levels whose picks are judged (None: the point prediction).
SAFE_LEVELS: tuple[float | None, ...] = (None, 0.8, 0.9, 0.95)
#: Limits between the 10th and 90th percentile of the front's predicted latencies.
DEFAULT_LIMITS = 9

Progress = Callable[[str, dict[str, Any]], None]
#: The `q` quantile in ms of each arch: how a pick's bound and a member's interval are priced.
Quantile = Callable[[Sequence[Arch], float], np.ndarray]


@dataclass(frozen=True)
class VerifyRequest:
    """Which front members to measure: `top` spread over the front's latency range, the
    `select --safe safe` picks at `budgets` ms, or `all` of them (exactly one)."""

    top: int | None = None
    budgets: tuple[float, ...] = ()
    all: bool = False
    safe: float = 0.9
    limits: tuple[float, ...] = ()  # latency limits the picks are judged at (default: spread over the front)

    def __post_init__(self) -> None:
        chosen = sum([self.top is not None, bool(self.budgets), self.all])
        if chosen != 1:
            raise InvalidInputError("give exactly one of --top N, --budgets B1,B2,... or --all")
        if self.top is not None and self.top < 1:
            raise InvalidInputError(f"--top {self.top}: give at least 1 member")
        if not 0.5 <= self.safe < 1:
            raise InvalidInputError(f"--safe {self.safe}: expected a quantile in [0.5, 1), e.g. 0.9")
        for name, values in (("--budgets", self.budgets), ("--limits", self.limits)):
            if any(not (math.isfinite(v) and v > 0) for v in values):
                raise InvalidInputError(f"{name}: every value must be a positive number of ms, got {list(values)}")


def parse_ms_list(text: str, option: str) -> tuple[float, ...]:
    """`10,20,40` -> (10.0, 20.0, 40.0); anything else is an error naming the option."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise InvalidInputError(f"{option}: expected comma-separated milliseconds, got {text!r}") from exc
    if not values:
        raise InvalidInputError(f"{option}: expected comma-separated milliseconds, got {text!r}")
    return values


def spread_indices(size: int, n: int) -> list[int]:
    """Which of `size` members, fastest first, `--top n` measures: n spread evenly over the range."""
    return sorted({int(round(i)) for i in np.linspace(0, size - 1, min(n, size))})


def choose_members(cands: Sequence[Candidate], request: VerifyRequest, surrogate: LatencySurrogate) -> list[Candidate]:
    """The front members `request` asks to measure, fastest first, each once."""
    by_latency = sorted(cands, key=lambda c: (c.latency_ms, -c.top1_pct))
    if request.all:
        chosen = by_latency
    elif request.top is not None:
        chosen = [by_latency[i] for i in spread_indices(len(by_latency), request.top)]
    else:
        safe_cands = _with_limit(cands, surrogate.predict_quantile, request.safe)
        chosen = []
        for budget in request.budgets:
            for pool in (cands, safe_cands):  # the plain pick and the --safe pick at each budget
                picked = select(pool, Limits(max_latency_ms=budget), top=1)
                chosen += picked
        if not chosen:
            raise InvalidInputError(
                f"no front member is predicted within any of the budgets {list(request.budgets)} ms; "
                f"the fastest needs {by_latency[0].latency_ms:.2f} ms"
            )
    seen: set[str] = set()
    out = []
    for c in sorted(chosen, key=lambda c: (c.latency_ms, -c.top1_pct)):
        if c.arch.id not in seen:
            seen.add(c.arch.id)
            out.append(c)
    return out


def _with_limit(cands: Sequence[Candidate], quantile: Quantile, q: float | None) -> list[Candidate]:
    """`cands` with the latency limit checked against the `q` quantile (None: the point)."""
    if q is None:
        return [_replace_limit(c, c.latency_ms) for c in cands]
    bounds = quantile([c.arch for c in cands], q)
    return [_replace_limit(c, float(b)) for c, b in zip(cands, bounds, strict=True)]


def _replace_limit(c: Candidate, limit: float) -> Candidate:
    from dataclasses import replace

    return replace(c, limit_latency_ms=limit)


@dataclass
class VerifyOutcome:
    report: dict[str, Any]
    path: Path
    measured_now: list[MeasureResult]
    not_measured: list[str]  # arch ids the device could not be reached for (rerun to resume)

    @property
    def failed(self) -> list[MeasureResult]:
        return [r for r in self.measured_now if not r.ok]


def verify_front(
    device: Device,
    workspace: Workspace,
    run: RunFolder,
    request: VerifyRequest,
    protocol: Protocol,
    fmt: str | None = None,
    trust_on_first_use: bool = False,
    progress: Progress | None = None,
    accept_env_change: bool = False,
    table_key: str | None = None,
) -> VerifyOutcome:
    """Measure the front members `request` names on `device` (resuming), then score and write
    the report. The table's writer lock is held while measuring. With `table_key` (a device
    group), `device` is one of its replicas and the group's table is verified."""
    emit = progress or (lambda event, info: None)
    key_name = table_key or device.key
    table = DeviceTable.of(workspace, key_name)
    surrogate = table.predictor()
    cands = price_front(run, surrogate, table)
    members = choose_members(cands, request, surrogate)
    plan = MeasurePlan.for_device(device, fmt)
    measured_now: list[MeasureResult] = []
    not_measured: list[str] = []
    with table.lock():
        for _ in table.verification_records():  # refuse a damaged file before the device is touched
            pass
        with DeviceSession(device, workspace.cache_dir, trust_on_first_use=trust_on_first_use) as session:
            key = bind_table(session, table, device, plan, protocol, table_key is not None, accept_env_change)
            done = _verified(table.verification_records(), key)
            todo = [c.arch for c in members if c.arch.id not in done]
            emit("members", {"total": len(members), "todo": len(todo), "skipped": len(members) - len(todo)})

            def commit(record: MeasureResult) -> None:
                table.append_verification(record)  # durable before anything else happens
                measured_now.append(record)
                emit("result", {"record": record})

            batch = measure_archs(session, todo, plan, protocol, ExportCache(workspace.exports_dir), commit)
            not_measured = [a.id for a in batch.not_measured]
    report = score(run, key_name, table, surrogate, cands, members, key, request)
    if table_key is not None:
        report["replica"] = device.key
    path = write_json(run.file(f"verification.{key_name}.json"), VERIFICATION_SCHEMA, VERSION, report)
    return VerifyOutcome(report, path, measured_now, not_measured)


def _verified(records: Iterable[MeasureResult], key: MeasureKey) -> dict[str, MeasureResult]:
    """Successful verification records under `key`, by arch id (the latest one wins)."""
    return {r.arch_id: r for r in records if r.ok and MeasureKey.of(r) == key}


# ---------------------------------------------------------------------------- scoring
def score(
    run: RunFolder,
    device_key: str,
    table: DeviceTable,
    surrogate: LatencySurrogate,
    cands: Sequence[Candidate],
    members: Sequence[Candidate],
    key: MeasureKey,
    request: VerifyRequest,
) -> dict[str, Any]:
    """The verification report of `members` (the document `verification.<device>.json` holds)."""
    records = list(table.verification_records())  # read once: scored under `key`, residuals of every session
    verified = _verified(records, key)
    # what predictors are fitted on: every successful record of measurements.jsonl, any protocol
    calibration = {r.arch_id: r for r in table.records() if r.ok and r.estimate_ms is not None}
    archs = [c.arch for c in members]
    base = without_verified(surrogate)
    residuals = session_residuals(records, base, set(calibration))
    session_by_arch = {a: session_of(r.batch_id) for a, r in verified.items()}
    quantile = cross_session_quantile(base, residuals, session_by_arch)
    q = {cov: (quantile(archs, (1 - cov) / 2), quantile(archs, (1 + cov) / 2)) for cov in COVERAGES} if archs else {}
    rows = []
    for i, c in enumerate(members):
        rec = verified.get(c.arch.id)
        measured = float(rec.estimate_ms) if rec is not None and rec.estimate_ms is not None else None
        row: dict[str, Any] = {
            "arch_id": c.arch.id,
            "r": c.arch.r,
            "top1_pct": c.top1_pct,
            "predicted_ms": c.latency_ms,
            "measured_ms": measured,
            "error_pct": None if measured is None else 100.0 * (c.latency_ms - measured) / measured,
            "in_calibration": c.arch.id in calibration,
            "flags": [f.value for f in rec.flags] if rec is not None else [],
        }
        for cov in COVERAGES:
            lo, hi = float(q[cov][0][i]), float(q[cov][1][i])
            row[f"interval_{round(cov * 100)}_ms"] = [lo, hi]
            row[f"within_{round(cov * 100)}"] = None if measured is None else bool(lo <= measured <= hi)
        rows.append(row)
    scored_at = [i for i, r in enumerate(rows) if r["measured_ms"] is not None and not r["in_calibration"]]
    scored = [rows[i] for i in scored_at]
    coverage = {}
    for cov in COVERAGES:
        name = str(round(cov * 100))
        inside = [r[f"within_{name}"] for r in scored]
        above = [r["measured_ms"] > r[f"interval_{name}_ms"][1] for r in scored]
        coverage[name] = {
            "nominal": cov,
            "actual": float(np.mean(inside)) if inside else None,
            "above_share": float(np.mean(above)) if above else None,
            "n": len(inside),
        }
    errors = np.array([abs(r["error_pct"]) for r in scored]) if scored else np.zeros(0)
    retest = retest_difference(verified, {a: r for a, r in calibration.items() if MeasureKey.of(r) == key})
    # picks are judged on every verified front member (an earlier --all counts too)
    measured_by_id = {a: float(r.estimate_ms) for a, r in verified.items() if r.estimate_ms is not None}
    in_cal = {c.arch.id for c in cands if c.arch.id in calibration}
    limits = request.limits or request.budgets or default_limits(cands)
    violations = {
        ("point" if s is None else f"{s:g}"): judge_picks(cands, quantile, s, limits, measured_by_id, in_cal, retest["pct"])
        for s in SAFE_LEVELS
    }
    # the same judging with the predictor's own intervals (one calibration session): what the drift changed
    scored_archs = [members[i].arch for i in scored_at]
    scored_ms = np.array([r["measured_ms"] for r in scored], dtype=np.float64)
    own = {
        "coverage": {str(round(cov * 100)): _within_share(base.predict_quantile, scored_archs, scored_ms, cov)
                     for cov in COVERAGES},
        "safe_0.9_tightest": tightest_picks(_with_limit(cands, base.predict_quantile, 0.9), measured_by_id, in_cal,
                                            retest["pct"]),
    }  # fmt: skip
    own["safe_0.9_tightest"].pop("picks")
    # and with the other sessions' residuals pooled, no drift priced: what pricing it changed
    flat = cross_session_quantile(base, residuals, session_by_arch, price_drift=False)
    pooled_doc = {
        "coverage": {str(round(cov * 100)): _within_share(flat, scored_archs, scored_ms, cov) for cov in COVERAGES},
        "safe_0.9_tightest": tightest_picks(_with_limit(cands, flat, 0.9), measured_by_id, in_cal, retest["pct"]),
    }  # fmt: skip
    pooled_doc["safe_0.9_tightest"].pop("picks")
    done = [r for r in rows if r["measured_ms"] is not None]
    return {
        "run": run.run_id,
        "device": device_key,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "selection": _describe(request),
        "predictor": {
            "kind": surrogate.kind,
            "file": table.predictor_path().name,
            "sha256": hashlib.sha256(table.predictor_path().read_bytes()).hexdigest(),
        },
        "key": {"fingerprint": key.fingerprint, "runtime": key.runtime, "runtime_version": key.runtime_version,
                "protocol": key.protocol.to_dict()},  # fmt: skip
        "front_size": len(cands),
        "members": rows,
        "counts": {"members": len(rows), "measured": len(done), "scored": len(scored),
                   "in_calibration": sum(r["in_calibration"] for r in rows)},  # fmt: skip
        "error": {
            "mape_pct": float(errors.mean()) if len(errors) else None,
            "share_within_10pct": float((errors <= 10).mean()) if len(errors) else None,
        },
        "coverage": coverage,
        "test_retest": retest,
        "sessions": _sessions_doc(surrogate, residuals),
        "own_intervals": own,
        "pooled_residuals": pooled_doc,
        "limits_ms": list(limits),
        "violations": violations,
        "hypervolume": front_hv(run, device_key, done),
    }


def cross_session_quantile(
    base: LatencySurrogate, residuals: Residuals, sessions: Mapping[str, str], price_drift: bool = True
) -> Quantile:
    """Quantiles of `base` with verified residuals folded in, for each arch those of every
    session but the one it was verified in (`sessions`: arch id -> session) and not its own:
    no member is judged with an interval its own session or its own error shaped. Without
    `price_drift` the sessions' residuals are pooled into one (the judging before drift was priced)."""

    def quantile(archs: Sequence[Arch], q: float) -> np.ndarray:
        g = genomes_of(list(archs))
        own = np.asarray(base.predict_quantile(g, q), dtype=np.float64)
        point = np.asarray(base.predict(g), dtype=np.float64)
        pools: dict[tuple[str | None, str], SessionResiduals] = {}
        out = np.empty(len(own), dtype=np.float64)
        for i, a in enumerate(archs):
            k = (sessions.get(a.id), a.id)
            if k not in pools:
                pools[k] = SessionResiduals.of(residuals, exclude_session=k[0], exclude_arch=a.id)
                if not price_drift:
                    pools[k] = SessionResiduals([pools[k].pooled()])
            out[i] = widen(own[i : i + 1], point[i : i + 1], pools[k], q)[0]
        return out

    return quantile


def _within_share(quantile: Quantile, archs: Sequence[Arch], measured: np.ndarray, cov: float) -> float | None:
    """Share of `measured` inside the central `cov` interval `quantile` gives each arch."""
    if not archs:
        return None
    return interval_coverage(measured, quantile(archs, (1 - cov) / 2), quantile(archs, (1 + cov) / 2))


def _sessions_doc(surrogate: LatencySurrogate, residuals: Residuals) -> dict[str, Any]:
    """The verification sessions (each one's shift from the predictor) and how many verified
    residuals the saved predictor holds (`ofa2-edge fit` folds them in)."""
    return {
        "count": len(residuals),
        "shifts": shifts_doc(residuals),
        "residuals": sum(len(r) for r in residuals.values()),
        "in_predictor": surrogate.verified.size if isinstance(surrogate, VerifiedSurrogate) else 0,
        "drift_priced_from": MIN_DRIFT_SESSIONS,
        "scoring": "each member judged with the residuals of the other sessions only (their drift priced from "
        f"{MIN_DRIFT_SESSIONS} sessions on)",
    }


def default_limits(cands: Sequence[Candidate]) -> tuple[float, ...]:
    """Limits spread over the front's predicted latencies (10th..90th percentile)."""
    lat = np.array([c.latency_ms for c in cands])
    return tuple(float(round(v, 3)) for v in np.quantile(lat, np.linspace(0.1, 0.9, DEFAULT_LIMITS)))


def retest_difference(verified: dict[str, MeasureResult], calibration: dict[str, MeasureResult]) -> dict[str, Any]:
    """How much one arch's measurement moves between two sessions on this device: the
    90th percentile of |verification - calibration| / calibration over archs measured in
    both (>= 3 of them), else the median block-minimum spread of the verification records
    (the agent's own within-session spread, a lower bound)."""
    pairs = [
        abs(v.estimate_ms - calibration[a].estimate_ms) / calibration[a].estimate_ms
        for a, v in verified.items()
        if a in calibration and v.estimate_ms is not None and calibration[a].estimate_ms
    ]
    if len(pairs) >= 3:
        return {"pct": float(100 * np.quantile(pairs, 0.9)), "source": "calibration vs verification", "n": len(pairs)}
    spreads = [v.stats.block_min_spread for v in verified.values() if v.stats is not None]
    if spreads:
        return {"pct": float(100 * np.median(spreads)), "source": "block-minimum spread", "n": len(spreads)}
    return {"pct": 0.0, "source": "none", "n": 0}


def judge_picks(
    cands: Sequence[Candidate],
    quantile: Quantile,
    safe: float | None,
    limits: Sequence[float],
    measured: Mapping[str, float],
    in_calibration: set[str],
    retest_pct: float,
) -> dict[str, Any]:
    """For each limit, `select --max-latency L [--safe safe]`'s pick on the full front, and
    whether its measured latency broke L. A pick not verified (or in the calibration data)
    is listed, not judged. `quantile` prices the `--safe` bounds."""
    pool = _with_limit(cands, quantile, safe)
    picks = []
    for limit in limits:
        chosen = select(pool, Limits(max_latency_ms=limit), top=1)
        if not chosen:
            picks.append({"limit_ms": limit, "arch_id": None, "state": "no pick"})
            continue
        c = chosen[0]
        m = measured.get(c.arch.id)
        state = "in calibration" if c.arch.id in in_calibration else "not verified" if m is None else "judged"
        row = {"limit_ms": limit, "arch_id": c.arch.id, "bound_ms": c.limit_latency_ms, "measured_ms": m, "state": state}
        if state == "judged":
            assert m is not None
            row.update(_verdict(m, limit))
        picks.append(row)
    judged = [p for p in picks if p["state"] == "judged"]
    return {"picks": picks, **_rates(judged, retest_pct), "tightest": tightest_picks(pool, measured, in_calibration, retest_pct)}


def tightest_picks(pool: Sequence[Candidate], measured: Mapping[str, float], in_calibration: set[str], retest_pct: float) -> dict[str, Any]:
    """Every member some limit would pick, judged at the tightest such limit: its own bound.

    `select --max-latency L` picks a member of the front on (bound, top-1) for every L from
    that member's bound up to the next member's, and a breach is likeliest at the lowest of
    them. So each front member that was verified (and is not in the calibration data) is one
    trial, judged at L = its bound: a rate over many more picks than a handful of limits
    gives, and an upper bound on the rate at any limit. With a 95 % Wilson interval."""
    judged = []
    for c in non_dominated(list(pool)):
        m = measured.get(c.arch.id)
        if m is None or c.arch.id in in_calibration:
            continue
        judged.append({"arch_id": c.arch.id, "limit_ms": c.limit_latency_ms, "measured_ms": m, **_verdict(m, c.limit_latency_ms)})
    return {"picks": judged, **_rates(judged, retest_pct)}


def _verdict(measured_ms: float, limit_ms: float) -> dict[str, Any]:
    """Whether a pick measured at `measured_ms` broke `limit_ms`, and by how much (percent)."""
    return {"violated": measured_ms > limit_ms, "excess_pct": 100.0 * (measured_ms - limit_ms) / limit_ms}


def _rates(judged: Sequence[dict[str, Any]], retest_pct: float) -> dict[str, Any]:
    """Violation figures of judged picks: the rate with its 95 % Wilson interval, the share
    breaking the limit by more than the test-retest difference, the largest excess."""
    if not judged:
        return {"judged": 0, "violation_rate": None, "violation_ci95": None, "beyond_retest_rate": None, "max_excess_pct": None}
    from scipy.stats import binomtest

    k = sum(p["violated"] for p in judged)
    ci = binomtest(k, len(judged)).proportion_ci(confidence_level=0.95, method="wilson")
    return {
        "judged": len(judged),
        "violation_rate": k / len(judged),
        "violation_ci95": [float(ci.low), float(ci.high)],
        "beyond_retest_rate": sum(p["excess_pct"] > retest_pct for p in judged) / len(judged),
        "max_excess_pct": max(p["excess_pct"] for p in judged),
    }


def front_hv(run: RunFolder, device_key: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Hypervolume of the measured members on (top-1 error, latency): predicted vs measured,
    against the run's reference point where it has this device's latency, else 1.1x the
    largest latency seen and 100 % error."""
    if not rows:
        return {"predicted": None, "measured": None, "ratio": None, "reference_point": None}
    pred = np.array([[100 - r["top1_pct"], r["predicted_ms"]] for r in rows])
    meas = np.array([[100 - r["top1_pct"], r["measured_ms"]] for r in rows])
    ref_doc = run.front().get("reference_point") or {}
    lat_ref = ref_doc.get(f"latency:{device_key}")
    top_ref = ref_doc.get("top1")
    lat_ref = float(lat_ref) if isinstance(lat_ref, (int, float)) else 1.1 * float(max(pred[:, 1].max(), meas[:, 1].max()))
    err_ref = 100.0 - float(top_ref) if isinstance(top_ref, (int, float)) else 100.0
    ref = np.array([err_ref, lat_ref])
    hv_p, hv_m = hypervolume(pred, ref), hypervolume(meas, ref)
    return {
        "predicted": hv_p,
        "measured": hv_m,
        "ratio": hv_m / hv_p if hv_p > 0 else None,
        "reference_point": {"top1_error_pct": err_ref, "latency_ms": lat_ref},
        "members": len(rows),
    }


def _describe(request: VerifyRequest) -> dict[str, Any]:
    if request.all:
        return {"mode": "all"}
    if request.top is not None:
        return {"mode": "top", "n": request.top}
    return {"mode": "budgets", "budgets_ms": list(request.budgets), "safe": request.safe}
