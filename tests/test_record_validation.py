"""Validate before write: a record from a device reaches a latency table only if it answers
what was asked and obeys physics (issue 16).

Records are injected by a fake device interpreter: a small script set as the device's
`python`. It runs the real agent for everything but `measure`, where it replays a record the
real agent produced for the same model earlier (with the new batch id), crafted by the test.
The transport, the probe, the session and the table are the real ones.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_models import conv_net, save
from records_factory import record_for

from device_agents.records import MeasureResult, Protocol, TensorSpec
from ofa2_edge.core.errors import DeviceUnreachableError, MeasurementError, SchemaError
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.space.arch import Arch
from ofa2_edge.tables.device import DeviceTable

QUICK = Protocol(
    warmup_runs=2, warmup_min_s=0.0, blocks=3, runs_per_block=5, block_min_s=0.0, block_warmup_runs=1,
    interleave=1, cooldown_s=0.0, timeout_s=60.0, remeasure=0, quiet_wait_s=0.0,
)
KEY = "fake"


def model(folder: Path) -> ShippableModel:
    arch = Arch.smallest(160)
    path = folder / "m.onnx"
    sha = save(conv_net(channels=8, depth=2, size=32, seed=0), path)
    return ShippableModel(
        arch, path, sha, "onnxruntime", (TensorSpec("x", (1, 3, 32, 32), "float32"),), (TensorSpec("y", (1, 10), "float32"),)
    )


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[ShippableModel, dict[str, Any], Path]:
    """A model, the real agent's record of it (as a JSON document), and the host cache."""
    folder = tmp_path_factory.mktemp("real")
    m = model(folder)
    with DeviceSession(Device(key=KEY, python=sys.executable), folder / "cache") as session:
        report = session.measure([m], QUICK)
    (record,) = report.ok
    return m, record.to_dict(), folder / "cache"


def fake_python(folder: Path, template: dict[str, Any], mutate: str = "", lines: str = "") -> str:
    """A device `python` that replays `template` (after `mutate`, Python code on `doc`) for
    `measure`; `lines` replaces the printed lines (code that prints them itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "template.json").write_text(json.dumps(template))
    script = folder / "fake-python"
    body = lines or "print(json.dumps(doc)); print(json.dumps(end))"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import json, os, sys
            args = sys.argv[1:]
            if "measure" not in args:
                os.execv({sys.executable!r}, [{sys.executable!r}, *args])
            request = json.load(open(args[args.index("--request") + 1]))
            doc = json.load(open({str(folder / "template.json")!r}))
            doc["batch_id"] = request["batch_id"]
            end = {{"schema": "agent.batch_end", "schema_version": 1, "batch_id": request["batch_id"],
                   "n_models": 1, "n_ok": 1, "n_failed": 0, "wall_s": 0.1}}
            """
        )
        + textwrap.dedent(mutate)
        + "\n"
        + textwrap.dedent(body)
        + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def run_fake(tmp_path: Path, real: tuple[ShippableModel, dict[str, Any], Path], mutate: str, **kw: Any) -> DeviceTable:
    m, template, cache = real
    device = Device(key=KEY, python=fake_python(tmp_path / "fake", template, mutate))
    table = DeviceTable(tmp_path / "latency_tables", KEY)
    with DeviceSession(device, cache, **kw) as session:
        assert session.probe is not None
        table.bind(session.probe, "onnxruntime")
        session.measure([m], QUICK, table.append)
    return table


def test_the_fake_interpreter_replays_a_valid_record(tmp_path: Path, real: Any) -> None:
    table = run_fake(tmp_path, real, "")
    (stored,) = table.records()
    assert stored.ok and stored.arch_id == real[0].arch.id


# Each crafted record: (mutation of the agent's JSON document `doc`, the field the error names).
CRAFTED = {
    "estimate -5": ("doc['stats']['estimate_ms'] = -5.0", "estimate_ms"),
    "estimate 0": ("doc['stats']['estimate_ms'] = 0.0", "estimate_ms"),
    "estimate 1e-300": (
        "for k in ('estimate_ms','min_ms','p10_ms','median_ms','block_min_median_ms'): doc['stats'][k] = 1e-300",
        "min_ms",
    ),
    "estimate 1e300": (
        (
            "s = doc['stats']\nfor k in list(s):\n    s[k] = 1e300 if k.endswith('_ms') and isinstance(s[k], float) "
            "else s[k]\ns['block_min_ms'] = [1e300] * len(s['block_min_ms'])\n"
            "s['block_median_ms'] = [1e300] * len(s['block_median_ms'])"
        ),
        "max_ms",
    ),
    "estimate 1000x max": ("doc['stats']['estimate_ms'] = 1000 * doc['stats']['max_ms']", "estimate_ms"),
    "unordered stats": ("doc['stats']['p90_ms'] = doc['stats']['max_ms'] * 2", "p90_ms"),
    "arch of another id": ("doc['arch'] = " + repr(Arch.largest(224).to_dict()), "arch"),
    "invalid arch": ("doc['arch']['ks'][0] = 4", "arch"),
    "10 MB junk key": ("doc['arch']['junk'] = 'x' * 10_000_000", "characters"),
    "foreign fingerprint": ("doc['device_fingerprint'] = '0123456789abcdef'", "device_fingerprint"),
    "another protocol": ("doc['protocol']['blocks'] = 7", "protocol"),
    "another runtime": ("doc['runtime_version'] = '0.0.1'", "runtime_version"),
    "another device key": ("doc['device_key'] = 'rpi4'", "device_key"),
    "another batch": ("doc['batch_id'] = 'b-0000'", "batch_id"),
    "another model file": ("doc['model_sha256'] = 'a' * 64", "model_sha256"),
    "unknown arch id": ("doc['arch_id'] = 'a-000000000000'", "not asked"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_a_crafted_record_is_refused_and_never_written(tmp_path: Path, real: Any, name: str) -> None:
    mutate, field = CRAFTED[name]
    with pytest.raises(MeasurementError) as err:
        run_fake(tmp_path, real, mutate)
    message = str(err.value)
    assert KEY in message and field in message and "nothing was written" in message
    if name not in ("10 MB junk key", "unknown arch id"):
        assert real[0].arch.id in message  # names the arch the record claims to be
    table = DeviceTable(tmp_path / "latency_tables", KEY)
    assert not table.measurements_path.exists()  # never written as a measurement
    assert list(table.records()) == []


def test_a_failed_reconnect_is_retried_while_tries_are_left(tmp_path: Path, real: Any, monkeypatch: Any) -> None:
    """The link drops (the agent stops before the end of the batch), the first reconnect
    fails, the second succeeds: the model is measured, not given up on."""
    m, template, cache = real
    counter = tmp_path / "calls"
    lines = f"""
        n = int(open({str(counter)!r}).read()) if os.path.exists({str(counter)!r}) else 0
        open({str(counter)!r}, "w").write(str(n + 1))
        if n == 0:
            sys.exit(1)  # the link drops before any record
        print(json.dumps(doc)); print(json.dumps(end))
    """
    device = Device(key=KEY, python=fake_python(tmp_path / "fake", template, lines=lines))
    session = DeviceSession(device, cache, reconnects=2)
    real_reconnect = session._reconnect
    calls = []

    def flaky_reconnect() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise DeviceUnreachableError(f"{KEY}: cannot reach the board (it is still booting)")
        real_reconnect()

    monkeypatch.setattr(session, "_reconnect", flaky_reconnect)
    with session:
        report = session.measure([m], QUICK)
    assert len(calls) == 2 and report.reconnects == 2
    assert len(report.ok) == 1 and not report.not_measured


def test_rows_that_fail_validation_in_a_table_name_file_and_line(tmp_path: Path) -> None:
    """A table poisoned before this check existed is never fitted silently."""
    table = DeviceTable(tmp_path, "pi")
    good = record_for(Arch.smallest(160), 5.0, Protocol())
    table.append(good)
    doc = good.to_dict()
    poisons: dict[str, Callable[[dict[str, Any]], None]] = {
        "estimate_ms": lambda d: d["stats"].update(estimate_ms=5000.0),
        "arch": lambda d: d.update(arch=Arch.largest(224).to_dict()),
        "arch is not a valid arch": lambda d: d["arch"]["ks"].__setitem__(0, 4),
        "p99_ms": lambda d: d["stats"].update(p99_ms=1.0),
    }
    clean = table.measurements_path.read_bytes()
    for what, poison in poisons.items():
        bad = json.loads(json.dumps(doc))
        poison(bad)
        table.measurements_path.write_bytes(clean + json.dumps(bad).encode() + b"\n" + clean)
        with pytest.raises(SchemaError, match=rf"measurements.jsonl:2: .*{what}.*fix or remove that line"):
            table.dataset()


def test_a_foreign_fingerprint_in_a_table_is_refused_on_read(tmp_path: Path) -> None:
    from records_factory import probe_report

    table = DeviceTable(tmp_path, "pi")
    probe = probe_report(cpu_model="Cortex-A72")
    table.bind(probe, "onnxruntime")
    table.append(record_for(Arch.smallest(160), 5.0, Protocol(), fingerprint=probe.fingerprint))
    table.append(record_for(Arch.largest(160), 9.0, Protocol(), fingerprint="0123456789abcdef"))
    with pytest.raises(SchemaError, match=r"measurements.jsonl:2: field device_fingerprint '0123456789abcdef'"):
        table.dataset()


def test_a_garbage_middle_line_is_an_error_and_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    table = DeviceTable(tmp_path, "pi")
    table.append(record_for(Arch.smallest(160), 5.0, Protocol()))
    with open(table.measurements_path, "ab") as fh:
        fh.write(b"this is not json\n")
    table.append(record_for(Arch.largest(160), 9.0, Protocol()))
    with pytest.raises(SchemaError, match=r"measurements.jsonl:2: not a JSON line.*fix or remove that line"):
        list(table.records())
    # a torn (unterminated) last line is a crash artefact: skipped, then cut off by the next append
    other = DeviceTable(tmp_path, "pj")
    other.append(record_for(Arch.smallest(160), 5.0, Protocol()))
    with open(other.measurements_path, "ab") as fh:
        fh.write(b'{"schema": "agent.measure_res')
    assert len(list(other.records())) == 1
    other.append(record_for(Arch.largest(160), 9.0, Protocol()))
    assert len(list(other.records())) == 2
    assert b"agent.measure_res\"" not in other.measurements_path.read_bytes()
    lines = other.measurements_path.read_bytes().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["schema"] == "agent.measure_result" for line in lines)


def test_an_unterminated_but_complete_last_record_is_kept(tmp_path: Path) -> None:
    table = DeviceTable(tmp_path, "pi")
    first = record_for(Arch.smallest(160), 5.0, Protocol())
    table.measurements_path.parent.mkdir(parents=True)
    table.measurements_path.write_text(json.dumps(first.to_dict()))  # no newline: still a whole record
    table.append(record_for(Arch.largest(160), 9.0, Protocol()))
    assert [r.estimate_ms for r in table.records()] == [5.0, 9.0]


def test_measure_results_fixture_is_real(real: Any) -> None:
    """The template is what the real agent sent (so the crafted records differ only as stated)."""
    record = MeasureResult.from_dict(real[1])
    assert record.ok and record.protocol == QUICK and os.path.exists(real[0].path)
    assert np.isfinite(record.estimate_ms)
