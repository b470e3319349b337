"""Hostile user input: devices.yaml fields, archs (JSON, genomes, resolutions), SSH key files.

Each is a clear Ofa2EdgeError naming what was wrong (file, line, device, field), never a
traceback; an arch outside the space is refused, one outside the table's calibrated
resolutions is predicted with a warning.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from records_factory import probe_report, record_for
from sshd import Sshd, make_sshd

from device_agents.records import Protocol
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE, InvalidArchError, InvalidInputError, SchemaError
from ofa2_edge.devices.connect import transport_for
from ofa2_edge.devices.inventory import Device, Inventory
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.space.archref import resolve_arch
from ofa2_edge.surrogates.linear import LinearSurrogate
from ofa2_edge.tables.device import DeviceTable

# --------------------------------------------------------------------------- devices.yaml
GOOD_YAML = """schema_version: 1
devices:
  - key: rpi4
    transport: ssh
    host: 10.0.0.7
    user: pi
  - key: jetson
    transport: ssh
    host: 10.0.0.8
    port: 2222
    threads: 4
"""


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("port: abc", "port", "expected an integer, got 'abc'"),
        ("threads: many", "threads", "expected an integer, got 'many'"),
        ("threads: 2.5", "threads", "expected an integer, got 2.5"),
        ("threads: true", "threads", "expected an integer, got True"),
        ("threads: 0", "threads", "threads must be between 1"),
        ("python: [a, b]", "python", "expected a non-empty text, got ['a', 'b']"),
        ("work_dir: 5", "work_dir", "expected a non-empty text or nothing, got 5"),
        ("user: 1000", "user", "quote it"),
        ("connect_timeout_s: .nan", "connect_timeout_s", "expected a number"),
        ("connect_timeout_s: -1", "connect_timeout_s", "must be > 0"),
        ("extra: [1]", "extra", "expected a mapping"),
        ("notes: 2024-01-01", "notes", "expected a text"),
        ("key_file: {a: 1}", "key_file", "expected a non-empty text"),
    ],
)
def test_every_devices_yaml_field_is_type_checked_on_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, field: str, expected: str
) -> None:
    path = tmp_path / "devices.yaml"
    text = GOOD_YAML.replace("    threads: 4\n", "") + f"    {line}\n"
    path.write_text(text)
    line_no = text.splitlines().index(f"    {line}") + 1
    with pytest.raises(SchemaError) as info:
        Inventory.load(path)
    assert str(info.value).startswith(f"{path}:{line_no}: device jetson: {field}")
    assert expected in str(info.value)
    capsys.readouterr()
    assert main(["-W", str(tmp_path), "devices", "list"]) == 1
    assert expected in capsys.readouterr().err.replace("\n", "")


def test_a_device_key_that_is_not_a_text_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD_YAML.replace("key: jetson", "key: 123"))
    with pytest.raises(SchemaError, match=rf"{path}:7: device key 123 must be lowercase"):
        Inventory.load(path)
    path.write_text("schema_version: 1\ndevices:\n  - transport: local\n")
    with pytest.raises(SchemaError, match="needs a key"):
        Inventory.load(path)
    path.write_bytes(b"schema_version: 1\ndevices: [\xff]\n")
    with pytest.raises(SchemaError, match="not readable YAML"):
        Inventory.load(path)


def test_a_good_inventory_still_loads_and_roundtrips(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD_YAML)
    inv = Inventory.load(path)
    assert inv.get("jetson").port == 2222 and inv.get("jetson").threads == 4
    inv.save()
    assert Inventory.load(path).devices == inv.devices


# --------------------------------------------------------------------------- archs
def arch_json(**change: object) -> str:
    doc: dict = {**Arch.smallest(160).to_dict(), **change}
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (arch_json(r=float("nan")), "NaN is not a number"),
        (arch_json(r=float("inf")), "Infinity is not a number"),
        (arch_json().replace('"r": 160', '"r": 1e400'), "r: expected an integer, got inf"),
        (arch_json(ks=None), "ks: expected a list of 20 integers, got None"),
        (arch_json(e="3"), "e: expected a list of 20 integers"),
        (arch_json(w=float("nan")), "NaN is not a number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("[3, 5]", "a genome is a list of 46 integers"),
        (json.dumps([*Arch.smallest(160).to_genome().tolist()[:-1], 160.5]), "genome[45]: expected an integer"),
    ],
)
def test_hostile_arch_json_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    with pytest.raises(InvalidArchError, match=re.escape(message)):
        resolve_arch(text)
    path = tmp_path / "arch.json"
    path.write_text(text)
    with pytest.raises(InvalidArchError, match=re.escape(message)):
        resolve_arch(str(path))
    capsys.readouterr()
    assert main(["-W", str(tmp_path), "arch", "show", str(path)]) == EXIT_FAILURE
    assert "error:" in capsys.readouterr().err


def test_the_46_gene_genome_is_accepted_inline_and_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = SearchSpace().sample(1, np.random.default_rng(3))[0]
    genome = json.dumps(arch.to_genome().tolist())
    assert resolve_arch(genome) == arch
    (tmp_path / "g.json").write_text(genome)
    assert resolve_arch(str(tmp_path / "g.json")) == arch
    capsys.readouterr()
    assert main(["-W", str(tmp_path), "arch", "show", genome, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch_id"] == arch.id


def fitted_table(ws: Path, key: str = "pi") -> DeviceTable:
    """A table measured at 160..224 px with a fitted linear predictor (no CV, so quick)."""
    table = DeviceTable(ws / "latency_tables", key)
    probe = probe_report(cpu_model="Cortex-A72")
    table.bind(probe, "onnxruntime")
    archs = SearchSpace().sample(30, np.random.default_rng(0))
    ms = np.array([1e-6 * a.r**2 * (1 + sum(a.d)) for a in archs])
    for arch, y in zip(archs, ms, strict=True):
        table.append(record_for(arch, float(y), Protocol(), fingerprint=probe.fingerprint))
    LinearSurrogate(features="minimal").fit(archs, ms).save(table.surrogate_path, device=key)
    return table


def test_predict_refuses_a_resolution_outside_the_space_and_warns_outside_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    fitted_table(ws)
    args = ["-W", str(ws), "predict", "--device", "pi", "--json"]
    capsys.readouterr()
    assert main([*args, json.dumps({**Arch.largest(224).to_dict(), "r": 999})]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "resolution 999 px is outside" in captured.err and "160, 176, 192, 208, 224" in captured.err
    assert captured.out == ""
    assert main([*args, "max@128"]) == 0
    captured = capsys.readouterr()
    assert "128 px is not among the resolutions latency_tables/pi was calibrated on" in captured.err.replace("\n", " ")
    assert json.loads(captured.out)["predictions"][0]["arch"]["r"] == 128  # stdout stays clean JSON
    assert main([*args, "max@224"]) == 0
    assert "warning" not in capsys.readouterr().err


# --------------------------------------------------------------------------- SSH key files
def key_device(tmp_path: Path, key_file: Path, port: int = 1) -> Device:
    return Device(
        key="pi-test", transport="ssh", host="127.0.0.1", port=port, user="pi", key_file=str(key_file),
        known_hosts=str(tmp_path / "known_hosts"), connect_timeout_s=5,
    )


def test_a_missing_public_or_junk_key_file_is_named_before_connecting(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    (tmp_path / "junk").write_text("hello\n")
    cases = [
        (tmp_path / "absent", "does not exist"),
        (tmp_path / "id.pub", "is a public key; give the private key"),
        (tmp_path / "junk", "is not a private key file"),
        (tmp_path, "is not a file"),
    ]
    for path, message in cases:
        with pytest.raises(InvalidInputError, match=message) as info:
            transport_for(key_device(tmp_path, path)).open()  # port 1: nothing listens, so no retry reaches it
        assert str(path) in str(info.value) and "pi-test" in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        transport_for(key_device(tmp_path, tmp_path / "id.pub")).open()
    assert "cannot reach" not in str(info.value)


@pytest.fixture()
def sshd(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.mark.ssh
def test_an_authentication_failure_is_not_retried(
    sshd: Sshd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    device = Device(
        key="pi-test", transport="ssh", host="127.0.0.1", port=sshd.port, user=sshd.user, key_file=str(stranger),
        known_hosts=str(sshd.known_hosts), connect_timeout_s=5,
    )
    from ofa2_edge.core.errors import DeviceUnreachableError

    with caplog.at_level(logging.WARNING), pytest.raises(DeviceUnreachableError, match="authentication as .* failed"):
        transport_for(device).open()
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
