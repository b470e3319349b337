"""Fuzz/property tests (hypothesis) of the readers that stand between a device (or a disk)
and a latency table: agent lines, measurements.jsonl, device.json, surrogate.json.

The property: any mutation of a valid line or file gives the same result or one clear
Ofa2EdgeError (RecordError for a raw agent line, which the session turns into a
MeasurementError): never another exception, never a change on disk by a reader. Where a
mutation may legitimately change a value (a predictor's coefficient), what loads must still
give finite, positive, bounded latencies with lower <= upper.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import byte_mutations, doc_mutations
from records_factory import probe_report, record_for

from device_agents.records import MeasureResult, Protocol, RecordError, TensorSpec, parse_agent_line
from ofa2_edge.core.errors import MeasurementError, Ofa2EdgeError
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.surrogates.base import MAX_PREDICTED_MS, MIN_PREDICTED_MS, surrogate_from_doc
from ofa2_edge.surrogates.linear import LinearSurrogate
from ofa2_edge.tables.device import DeviceTable

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PROBE = probe_report(cpu_model="Cortex-A72")
ARCH = Arch.smallest(160)
PROTOCOL = Protocol()


def _record() -> MeasureResult:
    base = record_for(ARCH, 5.0, PROTOCOL, fingerprint=PROBE.fingerprint,
                      runtime_version=PROBE.runtimes["onnxruntime"].version if "onnxruntime" in PROBE.runtimes else "1.0")
    stats = dataclasses.replace(base.stats, min_ms=4.0, p10_ms=4.5, p90_ms=6.0, p99_ms=7.0, max_ms=8.0, mean_ms=5.2,
                                block_min_ms=(4.0, 5.0, 6.0), block_median_ms=(5.0, 5.5, 6.5), block_min_median_ms=5.0)
    return dataclasses.replace(base, batch_id="b-fuzz", device_key="pi", agent_version=PROBE.agent_version,
                               stats=stats)


RECORD = _record()
LINE = RECORD.to_json_line()

def text_mutations(text: str) -> st.SearchStrategy[str]:
    """`text` cut short, spliced with random bytes (non-UTF-8 kept as surrogate escapes) or nested."""
    return byte_mutations(text.encode()).map(lambda b: b.decode("utf-8", "surrogateescape"))


def _session(tmp_path: Path) -> DeviceSession:
    session = DeviceSession(Device(key="pi"), tmp_path / "cache")  # not opened: no device needed
    session.probe = PROBE
    return session


def _model() -> ShippableModel:
    return ShippableModel(ARCH, Path("m.onnx"), RECORD.model_sha256, "onnxruntime",
                          (TensorSpec("input", (1, 3, 160, 160), "float32"),),
                          (TensorSpec("output", (1, 1000), "float32"),))


def _check(session: DeviceSession, line: str) -> MeasureResult | None:
    """The session's gate: parse, then check against the request. None if refused."""
    try:
        record = parse_agent_line(line, where="pi agent")
    except RecordError:
        return None
    assert isinstance(record, MeasureResult)
    try:
        session.check_record(record, MODEL, PROTOCOL, "b-fuzz")
    except MeasurementError as exc:
        assert "pi" in str(exc)
        return None
    return record


MODEL = _model()
_SPEC_FILE = MODEL.spec().model_file


def _request_line() -> str:
    doc = RECORD.to_dict()
    doc["model_file"] = _SPEC_FILE
    return json.dumps(doc)


REQUEST_LINE = _request_line()


def test_the_unmutated_line_passes_the_gate(tmp_path: Path) -> None:
    assert _check(_session(tmp_path), REQUEST_LINE) is not None


@FUZZ
@given(data=st.data())
def test_mutated_agent_lines_give_the_record_or_one_clear_error(tmp_path: Path, data: st.DataObject) -> None:
    session = _session(tmp_path)
    original = _check(session, REQUEST_LINE)
    if data.draw(st.booleans()):
        line = json.dumps(data.draw(doc_mutations(json.loads(REQUEST_LINE))))
    else:
        line = data.draw(text_mutations(REQUEST_LINE))
    record = _check(session, line)  # only RecordError / MeasurementError may escape: anything else fails here
    if record is not None:
        # what the table keys and fits on is exactly what was asked and what the agent measured
        for name in ("arch_id", "arch", "device_fingerprint", "protocol", "runtime", "runtime_version",
                     "model_sha256", "batch_id", "device_key"):
            assert getattr(record, name) == getattr(original, name), name
        s = record.stats
        assert s is not None and math.isfinite(s.estimate_ms) and s.min_ms <= s.estimate_ms <= s.max_ms
        assert s.min_ms <= s.p10_ms <= s.median_ms <= s.p90_ms <= s.p99_ms <= s.max_ms


# ------------------------------------------------------------------ files on disk
def _table(tmp_path: Path) -> DeviceTable:
    table = DeviceTable(tmp_path / "tables", "pi")
    if not table.device_path.exists():
        table.bind(PROBE, "onnxruntime")
        for arch in (ARCH, Arch.largest(160), Arch.smallest(224)):
            table.append(record_for(arch, 5.0, PROTOCOL, fingerprint=PROBE.fingerprint))
    return table


@FUZZ
@given(data=st.data())
def test_mutated_measurements_give_the_same_rows_or_an_error_naming_file_and_line(
    tmp_path: Path, data: st.DataObject
) -> None:
    table = _table(tmp_path)
    clean = table.measurements_path.read_bytes()
    lines = clean.decode().splitlines()
    original = list(table.records())
    i = data.draw(st.integers(0, len(lines) - 1))
    if data.draw(st.booleans()):
        lines[i] = json.dumps(data.draw(doc_mutations(json.loads(lines[i]))))
    else:
        lines[i] = data.draw(text_mutations(lines[i])).replace("\n", " ").replace("\r", " ")
    terminated = data.draw(st.booleans()) or i < len(lines) - 1
    damaged = ("\n".join(lines) + ("\n" if terminated else "")).encode("utf-8", "surrogatepass")
    try:
        table.measurements_path.write_bytes(damaged)
        try:
            rows = list(table.records())
        except Ofa2EdgeError as exc:
            assert "measurements.jsonl" in str(exc) or "device.json" in str(exc)
        else:
            torn = i == len(lines) - 1 and not terminated
            if len(rows) == len(original) - 1:  # a torn last line, or a line emptied by the mutation
                assert torn or not lines[i].strip()
                assert [r for j, r in enumerate(original) if j != i] == rows
            else:
                assert len(rows) == len(original)
                assert [r for j, r in enumerate(rows) if j != i] == [r for j, r in enumerate(original) if j != i]
            for got in rows:  # whatever was read obeys the table's invariants
                assert got.arch is not None and Arch.from_dict(got.arch).id == got.arch_id
                assert got.device_fingerprint == PROBE.fingerprint
                if got.ok:
                    s = got.stats
                    assert s.min_ms <= s.p10_ms <= s.median_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
                    assert s.min_ms <= s.estimate_ms <= s.max_ms
        assert table.measurements_path.read_bytes() == damaged  # reading never changes the file
    finally:
        table.measurements_path.write_bytes(clean)


@FUZZ
@given(data=st.data())
def test_mutated_device_json_reads_back_or_is_one_clear_error(tmp_path: Path, data: st.DataObject) -> None:
    table = _table(tmp_path)
    clean = table.device_path.read_bytes()
    doc = json.loads(clean)
    text = (json.dumps(data.draw(doc_mutations(doc))) if data.draw(st.booleans())
            else data.draw(text_mutations(clean.decode())))
    try:
        table.device_path.write_text(text, encoding="utf-8", errors="surrogatepass")
        damaged = table.device_path.read_bytes()
        try:
            info = table.device_info()
            list(table.records())
        except Ofa2EdgeError:
            pass
        else:
            assert isinstance(info, dict) and isinstance(info["fingerprint"], str)
        assert table.device_path.read_bytes() == damaged
    finally:
        table.device_path.write_bytes(clean)


@pytest.fixture(scope="module")
def linear_doc() -> dict[str, Any]:
    archs = SearchSpace().sample(12, np.random.default_rng(0))
    y = np.array([1.0 + a.r / 100 + sum(a.d) / 10 for a in archs])
    return json.loads(json.dumps(LinearSurrogate(features="minimal").fit(archs, y).to_doc()))


@FUZZ
@given(data=st.data())
def test_mutated_surrogates_load_as_plausible_predictors_or_one_clear_error(
    linear_doc: dict[str, Any], data: st.DataObject
) -> None:
    text = json.dumps(linear_doc)
    if data.draw(st.booleans()):
        mutated = data.draw(doc_mutations(linear_doc))
    else:
        try:
            mutated = json.loads(data.draw(text_mutations(text)))
        except ValueError:
            return  # not JSON: read_json's SchemaError (tested on files elsewhere)
    try:
        model = surrogate_from_doc(mutated, "surrogate.json")
    except Ofa2EdgeError as exc:
        assert "surrogate.json" in str(exc)
        return
    archs = [Arch.smallest(160), Arch.largest(224), Arch.smallest(192)]
    mean = model.predict(archs)
    lo, hi = model.predict_interval(archs, 0.8)
    assert np.all(np.isfinite(mean)) and np.all((mean >= MIN_PREDICTED_MS) & (mean <= MAX_PREDICTED_MS))
    assert np.all(np.isfinite(lo) & np.isfinite(hi) & (lo <= hi))
