"""Calibrate a device: measure the subnets that teach a predictor most, then fit it.

The design is chosen by a seeded size-stratified sampler (min and max nets at every
resolution, then sizes spread evenly), so a rerun with the same budget and seed asks for
the same archs and skips those the table already holds under the same device, runtime
and protocol: killing calibration at any moment loses at most the interleave group being
measured (``protocol.interleave`` models, whose records are final together).
Optional adaptive rounds then add the archs whose predicted latency is most uncertain.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from device_agents.records import MeasureResult, Protocol
from exporters import ExportCache
from ofa2_edge.calibration.design import size_stratified_genomes
from ofa2_edge.core.errors import DeviceUnreachableError, InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.pipeline import MeasurePlan, measure_archs
from ofa2_edge.devices.session import DeviceSession
from ofa2_edge.space.arch import Arch, SearchSpace, archs_of
from ofa2_edge.surrogates.base import LatencySurrogate
from ofa2_edge.surrogates.lut import LutSurrogate, read_ofa_tables
from ofa2_edge.surrogates.select import fit_best
from ofa2_edge.tables.device import DeviceTable, MeasureKey

log = logging.getLogger(__name__)

Progress = Callable[[str, dict[str, Any]], None]
#: Candidate pool an adaptive round picks its most uncertain archs from.
ADAPTIVE_POOL = 4000


@dataclass
class CalibrationResult:
    device: str
    fingerprint: str
    design: list[Arch]
    skipped: int = 0  # already in the table under the same device, runtime and protocol
    measured: list[MeasureResult] = field(default_factory=list)
    not_measured: list[Arch] = field(default_factory=list)
    surrogate: LatencySurrogate | None = None
    report: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    refitted: bool = True  # False: nothing new was measured, the saved predictor was kept

    @property
    def failed(self) -> list[MeasureResult]:
        return [r for r in self.measured if not r.ok]


def design_archs(budget: int, seed: int, space: SearchSpace) -> list[Arch]:
    """The (at most) `budget` archs calibration measures (deterministic in `seed`)."""
    need = 2 * len(space.resolutions)
    if budget < need:
        raise InvalidInputError(
            f"--budget {budget} is too small: calibration always measures the min and max nets of each of the "
            f"{len(space.resolutions)} resolutions, so it needs at least {need}"
        )
    archs = archs_of(size_stratified_genomes(budget, np.random.default_rng(seed), space), w=space.w)
    # each arch once: a small space (one resolution) can draw an extreme net twice, and a batch
    # refuses the same arch twice
    return list({a.id: a for a in archs}.values())


def most_uncertain(surrogate: LatencySurrogate, n: int, seed: int, space: SearchSpace, exclude: set[str]) -> list[Arch]:
    """The `n` archs of a random pool with the widest relative 80 % prediction interval."""
    pool = size_stratified_genomes(ADAPTIVE_POOL, np.random.default_rng(seed), space, include_extremes=False)
    lo, hi = surrogate.predict_interval(pool, 0.8)
    width = (hi - lo) / np.maximum(surrogate.predict(pool), 1e-9)
    picked: list[Arch] = []
    for i in np.argsort(-width):
        arch = Arch.from_genome(pool[i], w=space.w)
        if arch.id not in exclude and all(arch.id != p.id for p in picked):
            picked.append(arch)
        if len(picked) == n:
            break
    return picked


def bind_table(
    session: DeviceSession,
    table: DeviceTable,
    device: Device,
    plan: MeasurePlan,
    protocol: Protocol,
    reuse: bool = False,
    accept_env_change: bool = False,
) -> MeasureKey:
    """Bind `table` to the probed device (another device's table is refused unless `reuse`),
    check the device has the plan's runtime and the settings (governor, power mode, CPUs
    online) the table was measured under (unless `accept_env_change`), and return the key
    its records are kept under."""
    from ofa2_edge.calibration.health import check_settings

    probe = session.probe
    assert probe is not None
    check_settings(table, probe, device.key, accept_env_change)
    version = session.runtime_version(plan.runtime)
    table.bind(probe, plan.runtime, reuse=reuse)
    return MeasureKey(probe.fingerprint, plan.runtime, version, protocol)


def device_lut(table: DeviceTable) -> LutSurrogate | None:
    """This device's block table (block-mode calibration or an import), if it has one."""
    if not table.lookup_table_paths():
        return None
    return LutSurrogate(read_ofa_tables(table.folder))


def usable_lut(
    table: DeviceTable, archs: list[Arch], width_mult: float
) -> tuple[LutSurrogate | None, dict[str, Any]]:
    """The device's block table if it can price every arch (width, and every layer at each
    resolution), else None; and a note on why, for the fit report."""
    lut = device_lut(table)
    if lut is None:
        return None, {"used": False, "reason": "this device has no block table (calibrate --blocks)"}
    note: dict[str, Any] = {"resolutions": list(lut.resolutions)}
    if lut.width_mult != width_mult:
        return None, {**note, "used": False, "reason": f"the block table is for w{lut.width_mult}, not w{width_mult}"}
    missing = sorted(r for r in {a.r for a in archs} if not lut.covers(r))
    if missing:
        reason = f"it does not cover the measured resolution(s) {', '.join(map(str, missing))}"
        log.info("not trying the LUT hybrid: %s", reason)
        return None, {**note, "used": False, "reason": reason}
    return lut, {**note, "used": True}


def fit_table(
    table: DeviceTable,
    width_mult: float,
    prior: LatencySurrogate | None = None,
    prior_label: str = "",
    seed: int = 0,
    nested: bool = True,
    quantity: str = "latency",
    group: dict[str, Any] | None = None,
) -> tuple[LatencySurrogate, dict[str, Any]]:
    """Fit the best surrogate on a table's measurements of `quantity` and save it as that
    quantity's predictor (`surrogate.json` for latency). The block table (a latency LUT)
    and a prior (another device's latency predictor) take part only in a latency fit.

    A latency predictor's intervals are then widened by what one calibration session cannot
    show: the part-to-part spread of a device group (`group`, as `calibrate --group` measured
    it; a refit keeps the saved predictor's) and what the table's verification records showed
    on front members in later sessions (:mod:`ofa2_edge.surrogates.verified`)."""
    archs, values, records = table.dataset(quantity=quantity)
    archs_w = [(a, y) for a, y in zip(archs, values, strict=True) if a.w == width_mult]
    if not archs_w:
        what = "measurements" if quantity == "latency" else f"measurements that report {quantity}"
        raise InvalidInputError(
            f"latency_tables/{table.key} has no successful w{width_mult} {what} to fit; run calibrate first"
        )
    if quantity == "latency":
        lut, lut_note = usable_lut(table, [a for a, _ in archs_w], width_mult)
    else:
        lut, lut_note, prior, prior_label = None, {"used": False, "reason": f"a block table prices latency, not {quantity}"}, None, ""
    model, report = fit_best(
        [a for a, _ in archs_w],
        np.array([y for _, y in archs_w]),
        prior=prior,
        lut=lut,
        rng=np.random.default_rng(seed),
        nested=nested,
        width_mult=width_mult,
        prior_label=prior_label,
    )
    flagged = sum(1 for r in records if r.flags)
    report["quantity"] = quantity
    report["table"] = {"measurements": len(archs_w), "flagged": flagged, "block_table": lut_note}
    model.report = report
    if quantity == "latency":
        model = _widened(table, model, group, {r.arch_id for r in records})
        report = model.report
    model.save(table.predictor_path(quantity), device=table.key)
    return model, report


def _widened(table: DeviceTable, model: LatencySurrogate, group: dict[str, Any] | None, fitted_on: set[str]) -> LatencySurrogate:
    """`model` wrapped in the group spread (given, or the saved group predictor's), then in
    the residuals of the table's verification records of archs it was not fitted on, each
    only where there is one."""
    from ofa2_edge.surrogates.group import GroupSurrogate
    from ofa2_edge.surrogates.verified import session_residuals, with_verified, without_verified

    if group is None:
        saved = table.surrogate()
        saved = without_verified(saved) if saved is not None else None
        group = (saved.report or {}).get("group") if isinstance(saved, GroupSurrogate) else None
        group = group if isinstance(group, dict) and isinstance(group.get("spread_log"), (int, float)) else None
    if group is not None:
        wrapped = GroupSurrogate(model.width_mult, model, float(group["spread_log"]))
        wrapped.report = {**model.report, "group": group}
        model = wrapped
    return with_verified(model, session_residuals(table.verification_records(), model, fitted_on))


def calibrate(
    device: Device,
    workspace: Workspace,
    budget: int,
    protocol: Protocol,
    fmt: str | None = None,
    space: SearchSpace | None = None,
    seed: int = 0,
    adaptive_rounds: int = 0,
    reuse_table: bool = False,
    trust_on_first_use: bool = False,
    prior: LatencySurrogate | None = None,
    prior_label: str = "",
    progress: Progress | None = None,
    export_lock: AbstractContextManager[Any] | None = None,
    measure_lock: AbstractContextManager[Any] | None = None,
    accept_env_change: bool = False,
) -> CalibrationResult:
    """Measure a design of `budget` subnets on `device` (resuming), then fit and save its surrogate.

    With `adaptive_rounds`, a quarter of the budget per round is spent on the archs the
    current fit is least sure about (on top of `budget`). The table's writer lock is held
    throughout: a second calibration of the same device is refused (LockedError) before
    it measures anything; other devices' tables are not affected.
    """
    table = DeviceTable.of(workspace, device.key)
    with table.lock():
        return _calibrate_locked(
            device, workspace, table, budget, protocol, fmt, space, seed, adaptive_rounds, reuse_table,
            trust_on_first_use, prior, prior_label, progress, export_lock, measure_lock, accept_env_change,
        )


def _calibrate_locked(
    device: Device,
    workspace: Workspace,
    table: DeviceTable,
    budget: int,
    protocol: Protocol,
    fmt: str | None,
    space: SearchSpace | None,
    seed: int,
    adaptive_rounds: int,
    reuse_table: bool,
    trust_on_first_use: bool,
    prior: LatencySurrogate | None,
    prior_label: str,
    progress: Progress | None,
    export_lock: AbstractContextManager[Any] | None,
    measure_lock: AbstractContextManager[Any] | None,
    accept_env_change: bool = False,
) -> CalibrationResult:
    from ofa2_edge.calibration.health import settled

    space = space or SearchSpace()
    emit = progress or (lambda event, info: None)
    plan = MeasurePlan.for_device(device, fmt)
    cache = ExportCache(workspace.exports_dir)
    design = design_archs(budget, seed, space)
    for _ in table.records():  # refuse a damaged table before the device is touched
        pass
    t0 = time.perf_counter()
    with DeviceSession(device, workspace.cache_dir, trust_on_first_use=trust_on_first_use) as session:
        key = bind_table(session, table, device, plan, protocol, reuse_table, accept_env_change)
        result = CalibrationResult(device.key, key.fingerprint, design)

        def run_round(archs: list[Arch], label: str) -> bool:
            done = settled(table, key)  # a model measured hot or throttled is measured once more
            todo = [a for a in archs if a.id not in done]
            result.skipped += len(archs) - len(todo)
            emit("round", {"label": label, "total": len(archs), "todo": len(todo), "skipped": len(archs) - len(todo)})

            def commit(record: MeasureResult) -> None:
                table.append(record)  # durable before anything else happens
                result.measured.append(record)
                emit("result", {"record": record})

            report = measure_archs(
                session, todo, plan, protocol, cache, commit, export_lock=export_lock, measure_lock=measure_lock
            )
            result.not_measured += report.not_measured
            return not report.not_measured

        complete = run_round(design, "design")
        for i in range(adaptive_rounds):
            if not complete:
                break
            model, _ = fit_table(table, space.w, prior, prior_label, seed, nested=False)
            measured = {a.id for a in table.dataset()[0]}
            extra = most_uncertain(model, max(1, budget // 4), seed + 1 + i, space, measured)
            complete = run_round(extra, f"adaptive round {i + 1}")
            result.design += extra
    result.seconds["measure"] = time.perf_counter() - t0
    if result.not_measured and not table.dataset()[0]:
        ids = ", ".join(a.id for a in result.not_measured[:5])
        more = f" and {len(result.not_measured) - 5} more" if len(result.not_measured) > 5 else ""
        raise DeviceUnreachableError(
            f"{device.key}: the link was lost before any model was measured ({ids}{more} not measured); "
            "nothing to fit. Run calibrate again when the device is reachable: it resumes"
        )
    t1 = time.perf_counter()
    kept = _kept_predictor(table, result, space.w, prior)
    if kept is not None:
        # Nothing new from this design: the saved predictor stays, so a rerun prices (and
        # picks) exactly as before; records added since (e.g. bundle verifications) enter
        # at the next explicit `fit`.
        result.surrogate, result.report, result.refitted = kept, kept.report, False
    else:
        emit("fit", {})
        result.surrogate, result.report = fit_table(table, space.w, prior, prior_label, seed)
    result.seconds["fit"] = time.perf_counter() - t1
    return result


def _kept_predictor(
    table: DeviceTable, result: CalibrationResult, width_mult: float, prior: LatencySurrogate | None
) -> LatencySurrogate | None:
    """The saved predictor, if this calibration gives no reason to refit it: nothing new was
    measured, no prior was asked for, and it was fitted on this width's measurements."""
    if prior is not None or any(r.ok for r in result.measured):
        return None
    saved = table.surrogate()
    if saved is None or saved.width_mult != width_mult or not (saved.report or {}).get("table"):
        return None  # none yet, another width, or a block-table sum not yet fitted on measurements
    return saved
