"""A host that dies takes its agent with it; what a death can lose; what undecodable output gives.

The host is a real process measuring through a real device (`local`, or a real sshd on
127.0.0.1); it is killed with SIGKILL while the agent's workers run, and the agent and
every worker must be gone soon after (polled with a generous deadline: a loaded machine
delays them, it does not fail the test; without the watchdog they would measure on for
minutes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_models import FAST, conv_net, request, save, spec
from conftest import REPO
from sshd import Sshd, descendants, make_sshd
from test_session import models as session_models

from device_agents.records import MeasureResult
from device_agents.runner import BatchRunner
from ofa2_edge.core.errors import MeasurementError, Ofa2EdgeError
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.session import DeviceSession
from ofa2_edge.devices.transport import LocalTransport

TESTS = Path(__file__).resolve().parent
GONE_WITHIN_S = 60.0  # the watchdog needs ~1 s; the slack is for a loaded machine

# The host: measure two models in one interleave group for ~10 minutes, commit each record.
HOST = """
import dataclasses, json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_session import QUICK, models
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.session import DeviceSession

tmp = Path({tmp!r})
device = Device(**json.loads({device!r}))
slow = dataclasses.replace(QUICK, interleave=2, blocks=6000, block_min_s=0.1, timeout_s=3600.0)
with DeviceSession(device, tmp / "cache") as session:
    session.measure(models(tmp, 2), slow, lambda r: print("committed", r.arch_id, flush=True))
"""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def agent_processes(root: int) -> list[int]:
    """The agent and its workers below `root` (the host, or sshd for a remote agent)."""
    return [p for p in descendants(root) if "agent.pyz" in cmdline(p)]


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


def kill_host_mid_measurement(device: Device, tmp_path: Path, root_of_agent) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    script = HOST.format(tests=str(TESTS), tmp=str(tmp_path), device=json.dumps(dataclasses.asdict(device)))
    with open(tmp_path / "host.log", "wb") as log:  # the child keeps its own copy of the descriptor
        host = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=log)
    found: list[int] = []
    try:
        # the agent and both workers of the group are up
        assert wait_for(lambda: len(agent_processes(root_of_agent(host.pid))) >= 3, 300), (
            (tmp_path / "host.log").read_text()[-3000:])
        found = agent_processes(root_of_agent(host.pid))
        assert any(" measure " in cmdline(p) for p in found) and sum(" worker" in cmdline(p) for p in found) == 2
        time.sleep(1.0)  # inside the timed blocks
        os.kill(host.pid, signal.SIGKILL)
        host.wait()
        assert wait_for(lambda: not any(alive(p) for p in found), GONE_WITHIN_S), (
            f"still running after the host died: {[cmdline(p) for p in found if alive(p)]}")
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_host_takes_its_local_agent_and_workers_with_it(tmp_path: Path) -> None:
    kill_host_mid_measurement(Device(key="local"), tmp_path, lambda host: host)


@pytest.mark.ssh
def test_a_killed_host_takes_its_remote_agent_with_it_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    device = Device(key="pi-test", transport="ssh", host="127.0.0.1", port=sshd.port, user=sshd.user,
                    key_file=str(sshd.client_key), known_hosts=str(sshd.known_hosts),
                    work_dir=str(tmp_path / "remote-work"), python=sys.executable, connect_timeout_s=5)
    assert sshd.proc is not None
    kill_host_mid_measurement(device, tmp_path, lambda host: sshd.proc.pid)


def test_a_host_death_loses_at_most_one_interleave_group(tmp_path: Path) -> None:
    """Records are final when their group ends and reach the host before the next group
    starts; so whenever the host dies, the models started but not yet emitted are at most
    one group (`protocol.interleave`), which a rerun measures again."""
    work = tmp_path / "work"
    work.mkdir()
    specs = []
    for i in range(5):
        sha = save(conv_net(8, 2, 16, seed=i), work / f"m{i}.onnx")
        specs.append(spec(f"a-m{i}", f"m{i}.onnx", sha))
    proto = dataclasses.replace(FAST, interleave=2)
    started: list[str] = []
    emitted: list[str] = []
    in_flight_at_start: list[int] = []

    def on_event(name: str, info: dict) -> None:
        if name == "start":
            started.append(info["arch_id"])
            in_flight_at_start.append(len(started) - len(emitted))  # what a death right now would lose

    def emit(result: MeasureResult) -> None:
        emitted.append(result.arch_id)

    BatchRunner(request(work, specs, proto), emit, on_event=on_event, device_fingerprint="fp").run()
    assert sorted(emitted) == sorted(s.arch_id for s in specs)
    assert max(in_flight_at_start) == proto.interleave  # never more than one group in flight


def test_undecodable_local_output_is_replaced_not_a_traceback(tmp_path: Path) -> None:
    with LocalTransport(Device(key="local"), tmp_path) as t:
        lines: list[str] = []
        res = t.run([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe\\n')"], 30,
                    lines.append)
    assert res.returncode == 0 and lines == ["ok \ufffd\ufffd"]


def test_an_agent_writing_undecodable_bytes_is_a_clear_measurement_error(tmp_path: Path) -> None:
    """A device interpreter that answers `measure` with bytes that are not UTF-8: the host
    refuses the record with an error naming the device, never a UnicodeDecodeError."""
    fake = tmp_path / "fake-python"
    fake.write_text(f"""#!/bin/sh
case " $* " in
  *" measure "*) printf '{{"schema": "agent.measure_result\\377\\376"}}\\n'; exit 0 ;;
esac
exec {sys.executable} "$@"
""")
    fake.chmod(0o755)
    batch = session_models(tmp_path, 1)
    device = Device(key="fake-board", python=str(fake))
    with pytest.raises(MeasurementError, match="fake-board.*invalid record") as err, \
            DeviceSession(device, tmp_path / "cache") as session:
        session.measure(batch, FAST)
    assert isinstance(err.value, Ofa2EdgeError)
