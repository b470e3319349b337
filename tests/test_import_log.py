"""`tables import-log`: real vendor tool logs into a table, apart from the agent's records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_agents.parsers.ort_perf_test import parse_ort_perf_test
from device_agents.parsers.tflite_benchmark import parse_benchmark_model
from device_agents.parsers.trtexec import parse_trtexec
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE, SchemaError
from ofa2_edge.tables.device import DeviceTable
from ofa2_edge.tables.imported import imported_path, read_imported

TOOLS = {"trtexec": "trtexec", "tflite_benchmark_model": "benchmark_model", "onnxruntime_perf_test": "onnxruntime_perf_test"}


def logs(fixtures_dir: Path) -> list[tuple[str, Path]]:
    found = [(tool, p) for folder, tool in TOOLS.items() for p in sorted((fixtures_dir / folder).glob("*.txt"))]
    assert len(found) >= 9
    return found


def expected_ms(tool: str, text: str) -> float:
    if tool == "trtexec":
        s = parse_trtexec(text)
        return (s.latency or s.gpu_compute_time).median_ms
    if tool == "benchmark_model":
        return parse_benchmark_model(text).inference_avg_ms
    r = parse_ort_perf_test(text)
    return r.latency_ms.get("p50", r.average_ms)


def test_every_fixture_log_imports_with_its_tool_and_stays_apart(
    fixtures_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = ["-W", str(tmp_path)]
    imported = 0
    for tool, path in logs(fixtures_dir):
        text = path.read_text(errors="replace")
        try:
            want = expected_ms(tool, text)
        except AttributeError:  # a partial log without a latency summary: refused below
            want = None
        capsys.readouterr()
        code = main([*ws, "tables", "import-log", "--device", "jetson-lab", "--arch", "min@160", str(path), "--json"])
        if want is None:
            assert code == EXIT_FAILURE and "nothing imported" in capsys.readouterr().err
            continue
        assert code == 0, capsys.readouterr().err
        row = json.loads(capsys.readouterr().out)
        assert row["added"] and row["tool"] == tool and row["latency_ms"] == pytest.approx(want)
        assert row["source"]["file"] == path.name and len(row["source"]["sha256"]) == 64
        imported += 1
    table = DeviceTable(tmp_path / "latency_tables", "jetson-lab")
    rows = list(read_imported(table))
    assert len(rows) == imported >= 8
    assert not table.measurements_path.exists()  # never mixed with the agent's records
    trt = [r for r in rows if r["tool"] == "trtexec" and r.get("tool_version")]
    assert trt and all(r["tool_version"].count(".") >= 1 for r in trt)
    assert any("command" in r["settings"] for r in rows)
    # the same log for the same arch is not added twice
    tool, path = next((t, p) for t, p in logs(fixtures_dir) if t == "onnxruntime_perf_test")
    assert main([*ws, "tables", "import-log", "--device", "jetson-lab", "--arch", "min@160", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] is False
    assert len(list(read_imported(table))) == imported


def test_bad_logs_and_rows_are_refused_naming_the_file(
    fixtures_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = ["-W", str(tmp_path)]
    junk = tmp_path / "notes.txt"
    junk.write_text("the board ran fine, about 12 ms\n")
    capsys.readouterr()
    assert main([*ws, "tables", "import-log", "--device", "b", "--arch", "min@160", str(junk)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "notes.txt" in err and "not a log of trtexec or benchmark_model or onnxruntime_perf_test" in err
    table = DeviceTable(tmp_path / "latency_tables", "b")
    assert not imported_path(table).exists()
    trt = next(p for t, p in logs(fixtures_dir) if t == "trtexec")
    assert main([*ws, "tables", "import-log", "--device", "b", "--arch", "min@160", str(trt),
                 "--tool", "benchmark_model"]) == EXIT_FAILURE  # fmt: skip
    assert not imported_path(table).exists()
    assert main([*ws, "tables", "import-log", "--device", "b", "--arch", "min@160", str(trt), "--tool", "x"]) == EXIT_FAILURE
    # a damaged row is an error naming file and line, and the next import refuses to append after it
    ort = next(p for t, p in logs(fixtures_dir) if t == "onnxruntime_perf_test")
    assert main([*ws, "tables", "import-log", "--device", "b", "--arch", "min@160", str(ort)]) == 0
    path = imported_path(table)
    row = json.loads(path.read_text())
    row["latency_ms"] = -1
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SchemaError, match=r"imported.jsonl:1: field latency_ms"):
        list(read_imported(table))
    assert main([*ws, "tables", "import-log", "--device", "b", "--arch", "max@160", str(ort)]) == EXIT_FAILURE
    assert "imported.jsonl:1" in capsys.readouterr().err
