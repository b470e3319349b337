"""The quiet gate: before each interleave group the agent looks at the device, and waits
(bounded) until other work leaves it alone.

A look is one window of ``/proc/stat`` (the share of all CPUs that processes other than
the agent kept busy; steal time counts, as other tenants of a VM), the firmware's
throttling bits and the thermal zones. The device is quiet when that share is at most
``protocol.quiet_max_busy``, nothing throttles now and no zone is at ``max_temp_c``.
While it is not, the gate looks again, until the batch's waiting budget
(``protocol.quiet_wait_s``, shared by every gate of the batch) is spent; then the batch goes
on and the record says why it was not quiet. A frequency-scaling governor is only noted:
waiting does not change it. Pyperf's ``system show`` and Google Benchmark's "CPU scaling is
enabled" warn about the same things.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

from device_agents.records import Protocol, QuietCheck, ThrottleState
from device_agents.telemetry import TelemetryReader, usable_temperatures

#: One look at /proc/stat while waiting; the first look of a batch takes as long.
LOOK_S = 0.5
#: The shortest look (between groups with no cooldown): 25 ticks per CPU at USER_HZ 100.
MIN_LOOK_S = 0.25
#: Governors that hold the clock still.
STEADY_GOVERNORS = ("performance",)


def parse_proc_stat(text: str, cpus: Optional[Collection[int]] = None) -> Optional[Tuple[int, int, int]]:
    """(busy ticks, total ticks, CPUs) from ``/proc/stat``: its aggregate ``cpu`` line, or the
    sum of the ``cpuN`` lines of `cpus` (an agent's CPU set); None if absent.

    Busy is user + nice + system + irq + softirq + steal; idle and iowait are idle; guest
    time is already inside user and nice. A CPU set none of whose lines is there falls back
    to the aggregate line.
    """
    aggregate: Optional[Tuple[int, int]] = None
    busy = total = 0
    online = picked = 0
    for line in text.splitlines():
        fields = line.split()
        name = fields[0][3:] if fields and fields[0].startswith("cpu") else "-"
        if name and not name.isdigit():
            continue
        ticks = _ticks(fields[1:9])
        if not name:
            if ticks is None:
                return None
            aggregate = ticks
            continue
        online += 1
        if ticks is not None and cpus is not None and int(name) in cpus:
            busy, total, picked = busy + ticks[0], total + ticks[1], picked + 1
    if picked:
        return busy, total, picked
    if aggregate is None:
        return None
    return aggregate[0], aggregate[1], max(online, 1)


def _ticks(fields: List[str]) -> Optional[Tuple[int, int]]:
    """(busy, total) ticks of one ``cpu`` line's counters; None if they are not numbers."""
    try:
        values = [int(v) for v in fields]
    except ValueError:
        return None
    if len(values) < 4:
        return None
    values += [0] * (8 - len(values))
    user, nice, system, idle, iowait, irq, softirq, steal = values
    b = user + nice + system + irq + softirq + steal
    return b, b + idle + iowait


def busy_share(before: Tuple[int, int, int], after: Tuple[int, int, int], own_ticks: float = 0.0) -> Optional[float]:
    """Share of all CPUs kept busy between two ``/proc/stat`` readings, less the agent's own
    ticks; None when no tick passed (or the counters went back)."""
    d_busy = after[0] - before[0]
    d_total = after[1] - before[1]
    if d_total <= 0 or d_busy < 0:
        return None
    return min(1.0, max(0.0, (d_busy - own_ticks) / d_total))


def assess(
    share: Optional[float],
    cpus: int,
    throttle: Optional[ThrottleState],
    temperatures_c: Dict[str, float],
    governors: Dict[str, str],
    protocol: Protocol,
) -> Tuple[List[str], List[str]]:
    """(reasons the device is not quiet, notes on what waiting cannot change)."""
    reasons: List[str] = []
    notes: List[str] = []
    if share is None:
        notes.append("load unknown (/proc/stat unreadable)")
    elif share > protocol.quiet_max_busy:
        reasons.append(f"other processes kept {share:.0%} of {cpus} CPU(s) busy "
                       f"(quiet: at most {protocol.quiet_max_busy:.0%})")
    if throttle is not None and throttle.now:
        reasons.append(f"firmware throttling now: {', '.join(throttle.now)}")
    for zone, value in sorted(usable_temperatures(temperatures_c).items()):
        if value >= protocol.max_temp_c:
            reasons.append(f"{zone} at {value:.1f} C (limit {protocol.max_temp_c:g} C)")
    scaling: Dict[str, List[str]] = {}
    for cpu, gov in sorted(governors.items()):
        if gov not in STEADY_GOVERNORS:
            scaling.setdefault(gov, []).append(cpu)
    for gov, which in scaling.items():
        notes.append(f"CPU frequency governor {gov!r} on {', '.join(which)}: the clock may change during a run "
                     "(the 'performance' governor holds it still)")
    return reasons, notes


def own_cpu_ticks() -> float:
    """This process's CPU time in /proc/stat ticks (so the gate does not count itself)."""
    t = os.times()
    try:
        hz = os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        hz = 100
    return (t.user + t.system) * hz


class QuietGate:
    """Looks at the device before each group and waits for quiet within one batch budget.

    `cpus` are the CPUs the measurement runs on (the protocol's affinity or the agent's CPU
    set): other work on CPUs outside them is not the gate's business. The clock, sleep and
    own-ticks functions are injectable, so tests drive the gate on a fake ``/proc`` and
    ``/sys`` without waiting.
    """

    def __init__(
        self,
        reader: TelemetryReader,
        protocol: Protocol,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        own_ticks: Callable[[], float] = own_cpu_ticks,
        cpus: Optional[Sequence[int]] = None,
    ) -> None:
        self.reader = reader
        self.cpus = frozenset(cpus) if cpus is not None else None
        self.protocol = protocol
        self.clock = clock
        self.sleep = sleep
        self.own_ticks = own_ticks
        self.budget_left_s = protocol.quiet_wait_s

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            with open(os.path.join(self.reader.proc_root, "stat"), "r") as fh:
                return parse_proc_stat(fh.read(), self.cpus)
        except OSError:
            return None

    def look(self, window_s: float) -> QuietCheck:
        """One look: /proc/stat over `window_s`, then throttling, temperatures, governors."""
        before, own0 = self._stat(), self.own_ticks()
        self.sleep(window_s)
        after, own1 = self._stat(), self.own_ticks()
        share = busy_share(before, after, own1 - own0) if before and after else None
        cpus = after[2] if after else 1
        try:
            throttle = self.reader.throttle()
            temps = self.reader.temperatures()
            governors = self.reader.cpu_freqs()[1]
        except Exception:  # noqa: BLE001 - a telemetry failure must not stop the batch
            throttle, temps, governors = None, {}, {}
        reasons, notes = assess(share, cpus, throttle, temps, governors, self.protocol)
        return QuietCheck(quiet=not reasons, waited_s=0.0, busy_share=None if share is None else round(share, 4),
                          reasons=tuple(reasons), notes=tuple(notes))

    def check(self, window_s: float) -> QuietCheck:
        """Look for `window_s` (at least MIN_LOOK_S); while not quiet and budget is left, look again."""
        result = self.look(max(window_s, MIN_LOOK_S))
        waited = 0.0
        while not result.quiet and self.budget_left_s >= MIN_LOOK_S:
            t0 = self.clock()
            result = self.look(min(LOOK_S, self.budget_left_s))
            spent = self.clock() - t0
            self.budget_left_s -= spent
            waited += spent
        return QuietCheck(quiet=result.quiet, waited_s=round(waited, 3), busy_share=result.busy_share,
                          reasons=result.reasons, notes=result.notes)
