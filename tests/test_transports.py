"""Transports against real endpoints: a subprocess here, and a real sshd on 127.0.0.1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest
from sshd import Sshd, make_sshd

from ofa2_edge.devices.connect import transport_for
from ofa2_edge.devices.inventory import Device, Inventory
from ofa2_edge.errors import DeviceUnreachableError, InvalidInputError, SchemaError
from ofa2_edge.persist import sha256_file


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


def ssh_device(server: Sshd, tmp_path: Path, **kw: object) -> Device:
    return Device(
        key="pi-test",
        transport="ssh",
        host="127.0.0.1",
        port=server.port,
        user=server.user,
        key_file=str(server.client_key),
        known_hosts=str(server.known_hosts),
        work_dir=str(tmp_path / "remote-work"),
        python=sys.executable,
        connect_timeout_s=5,
        **kw,
    )


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
        t.remove_work_dir()
        assert not Path(t.work_dir).exists()


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
    with pytest.raises(InvalidInputError, match="unknown device 'nope'; known: local, rpi4-livingroom"):
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
    assert main([*ws, "devices", "add", "jetson-nano", "--host", "10.1.2.4"]) == 2  # exists: usage error
    capsys.readouterr()
    assert main([*ws, "devices", "list", "--json"]) == 0
    listed = {d["key"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["jetson-nano"]["runtime"] == "tensorrt" and "local" in listed
    assert main([*ws, "devices", "remove", "jetson-nano"]) == 0
    assert main([*ws, "devices", "remove", "jetson-nano"]) == 2
