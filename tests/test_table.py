"""Device latency tables: binding to a device, durable appends, validation, datasets."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from records_factory import probe_report, record_for

from device_agents.records import FailureKind, Protocol
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.space.arch import Arch
from ofa2_edge.tables.device import DeviceTable, MeasureKey


def test_bind_refuses_a_table_of_another_device(tmp_path: Path) -> None:
    table = DeviceTable(tmp_path, "rpi4")
    probe = probe_report(cpu_model="Cortex-A72")
    table.bind(probe, "onnxruntime")
    table.bind(probe, "onnxruntime")  # same device: fine
    other = probe_report(cpu_model="Cortex-A76")
    before = table.device_path.read_bytes()
    with pytest.raises(InvalidInputError, match="measured on another device.*--reuse-table"):
        table.bind(other, "onnxruntime")
    assert table.device_path.read_bytes() == before  # refused: nothing changed on disk
    table.bind(other, "onnxruntime", reuse=True)
    assert table.device_info()["reused_by"][0]["fingerprint"] == other.fingerprint


def test_append_read_and_resume_key(tmp_path: Path) -> None:
    table = DeviceTable(tmp_path, "local")
    a, b = Arch.smallest(160), Arch.largest(224)
    protocol = Protocol()
    ok_a = record_for(a, 5.0, protocol)
    ok_b_other_protocol = record_for(b, 25.0, dataclasses.replace(protocol, blocks=7))
    failed = record_for(b, None, protocol, error=FailureKind.RUN_TIMEOUT)
    for r in (ok_a, ok_b_other_protocol, failed):
        table.append(r)
    assert [r.arch_id for r in table.records()] == [a.id, b.id, b.id]
    done = table.measured(MeasureKey.of(ok_a))
    assert set(done) == {a.id}  # b was measured under another protocol, or failed
    archs, lat, _ = table.dataset()
    assert {x.id: v for x, v in zip(archs, lat)} == {a.id: 5.0, b.id: 25.0}


def test_a_torn_last_line_is_skipped_but_a_bad_record_is_refused(tmp_path: Path) -> None:
    table = DeviceTable(tmp_path, "local")
    table.append(record_for(Arch.smallest(160), 5.0, Protocol()))
    with open(table.measurements_path, "a") as fh:
        fh.write('{"schema": "agent.measure_result", "schema_ver')  # killed mid-write
    assert len(list(table.records())) == 1
    table.append(record_for(Arch.largest(160), 9.0, Protocol()))  # appending after a torn line still works
    assert len(list(table.records())) == 2
    doc = json.loads(table.measurements_path.read_text().splitlines()[0])
    doc["schema_version"] = 99
    with open(table.measurements_path, "a") as fh:
        fh.write(json.dumps(doc) + "\n")
    with pytest.raises(SchemaError, match=r"measurements.jsonl:3: record: schema_version 99"):
        list(table.records())


def test_append_survives_kill_9_of_the_writer(tmp_path: Path) -> None:
    """A writer killed at a random moment leaves every committed record readable."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = {sys.path!r}
        from agent_models import record_for
        from device_agents.records import Protocol
        from ofa2_edge.tables.device import DeviceTable
        from ofa2_edge.space.arch import SearchSpace
        import numpy as np
        table = DeviceTable({str(tmp_path)!r}, "local")
        for i, arch in enumerate(SearchSpace().sample(100000, np.random.default_rng(0))):
            table.append(record_for(arch, 1.0 + i, Protocol()))
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = -1
    for line in proc.stdout:
        committed = int(line)
        if committed >= 40:
            proc.kill()
            break
    proc.wait()
    records = list(DeviceTable(tmp_path, "local").records())
    assert len(records) >= committed + 1  # everything reported as committed is there
    assert [r.estimate_ms for r in records] == [1.0 + i for i in range(len(records))]


def test_key_must_be_a_device_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        DeviceTable(tmp_path, "../etc")
    assert os.path.exists(tmp_path)


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    from ofa2_edge.core.persist import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left
