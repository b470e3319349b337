"""Calibration end to end on the local device, its resume after kill -9, and the table CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from records_factory import probe_report, record_for

from device_agents.records import Protocol
from ofa2_edge.calibration.calibrate import design_archs
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.surrogates.base import load_surrogate
from ofa2_edge.surrogates.lut import LutSurrogate
from ofa2_edge.tables.device import DeviceTable

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ofa2_edge", *args]


def test_design_is_deterministic_and_spans_sizes() -> None:
    space = SearchSpace()
    a, b = design_archs(30, 0, space), design_archs(30, 0, space)
    assert [x.id for x in a] == [x.id for x in b]
    ids = {x.id for x in a}
    assert {space.smallest(r).id for r in space.resolutions} <= ids and {
        space.largest(r).id for r in space.resolutions
    } <= ids
    with pytest.raises(Exception, match="needs at least 10"):
        design_archs(8, 0, space)


@pytest.mark.slow
def test_calibration_survives_kill_9_and_resumes(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    env = {**os.environ, "OFA2_EDGE_CACHE": str(tmp_path / "cache")}
    args = cli("-W", str(ws), "calibrate", "--budget", "12", "--quick", "--json")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    table = DeviceTable(ws / "latency_tables", "local")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (not table.measurements_path.exists() or len(list(table.records())) < 4):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole tree: CLI, agent and worker
    proc.wait()
    before = list(table.records())
    assert 4 <= len(before) < 12, "the kill should land mid-calibration"
    assert not table.surrogate_path.exists()

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["already_measured"] == len(before)
    assert summary["measured_now"] == 12 - len(before)
    after = list(table.records())
    assert [r.arch_id for r in after[: len(before)]] == [r.arch_id for r in before]  # nothing lost or rewritten
    assert len({r.arch_id for r in after}) == 12
    model = load_surrogate(table.surrogate_path)
    # structure only: the predictor's quality is a benchmark figure (it moves with machine load)
    assert model.report["n_train"] == 12 and -1.0 <= model.report["held_out"]["spearman"] <= 1.0


def make_table(ws: Path, key: str = "pi") -> tuple[DeviceTable, LutSurrogate]:
    """A table of a board whose latencies follow the Note10 table (clean, known values)."""
    lut = LutSurrogate.from_folder(
        Path(os.environ.get("OFA2_EDGE_ASSETS", REPO.parent / "shared/ofa_assets")) / "note10"
    )
    table = DeviceTable(ws / "latency_tables", key)
    table.bind(probe_report(cpu_model="Cortex-A72"), "onnxruntime")
    fingerprint = table.device_info()["fingerprint"]
    archs = SearchSpace().sample(40, np.random.default_rng(0))
    for arch, ms in zip(archs, lut.predict(archs), strict=True):
        table.append(record_for(arch, float(ms), Protocol(), fingerprint=fingerprint))
    return table, lut


def test_fit_predict_and_tables_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], assets_dir: Path) -> None:
    ws = tmp_path / "ws"
    make_table(ws)
    assert main(["-W", str(ws), "fit", "--device", "pi", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["held_out"]["share_within_10pct"] >= 0.95  # clean data, 40 samples
    assert main(["-W", str(ws), "predict", "--device", "pi", "max@224", "min@160", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["predictions"]
    assert abs(pred[0]["latency_ms"] / 92.40 - 1) < 0.1 and abs(pred[1]["latency_ms"] / 9.89 - 1) < 0.1
    assert pred[0]["lower_ms"] < pred[0]["latency_ms"] < pred[0]["upper_ms"]
    assert main(["-W", str(ws), "tables", "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["key"] == "pi" and row["ok"] == 40 and row["surrogate"]["kind"]
    assert main(["-W", str(ws), "tables", "export", "pi", "-o", str(tmp_path / "pi.csv")]) == 0
    lines = (tmp_path / "pi.csv").read_text().splitlines()
    assert len(lines) == 41 and lines[0].startswith("arch_id,arch,r,")


def test_predict_without_a_fit_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-W", str(tmp_path), "predict", "--device", "pi", "min"]) == EXIT_FAILURE
    assert "ofa2-edge calibrate --device pi" in capsys.readouterr().err


def test_ofa_tables_import_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], assets_dir: Path) -> None:
    ws = ["-W", str(tmp_path / "ws")]
    assert main([*ws, "tables", "import", str(assets_dir / "note10")]) == EXIT_FAILURE  # needs --key
    assert main([*ws, "tables", "import", str(assets_dir / "note10"), "--key", "note10"]) == 0
    model = load_surrogate(tmp_path / "ws/latency_tables/note10/surrogate.json")
    assert isinstance(model, LutSurrogate) and round(float(model.predict([SearchSpace().largest()])[0]), 2) == 92.40
    assert main([*ws, "tables", "import", str(assets_dir / "note10"), "--key", "note10"]) == EXIT_FAILURE  # exists
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "160_lookup_table.yaml").write_text("Conv-x: {mean: -3}\n")
    assert main([*ws, "tables", "import", str(bad), "--key", "broken"]) != 0
    assert not (tmp_path / "ws/latency_tables/broken").exists()  # nothing written


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ({"../evil/measurements.jsonl": b"{}"}, None, "'..' component"),
        ({"/etc/evil": b"x"}, None, "absolute path"),
        ({"pi/measurements.jsonl": b""}, {"pi/device.json": "/etc/passwd"}, "only regular files"),
        ({"a/x": b"", "b/y": b""}, None, "one top-level folder"),
        (
            {"pi/measurements.jsonl": b'{"schema": "agent.measure_result", "schema_version": 7}\n'},
            None,
            "schema_version",
        ),
    ],
)
def test_table_archives_are_checked_before_anything_lands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], members: dict, links: dict | None, message: str
) -> None:
    ws = tmp_path / "ws"
    existing, _ = make_table(ws, "pi")
    before = existing.measurements_path.read_bytes()
    archive = _tar(tmp_path / "t.tar.gz", members, links)
    code = main(["-W", str(ws), "tables", "import", str(archive), "--key", "pi", "--replace"])
    assert code != 0 and message in capsys.readouterr().err
    assert existing.measurements_path.read_bytes() == before  # the old table is untouched
    assert sorted(p.name for p in (ws / "latency_tables").iterdir()) == [".pi.lock", "pi"]  # no staging left


def test_table_roundtrip_through_an_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    table, _ = make_table(ws, "pi")
    assert main(["-W", str(ws), "tables", "export", "pi", "-o", str(tmp_path / "pi.tar.gz")]) == 0
    other = tmp_path / "other"
    assert main(["-W", str(other), "tables", "import", str(tmp_path / "pi.tar.gz")]) == 0
    copy = DeviceTable(other / "latency_tables", "pi")
    assert copy.measurements_path.read_bytes() == table.measurements_path.read_bytes()
