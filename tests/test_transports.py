"""Transports against real endpoints: a subprocess here, and a real sshd on 127.0.0.1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest
from sshd import Sshd, make_sshd, ssh_device

from ofa2_edge.core.errors import DeviceUnreachableError, InvalidInputError, SchemaError
from ofa2_edge.core.persist import sha256_file
from ofa2_edge.devices.connect import transport_for
from ofa2_edge.devices.inventory import Device, Inventory
from ofa2_edge.devices.session import DeviceSession
from ofa2_edge.devices.transport import WORK_MARKER, WORK_PREFIX, LocalTransport, work_marker


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


def exercise(transport_dir: Path, device: Device, tmp_path: Path) -> None:
    payload = tmp_path / "model.bin"
    payload.write_bytes(b"\x00\x01" * 5000)
    with transport_for(device, local_dir=transport_dir) as t:
        lines: list[str] = []
        res = t.run(
            [device.python, "-c", "import sys; print('a'); print('b', file=sys.stderr); print('c')"], 30, lines.append
        )
        assert res.returncode == 0 and lines == ["a", "c"] and "b" in res.stderr
        remote = t.upload(payload, "model.bin")
        assert t.remote_sha256("model.bin") == sha256_file(payload)
        assert Path(remote).read_bytes() == payload.read_bytes()  # the "board" is this machine
        assert t.remote_sha256("absent.bin") is None
        slow = t.run([device.python, "-c", "import time; time.sleep(30)"], 1)
        assert slow.timed_out
        folder = Path(t.work_dir)
        assert folder.parent == Path(device.work_dir or transport_dir) and (folder / WORK_MARKER).is_file()
        t.remove_work_dir()
        assert not folder.exists() and folder.parent.is_dir()


def test_local_transport(tmp_path: Path) -> None:
    exercise(tmp_path / "local-work", Device(key="local"), tmp_path)


@pytest.mark.ssh
def test_ssh_transport_runs_uploads_and_cleans(sshd: Sshd, tmp_path: Path) -> None:
    exercise(tmp_path, ssh_device(sshd, tmp_path), tmp_path)


@pytest.mark.ssh
def test_upload_skips_identical_file_and_repairs_a_damaged_one(sshd: Sshd, tmp_path: Path) -> None:
    payload = tmp_path / "m.onnx"
    payload.write_bytes(b"model-bytes" * 100)
    device = ssh_device(sshd, tmp_path)
    with transport_for(device) as t:
        remote = Path(t.upload(payload, "m.onnx"))
        mtime = remote.stat().st_mtime_ns
        t.upload(payload, "m.onnx")
        assert remote.stat().st_mtime_ns == mtime  # same sha256: not sent again
        remote.write_bytes(b"damaged on the device")
        t.upload(payload, "m.onnx")
        assert remote.read_bytes() == payload.read_bytes()


@pytest.mark.ssh
def test_unknown_host_is_refused_unless_trusted_on_first_use(sshd: Sshd, tmp_path: Path) -> None:
    sshd.known_hosts.write_text("")
    device = ssh_device(sshd, tmp_path)
    with pytest.raises(DeviceUnreachableError, match="not in .*known_hosts.*--trust-on-first-use"):
        transport_for(device).open()
    with transport_for(device, trust_on_first_use=True) as t:
        assert t.run([device.python, "-c", "print(1)"], 30).stdout.strip() == "1"
    assert f"[127.0.0.1]:{sshd.port}" in sshd.known_hosts.read_text()
    with transport_for(device) as t:  # now known: strict checking passes
        assert t.run([device.python, "-c", "print(2)"], 30).stdout.strip() == "2"


@pytest.mark.ssh
def test_changed_host_key_is_refused_even_with_tofu(sshd: Sshd, tmp_path: Path) -> None:
    sshd.stop()
    sshd.rotate_host_key()
    sshd.start()
    device = ssh_device(sshd, tmp_path)
    for tofu in (False, True):
        with pytest.raises(DeviceUnreachableError, match="has CHANGED"):
            transport_for(device, trust_on_first_use=tofu).open()


@pytest.mark.ssh
def test_unreachable_and_bad_key_fail_fast_with_clear_errors(sshd: Sshd, tmp_path: Path) -> None:
    sshd.stop()
    with pytest.raises(DeviceUnreachableError, match="cannot reach 127.0.0.1"):
        transport_for(ssh_device(sshd, tmp_path)).open()
    sshd.start()
    stranger = tmp_path / "stranger"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    device = ssh_device(sshd, tmp_path)
    device = Device(**{**device.__dict__, "key_file": str(stranger)})
    with pytest.raises(DeviceUnreachableError, match="authentication as .* failed"):
        transport_for(device).open()


@pytest.mark.ssh
def test_server_killed_mid_command_is_reported(sshd: Sshd, tmp_path: Path) -> None:
    device = ssh_device(sshd, tmp_path)
    with transport_for(device) as t:
        seen: list[str] = []

        def on_line(line: str) -> None:
            seen.append(line)
            if len(seen) == 2:
                sshd.stop()

        code = "import time\nfor i in range(100):\n    print(i, flush=True); time.sleep(0.1)\n"
        with pytest.raises(DeviceUnreachableError, match="connection lost"):
            t.run([device.python, "-c", code], 30, on_line)
        assert seen[:2] == ["0", "1"]


def test_inventory_roundtrip_and_validation(tmp_path: Path) -> None:
    inv = Inventory.load(tmp_path / "devices.yaml")
    assert [d.key for d in inv.all()] == ["local"]
    inv.add(Device(key="rpi4-livingroom", transport="ssh", host="10.0.0.7", user="pi", runtime="litert", threads=4))
    inv.save()
    again = Inventory.load(tmp_path / "devices.yaml")
    assert again.get("rpi4-livingroom").threads == 4 and again.get("local").transport == "local"
    with pytest.raises(InvalidInputError, match="already exists"):
        again.add(Device(key="rpi4-livingroom", transport="ssh", host="x"))
    with pytest.raises(InvalidInputError, match=r"unknown device 'nope' \(not in devices.yaml\); known devices: local, rpi4-livingroom"):
        again.get("nope")
    for bad, msg in (
        ({"key": "Bad Key"}, "must be lowercase"),
        ({"key": "x", "transport": "ssh"}, "needs a host"),
        ({"key": "x", "runtime": "coreml"}, "runtime 'coreml' unknown"),
        ({"key": "x", "colour": "red"}, "unknown field"),
    ):
        with pytest.raises(InvalidInputError, match=msg):
            Device.from_dict(bad)
    (tmp_path / "devices.yaml").write_text("schema_version: 99\ndevices: []\n")
    with pytest.raises(SchemaError, match="schema_version 1"):
        Inventory.load(tmp_path / "devices.yaml")


def test_devices_cli_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ofa2_edge.cli.main import main

    ws = ["-W", str(tmp_path)]
    assert main([*ws, "devices", "add", "jetson-nano", "--host", "10.1.2.3", "--user", "nvidia", "--runtime", "tensorrt"]) == 0
    assert main([*ws, "devices", "add", "jetson-nano", "--host", "10.1.2.4"]) == 1  # exists: bad input
    capsys.readouterr()
    assert main([*ws, "devices", "list", "--json"]) == 0
    listed = {d["key"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["jetson-nano"]["runtime"] == "tensorrt" and "local" in listed
    assert main([*ws, "devices", "remove", "jetson-nano"]) == 0
    assert main([*ws, "devices", "remove", "jetson-nano"]) == 1  # not there: bad input


# --------------------------------------------------------------------------- the user's folders
def users_folder(root: Path) -> Path:
    """A folder that holds a user's own files, as a workspace would."""
    (root / "latency_tables" / "rpi4").mkdir(parents=True)
    (root / "latency_tables" / "rpi4" / "measurements.jsonl").write_text('{"x": 1}\n')
    (root / "devices.yaml").write_text("schema_version: 1\ndevices: []\n")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_local_work_dir_of_dot_keeps_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = users_folder(tmp_path / "ws")
    before = snapshot(workspace)
    monkeypatch.chdir(workspace)
    with DeviceSession(Device(key="local", work_dir="."), tmp_path / "cache") as session:
        assert session.probe is not None
        folder = Path(session.transport.work_dir)
        assert folder.parent == workspace and folder.name.startswith(WORK_PREFIX)
    assert snapshot(workspace) == before  # everything the user had is still there, and nothing else
    assert not folder.exists()


@pytest.mark.ssh
@pytest.mark.parametrize("incomplete", [False, True])
def test_an_ssh_work_dir_keeps_the_users_files(sshd: Sshd, tmp_path: Path, incomplete: bool) -> None:
    home = users_folder(tmp_path / "board-home")
    before = snapshot(home)
    device = ssh_device(sshd, tmp_path, work_dir=str(home))
    session = DeviceSession(device, tmp_path / "cache")
    with session:
        session._complete = not incomplete
        folder = Path(session.transport.work_dir)
        assert folder == home / f"{WORK_PREFIX}{device.key}" and (folder / WORK_MARKER).is_file()
    assert folder.exists() == incomplete  # an incomplete session keeps its own folder for the rerun
    assert {k: v for k, v in snapshot(home).items() if not k.startswith(WORK_PREFIX)} == before


@pytest.mark.ssh
def test_an_ssh_work_folder_ofa2_edge_did_not_make_is_refused_and_kept(sshd: Sshd, tmp_path: Path) -> None:
    device = ssh_device(sshd, tmp_path)
    theirs = Path(device.work_dir) / f"{WORK_PREFIX}{device.key}"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not made by ofa2-edge"):
        transport_for(device).open()
    assert (theirs / "notes.txt").read_text() == "mine"


@pytest.mark.ssh
def test_ssh_removal_spares_a_folder_whose_marker_is_gone(sshd: Sshd, tmp_path: Path) -> None:
    device = ssh_device(sshd, tmp_path)
    with transport_for(device) as t:
        folder = Path(t.work_dir)
        (folder / WORK_MARKER).unlink()  # someone else's folder now, as far as we can tell
        (folder / "kept.txt").write_text("x")
        t.remove_work_dir()
    assert (folder / "kept.txt").exists()


def test_concurrent_local_sessions_do_not_share_or_delete_each_others_folder(tmp_path: Path) -> None:
    a, b = LocalTransport(Device(key="local"), tmp_path), LocalTransport(Device(key="local"), tmp_path)
    a.open()
    b.open()
    assert a.work_dir != b.work_dir
    (Path(b.work_dir) / "model.onnx").write_bytes(b"m")
    a.remove_work_dir()
    assert not Path(a.work_dir).exists() and (Path(b.work_dir) / "model.onnx").exists()
    b.remove_work_dir()
    assert list(tmp_path.iterdir()) == []


def test_opening_sweeps_only_folders_of_dead_local_processes(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = {}
    for name, owner in {
        "dead": {"host": socket.gethostname(), "pid": dead.pid},
        "alive": {"host": socket.gethostname(), "pid": os.getpid()},
        "other-host": {"host": "another-machine", "pid": dead.pid},
    }.items():
        folders[name] = tmp_path / f"{WORK_PREFIX}local-{name}"
        folders[name].mkdir()
        (folders[name] / WORK_MARKER).write_text(work_marker("local", **owner))
    folders["unmarked"] = tmp_path / f"{WORK_PREFIX}local-unmarked"
    folders["unmarked"].mkdir()
    t = LocalTransport(Device(key="local"), tmp_path)
    t.open()
    assert {n for n, f in folders.items() if f.exists()} == {"alive", "other-host", "unmarked"}
    t.remove_work_dir()


@pytest.mark.ssh
def test_a_work_dir_made_by_a_sibling_session_meanwhile_is_used(sshd: Sshd, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Replicas on one host share the user's folder: when a sibling session makes it between
    this session's check and its mkdir, the session uses it instead of failing."""
    import paramiko

    device = ssh_device(sshd, tmp_path)
    real_stat, raced = paramiko.SFTPClient.stat, []

    def stat_then_sibling_makes_it(self: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes:
        try:
            return real_stat(self, path)
        except FileNotFoundError:
            if path == device.work_dir and not raced:
                Path(path).mkdir(parents=True)  # the sibling's mkdir lands first
                raced.append(path)
            raise

    monkeypatch.setattr(paramiko.SFTPClient, "stat", stat_then_sibling_makes_it)
    with transport_for(device) as t:
        assert Path(t.work_dir).parent == Path(device.work_dir) and (Path(t.work_dir) / WORK_MARKER).is_file()
    assert raced == [device.work_dir]
