"""A work queue over the replicas of a device group (TVM's RPC tracker, per group).

Identical boards of a group (`group:` in devices.yaml) are replicas: any idle replica takes
the next models from one shared queue, so a fast or lightly loaded board measures more; a
replica whose link drops for good hands its unmeasured models back, and a replica still
alive measures them. Some models are *pinned*: each replica must measure them itself (the
anchors the part-to-part spread is estimated from); a dropped replica's pinned models are
lost with it and reported. One worker thread per replica (the work is I/O: SSH and the
device), each with its own :class:`DeviceSession`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Collection, Generic, Hashable, Sequence, TypeVar

from ofa2_edge.devices.inventory import Device

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Hashable)


@dataclass
class WorkQueue(Generic[T]):
    """Items any replica may take (`shared`) and items one replica must take (`pinned`)."""

    shared: list[T]
    pinned: dict[str, list[T]] = field(default_factory=dict)
    retried: list[T] = field(default_factory=list)  # shared items handed back by a dropped replica
    lost: dict[str, list[T]] = field(default_factory=dict)  # pinned items of dropped replicas
    _busy: set[str] = field(default_factory=set)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def take(self, replica: str, n: int) -> list[T]:
        """Up to `n` items for `replica`: its pinned ones first, then shared ones. Blocks while
        the queue is empty but another replica is busy (it may hand items back); [] when
        nothing is left for good."""
        with self._cond:
            self._busy.discard(replica)
            self._cond.notify_all()
            while True:
                mine = self.pinned.get(replica, [])
                if mine or self.shared:
                    got = mine[:n]
                    self.pinned[replica] = mine[len(got):]
                    rest = n - len(got)
                    if rest > 0:
                        got += self.shared[:rest]
                        self.shared = self.shared[rest:]
                    self._busy.add(replica)
                    return got
                if not self._busy:
                    self._cond.notify_all()
                    return []
                self._cond.wait(timeout=1.0)

    def give_back(self, replica: str, items: Sequence[T], pinned: set[T]) -> None:
        """`replica` dropped out: its shared items go back to the front of the queue (another
        replica takes them next), its pinned ones (and any it still had) are lost with it."""
        with self._cond:
            back = [i for i in items if i not in pinned]
            self.retried += back
            self.shared = back + self.shared
            self.lost[replica] = [i for i in items if i in pinned] + self.pinned.pop(replica, [])
            self._busy.discard(replica)
            self._cond.notify_all()

    def leave(self, replica: str) -> None:
        """`replica` never started (unreachable): its pinned items are lost."""
        with self._cond:
            self.lost[replica] = self.pinned.pop(replica, [])
            self._busy.discard(replica)
            self._cond.notify_all()


def run_replicas(devices: Sequence[Device], queue: WorkQueue[T], worker: Callable[[Device], None]) -> None:
    """Run `worker(device)` for every replica in its own thread and wait for all; a worker
    is expected to catch its own errors (an escaping one is logged and the replica left)."""

    def guarded(device: Device) -> None:
        try:
            worker(device)
        except BaseException:  # noqa: BLE001 - one replica's bug must not hang the others
            log.exception("%s: worker failed", device.key)
            queue.leave(device.key)

    threads = [threading.Thread(target=guarded, args=(d,), name=f"replica-{d.key}", daemon=True) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class CpuSlots:
    """The CPUs of one machine, claimed by the replicas timed on it (and by the host's exports).

    A claim names a CPU set (None: the whole machine) and waits while a held claim, or one
    that asked before it, shares a CPU with it: replicas pinned to disjoint CPUs are timed at
    once, the others one at a time, first come first served (a whole-machine claim is not
    starved by a stream of pinned ones)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: list[CpuClaim] = []
        self._waiting: list[CpuClaim] = []

    def claim(self, cpus: Collection[int] | None) -> CpuClaim:
        """A reusable context manager for one thread at a time: `with slots.claim({0, 1}):`."""
        return CpuClaim(self, None if cpus is None else frozenset(cpus))

    def _acquire(self, claim: CpuClaim) -> None:
        with self._cond:
            self._waiting.append(claim)
            while any(claim.overlaps(c) for c in self._held) or any(
                claim.overlaps(c) for c in self._waiting[: self._waiting.index(claim)]
            ):
                self._cond.wait()
            self._waiting.remove(claim)
            self._held.append(claim)

    def _release(self, claim: CpuClaim) -> None:
        with self._cond:
            self._held.remove(claim)
            self._cond.notify_all()


class CpuClaim:
    """One claim on a machine's CPUs (see :class:`CpuSlots`)."""

    def __init__(self, slots: CpuSlots, cpus: frozenset[int] | None) -> None:
        self.slots = slots
        self.cpus = cpus

    def overlaps(self, other: CpuClaim) -> bool:
        return self.cpus is None or other.cpus is None or bool(self.cpus & other.cpus)

    def __enter__(self) -> CpuClaim:
        self.slots._acquire(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.slots._release(self)
