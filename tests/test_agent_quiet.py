"""Quiet gate and interference: decisions on synthetic /proc, /sys and timings; the new
record fields, old records still read; a real batch carrying them (structure only: no
verdict here depends on the machine's load)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from agent_models import FAST, conv_net, request, save, spec
from test_agent_parsers import body
from test_agent_records import _ok_result
from test_agent_telemetry import THROTTLED, jetson_tree

from device_agents.quiet import LOOK_S, MIN_LOOK_S, QuietGate, busy_share, parse_proc_stat
from device_agents.records import (
    TIMERS,
    Flag,
    Interference,
    MeasureResult,
    Protocol,
    QuietCheck,
    RecordError,
    parse_agent_line,
)
from device_agents.runner import BatchRunner
from device_agents.stats import choose
from device_agents.telemetry import TelemetryReader

# /proc/stat as Linux writes it: user nice system idle iowait irq softirq steal guest guest_nice
STAT = "cpu  {u} 0 {s} {i} 10 0 {si} {st} 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\nintr 1 2 3\n"


def stat(user: int, system: int, idle: int, softirq: int = 0, steal: int = 0) -> str:
    return STAT.format(u=user, s=system, i=idle, si=softirq, st=steal)


# --- /proc/stat ------------------------------------------------------------------------------
def test_proc_stat_busy_share_counts_steal_and_leaves_out_the_agent():
    before = parse_proc_stat(stat(1000, 100, 5000))
    assert before == (1100, 6110, 2)
    # 50 ticks of 100 busy (user 30, system 10, softirq 5, steal 5), 50 idle
    after = parse_proc_stat(stat(1030, 110, 5050, softirq=5, steal=5))
    assert busy_share(before, after) == pytest.approx(0.5)
    assert busy_share(before, after, own_ticks=10) == pytest.approx(0.4)  # the agent's own ticks
    assert busy_share(after, before) is None  # counters went back: no judgement
    assert busy_share(before, before) is None  # no tick passed
    assert parse_proc_stat("intr 1 2\n") is None and parse_proc_stat("cpu x y z w\n") is None


def test_proc_stat_of_a_cpu_set_sums_only_its_cpus():
    """An agent pinned to CPU 1 (a cpuset, `taskset`) is not kept waiting by work on CPU 0."""
    text = ("cpu  1040 0 20 1060 0 0 0 0 0 0\n"
            "cpu0 1000 0 0 0 0 0 0 0 0 0\n"  # CPU 0 fully busy (another board)
            "cpu1 40 0 20 1060 0 0 0 0 0 0\n"
            "cpu2 bad\n")  # fmt: skip
    assert parse_proc_stat(text) == (1060, 2120, 3)
    assert parse_proc_stat(text, {1}) == (60, 1120, 1)
    assert parse_proc_stat(text, {0, 1}) == (1060, 2120, 2)
    assert parse_proc_stat(text, {2}) == parse_proc_stat(text) == parse_proc_stat(text, {7})  # unreadable, absent: all


# --- the gate on a fake device -----------------------------------------------------------------
class FakeDevice:
    """A /proc/stat whose next window comes from `shares` (busy share per look), a clock that
    only the gate's sleeps move, and a vcgencmd answer."""

    def __init__(self, root: Path, shares: list[float], throttled: str = "throttled=0x0") -> None:
        self.proc = root / "proc"
        self.proc.mkdir(parents=True, exist_ok=True)
        self.shares = list(shares)
        self.busy, self.total = 10_000, 40_000
        self.now = 0.0
        self.sleeps: list[float] = []
        self.throttled = throttled
        self._write()

    def _write(self) -> None:
        idle = self.total - self.busy - 10
        (self.proc / "stat").write_text(stat(self.busy, 0, idle))

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        share = self.shares.pop(0) if len(self.shares) > 1 else self.shares[0]
        ticks = 200  # 1 s at USER_HZ 100 on 2 CPUs, whatever the window: the share is what counts
        self.busy += round(share * ticks)
        self.total += ticks
        self._write()

    def tool(self, argv):
        return self.throttled if argv[0] == "vcgencmd" else None

    def gate(self, protocol: Protocol, sys_root: Path | None = None) -> QuietGate:
        reader = TelemetryReader(str(sys_root or self.proc.parent / "no-sys"), str(self.proc), self.tool)
        return QuietGate(reader, protocol, clock=lambda: self.now, sleep=self.sleep, own_ticks=lambda: 0.0)


def test_a_quiet_device_passes_at_once(tmp_path):
    dev = FakeDevice(tmp_path, [0.05])
    check = dev.gate(Protocol(quiet_wait_s=10.0)).check(LOOK_S)
    assert check == QuietCheck(quiet=True, waited_s=0.0, busy_share=0.05, reasons=(), notes=())
    assert dev.sleeps == [LOOK_S]


def test_the_gate_waits_until_the_device_is_quiet_and_records_the_wait(tmp_path):
    dev = FakeDevice(tmp_path, [0.6, 0.55, 0.5, 0.02])
    check = dev.gate(Protocol(quiet_wait_s=10.0)).check(1.0)  # a cooldown of 1 s is the first look
    assert check.quiet and check.reasons == () and check.busy_share == 0.02
    assert dev.sleeps == [1.0, LOOK_S, LOOK_S, LOOK_S] and check.waited_s == pytest.approx(3 * LOOK_S)


def test_a_device_that_never_gets_quiet_is_measured_after_the_budget_with_the_reason(tmp_path):
    dev = FakeDevice(tmp_path, [0.5])
    gate = dev.gate(Protocol(quiet_wait_s=2.0))
    first = gate.check(LOOK_S)
    assert not first.quiet and first.busy_share == 0.5
    assert first.reasons == ("other processes kept 50% of 2 CPU(s) busy (quiet: at most 10%)",)
    assert first.waited_s == pytest.approx(2.0)  # the whole budget, and not a tick more
    # the budget is the batch's: a later gate looks once and does not wait again
    dev.sleeps.clear()
    later = gate.check(0.0)
    assert not later.quiet and later.waited_s == 0.0 and dev.sleeps == [MIN_LOOK_S]


def test_quiet_wait_zero_looks_and_records_but_never_waits(tmp_path):
    dev = FakeDevice(tmp_path, [0.9])
    check = dev.gate(Protocol(quiet_wait_s=0.0)).check(LOOK_S)
    assert not check.quiet and check.waited_s == 0.0 and dev.sleeps == [LOOK_S]


def test_throttling_heat_and_governors_on_a_real_board_tree(tmp_path, fixtures_dir):
    """The Jetson tree (real thermal zones and governors) with a Pi's real throttled bits."""
    root = jetson_tree(tmp_path / "board", fixtures_dir)
    now_text = body(fixtures_dir, THROTTLED).split("\n\n")[1]  # 0x50005: throttled now
    dev = FakeDevice(tmp_path / "fake", [0.0], throttled=now_text)
    check = dev.gate(Protocol(quiet_wait_s=0.0, max_temp_c=31.0), root / "sys").check(LOOK_S)
    assert not check.quiet
    assert any(r.startswith("firmware throttling now: under_voltage, throttled") for r in check.reasons)
    assert any("AO-therm at 31.0 C (limit 31 C)" in r for r in check.reasons)
    assert not any("PMIC" in r for r in check.reasons)  # the placeholder sensor never counts
    governors = [n for n in check.notes if n.startswith("CPU frequency governor")]
    assert governors and all("performance" not in n.split(":")[0] for n in governors)
    # a cool, unthrottled board with a frequency-scaling governor: quiet, with a note only
    dev = FakeDevice(tmp_path / "calm", [0.0])
    calm = dev.gate(Protocol(quiet_wait_s=0.0), root / "sys").check(LOOK_S)
    assert calm.quiet and calm.notes == check.notes


def test_an_unreadable_proc_stat_is_noted_not_waited_for(tmp_path):
    reader = TelemetryReader(str(tmp_path / "sys"), str(tmp_path / "proc"), lambda argv: None)
    gate = QuietGate(reader, Protocol(quiet_wait_s=5.0), clock=lambda: 0.0, sleep=lambda s: None)
    check = gate.check(LOOK_S)
    assert check.quiet and check.busy_share is None and check.notes == ("load unknown (/proc/stat unreadable)",)


# --- which clock gives the estimate ----------------------------------------------------------------
P = Protocol(blocks=5, runs_per_block=10)
STEADY = [[10.0 + 0.01 * i for i in range(10)] for _ in range(5)]
SLICES = [0.0, 1.0, 2.0, 3.0, 4.0, 0.5, 1.5, 2.5, 3.5]


def preempted(cpu: list[list[float]], extra: list[float]) -> list[list[float]]:
    """Wall times: the CPU time plus time slices taken by others (run by run)."""
    return [[c + extra[(b * 10 + i) % len(extra)] for i, c in enumerate(block)] for b, block in enumerate(cpu)]


def test_steady_clocks_keep_the_wall_clock():
    wall = preempted(STEADY, [0.02])
    c = choose(wall, STEADY, P)
    assert c.timer == "wall" and c.trusted and c.stats.estimate_ms == c.interference.wall_estimate_ms
    i = c.interference
    assert i.wall_trusted and i.cpu_trusted and i.off_cpu_share == pytest.approx(0.002, abs=1e-3)
    assert i.reason.startswith("wall clock trusted")


def test_a_disturbed_wall_clock_gives_way_to_the_thread_cpu_estimate():
    # runs lose 0-4 ms of 10 to other processes, broadly (no outliers to reject): CV > 10 %
    wall = preempted(STEADY, SLICES)
    c = choose(wall, STEADY, P)
    assert c.timer == "thread_cpu" and c.trusted
    assert c.stats.estimate_ms == c.interference.cpu_estimate_ms < c.interference.wall_estimate_ms * 1.0001
    assert not c.interference.wall_trusted and c.interference.off_cpu_share > 0.1
    assert c.interference.reason.startswith("wall clock disturbed: thread-CPU estimate used")


def test_a_steadily_slow_wall_clock_is_disturbed_too():
    # every run 10 % longer on the wall clock (a competitor sharing the core evenly): stable, but
    # the estimate is above the thread-CPU one by more than max_wall_excess
    wall = [[v * 1.10 for v in b] for b in STEADY]
    c = choose(wall, STEADY, P)
    assert c.timer == "thread_cpu" and c.trusted and not c.interference.wall_trusted
    assert choose(wall, STEADY, dataclasses.replace(P, max_wall_excess=0.2)).timer == "wall"


def test_neither_clock_trusted_is_untrusted_and_without_fallback_stays_on_the_wall_clock():
    noisy_cpu = [[10.0, 14.0, 10.0, 18.0, 10.0, 13.0, 10.0, 16.0, 10.0, 12.0]] * 5
    wall = preempted(noisy_cpu, [0.0, 5.0])
    c = choose(wall, noisy_cpu, P)
    assert not c.trusted and c.timer == "thread_cpu" and not c.interference.cpu_trusted
    strict = choose(wall, noisy_cpu, dataclasses.replace(P, cpu_fallback=False))
    assert strict.timer == "wall" and not strict.trusted
    assert strict.stats.estimate_ms == strict.interference.wall_estimate_ms


def test_without_a_valid_thread_cpu_clock_only_the_wall_clock_decides():
    wall = preempted(STEADY, SLICES)
    c = choose(wall, None, P)
    assert c.timer == "wall" and not c.trusted
    i = c.interference
    assert i.cpu_estimate_ms is None and i.off_cpu_share is None and i.cpu_cv is None and not i.cpu_trusted
    assert choose(preempted(STEADY, [0.02]), None, P).trusted


def test_the_protocols_thread_cpu_timer_is_always_used():
    c = choose(preempted(STEADY, [0.02]), STEADY, dataclasses.replace(P, timer="thread_cpu"))
    assert c.timer == "thread_cpu" and c.trusted and c.stats.estimate_ms == c.interference.cpu_estimate_ms
    with pytest.raises(ValueError, match="needs thread-CPU times"):
        choose(STEADY, None, dataclasses.replace(P, timer="thread_cpu"))


# --- the record ---------------------------------------------------------------------------------
def _interference(wall: float = 1.1, cpu: float | None = 1.025) -> Interference:
    return Interference(wall_estimate_ms=wall, cpu_estimate_ms=cpu, off_cpu_share=0.2 if cpu else None,
                        wall_cv=0.3, cpu_cv=0.09 if cpu else None, wall_block_min_spread=0.2,
                        cpu_block_min_spread=0.05 if cpu else None, wall_trusted=False, cpu_trusted=bool(cpu),
                        reason="wall clock disturbed: thread-CPU estimate used")


BUSY = QuietCheck(quiet=False, waited_s=10.02, busy_share=0.52,
                  reasons=("other processes kept 52% of 2 CPU(s) busy (quiet: at most 10%)",), notes=())


def test_a_record_carries_the_timer_the_interference_and_the_gate():
    r = _ok_result(flags=(), timer_used="thread_cpu", interference=_interference(), quiet_check=BUSY)
    doc = json.loads(r.to_json_line())
    assert doc["schema_version"] == 2 and doc["protocol"]["version"] == 2
    assert doc["timer_used"] == "thread_cpu" and doc["quiet_check"]["waited_s"] == 10.02
    assert doc["interference"]["off_cpu_share"] == 0.2
    assert parse_agent_line(r.to_json_line()) == r


@pytest.mark.parametrize("changes, message", [
    ({"timer_used": "wall"}, r"not the interference figures' wall estimate"),
    ({"timer_used": "sundial"}, "timer_used 'sundial' is not one of"),
    ({"protocol": Protocol(threads=2)}, "needs one thread and a CPU runtime"),
    ({"protocol": Protocol(cpu_fallback=False)}, "neither the protocol's timer 'wall' nor its thread-CPU fallback"),
    ({"timer_used": None}, "interference figures need timer_used"),
    ({"interference": _interference(cpu=1.3)}, "not the interference figures' thread_cpu estimate"),
])
def test_record_checks_of_the_new_fields(changes, message):
    fields = {"flags": (), "timer_used": "thread_cpu", "interference": _interference(), "quiet_check": BUSY}
    with pytest.raises(ValueError, match=message):
        _ok_result(**{**fields, **changes})


def test_gate_and_interference_records_refuse_nonsense():
    with pytest.raises(ValueError, match="quiet must be true exactly when there are no reasons"):
        QuietCheck(quiet=True, waited_s=0.0, busy_share=0.9, reasons=("busy",), notes=())
    with pytest.raises(ValueError, match="busy_share must lie in"):
        QuietCheck(quiet=True, waited_s=0.0, busy_share=1.5, reasons=(), notes=())
    with pytest.raises(ValueError, match="all set or all null"):
        dataclasses.replace(_interference(), cpu_cv=None)
    doc = json.loads(_ok_result(flags=(), timer_used="thread_cpu", interference=_interference(),
                                quiet_check=BUSY).to_json_line())
    doc["quiet_check"]["waited_s"] = -1.0
    with pytest.raises(RecordError, match=r"quiet_check: waited_s must be >= 0"):
        parse_agent_line(json.dumps(doc))


def v1_document(record: MeasureResult) -> dict:
    """`record` as an agent before the quiet gate wrote it (schema 1, protocol 1)."""
    doc = json.loads(record.to_json_line())
    doc["schema_version"] = 1
    for key in ("timer_used", "interference", "quiet_check"):
        del doc[key]
    doc["protocol"]["version"] = 1
    for key in ("quiet_wait_s", "quiet_max_busy", "max_wall_excess", "cpu_fallback"):
        del doc["protocol"][key]
    return doc


def test_version_1_records_still_read_and_never_pass_for_version_2():
    old = v1_document(_ok_result())
    r = MeasureResult.from_dict(old)
    assert r.timer_used == "wall" and r.interference is None and r.quiet_check is None
    assert r.protocol.version == 1 and r.protocol.quiet_wait_s == 0.0 and not r.protocol.cpu_fallback
    assert r.protocol != Protocol()  # a table never counts it as measured under today's protocol
    assert parse_agent_line(json.dumps(old)) == r
    thread_cpu = v1_document(_ok_result(protocol=Protocol(timer="thread_cpu"), timer_used="thread_cpu"))
    assert MeasureResult.from_dict(thread_cpu).timer_used == "thread_cpu"
    with_new = {**old, "timer_used": "wall"}
    with pytest.raises(RecordError, match="timer_used are not part of schema_version 1"):
        MeasureResult.from_dict(with_new)
    bad_protocol = json.loads(json.dumps(old))
    bad_protocol["protocol"]["quiet_wait_s"] = 5.0
    with pytest.raises(RecordError, match="a version 1 protocol has quiet_wait_s 0.0"):
        MeasureResult.from_dict(bad_protocol)


def test_the_host_table_reads_version_1_and_2_rows(tmp_path):
    from records_factory import probe_report

    from ofa2_edge.space.arch import Arch
    from ofa2_edge.tables.device import DeviceTable

    probe = probe_report()
    table = DeviceTable(tmp_path, "board")
    table.bind(probe, "onnxruntime")
    arch = Arch.smallest(160)
    base = {"arch_id": arch.id, "arch": arch.to_dict(), "device_fingerprint": probe.fingerprint}
    new = _ok_result(**base, flags=(), timer_used="thread_cpu", interference=_interference(), quiet_check=BUSY)
    table.measurements_path.write_text(json.dumps(v1_document(_ok_result(**base))) + "\n" + new.to_json_line() + "\n")
    old_row, new_row = table.records()
    assert old_row.timer_used == "wall" and old_row.protocol.version == 1
    assert new_row == new and new_row.quiet_check == BUSY


# --- a real batch --------------------------------------------------------------------------------
@pytest.fixture()
def work(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    shas = [save(conv_net(8, 2, 16, seed=i), folder / f"m{i}.onnx") for i in range(3)]
    return folder, [spec(f"a-m{i}", f"m{i}.onnx", sha) for i, sha in enumerate(shas)]


def test_a_real_batch_records_timer_interference_and_gate(work):
    folder, specs = work
    proto = dataclasses.replace(FAST, interleave=2, remeasure=1)
    events: list[tuple[str, dict]] = []
    out: list[MeasureResult] = []
    BatchRunner(request(folder, specs, proto), out.append, on_event=lambda n, i: events.append((n, i)),
                device_fingerprint="fp").run()
    assert sorted(r.arch_id for r in out) == ["a-m0", "a-m1", "a-m2"]
    for r in out:
        assert r.ok and r.timer_used in TIMERS, r.error_msg
        i, q = r.interference, r.quiet_check
        assert i is not None and i.cpu_estimate_ms is not None  # onnxruntime, one thread: both clocks
        assert r.stats.estimate_ms == i.estimate_of(r.timer_used)
        assert (Flag.UNSTABLE in r.flags) == (not (i.wall_trusted if r.timer_used == "wall" else i.cpu_trusted))
        assert q is not None and q.waited_s == 0.0 and q.quiet == (not q.reasons)  # quiet_wait_s 0: no wait
        assert 1 <= r.attempts <= 2
        assert MeasureResult.from_dict(json.loads(r.to_json_line())) == r  # what the host does
    looks = [i for n, i in events if n == "quiet"]
    assert len(looks) >= 2  # one per group (2 groups), one more per re-measure group


def test_untrusted_models_are_measured_again_after_the_other_groups(work):
    folder, specs = work
    # limits no real measurement meets: every model is re-measured, then flagged
    proto = dataclasses.replace(FAST, interleave=1, remeasure=1, max_cv=1e-9, max_block_spread=1e-9)
    order: list[tuple[str, int]] = []
    emitted: list[str] = []

    def on_event(name: str, info: dict) -> None:
        if name == "block" and info["block"] == 0:
            order.append((info["arch_id"], info["attempt"]))

    out: list[MeasureResult] = []
    BatchRunner(request(folder, specs[:2], proto), lambda r: (out.append(r), emitted.append(r.arch_id)),
                on_event=on_event, device_fingerprint="fp").run()
    assert order == [("a-m0", 1), ("a-m1", 1), ("a-m0", 2), ("a-m1", 2)]
    assert emitted == ["a-m0", "a-m1"]
    for r in out:
        assert r.attempts == 2 and Flag.UNSTABLE in r.flags and r.timer_used == "thread_cpu"
        assert len(r.stats.block_min_ms) == 2 * proto.blocks  # both attempts pooled


def test_the_host_checks_and_stores_the_new_fields(work, tmp_path):
    """Through the host's own path: local session (the built agent), record checks, the table."""
    from ofa2_edge.devices.inventory import Device
    from ofa2_edge.devices.session import DeviceSession, ShippableModel
    from ofa2_edge.space.arch import Arch
    from ofa2_edge.tables.device import DeviceTable

    folder, specs = work
    model = ShippableModel(Arch.smallest(160), folder / "m0.onnx", specs[0].sha256, "onnxruntime",
                           specs[0].inputs, specs[0].outputs)
    proto = dataclasses.replace(FAST, interleave=1, quiet_wait_s=0.3)  # the waiting path, if the machine is busy
    table = DeviceTable(tmp_path / "tables", "local")
    with DeviceSession(Device(key="local", python=sys.executable), tmp_path / "cache") as session:
        assert session.probe is not None
        table.bind(session.probe, "onnxruntime")
        report = session.measure([model], proto, table.append)
    (stored,) = table.records()
    assert stored == report.results[0] and stored.ok
    assert stored.timer_used in TIMERS and stored.interference is not None and stored.quiet_check is not None
    assert stored.quiet_check.waited_s >= 0.0 and stored.quiet_check.quiet == (not stored.quiet_check.reasons)
