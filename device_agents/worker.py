"""The child process that holds one model: loads it, then runs the parent's timing commands.

Isolation is the point: a model that hangs is killed by the parent at the protocol's
timeout, a runtime that segfaults takes only this process down, and the parent goes on
with the next model. The conversation is JSON lines: the parent writes the job, then
commands (``warmup``, ``block``, ``stop``) on stdin; the worker answers each on a private
copy of its stdout, while file descriptor 1 itself is pointed at stderr so that anything a
runtime's C code prints cannot corrupt the conversation.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional, TextIO

from device_agents.jsonrecord import from_json
from device_agents.records import FailureKind, ModelSpec, Protocol
from device_agents.runtimes import get_runtime
from device_agents.runtimes.base import LoadContext, ModelLoadFailed, RuntimeUnavailable, Session


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    spec: ModelSpec
    protocol: Protocol
    model_path: str
    engine_dir: str
    device_fingerprint: str


def peak_rss_mib() -> Optional[float]:
    """Peak resident set size of this process (getrusage; KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def run_for(session: Session, runs: int, min_s: float) -> int:
    """Untimed runs: at least `runs` and at least `min_s` seconds. Returns how many ran."""
    n = 0
    start = time.perf_counter()
    while n < runs or time.perf_counter() - start < min_s:
        session.infer()
        n += 1
    return n


def timed_block(session: Session, warmup: int, runs: int, min_s: float) -> Dict[str, Any]:
    """`warmup` untimed runs (caches after another model ran), then timed runs: at least
    `runs` and at least `min_s` seconds (wall clock), each timed on the monotonic clock and
    on this thread's CPU clock (a single-threaded runtime computes on the calling thread, so
    the second leaves out time the scheduler gives to other processes). ``cpu_ms`` is None
    where this platform has no thread-CPU clock."""
    for _ in range(warmup):
        session.infer()
    wall: List[float] = []
    cpu: List[float] = []
    clock = time.perf_counter_ns
    cpu_clock = getattr(time, "thread_time_ns", None)
    deadline = clock() + int(min_s * 1e9)
    while len(wall) < runs or clock() < deadline:
        if cpu_clock is None:
            t0 = clock()
            session.infer()
            wall.append((clock() - t0) / 1e6)
            continue
        t0 = clock()
        c0 = cpu_clock()
        session.infer()
        c1 = cpu_clock()
        wall.append((clock() - t0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
    return {"event": "block", "wall_ms": wall, "cpu_ms": cpu if cpu_clock is not None else None,
            "runs": warmup + len(wall)}


class _Channel:
    def __init__(self, inp: TextIO, out: TextIO) -> None:
        self.inp = inp
        self.out = out

    def send(self, msg: Dict[str, Any]) -> None:
        self.out.write(json.dumps(msg, allow_nan=False) + "\n")
        self.out.flush()

    def recv(self) -> Optional[Dict[str, Any]]:
        line = self.inp.readline()
        return json.loads(line) if line else None

    def fail(self, kind: FailureKind, message: str) -> int:
        self.send({"event": "error", "kind": kind.value, "message": message})
        return 0


def _apply_affinity(protocol: Protocol) -> Optional[List[int]]:
    if not hasattr(os, "sched_getaffinity"):
        return None
    if protocol.cpu_affinity is not None:
        os.sched_setaffinity(0, set(protocol.cpu_affinity))
    return sorted(os.sched_getaffinity(0))


def serve(chan: _Channel) -> int:
    first = chan.recv()
    if first is None:
        return 1
    job = from_json(WorkerJob, first, "worker job")
    spec, protocol = job.spec, job.protocol
    affinity = _apply_affinity(protocol)
    try:
        runtime = get_runtime(spec.runtime)
        version = runtime.version()
    except RuntimeUnavailable as exc:
        return chan.fail(FailureKind.RUNTIME_MISSING, f"runtime not available on this device: {exc}")

    def on_build(stage: str) -> None:
        chan.send({"event": stage})

    ctx = LoadContext(job.engine_dir, job.device_fingerprint, on_build)
    t0 = time.perf_counter()
    try:
        session = runtime.load(job.model_path, spec, protocol, ctx)
    except ModelLoadFailed as exc:
        return chan.fail(FailureKind.MODEL_LOAD_ERROR, str(exc))
    except Exception as exc:  # noqa: BLE001 - any other failure inside the runtime while loading
        return chan.fail(FailureKind.MODEL_LOAD_ERROR, f"{type(exc).__name__}: {exc}")
    init_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    try:
        shapes = session.infer_output_shapes()
    except Exception as exc:  # noqa: BLE001 - the runtime's error, reported as data
        return chan.fail(FailureKind.RUN_ERROR, f"first inference failed: {type(exc).__name__}: {exc}")
    first_ms = (time.perf_counter() - t0) * 1e3
    chan.send({
        "event": "ready", "runtime_version": version, "session_init_ms": init_ms, "first_inference_ms": first_ms,
        "output_shapes": [list(s) for s in shapes], "output_names": session.output_names(), "affinity": affinity,
    })
    while True:
        cmd = chan.recv()
        if cmd is None:
            return 1
        try:
            if cmd["cmd"] == "warmup":
                n = run_for(session, int(cmd["runs"]), float(cmd["min_s"]))
                chan.send({"event": "done", "runs": n})
            elif cmd["cmd"] == "block":
                chan.send(timed_block(session, int(cmd["warmup"]), int(cmd["runs"]), float(cmd["min_s"])))
            elif cmd["cmd"] == "stop":
                session.close()
                chan.send({"event": "bye", "peak_rss_mib": peak_rss_mib()})
                return 0
            else:
                return chan.fail(FailureKind.CRASH, f"worker got an unknown command {cmd!r}")
        except Exception as exc:  # noqa: BLE001 - the runtime's error, reported as data
            return chan.fail(FailureKind.RUN_ERROR, f"inference failed: {type(exc).__name__}: {exc}")


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the agent dies (PR_SET_PDEATHSIG).

    A worker stuck in a runtime's C code cannot notice that its parent is gone (an SSH link
    dropped, the agent killed): without this it would keep a core busy until reboot.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def main() -> int:
    die_with_parent()
    proto_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(_Channel(sys.stdin, proto_out))
