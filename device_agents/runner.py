"""The parent side of ``measure``: verify, isolate, interleave, time out, record.

For each group of ``protocol.interleave`` models the runner first passes the quiet gate
(:mod:`device_agents.quiet`: a look at the device's load, throttling and temperatures,
waiting for quiet within the batch's ``quiet_wait_s``; between groups the look is the
cooldown), then starts one worker process per model (model loaded, first inference
checked against the expected output shapes, warm-up done) and asks for timed blocks
round-robin — block 1 of every model, then block 2 of every model in a rotated order, ...
— so slow drift and bursts of interference spread over all models of the group instead of
landing on one. Only one worker runs at a time; the others wait on their pipes. Each run
is timed on both clocks and :func:`device_agents.stats.choose` picks the estimate. A model
that neither clock can be trusted for is measured again (``protocol.remeasure`` times,
with a fresh worker) after the other groups of the batch, in groups of its own: a trusted
attempt replaces the earlier ones; when no attempt is trusted the result pools the blocks
of all of them and is flagged ``unstable``. Each worker is killed when the model uses up
``protocol.timeout_s`` of its own command time (a hang), and its death by signal or exit
becomes a ``crash`` record; the batch goes on. Every model ends as exactly one
:class:`MeasureResult`, passed to `emit` as soon as it is final: a failure at once, a
measurement when its group ends (the models of a group finish together), always before
the next group starts; a model waiting to be measured again, when its last attempt ends.
A host that dies therefore loses at most the group in flight and the models waiting to be
measured again; :func:`exit_when_host_gone` makes the agent and its workers die with it
instead of measuring on for nobody.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, BinaryIO, Callable, Dict, List, Optional, Set, Tuple

import device_agents
from device_agents import AGENT_VERSION
from device_agents.jsonrecord import to_json
from device_agents.probe import cpu_set
from device_agents.quiet import LOOK_S, QuietGate
from device_agents.records import (
    FailureKind,
    Flag,
    MeasureRequest,
    MeasureResult,
    ModelSpec,
    QuietCheck,
    Telemetry,
    thread_cpu_valid,
)
from device_agents.stats import Choice, choose
from device_agents.telemetry import PowerSampler, TelemetryReader, condition_flags
from device_agents.worker import WorkerJob

EventHook = Callable[[str, Dict[str, Any]], None]

EXIT_HOST_GONE = 3  # the host closed the agent's stdin: nobody reads the results any more

# Live workers, so that a watchdog thread can stop them all when the host is gone.
_LIVE: Set[WorkerProcess] = set()
_LIVE_LOCK = threading.Lock()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def worker_command(threads: int) -> Tuple[List[str], Dict[str, str]]:
    """How to start a worker with this very agent code: the zipapp itself, or the package."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(device_agents.__file__)))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    flags = ["-S"] if sys.flags.no_site else []
    if os.path.isfile(root):  # .../agent.pyz/device_agents/__init__.py: run the archive again
        if sys.flags.isolated:
            flags.append("-I")
        return [sys.executable] + flags + [root, "worker"], env
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [sys.executable] + flags + ["-m", "device_agents", "worker"], env


class WorkerTimeout(Exception):
    pass


class WorkerDied(Exception):
    pass


class WorkerProcess:
    """One worker child, spoken to in JSON lines with deadlines."""

    def __init__(self, job: WorkerJob, threads: int) -> None:
        cmd, env = worker_command(threads)
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker; close()
        with _LIVE_LOCK:  # started and registered at once: the watchdog sees every worker
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                         env=env, start_new_session=True)
            _LIVE.add(self)
        self._buf = b""
        self.send(to_json(job))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, msg: Dict[str, Any]) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(msg) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._death()) from None

    def recv(self, timeout_s: float) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout()
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerDied(self._death())
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise WorkerDied(f"worker wrote an unreadable line {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise WorkerDied(f"worker wrote {line[:200]!r}, not a JSON object")
        return msg

    def _death(self) -> str:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            what = f"the worker was killed by {name}"
        else:
            what = f"the worker exited with status {rc}"
        tail = self.stderr_tail()
        return what + (f"; its last output: {tail}" if tail else "")

    def stderr_tail(self, limit: int = 1500) -> str:
        try:
            self.log.seek(0, os.SEEK_END)
            size = self.log.tell()
            self.log.seek(max(0, size - limit))
            return self.log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self.log.close()


def _stop_all_and_exit(why: str) -> None:
    """Kill every live worker's process group and end the agent now (from any thread)."""
    with _LIVE_LOCK:  # held to the end: no worker starts after this point
        for worker in list(_LIVE):
            try:
                os.killpg(worker.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
        try:
            sys.stderr.write(f"[agent] {why}: stopping the workers and exiting\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # stderr may have gone with the host
        os._exit(EXIT_HOST_GONE)


def exit_when_host_gone(stream: BinaryIO) -> threading.Thread:
    """Watch `stream` (the agent's stdin, which the host holds open and never writes to) on
    a daemon thread: at end of file the host has died or dropped the link, so the agent
    kills its workers and exits within moments instead of measuring on for nobody (and
    competing with the host's rerun for the CPU)."""
    fd = stream.fileno()

    def watch() -> None:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                _stop_all_and_exit("the host is gone (stdin closed)")

    thread = threading.Thread(target=watch, name="host-watchdog", daemon=True)
    thread.start()
    return thread


class _Failed(Exception):
    """A model has failed and its result has been recorded; stop working on it."""


@dataclasses.dataclass
class _ModelRun:
    spec: ModelSpec
    started_at: str
    telemetry_before: Optional[Telemetry]
    worker: Optional[WorkerProcess] = None
    used_s: float = 0.0
    ready: Dict[str, Any] = dataclasses.field(default_factory=dict)
    wall: List[List[float]] = dataclasses.field(default_factory=list)  # this attempt's blocks, wall clock
    cpu: Optional[List[List[float]]] = dataclasses.field(default_factory=list)  # thread-CPU clock; None: not valid
    earlier_wall: List[List[float]] = dataclasses.field(default_factory=list)
    earlier_cpu: Optional[List[List[float]]] = dataclasses.field(default_factory=list)
    attempts: int = 0
    choice: Optional[Choice] = None
    quiet_check: Optional[QuietCheck] = None
    peak_rss_mib: Optional[float] = None
    sampler: Optional[PowerSampler] = None
    result: Optional[MeasureResult] = None


def _shapes_match(expected: List[Tuple[Any, Tuple[int, ...]]], names: List[Any], shapes: List[List[int]]) -> bool:
    if len(expected) != len(shapes):
        return False
    by_name = dict(zip(names, shapes))
    for pos, (name, shape) in enumerate(expected):
        actual = by_name.get(name) if name is not None and name in by_name else shapes[pos]
        if tuple(actual) != tuple(shape):
            return False
    return True


class BatchRunner:
    def __init__(
        self,
        request: MeasureRequest,
        emit: Callable[[MeasureResult], None],
        reader: Optional[TelemetryReader] = None,
        on_event: Optional[EventHook] = None,
        device_fingerprint: Optional[str] = None,
    ) -> None:
        self.request = request
        self.protocol = request.protocol
        self.emit = emit
        self.reader = reader or TelemetryReader()
        self.on_event = on_event or (lambda name, info: None)
        if device_fingerprint is None:
            from device_agents.probe import device_fingerprint as probe_fingerprint

            device_fingerprint = probe_fingerprint(self.reader)
        self.fingerprint = device_fingerprint
        self.results: List[MeasureResult] = []
        self._idle_mw: Optional[float] = None  # the rails' idle baseline, taken once per batch
        self._idle_taken = False

    # --- recording -----------------------------------------------------------------------
    def _finish(self, run: _ModelRun, result: MeasureResult) -> None:
        run.result = result
        if run.worker is not None:
            run.worker.close()
            run.worker = None
        self.results.append(result)
        self.emit(result)
        self.on_event("result", {"arch_id": run.spec.arch_id, "ok": result.ok,
                                 "error_kind": result.error_kind.value if result.error_kind else None})

    def _fail(self, run: _ModelRun, kind: FailureKind, message: str) -> None:
        after = self._snapshot()
        self._finish(run, MeasureResult.failure(
            kind, message, run.spec, self.protocol, batch_id=self.request.batch_id, started_at=run.started_at,
            finished_at=now_iso(), device_key=self.request.device_key, device_fingerprint=self.fingerprint,
            agent_version=AGENT_VERSION, runtime_version=run.ready.get("runtime_version"),
            telemetry_before=run.telemetry_before, telemetry_after=after,
            session_init_ms=run.ready.get("session_init_ms"),
            output_shapes=tuple(tuple(s) for s in run.ready["output_shapes"]) if "output_shapes" in run.ready else None,
            quiet_check=run.quiet_check,
        ))
        raise _Failed()

    def _snapshot(self) -> Optional[Telemetry]:
        try:
            return self.reader.snapshot()
        except Exception as exc:  # noqa: BLE001 - telemetry must never cost a measurement
            print(f"[agent] telemetry snapshot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return None

    # --- talking to a worker ---------------------------------------------------------------
    def _ask(self, run: _ModelRun, msg: Optional[Dict[str, Any]], phase: str) -> Dict[str, Any]:
        """Send `msg` (None: only wait) and return the reply, charging the time to the model's budget.

        An engine build (between the worker's "building" and "built" events) is bounded by
        ``build_timeout_s`` instead, and not charged to the model's ``timeout_s``.
        """
        assert run.worker is not None
        p = self.protocol
        t0 = time.monotonic()
        build_start: Optional[float] = None
        try:
            if msg is not None:
                run.worker.send(msg)
            while True:
                if build_start is None:
                    limit = p.timeout_s - run.used_s - (time.monotonic() - t0)
                else:
                    limit = p.build_timeout_s - (time.monotonic() - build_start)
                reply = run.worker.recv(limit)
                event = reply.get("event")
                if event == "building" and build_start is None:
                    build_start = time.monotonic()
                    self.on_event("building", {"arch_id": run.spec.arch_id})
                    continue
                if event == "built" and build_start is not None:
                    t0 += time.monotonic() - build_start
                    build_start = None
                    continue
                break
        except WorkerTimeout:
            run.worker.kill()
            if build_start is not None:
                self._fail(run, FailureKind.RUN_TIMEOUT, f"the TensorRT engine build took longer than "
                           f"build_timeout_s ({p.build_timeout_s:g} s); the worker was killed")
            run.used_s += time.monotonic() - t0
            self._fail(run, FailureKind.RUN_TIMEOUT,
                       f"no answer within the protocol timeout ({p.timeout_s:g} s of this model's time) "
                       f"during {phase}; the worker was killed")
        except WorkerDied as exc:
            self._fail(run, FailureKind.CRASH, f"during {phase}: {exc}")
        if build_start is not None:  # the build ended in an error reply
            t0 += time.monotonic() - build_start
        run.used_s += time.monotonic() - t0
        if reply.get("event") == "error":
            try:
                kind = FailureKind(reply.get("kind"))
            except ValueError:
                kind = FailureKind.CRASH
            self._fail(run, kind, str(reply.get("message") or "the worker reported an error"))
        return reply

    def _start(self, run: _ModelRun) -> _ModelRun:
        """Start a worker for `run` (its first attempt, or a fresh one for a re-measure)."""
        spec = run.spec
        path = os.path.join(self.request.work_dir, spec.model_file)
        self.on_event("start", {"arch_id": spec.arch_id, "model_file": spec.model_file})
        if not os.path.isfile(path):
            self._fail(run, FailureKind.UPLOAD_ERROR, f"model file {spec.model_file!r} is not in the work dir "
                       f"{self.request.work_dir}; upload it first")
        actual = sha256_file(path)
        if actual != spec.sha256:
            self._fail(run, FailureKind.CHECKSUM_MISMATCH, f"sha256 of {spec.model_file} is {actual}, the request "
                       f"says {spec.sha256}: the file was corrupted or replaced; upload it again")
        job = WorkerJob(spec, self.protocol, path, os.path.join(self.request.work_dir, "engine_cache"),
                        self.fingerprint)
        try:
            run.worker = WorkerProcess(job, self.protocol.threads)
        except WorkerDied as exc:
            self._fail(run, FailureKind.CRASH, f"while starting: {exc}")
        except OSError as exc:
            self._fail(run, FailureKind.CRASH, f"the worker could not be started: {exc}")
        run.ready = self._ask(run, None, "model load and first inference")
        expected = [(o.name, o.shape) for o in spec.outputs]
        if not _shapes_match(expected, run.ready["output_names"], run.ready["output_shapes"]):
            self._fail(run, FailureKind.WRONG_OUTPUT_SHAPE,
                       f"output shapes {run.ready['output_shapes']} differ from the expected "
                       f"{[list(s) for _, s in expected]}")
        self.on_event("ready", {"arch_id": spec.arch_id, "pid": run.worker.pid if run.worker else None})
        self._ask(run, {"cmd": "warmup", "runs": self.protocol.warmup_runs, "min_s": self.protocol.warmup_min_s},
                  "warm-up")
        return run

    def _block(self, run: _ModelRun, index: int) -> None:
        p = self.protocol
        assert run.worker is not None
        self.on_event("block", {"arch_id": run.spec.arch_id, "block": index, "attempt": run.attempts,
                                "pid": run.worker.pid})

        def work() -> Tuple[int, float]:
            reply = self._ask(run, {"cmd": "block", "warmup": p.block_warmup_runs, "runs": p.runs_per_block,
                                    "min_s": p.block_min_s}, f"timed block {index + 1}")
            run.wall.append([float(t) for t in reply["wall_ms"]])
            cpu = reply.get("cpu_ms")
            if run.cpu is not None and cpu is not None and len(cpu) == len(reply["wall_ms"]):
                run.cpu.append([float(t) for t in cpu])
            else:
                run.cpu = None  # no thread-CPU clock on this platform: the wall clock alone
            # the timed runs and their time (the reply's `runs` also counts the block's warm-up runs)
            return len(run.wall[-1]), sum(run.wall[-1]) / 1000.0

        if run.sampler is not None and run.sampler.available:
            run.sampler.measure(work)
        else:
            work()

    def _stop_worker(self, run: _ModelRun) -> None:
        """Stop the worker politely (its peak memory is part of the record), then close it."""
        if run.worker is None:
            return
        try:
            bye = run.worker.recv(10.0) if self._send_quiet(run, {"cmd": "stop"}) else {}
            peak = bye.get("peak_rss_mib")
            if peak is not None:
                run.peak_rss_mib = max(float(peak), run.peak_rss_mib or 0.0)
        except (WorkerTimeout, WorkerDied) as exc:
            print(f"[agent] {run.spec.arch_id}: worker did not stop cleanly ({exc}); measurement kept",
                  file=sys.stderr)
        run.worker.close()
        run.worker = None

    def _complete(self, run: _ModelRun) -> None:
        assert run.choice is not None
        self._stop_worker(run)
        after = self._snapshot()
        flags = []
        if not run.choice.trusted:
            flags.append(Flag.UNSTABLE)
        flags += condition_flags(run.telemetry_before, after, self.protocol)
        ready = run.ready
        self._finish(run, MeasureResult(
            batch_id=self.request.batch_id, device_key=self.request.device_key, device_fingerprint=self.fingerprint,
            agent_version=AGENT_VERSION, arch_id=run.spec.arch_id, arch=run.spec.arch,
            model_file=run.spec.model_file, model_sha256=run.spec.sha256, runtime=run.spec.runtime,
            runtime_version=ready["runtime_version"], tensorrt=run.spec.tensorrt, protocol=self.protocol,
            error_kind=None, error_msg=None, flags=tuple(flags), attempts=run.attempts, stats=run.choice.stats,
            session_init_ms=float(ready["session_init_ms"]), first_inference_ms=float(ready["first_inference_ms"]),
            peak_rss_mib=run.peak_rss_mib,
            output_shapes=tuple(tuple(s) for s in ready["output_shapes"]),
            cpu_affinity_used=tuple(ready["affinity"]) if ready.get("affinity") is not None else None,
            energy=run.sampler.result() if run.sampler is not None else None,
            telemetry_before=run.telemetry_before, telemetry_after=after,
            started_at=run.started_at, finished_at=now_iso(),
            timer_used=run.choice.timer, interference=run.choice.interference, quiet_check=run.quiet_check,
        ))

    @staticmethod
    def _send_quiet(run: _ModelRun, msg: Dict[str, Any]) -> bool:
        try:
            assert run.worker is not None
            run.worker.send(msg)
            return True
        except WorkerDied:
            return False

    # --- the schedule ------------------------------------------------------------------------
    def _choose(self, run: _ModelRun, wall: List[List[float]], cpu: Optional[List[List[float]]]) -> Choice:
        try:
            return choose(wall, cpu, self.protocol)
        except ValueError as exc:  # a timer gave zero or negative times: no latency can come of it
            message = f"the timed runs cannot be summarised: {exc}"
        self._fail(run, FailureKind.RUN_ERROR, message)  # raises _Failed
        raise AssertionError("unreachable")

    def _measure_group(self, runs: List[_ModelRun], check: QuietCheck) -> List[_ModelRun]:
        """One attempt of every model in `runs`, interleaved; returns those to measure again."""
        p = self.protocol
        if not self._idle_taken:  # after the quiet gate, before any worker loads a model
            self._idle_taken = True
            probe_rails = PowerSampler(self.reader, p.power_sample_s)
            if probe_rails.available:
                self._idle_mw = probe_rails.measure_idle()
        started: List[_ModelRun] = []
        for run in runs:
            # the gate before this attempt; waited_s adds up the waits before all its attempts
            waited = run.quiet_check.waited_s if run.quiet_check is not None else 0.0
            run.quiet_check = dataclasses.replace(check, waited_s=round(waited + check.waited_s, 3))
            try:
                started.append(self._start(run))
            except _Failed:
                pass
        for run in started:
            run.earlier_wall += run.wall
            if run.earlier_cpu is not None and run.cpu is not None:
                run.earlier_cpu += run.cpu
            else:
                run.earlier_cpu = None
            run.wall = []
            run.cpu = [] if thread_cpu_valid(p, run.spec.runtime) and run.earlier_cpu is not None else None
            run.attempts += 1
            run.sampler = PowerSampler(self.reader, p.power_sample_s)
            run.sampler.idle_mw = self._idle_mw
        for b in range(p.blocks):
            alive = [r for r in started if r.result is None]
            if not alive:
                break
            shift = b % len(alive)
            for run in alive[shift:] + alive[:shift]:
                if run.result is not None:
                    continue
                try:
                    self._block(run, b)
                except _Failed:
                    pass
        again: List[_ModelRun] = []
        for run in started:
            if run.result is not None:
                continue
            try:
                run.choice = self._choose(run, run.wall, run.cpu)
                if not run.choice.trusted and run.attempts <= p.remeasure:
                    self._stop_worker(run)  # measured again later, with a fresh worker
                    again.append(run)
                    continue
                if not run.choice.trusted and run.earlier_wall:
                    # Untrusted through every attempt: the noise is not transient, so more
                    # blocks beat a fresh small sample (flagged unless the pool is trusted).
                    cpu = run.earlier_cpu + run.cpu if run.earlier_cpu is not None and run.cpu is not None else None
                    run.choice = self._choose(run, run.earlier_wall + run.wall, cpu)
            except _Failed:
                continue
            self._complete(run)
        return again

    def run(self) -> List[MeasureResult]:
        p = self.protocol
        gate = QuietGate(self.reader, p, cpus=p.cpu_affinity or cpu_set())
        size = p.interleave
        todo = [_ModelRun(spec=spec, started_at=now_iso(), telemetry_before=None) for spec in self.request.models]
        retry: List[_ModelRun] = []
        for i, g in enumerate(range(0, len(todo), size)):
            check = gate.check(LOOK_S if i == 0 else p.cooldown_s)
            self.on_event("quiet", {"quiet": check.quiet, "waited_s": check.waited_s, "reasons": list(check.reasons)})
            group = todo[g:g + size]
            for run in group:
                run.started_at, run.telemetry_before = now_iso(), self._snapshot()
            retry += self._measure_group(group, check)
        while retry:
            again: List[_ModelRun] = []
            for g in range(0, len(retry), size):
                group = retry[g:g + size]
                check = gate.check(p.cooldown_s)
                self.on_event("quiet", {"quiet": check.quiet, "waited_s": check.waited_s,
                                        "reasons": list(check.reasons)})
                self.on_event("remeasure", {"arch_ids": [r.spec.arch_id for r in group],
                                            "attempt": group[0].attempts + 1})
                again += self._measure_group(group, check)
            retry = again
        return self.results
