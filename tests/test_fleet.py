"""Device groups on a loopback fleet: 8 real sshd "boards" in two groups calibrating at once.

Every board is this machine behind its own OpenSSH server (its own port, host key and
remote work folder), running the real agent. One replica loses power mid-batch: the models
it held are measured by another replica, nothing is lost, and its missing anchor is reported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from sshd import Sshd, make_sshd

from exporters import ExportCache
from ofa2_edge.calibration.calibrate import design_archs
from ofa2_edge.calibration.group import MachineLocks, calibrate_group, pick_anchors
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE, InvalidInputError, SchemaError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.devices.fleet import CpuSlots, WorkQueue
from ofa2_edge.devices.inventory import Device, Inventory
from ofa2_edge.devices.pipeline import standard_protocol
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.surrogates.group import GroupSurrogate
from ofa2_edge.surrogates.linear import LinearSurrogate
from ofa2_edge.tables.device import DeviceTable

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
GROUPS = {"pi-a": 5, "pi-b": 3}
SPACE = SearchSpace(resolutions=(160,))
QUICK = standard_protocol(1, quick=True)  # what `--quick` gives these boards (1 thread)
#: One model per interleave group, so records stream one by one (a kill lands mid-batch).
PROTOCOL = {"pi-a": dataclasses.replace(QUICK, interleave=1), "pi-b": QUICK}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Sshd]]]:
    """A workspace whose devices.yaml lists 8 loopback boards, added through the CLI."""
    root = tmp_path_factory.mktemp("fleet")
    ws = root / "ws"
    servers: dict[str, Sshd] = {}
    try:
        for group, n in GROUPS.items():
            for i in range(n):
                key = f"{group}-{i}"
                server = servers[key] = make_sshd(root / "sshd" / key)
                args = ["-W", str(ws), "devices", "add", key, "--host", "127.0.0.1", "--port", str(server.port),
                        "--user", server.user, "--key-file", str(server.client_key), "--known-hosts",
                        str(server.known_hosts), "--work-dir", str(root / "remote" / key), "--python",
                        sys.executable, "--group", group]  # fmt: skip
                assert main(args) == 0
        yield ws, servers
    finally:
        for server in servers.values():
            server.stop()


def test_inventory_groups_and_bad_groups(fleet: tuple[Path, dict[str, Sshd]], tmp_path: Path) -> None:
    ws, _ = fleet
    inv = Inventory.load(ws / "devices.yaml")
    assert {g: len(d) for g, d in inv.groups().items()} == GROUPS
    assert [d.key for d in inv.group("pi-b")] == ["pi-b-0", "pi-b-1", "pi-b-2"]
    with pytest.raises(InvalidInputError, match=r"no device group 'pi-c'.*--group pi-c"):
        inv.group("pi-c")
    with pytest.raises(InvalidInputError, match="is also a device key"):
        inv.add(Device(key="x", group="pi-a-0"))
    with pytest.raises(InvalidInputError, match="name of a device group"):
        inv.add(Device(key="pi-a"))
    with pytest.raises(InvalidInputError, match="group 'Bad Group'"):
        Device(key="y", group="Bad Group")
    bad = tmp_path / "devices.yaml"
    bad.write_text("schema_version: 1\ndevices:\n  - {key: b1, group: b2}\n  - {key: b2}\n")
    with pytest.raises(SchemaError, match="group 'b2' of device b1 is also a device key"):
        Inventory.load(bad)


def test_work_queue_hands_back_and_waits() -> None:
    q: WorkQueue[str] = WorkQueue(["s1", "s2", "s3"], {"r1": ["a"], "r2": ["a"]})
    assert q.take("r1", 2) == ["a", "s1"]  # pinned first
    assert q.take("r2", 2) == ["a", "s2"]
    q.give_back("r1", ["s1"], {"a"})  # r1 dropped holding s1: it goes back to the front
    assert q.retried == ["s1"] and q.lost["r1"] == []
    assert q.take("r2", 5) == ["s1", "s3"]
    got: list[list[str]] = []
    waiter = threading.Thread(target=lambda: got.append(q.take("r3", 1)))
    waiter.start()  # r2 is still busy: r3 waits for what r2 may hand back
    waiter.join(0.3)
    assert waiter.is_alive()
    q.give_back("r2", ["s3"], {"a"})
    waiter.join(5)
    assert got == [["s3"]]
    assert q.take("r3", 1) == []  # nothing left, nobody busy


def test_machine_locks_claim_the_cpus_a_replica_runs_on() -> None:
    m = MachineLocks(threading.Lock(), "boot-host")
    h1, h2 = m.lock_for("h1", "boot-host"), m.lock_for("h2", "boot-host")
    x1, x2 = m.lock_for("x1", "boot-x"), m.lock_for("x2", "boot-x")
    assert h1 is not None and h2 is not None and h1.slots is h2.slots  # the host: one set of CPUs
    assert x1 is not None and x2 is not None and x1.slots is x2.slots is not h1.slots
    y1 = m.lock_for("y1", "boot-y")
    assert y1 is not None and y1.slots is not x1.slots
    p0, p1, p01 = m.lock_for("p0", "boot-p", [0]), m.lock_for("p1", "boot-p", [1]), m.lock_for("q", "boot-q", [0, 1])
    assert m.lock_for("z1", None) is None  # no boot id known: a board of its own, never waited for
    assert [m.kind(r, b) for r, b in (("h1", "boot-host"), ("x1", "boot-x"), ("y1", "boot-y"), ("p0", "boot-p"),
                                      ("z1", None))] == ["host", "shared", "own", "own", None]  # fmt: skip
    assert m.shared() == [["h1", "h2"], ["x1", "x2"]]  # p0 and p1: disjoint CPUs, timed at once
    m.lock_for("p01", "boot-p", [1, 0])
    assert m.shared()[-1] == ["p0", "p01", "p1"] and m.kind("p0", "boot-p") == "shared"  # one set joins both
    # another calibration in this process (another group) claims on the same machine's CPUs
    assert MachineLocks(threading.Lock(), "boot-host").lock_for("x3", "boot-x").slots is x1.slots  # type: ignore[union-attr]
    assert p0 is not None and p1 is not None and p01 is not None


def test_cpu_slots_time_disjoint_sets_at_once_and_queue_the_rest() -> None:
    """Claims on disjoint CPUs are held together; an overlapping one (or the whole machine)
    waits, and a whole-machine claim that asked first is not overtaken by later pinned ones."""
    slots = CpuSlots()
    order: list[str] = []
    done = threading.Event()

    def hold(name: str, cpus: set[int] | None, ready: threading.Event | None = None) -> threading.Thread:
        def run() -> None:
            with slots.claim(cpus):
                order.append(name)
                if ready is not None:
                    ready.set()
                done.wait(5)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    a_in, b_in = threading.Event(), threading.Event()
    a, b = hold("a0", {0}, a_in), hold("b1", {1}, b_in)
    assert a_in.wait(5) and b_in.wait(5)  # disjoint: both hold at once
    whole = hold("all", None)
    deadline = time.monotonic() + 5
    while len(slots._waiting) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    later = hold("c1", {1})
    while len(slots._waiting) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert order == ["a0", "b1"]  # the whole machine and the later CPU-1 claim wait
    done.set()
    for t in (a, b, whole, later):
        t.join(5)
    assert order == ["a0", "b1", "all", "c1"]  # first come, first served


def timed(real: Any, into: list[tuple[float, float]]) -> Any:
    """`real`, appending each call's (start, end) to `into`."""

    def call(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            into.append((t0, time.monotonic()))

    return call


def test_replicas_on_one_machine_are_timed_one_at_a_time(tmp_path: Path) -> None:
    """Loopback boards are this machine: timed at once they would take each other's CPU (and
    the host's exports theirs), so the group's records would price a load that no later
    measurement on one board (`verify`) sees. They are timed one at a time, never while the
    host exports, and the summary says so. (Checked on the order of events, not on timings.)"""
    from ofa2_edge.devices import session

    servers = [make_sshd(tmp_path / "sshd" / f"b{i}") for i in range(3)]
    measuring: list[tuple[str, float, float]] = []  # (replica, start, end) of every timed batch
    exporting: list[tuple[float, float]] = []
    real_measure, real_build = session.DeviceSession.measure, ExportCache.get_or_build

    def timed_measure(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return real_measure(self, *args, **kwargs)
        finally:
            measuring.append((self.device.key, t0, time.monotonic()))

    try:
        replicas = [Device(key=f"b-{i}", transport="ssh", host="127.0.0.1", port=s.port, user=s.user,
                           key_file=str(s.client_key), known_hosts=str(s.known_hosts),
                           work_dir=str(tmp_path / "remote" / f"b{i}"), python=sys.executable, group="loop")
                    for i, s in enumerate(servers)]  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(session.DeviceSession, "measure", timed_measure)
            mp.setattr(ExportCache, "get_or_build", lambda c, k, b: real_build(c, k, timed(b, exporting)))
            summary = calibrate_group("loop", replicas, Workspace.resolve(tmp_path / "ws"), 8, QUICK, space=SPACE,
                                      anchors=1, take=2)  # fmt: skip
    finally:
        for s in servers:
            s.stop()
    assert summary["failed_now"] == 0 and summary["not_measured"] == []
    assert {k for k, _, _ in measuring} == {"b-0", "b-1", "b-2"} and exporting
    measuring.sort(key=lambda w: w[1])
    for (k1, _, end), (k2, start, _) in zip(measuring, measuring[1:]):
        assert start >= end, f"{k1} and {k2} were timed at once on one machine"
    for e0, e1 in exporting:
        assert all(e1 <= m0 or e0 >= m1 for _, m0, m1 in measuring), "the host exported while a board on it was timed"
    assert summary["timed_one_at_a_time"] == [["b-0", "b-1", "b-2"]]
    assert [r["machine"] for r in summary["replicas"]] == ["host"] * 3


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin two boards apart")
def test_replicas_pinned_to_disjoint_cpus_are_not_queued_behind_each_other(tmp_path: Path) -> None:
    """Two loopback boards whose sshd (and so agent) is pinned to its own CPU report their CPU
    sets; the calibration times them without a common queue, and still never while the host
    exports (the order of events, not timings)."""
    from ofa2_edge.devices import session

    cpus = sorted(os.sched_getaffinity(0))[:2]
    servers = [make_sshd(tmp_path / "sshd" / f"p{i}") for i in range(2)]
    measuring: list[tuple[float, float]] = []
    exporting: list[tuple[float, float]] = []
    real_measure, real_build = session.DeviceSession.measure, ExportCache.get_or_build

    try:
        for s, cpu in zip(servers, cpus):
            assert s.proc is not None
            os.sched_setaffinity(s.proc.pid, {cpu})  # its sessions, and their agents, inherit it
        replicas = [Device(key=f"p-{i}", transport="ssh", host="127.0.0.1", port=s.port, user=s.user,
                           key_file=str(s.client_key), known_hosts=str(s.known_hosts),
                           work_dir=str(tmp_path / "remote" / f"p{i}"), python=sys.executable, group="pin")
                    for i, s in enumerate(servers)]  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(session.DeviceSession, "measure", timed(real_measure, measuring))
            mp.setattr(ExportCache, "get_or_build", lambda c, k, b: real_build(c, k, timed(b, exporting)))
            summary = calibrate_group("pin", replicas, Workspace.resolve(tmp_path / "ws"), 6, QUICK, space=SPACE,
                                      anchors=1, take=2)  # fmt: skip
    finally:
        for s in servers:
            s.stop()
    assert summary["failed_now"] == 0 and summary["not_measured"] == []
    assert [r["cpus"] for r in summary["replicas"]] == [[c] for c in cpus]
    assert summary["timed_one_at_a_time"] == [] and [r["machine"] for r in summary["replicas"]] == ["host"] * 2
    assert measuring and exporting
    for e0, e1 in exporting:
        assert all(e1 <= m0 or e0 >= m1 for m0, m1 in measuring), "the host exported while a board on it was timed"


def test_group_surrogate_widens_intervals_and_round_trips(tmp_path: Path) -> None:
    archs = SPACE.sample(40, np.random.default_rng(0))
    y = np.array([1.0 + a.r / 100 + sum(a.ks) / 50 for a in archs])
    base = LinearSurrogate().fit(archs, y)
    group = GroupSurrogate(base.width_mult, base, 0.1)
    lo_b, hi_b = base.predict_interval(archs, 0.8)
    lo_g, hi_g = group.predict_interval(archs, 0.8)
    assert np.all(hi_g > hi_b) and np.all(lo_g < lo_b)
    assert np.allclose(group.predict(archs), base.predict(archs))
    assert np.allclose(group.predict_quantile(archs, 0.5), base.predict_quantile(archs, 0.5))
    path = group.save(tmp_path / "surrogate.json", device="g")
    from ofa2_edge.surrogates.base import load_surrogate

    loaded = load_surrogate(path)
    assert isinstance(loaded, GroupSurrogate) and loaded.spread_log == 0.1
    assert np.allclose(loaded.predict_quantile(archs, 0.9), group.predict_quantile(archs, 0.9))
    doc = json.loads(path.read_text())
    doc["params"]["spread_log"] = 5.0
    path.write_text(json.dumps(doc))
    with pytest.raises(SchemaError, match="spread_log"):
        load_surrogate(path)


def test_eight_boards_two_groups_at_once_one_killed(
    fleet: tuple[Path, dict[str, Sshd]], capsys: pytest.CaptureFixture[str]
) -> None:
    ws_path, servers = fleet
    ws = Workspace.resolve(ws_path)
    inv = Inventory.load(ws_path / "devices.yaml")
    killed: list[str] = []
    summaries: dict[str, Any] = {}
    errors: list[BaseException] = []

    def on_event(event: str, info: dict[str, Any]) -> None:
        # The first replica to finish a model loses power: it holds both anchors and two
        # shared models (no replica can take a second time before its first models are done).
        if event == "result" and not killed:
            killed.append(info["key"])
            servers[info["key"]].stop()

    budgets = {"pi-a": 14, "pi-b": 9}

    def run(group: str) -> None:
        try:
            summaries[group] = calibrate_group(
                group, inv.group(group), ws, budgets[group], PROTOCOL[group], space=SPACE, anchors=2, take=4,
                progress=on_event if group == "pi-a" else None,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(g,)) for g in GROUPS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    victim = killed[0]
    for group, summary in summaries.items():
        table = DeviceTable(ws_path / "latency_tables", group)
        records = [r for r in table.records() if r.ok]
        design = list({a.id: a for a in design_archs(budgets[group], 0, SPACE)}.values())
        anchors = {a.id for a in pick_anchors(design, 2)}
        assert len(anchors) == 2 and {a.id for a in design} <= {r.arch_id for r in records}  # nothing lost
        assert summary["not_measured"] == [] and summary["failed_now"] == 0
        # a shared model is measured once; an anchor once per replica that stayed
        shared = [r.arch_id for r in records if r.arch_id not in anchors]
        assert len(shared) == len(set(shared)) == len(design) - len(anchors)
        replicas = {r["key"]: r for r in summary["replicas"]}
        for key, rep in replicas.items():
            assert rep["reached"], f"{key}: {rep['dropped']}"
            mine = {r.arch_id for r in records if r.device_key == key}
            if key != victim:
                assert anchors <= mine and rep["dropped"] is None and rep["anchors"] == 2
                assert rep["offset"] > 0 and rep["interval"][0] <= rep["offset"] <= rep["interval"][1]
        assert summary["spread_pct"] >= 0
        model = table.predictor()
        assert isinstance(model, GroupSurrogate) and model.report["group"]["replicas"] == list(replicas)
    a = {r["key"]: r for r in summaries["pi-a"]["replicas"]}
    records = list(DeviceTable(ws_path / "latency_tables", "pi-a").records())
    design = list({x.id: x for x in design_archs(budgets["pi-a"], 0, SPACE)}.values())
    anchors = {x.id for x in pick_anchors(design, 2)}
    by_victim = {r.arch_id for r in records if r.device_key == victim}
    # it held both anchors and two shared models; the first landed before the power went
    # (a record already on its way may land too), the rest were lost (anchors) or retried
    assert a[victim]["dropped"] and a[victim]["measured_now"] == len(by_victim) >= 1
    assert set(a[victim]["lost_anchors"]) == anchors - by_victim
    retried = summaries["pi-a"]["retried"]
    assert len(retried) + len(by_victim - anchors) == 2 and retried
    assert all(any(r.arch_id == x and r.device_key != victim for r in records) for x in retried)

    # the CLI: a rerun resumes (nothing new to measure), one progress line per board
    servers[victim].start()
    capsys.readouterr()
    args = ["-W", str(ws_path), "calibrate", "--group", "pi-b", "--budget", "9", "--resolutions", "160",
            "--anchors", "2", "--quick"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    n = again["design"]
    assert again["measured_now"] == 0 and again["already_measured"] == n + 2 * 2  # anchors: on 3 replicas
    assert f"{n - 2} of {n} already measured (resuming)" in captured.err
    for key in ("pi-b-0", "pi-b-1", "pi-b-2"):
        assert sum(f"pi-b/{key}" in line for line in captured.err.splitlines()) == 1
    assert main([*args[:2], "calibrate", "--group", "pi-b", "--device", "pi-b-0"]) == EXIT_FAILURE
    assert "--group calibrates a group's replicas" in capsys.readouterr().err
    # a group is a device for the search and for select (its predictor prices the group)
    run = ws_path / "runs" / "g"
    assert main([*args[:2], "search", "--objectives", "top1,latency:pi-a", "--resolutions", "160", "--pop", "12",
                 "--gens", "2", "--seed", "1", "-o", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([*args[:2], "select", str(run), "--device", "pi-a", "--safe", "0.9", "--json"]) == 0
    picks = json.loads(capsys.readouterr().out)["candidates"]
    assert picks and all(c["limit_latency_ms"] >= c["latency_ms"] for c in picks)
    # ... and for verify: measured on a replica that answers, scored against the group's predictor
    servers["pi-a-0"].stop()  # the first replica is down: the next one verifies
    assert main([*args[:2], "verify", str(run), "--device", "pi-a", "--top", "2", "--quick", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["device"] == "pi-a" and doc["replica"] == "pi-a-1" and doc["counts"]["measured"] == 2
    assert "trying the next replica of pi-a" in captured.err
    verified = list(DeviceTable(ws_path / "latency_tables", "pi-a").verification_records())
    assert len(verified) == 2 and {r.device_key for r in verified} == {"pi-a-1"}
    assert (run / "verification.pi-a.json").is_file()
    # ... and for bundle: the group's predictor prices the pick in the manifest
    out = ws_path / "bundles"
    assert main([*args[:2], "bundle", str(run), "--device", "pi-a", "--max-latency", "1000", "-o", str(out),
                 "--json"]) == 0  # fmt: skip
    from ofa2_edge.deploy.bundle import read_manifest

    manifest = read_manifest(Path(json.loads(capsys.readouterr().out)["bundle"]))
    assert manifest["device"]["key"] == "pi-a" and manifest["latency"]["predicted"]["upper_ms"] > 0
