"""Is a device's predictor good enough to price a bundle? A plain verdict, with the cause.

A predictor is judged on what can fail silently on a busy or hot board: the share of its
measurements the agent flagged (unstable, throttled, hot, ...), its held-out accuracy (share
within +-10 %), and the width of its prediction intervals. Each problem comes with the
cause the records show (the device's load average, throttling, a power-saving governor)
and the fix. `calibrate`, `fit` and `run` print the verdict; `run` refuses to ship a
bundle priced by a predictor that fails it unless told to accept it (the manifest records that).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_agents.records import Flag, MeasureResult
from ofa2_edge.surrogates.base import LatencySurrogate
from ofa2_edge.tables.device import DeviceTable

#: Coverage of the interval whose width is judged (the one `select` and bundles report).
INTERVAL_COVERAGE = 0.8
_HEAT = {Flag.THROTTLED, Flag.UNDER_VOLTAGE, Flag.FREQ_CAPPED, Flag.SOFT_TEMP_LIMIT, Flag.HOT}


@dataclass(frozen=True)
class QualityRules:
    """The thresholds a predictor must meet to price a bundle without `--accept-unstable`."""

    min_within_10pct: float = 0.80  # held-out share of archs predicted within +-10 %
    max_flagged_share: float = 0.25  # measurements flagged unstable, throttled, hot, ...
    max_interval_ratio: float = 0.50  # median width of the 80 % interval / prediction


@dataclass(frozen=True)
class Quality:
    """The verdict on one device's predictor: figures, problems, their causes and fixes."""

    device: str
    figures: dict[str, Any]
    problems: tuple[str, ...] = ()
    causes: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def good(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "good": self.good, "figures": self.figures, "problems": list(self.problems),
                "causes": list(self.causes), "fixes": list(self.fixes), "notes": list(self.notes)}  # fmt: skip


def _load_per_cpu(records: list[MeasureResult], cpus: int | None) -> float | None:
    loads = [r.telemetry_before.load_avg[0] for r in records if r.telemetry_before and r.telemetry_before.load_avg]
    if not loads or not cpus:
        return None
    return statistics.median(loads) / cpus


def _governors(records: list[MeasureResult]) -> set[str]:
    found: set[str] = set()
    for r in records:
        if r.telemetry_before is not None:
            found |= set(r.telemetry_before.cpu_governor.values())
    return found


def _cpus(table: DeviceTable) -> int | None:
    cores = ((table.device_info() or {}).get("facts") or {}).get("cpu_cores")
    return cores if isinstance(cores, int) and not isinstance(cores, bool) and cores > 0 else None


def assess(
    table: DeviceTable, model: LatencySurrogate | None = None, rules: QualityRules = QualityRules()
) -> Quality:
    """Judge `table`'s latency predictor (`model`, default: the table's own) and its records."""
    model = model if model is not None else table.predictor()
    archs, _, records = table.dataset()
    held = (model.report or {}).get("held_out") or {}
    figures: dict[str, Any] = {"measurements": len(records), "predictor": model.kind}
    problems: list[str] = []
    causes: list[str] = []
    fixes: list[str] = []
    notes: list[str] = []
    if not records:
        # An imported lookup table (OFA's Note10) or an uncorrected block-table sum: nothing
        # measured end to end to judge it by.
        notes.append("no end-to-end measurements to judge it by (an imported or block-table predictor)")
        return Quality(table.key, figures, notes=tuple(notes))

    flagged = [r for r in records if r.flags]
    heat = [r for r in records if _HEAT & set(r.flags)]
    share = len(flagged) / len(records)
    figures["flagged_share"] = round(share, 4)
    figures["flags"] = {f.value: sum(f in r.flags for r in records) for f in Flag if any(f in r.flags for r in records)}
    within = held.get("share_within_10pct")
    figures["within_10pct_held_out"] = within
    figures["mape_pct_held_out"] = held.get("mape_pct")
    archs = [a for a in archs if a.w == model.width_mult]
    if archs:
        lo, hi = model.predict_interval(archs, INTERVAL_COVERAGE)
        mean = np.maximum(model.predict(archs), 1e-12)
        figures["interval_ratio_median"] = round(float(np.median((hi - lo) / mean)), 4)
    load = _load_per_cpu(records, _cpus(table))
    figures["load_per_cpu_median"] = None if load is None else round(load, 3)

    if share > rules.max_flagged_share:
        problems.append(f"{share:.0%} of {len(records)} measurements are flagged (limit {rules.max_flagged_share:.0%})")
    if within is not None and within < rules.min_within_10pct:
        problems.append(
            f"held out, {within:.0%} of archs are predicted within +-10 % (needs {rules.min_within_10pct:.0%})"
        )
    elif within is None:
        notes.append("no held-out figures (too few measurements to hold any out)")
    ratio = figures.get("interval_ratio_median")
    if ratio is not None and ratio > rules.max_interval_ratio:
        problems.append(
            f"its {INTERVAL_COVERAGE:.0%} intervals are {ratio:.0%} of the prediction wide (limit {rules.max_interval_ratio:.0%})"
        )
    if not problems:
        return Quality(table.key, figures, notes=tuple(notes))

    if load is not None and load > 0.5:
        causes.append(f"the device was busy: median load average {load:.2f} per CPU while measuring")
        on_cpu_clock = sum(r.timer_used == "thread_cpu" for r in records)
        if on_cpu_clock * 2 >= len(records):
            # The thread-CPU clock was already in use (chosen, or the agent's fallback): a
            # process on the same core's caches or hyper-thread sibling slows the thread itself.
            causes.append(
                f"{on_cpu_clock} of {len(records)} measurements already used the thread-CPU clock, and it was "
                "disturbed too (other processes share the core's caches or its hyper-thread sibling)"
            )
            fixes.append("stop other work on the device (or measure on an idle one) and measure again")
        else:
            fixes.append(
                "stop other work on the device and measure again; on a shared host use `--timer thread_cpu` "
                "(one thread, CPU runtimes: other processes do not count)"
            )
    if heat:
        causes.append(f"{len(heat)} measurement(s) ran throttled, hot or power-capped")
        fixes.append("cool the board (heatsink, fan), use a stronger power supply, then measure again")
    slow = sorted(g for g in _governors(records) if g in {"powersave", "conservative", "ondemand", "schedutil"})
    if slow and share > rules.max_flagged_share:
        causes.append(f"CPU frequency governor {', '.join(slow)} (clocks change while measuring)")
        fixes.append("set the governor to performance on the device (cpupower frequency-set -g performance)")
    if not causes:
        causes.append("no load, heat or governor problem recorded: the measurements vary on their own, or are too few")
    fixes.append(
        f"then refit: `ofa2-edge calibrate --device {table.key} --budget N` with a larger N (it resumes and adds), "
        "or `--adaptive-rounds 2`"
    )
    return Quality(table.key, figures, tuple(problems), tuple(causes), tuple(fixes), tuple(notes))
