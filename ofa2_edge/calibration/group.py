"""Calibrate a device group: the design spread over the group's replicas, anchors on each.

`calibrate --group G` measures the same design as `calibrate --device` into one table,
`latency_tables/<G>/`, but over every reachable replica of G at once (a
:class:`~ofa2_edge.devices.fleet.WorkQueue`: an idle replica takes the next models; a
replica whose link drops for good hands its models back and another measures them). A
small anchor subset of the design is measured on *every* replica: the per-replica offset
(its anchors' latency over the replicas' median, geometric mean, with the range over the
anchors) and the part-to-part spread (standard deviation of the log offsets) come from it.
The group's predictor is fitted on all replicas' records and saved wrapped in a
:class:`~ofa2_edge.surrogates.group.GroupSurrogate` whose intervals include that spread.

Replicas that share one machine's CPUs (their agents report the same kernel boot id:
containers, loopback "boards", qemu-user boards on the host; and CPU sets that overlap, or
none) are timed one at a time, and those on the host itself never while the host exports
(:class:`MachineLocks`). Timed at once, they would take each other's CPU: every record would
be taken under a load no later measurement of one board (`verify`, `bundle --verify`,
deployment) sees, and on the thread-CPU clock where those see the wall clock. Measured on the
2-core loopback fleet (4 boards, quick protocol): the same archs on one board were +4.8 %
slower (geometric mean, three rounds each) while the other three measured, and the table's
records were 100 % thread-CPU (off-CPU 59 % of the wall time) against 78 % wall-clock for the
board alone; the group predictor priced a condition that `verify` never reproduced.
Replicas pinned to disjoint CPUs of one machine (cpusets, `taskset`) are timed at once: on
this 2-core host a model timed on core 0 was +2.5 % slower on average (3 pairs, +0.2..+5.6 %)
while another ran on core 1, what shared caches and memory cost on any multi-core board.

Resumable like `calibrate`: archs already in the table under the same runtime and protocol
(from any replica; anchors: from that replica) are not measured again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from device_agents.probe import boot_id as read_boot_id
from device_agents.records import MeasureResult, Protocol
from exporters import ExportCache
from ofa2_edge.calibration.calibrate import Progress, bind_table, design_archs, fit_table
from ofa2_edge.core.errors import DeviceUnreachableError, InvalidInputError, Ofa2EdgeError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.devices.fleet import CpuClaim, CpuSlots, WorkQueue, run_replicas
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.pipeline import MeasurePlan, measure_archs
from ofa2_edge.devices.session import DeviceSession
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.surrogates.group import MAX_SPREAD_LOG
from ofa2_edge.tables.device import DeviceTable

log = logging.getLogger(__name__)

#: Anchors measured on every replica (at most a quarter of the design).
DEFAULT_ANCHORS = 6
#: One export at a time in this process: torch's ONNX exporter keeps process-global state
#: (two groups calibrated from two threads would corrupt each other's exports).
EXPORT_LOCK = threading.Lock()


@dataclass
class ReplicaState:
    key: str
    reached: bool = False
    measured: int = 0
    failed: int = 0
    dropped: str | None = None  # why the replica left before the queue was empty
    lost_anchors: list[str] = field(default_factory=list)
    machine: str | None = None  # "host", "shared" (CPUs with another replica), "own" or None (unknown)
    cpus: list[int] | None = None  # the CPUs its agent runs on (None: unknown, the whole machine)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "reached": self.reached, "measured_now": self.measured, "failed_now": self.failed,
                "dropped": self.dropped, "lost_anchors": self.lost_anchors, "machine": self.machine,
                "cpus": self.cpus}  # fmt: skip


#: The CPUs of each machine (kernel boot id) that replicas run on, for the whole process: two
#: groups calibrated at once whose replicas share a machine's CPUs are not timed at once either.
_MACHINES: dict[str, CpuSlots] = {}
_MACHINES_GUARD = threading.Lock()


def _machine(boot: str) -> CpuSlots:
    with _MACHINES_GUARD:
        return _MACHINES.setdefault(boot, CpuSlots())


class _ExportClaim:
    """What an export holds: the process's export lock, then the whole host (an export takes
    every core, so no replica on the host is timed meanwhile)."""

    def __init__(self, export_lock: threading.Lock, host: CpuSlots | None) -> None:
        self.export_lock = export_lock
        self.host = host.claim(None) if host is not None else None

    def __enter__(self) -> None:
        self.export_lock.acquire()
        if self.host is not None:
            try:
                self.host.__enter__()
            except BaseException:
                self.export_lock.release()
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self.host is not None:
                self.host.__exit__(*exc)
        finally:
            self.export_lock.release()


class MachineLocks:
    """What a replica is timed under: a claim on the CPUs its agent runs on (its CPU set, on the
    machine its kernel boot id names).

    Replicas on one machine whose CPU sets overlap (or that report none: the whole machine)
    are timed one at a time; replicas pinned to disjoint CPUs (cpusets, `taskset`) at once.
    Exports claim the whole host (`export_lock`), so the host's own work never overlaps
    the timing of a replica on it (as `calibrate --device local` does). A replica whose agent
    reports no boot id (not Linux, or an older agent) gets no claim: it is taken to be a board
    of its own."""

    def __init__(self, export_lock: threading.Lock, host_boot_id: str | None = None) -> None:
        self.host_boot_id = host_boot_id
        #: What every export of this calibration holds.
        self.export_lock: AbstractContextManager[Any] = _ExportClaim(
            export_lock, _machine(host_boot_id) if host_boot_id else None
        )
        self._replicas: dict[str, dict[str, frozenset[int] | None]] = {}
        self._guard = threading.Lock()

    def lock_for(self, replica: str, boot: str | None, cpus: Sequence[int] | None = None) -> CpuClaim | None:
        if boot is None:
            return None
        claim = _machine(boot).claim(cpus)
        with self._guard:
            self._replicas.setdefault(boot, {})[replica] = claim.cpus
        return claim

    def kind(self, replica: str, boot: str | None) -> str | None:
        """Where the replica runs: `host`, `shared` (CPUs with another replica), `own` or None (unknown)."""
        if boot is None:
            return None
        if boot == self.host_boot_id:
            return "host"
        return "shared" if any(replica in part and len(part) > 1 for part in self._parts(boot)) else "own"

    def shared(self) -> list[list[str]]:
        """Replicas timed one at a time, one list per set of them sharing CPUs."""
        with self._guard:
            boots = list(self._replicas)
        return [part for b in boots for part in self._parts(b) if len(part) > 1]

    def _parts(self, boot: str) -> list[list[str]]:
        """The replicas on `boot` grouped by shared CPUs (connected through overlapping sets)."""
        with self._guard:
            cpus = dict(self._replicas.get(boot, {}))
        parts: list[tuple[list[str], frozenset[int] | None]] = []
        for replica, own in sorted(cpus.items()):
            merged, rest = [replica], own
            for names, held in [p for p in parts if own is None or p[1] is None or own & p[1]]:
                parts.remove((names, held))
                merged += names
                rest = None if rest is None or held is None else rest | held
            parts.append((merged, rest))
        return [sorted(names) for names, _ in parts]


def pick_anchors(design: list[Arch], n: int) -> list[Arch]:
    """`n` archs of the design spread over its size order (the design lists min and max nets
    first, then sizes spread evenly), never more than a quarter of it."""
    n = max(0, min(n, len(design) // 4))
    if n == 0:
        return []
    idx = sorted({int(round(i)) for i in np.linspace(0, len(design) - 1, n)})
    return [design[i] for i in idx]


def replica_offsets(records: list[MeasureResult], anchors: list[Arch], replicas: list[str]) -> dict[str, Any]:
    """Per replica, its anchors' latency over the median of all replicas' (geometric mean,
    and the range over anchors); the spread is the standard deviation of the log offsets."""
    values: dict[str, dict[str, float]] = {r: {} for r in replicas}
    ids = {a.id for a in anchors}
    for rec in records:  # latest successful record per (replica, anchor)
        if rec.ok and rec.arch_id in ids and rec.device_key in values and rec.estimate_ms:
            values[rec.device_key][rec.arch_id] = float(rec.estimate_ms)
    per_replica: dict[str, Any] = {}
    logs: dict[str, list[float]] = {r: [] for r in replicas}
    for a in ids:
        have = {r: v[a] for r, v in values.items() if a in v}
        if len(have) < 2:
            continue
        med = float(np.median(list(have.values())))
        for r, v in have.items():
            logs[r].append(math.log(v / med))
    offsets = []
    for r in replicas:
        if not logs[r]:
            per_replica[r] = {"offset": None, "interval": None, "anchors": 0}
            continue
        off = float(np.mean(logs[r]))
        offsets.append(off)
        per_replica[r] = {
            "offset": math.exp(off),
            "offset_pct": 100 * (math.exp(off) - 1),
            "interval": [math.exp(min(logs[r])), math.exp(max(logs[r]))],
            "anchors": len(logs[r]),
        }
    spread = float(np.std(offsets, ddof=1)) if len(offsets) >= 2 else 0.0
    return {"replicas": per_replica, "spread_log": spread, "spread_pct": 100 * (math.exp(spread) - 1),
            "replicas_with_anchors": len(offsets)}  # fmt: skip


def calibrate_group(
    group: str,
    replicas: list[Device],
    workspace: Workspace,
    budget: int,
    protocol: Protocol,
    fmt: str | None = None,
    space: SearchSpace | None = None,
    seed: int = 0,
    anchors: int = DEFAULT_ANCHORS,
    trust_on_first_use: bool = False,
    progress: Progress | None = None,
    take: int | None = None,
    accept_env_change: bool = False,
) -> dict[str, Any]:
    """Measure the design of `budget` archs over `replicas` into `latency_tables/<group>/`,
    then fit the group's predictor; returns the summary `calibrate --group --json` prints.
    A replica takes `take` models at a time (default: the protocol's interleave group)."""
    space = space or SearchSpace()
    emit = progress or (lambda event, info: None)
    if not replicas:
        raise InvalidInputError(f"group {group} has no devices")
    runtimes = {d.runtime for d in replicas}
    if len(runtimes) > 1:
        raise InvalidInputError(
            f"group {group} mixes runtimes ({', '.join(sorted(runtimes))}); replicas must measure alike: fix devices.yaml"
        )
    plan = MeasurePlan.for_device(replicas[0], fmt)
    table = DeviceTable.of(workspace, group)
    design = list({a.id: a for a in design_archs(budget, seed, space)}.values())  # each arch once
    anchor_archs = pick_anchors(design, anchors)
    anchor_ids = {a.id for a in anchor_archs}
    keys = [d.key for d in replicas]
    states = {k: ReplicaState(k) for k in keys}
    t0 = time.perf_counter()
    with table.lock():
        same = [r for r in table.records() if r.ok and r.runtime == plan.runtime and r.protocol == protocol]
        done_any = {r.arch_id for r in same}
        done_by = {(r.device_key, r.arch_id) for r in same}
        shared = [a for a in design if a.id not in anchor_ids and a.id not in done_any]
        pinned = {k: [a for a in anchor_archs if (k, a.id) not in done_by] for k in keys}
        queue: WorkQueue[Arch] = WorkQueue(shared, pinned)
        skipped = len(design) - len(shared) - len(anchor_archs) + sum(len(anchor_archs) - len(p) for p in pinned.values())
        emit("group", {"replicas": keys, "design": len(design), "anchors": len(anchor_archs), "todo": len(shared),
                       "pinned": {k: len(v) for k, v in pinned.items()}})  # fmt: skip
        write_lock = threading.Lock()  # table appends and binds, one thread at a time
        machines = MachineLocks(EXPORT_LOCK, read_boot_id())
        export_lock = machines.export_lock
        boots: dict[str, str | None] = {}
        cache = ExportCache(workspace.exports_dir)
        chunk = max(1, take or protocol.interleave)

        def work(device: Device) -> None:
            state = states[device.key]
            hand: list[Arch] = []
            committed: set[str] = set()
            try:
                with DeviceSession(device, workspace.cache_dir, trust_on_first_use=trust_on_first_use) as session:
                    with write_lock:
                        bind_table(session, table, device, plan, protocol, True, accept_env_change)
                    state.reached = True
                    probe = session.probe
                    boot = boots[device.key] = probe.boot_id if probe is not None else None
                    state.cpus = probe.cpus if probe is not None else None
                    measure_lock = machines.lock_for(device.key, boot, state.cpus)
                    emit("replica", {"key": device.key, "state": "measuring"})

                    def commit(record: MeasureResult) -> None:
                        with write_lock:
                            table.append(record)  # durable before anything else happens
                        committed.add(record.arch_id)
                        state.measured += record.ok
                        state.failed += not record.ok
                        emit("result", {"key": device.key, "record": record})

                    while hand := queue.take(device.key, chunk):
                        committed.clear()
                        report = measure_archs(session, hand, plan, protocol, cache, commit,
                                               export_lock=export_lock, measure_lock=measure_lock)  # fmt: skip
                        if report.not_measured:
                            raise DeviceUnreachableError(
                                f"{device.key}: the link dropped after {report.reconnects} reconnect(s)"
                            )
                        hand = []
            except Exception as exc:  # noqa: BLE001 - the replica leaves; its models go to the others
                if not isinstance(exc, Ofa2EdgeError):
                    log.exception("%s: unexpected error; its models go to the other replicas", device.key)
                left = [a for a in hand if a.id not in committed]
                state.dropped = str(exc) if isinstance(exc, Ofa2EdgeError) else f"{type(exc).__name__}: {exc}"
                queue.give_back(device.key, left, set(anchor_archs))
                state.lost_anchors = [a.id for a in queue.lost.get(device.key, [])]
                emit("replica", {"key": device.key, "state": "dropped", "reason": str(exc), "handed_back": len(left)})
                return
            emit("replica", {"key": device.key, "state": "done"})

        run_replicas(replicas, queue, work)
        for k, boot in boots.items():
            states[k].machine = machines.kind(k, boot)
        seconds = {"measure": time.perf_counter() - t0}
        not_measured = [a.id for a in queue.shared]
        reached = [k for k, s in states.items() if s.reached]
        if not reached and not done_any:
            reasons = "; ".join(f"{k}: {s.dropped}" for k, s in states.items())
            raise DeviceUnreachableError(f"group {group}: no replica could be reached ({reasons}); nothing measured")
        records = list(table.records())
        offsets = replica_offsets([r for r in records if r.protocol == protocol], anchor_archs, keys)
        t1 = time.perf_counter()
        emit("fit", {})
        spread = min(offsets["spread_log"], MAX_SPREAD_LOG)
        model, _ = fit_table(table, space.w, seed=seed,
                             group={"replicas": keys, "spread_log": spread, "anchors": len(anchor_archs)})  # fmt: skip
        seconds["fit"] = time.perf_counter() - t1
    return {
        "group": group,
        "table": str(table.folder),
        "design": len(design),
        "anchors": [a.id for a in anchor_archs],
        "already_measured": skipped,
        "measured_now": sum(s.measured for s in states.values()),
        "failed_now": sum(s.failed for s in states.values()),
        "retried": [a.id for a in queue.retried],
        "timed_one_at_a_time": machines.shared(),
        "not_measured": not_measured,
        "replicas": [states[k].to_dict() | offsets["replicas"].get(k, {}) for k in keys],
        "spread_log": offsets["spread_log"],
        "spread_pct": offsets["spread_pct"],
        "fit": model.report,
        "seconds": seconds,
    }
