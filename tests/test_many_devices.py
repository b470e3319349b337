"""Many devices in one search (issue 21): the per-device survival, bounded indicators and
front, the CSV import of external measurements, and a real 12-device search with what
reads its run folder (runs show/compare, select, dashboard data).

The 12 devices: OFA's Note10 lookup table, 10 lookup tables derived from it (every layer
type rescaled; SYNTHETIC, for the test only) imported with `tables import <folder>`, and
one device from a CSV of 30 (arch, latency) rows imported with `tables import x.csv`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from ofa2_edge.cli.main import main
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.dashboard import build_data
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.algorithms import MANY_COST_ELITE
from ofa2_edge.search.indicators import EXACT, MC, front_indicator, hypervolume, hypervolume_mc, nondominated
from ofa2_edge.search.perdevice import bounded_front, crowding_2d, fronts_2d, pairs_of, per_pair_order, round_robin
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.surrogates.lut import LayerStat, LutSurrogate, read_ofa_tables, write_ofa_table

N_DEVICES = 12


def cli(capsys: pytest.CaptureFixture[str], ws: Path, *args: str) -> tuple[int, str, str]:
    code = main(["-W", str(ws), *args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


# --------------------------------------------------------------------- survival pieces
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(0, 10_000))
def test_2d_fronts_are_pymoo_non_dominated_sorting(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    F = rng.random((n, 2)).round(2) + rng.random((n, 2)) * 1e-6  # near-ties, no exact duplicates
    rank = fronts_2d(F)
    want = np.zeros(n, dtype=np.int64)
    for k, front in enumerate(NonDominatedSorting().do(F)):
        want[front] = k
    assert (rank == want).all()
    assert set(np.flatnonzero(rank == 0)) == set(nondominated(F))
    cd = crowding_2d(F, rank)
    for k in np.unique(rank):  # each level's two ends are kept first
        level = np.flatnonzero(rank == k)
        ends = level[[np.argmin(F[level, 0]), np.argmax(F[level, 0])]]
        assert np.isinf(cd[ends]).all() and (cd[level] >= 0).all()


def test_round_robin_keeps_every_pairs_best_and_no_row_twice() -> None:
    rng = np.random.default_rng(0)
    F = rng.random((200, 13))
    pairs = pairs_of(13)
    ranks, _, orders = per_pair_order(F, pairs)
    keep = round_robin(orders, 100)
    assert len(keep) == 100 and len(set(keep.tolist())) == 100
    for p in range(len(pairs)):
        assert orders[p][0] in keep  # the best row of every device survives
        # and its front's two ends (infinite crowding) before anything else of that pair
        front = np.flatnonzero(ranks[p] == 0)
        a, b = pairs[p]
        assert front[np.argmin(F[front, a])] in keep and front[np.argmin(F[front, b])] in keep


# --------------------------------------------------------------------- indicators
def test_monte_carlo_hypervolume_agrees_with_the_exact_one_within_its_error() -> None:
    rng = np.random.default_rng(1)
    X = rng.random((300, 4))
    F = X[nondominated(X)]
    ref = np.full(4, 1.1)
    exact = hypervolume(F, ref)
    est = hypervolume_mc(F, ref, samples=40_000, seed=3, budget_s=60)
    assert est["kind"] == MC and est["samples"] == 40_000 and est["std_error"] > 0
    assert abs(est["value"] - exact) <= 4 * est["std_error"]
    assert hypervolume_mc(F, ref, samples=40_000, seed=3, budget_s=60)["value"] == est["value"]  # seeded
    assert front_indicator(F, ref)["kind"] == EXACT and front_indicator(F, ref)["value"] == exact


def test_monte_carlo_hypervolume_stops_at_its_time_budget() -> None:
    rng = np.random.default_rng(2)
    F = rng.random((3000, 13))
    est = hypervolume_mc(F, np.full(13, 1.1), samples=10_000_000, budget_s=0.2)
    assert 0 < est["samples"] < 10_000_000 and est["seconds"] < 5
    assert front_indicator(F, np.full(13, 1.1), budget_s=0.2)["kind"] == MC  # 13 objectives: never exact


def test_bounded_front_keeps_every_device_front() -> None:
    rng = np.random.default_rng(4)
    base = rng.random(5000)
    F = np.column_stack([base] + [(1 - base) * 0.7 + 0.3 * rng.random(5000) for _ in range(12)])
    joint = nondominated(F)
    pairs = pairs_of(13)
    keep, fronts = bounded_front(F, joint, pairs, max_rows=300)
    must = set(np.concatenate(fronts).tolist())
    assert len(joint) > 300 and len(keep) == max(300, len(must)) and must <= set(keep.tolist())
    assert set(keep.tolist()) <= set(joint.tolist())
    for (a, b), front in zip(pairs, fronts):
        assert set(front.tolist()) == set(joint[nondominated(F[joint][:, [a, b]])].tolist())


# --------------------------------------------------------------------- a 12-device workspace
def derived_tables(note10: dict, index: int) -> dict:
    """Note10's tables with each layer type rescaled (a SYNTHETIC device, for tests)."""
    rng = np.random.default_rng(index)
    factors: dict[str, float] = {}
    out = {}
    for r, table in note10.items():
        new = {}
        for key, stat in table.items():
            kind = re.sub(r"-input.*?(kernel:\d).*", r"\1", key)
            f = factors.setdefault(kind, float(np.exp(rng.uniform(-0.9, 0.9))))
            new[key] = LayerStat(stat.mean * f, stat.std * f, stat.count)
        out[r] = new
    return out


def csv_of(archs: list, ms: np.ndarray) -> str:
    lines = ["arch,latency_ms"]
    for a, y in zip(archs, ms, strict=True):
        lines.append('"' + json.dumps(a.to_dict()).replace('"', '""') + f'",{y:.4f}')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    ws = tmp_path_factory.mktemp("many-ws")
    assert main(["-W", str(ws), "tables", "import", str(assets_dir / "note10"), "--key", "note10"]) == 0
    note10 = read_ofa_tables(assets_dir / "note10")
    for i in range(1, N_DEVICES - 1):
        folder = ws / "luts" / f"d{i:02d}"
        folder.mkdir(parents=True)
        for r, table in derived_tables(note10, i).items():
            write_ofa_table(folder / f"{r}_lookup_table.yaml", table)
        assert main(["-W", str(ws), "tables", "import", str(folder), "--key", f"d{i:02d}"]) == 0
    archs = SearchSpace().sample(30, np.random.default_rng(5))
    ms = LutSurrogate(derived_tables(note10, 99)).predict(archs) * np.exp(np.random.default_rng(6).normal(0, 0.03, 30))
    (ws / "ext.csv").write_text(csv_of(archs, ms))
    assert main(["-W", str(ws), "tables", "import", str(ws / "ext.csv"), "--key", "ext"]) == 0
    return ws


def devices() -> list[str]:
    return ["note10", *(f"d{i:02d}" for i in range(1, N_DEVICES - 1)), "ext"]


@pytest.fixture(scope="module")
def run12(ws: Path) -> Path:
    objectives = ",".join(["top1", *(f"latency:{k}" for k in devices())])
    args = ["search", "--objectives", objectives, "--pop", "40", "--gens", "30", "--seed", "2", "--no-plot"]
    assert main(["-W", str(ws), *args, "-o", str(ws / "runs" / "twelve")]) == 0
    return ws / "runs" / "twelve"


# --------------------------------------------------------------------- CSV import
def test_csv_import_makes_a_table_and_a_predictor(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, ws, "tables", "show", "ext", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] == 30 and doc["runtime"] == "external" and doc["surrogate"]["kind"]
    assert doc["device"]["fingerprint"].startswith("external:")
    # the predictor prices archs as the measurements do (held-out error of a K=30 fit is modest)
    code, out, _ = cli(capsys, ws, "predict", "min", "max", "--device", "ext", "--json")
    assert code == 0
    # importing again without --replace is refused, with --replace the table is replaced
    code, _, err = cli(capsys, ws, "tables", "import", str(ws / "ext.csv"), "--key", "ext")
    assert code != 0 and "--replace" in err
    assert cli(capsys, ws, "tables", "import", str(ws / "ext.csv"), "--key", "ext", "--replace")[0] == 0


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("arch,latency_ms\n{bad json},3.0\n", "line 2|:2: column arch"),
        ("arch,ms\n", "latency_ms"),
        ('arch,latency_ms\n"{""d"":[2,2,2,2,2]}",3.0\n', ":2: column arch"),
    ],
)
def test_a_bad_csv_names_file_and_line_and_writes_nothing(
    ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, what: str
) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(body)
    code, _, err = cli(capsys, ws, "tables", "import", str(src), "--key", "bad")
    assert code == 1 and str(src) in err and re.search(what, err)
    assert not (ws / "latency_tables" / "bad").exists() and not (ws / "latency_tables" / ".import-bad").exists()


def test_a_bad_latency_is_refused(ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = (ws / "ext.csv").read_text().splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ",-1"
    (tmp_path / "neg.csv").write_text("\n".join(rows) + "\n")
    code, _, err = cli(capsys, ws, "tables", "import", str(tmp_path / "neg.csv"), "--key", "neg")
    assert code == 1 and f"{tmp_path / 'neg.csv'}:4" in err and not (ws / "latency_tables" / "neg").exists()


# --------------------------------------------------------------------- the 12-device run
def test_twelve_devices_one_search(run12: Path) -> None:
    run = rs.RunFolder(run12)
    status, config, front, hv = run.status(), run.config(), run.front(), run.hypervolume()
    assert status["state"] == "completed" and config["algorithm"] == "per-device"  # auto, 12 costs
    assert len(front["device_fronts"]) == N_DEVICES and len(front["rows"]) <= 2000
    # each device's front is the 2-D front of everything evaluated, and its rows are in the joint front
    rows = list(run.evaluations())
    ids = {r["arch_id"] for r in front["rows"]}
    for pf, key in zip(front["device_fronts"], devices()):
        field = f"latency_ms:{key}"
        assert pf["objectives"] == ["top1", f"latency:{key}"] and pf["fields"] == ["top1_pct", field]
        F = np.array([[-r["top1_pct"], r[field]] for r in rows])
        want = {rows[i]["arch_id"] for i in nondominated(F)}
        assert {r["arch_id"] for r in pf["rows"]} == want and want <= ids
        ref = np.array([100 - pf["reference_point"]["top1"], pf["reference_point"][f"latency:{key}"]])
        assert pf["hv"] == pytest.approx(hypervolume(np.array([[100 - r["top1_pct"], r[field]] for r in pf["rows"]]), ref))
    # indicators: per generation the mean of the 12 exact 2-D HVs, the joint one estimated
    assert hv["indicator_kind"] == "mean-2d-hypervolume" and len(hv["pairs"]) == N_DEVICES
    assert all(len(r["hv_pairs"]) == N_DEVICES and r["hv"] == pytest.approx(np.mean(r["hv_pairs"])) for r in hv["rows"])
    joint = hv["joint_archive"]
    assert joint["kind"] == MC and joint["samples"] > 0 and joint["std_error"] >= 0 and joint["seconds"] < 30
    assert front["hv"] == pytest.approx(np.mean([pf["hv"] for pf in front["device_fronts"]]))


def test_search_summary_names_its_indicator(run12: Path) -> None:
    """Above four objectives the summary's HV is the mean of the per-device 2-D HVs, and says so."""
    from rich.console import Console

    from ofa2_edge.cli.search import _summary_table

    status = rs.RunFolder(run12).status()
    assert status["summary"]["hv_indicator"] == "mean-2d-hypervolume"
    console = Console(record=True, width=400)
    console.print(_summary_table({"run_id": "twelve", **status}, run12))
    text = console.export_text()
    assert "mean 2-D hypervolume" in text and "2-D HV per pair" in text
    pairs = status["summary"]["hv_archive_pairs"]
    assert f"latency:ext: {pairs[-1]:.2f}" in text and f"latency:note10: {pairs[0]:.2f}" in text


def test_twelve_device_run_downstream(ws: Path, run12: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = cli(capsys, ws, "runs", "show", str(run12))
    assert code == 0 and "per-device" in out
    # a second, shorter run to compare with: per device 2-D HVs, joint one an estimate
    objectives = ",".join(["top1", *(f"latency:{k}" for k in devices())])
    args = ["search", "--objectives", objectives, "--pop", "20", "--gens", "5", "--seed", "1", "--no-plot", "--elite", "0"]
    assert main(["-W", str(ws), *args, "-o", str(tmp_path / "short")]) == 0
    capsys.readouterr()
    # accurate-end breeding: on by default with many costs (stored resolved), off when asked
    assert rs.RunFolder(run12).config()["operators"]["elite"] == MANY_COST_ELITE
    assert rs.RunFolder(tmp_path / "short").config()["operators"]["elite"] == 0.0
    code, out, _ = cli(capsys, ws, "runs", "compare", str(run12), str(tmp_path / "short"), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["indicator"] == MC and len(doc["pairs"]) == N_DEVICES
    long, short = doc["runs"]["twelve"], doc["runs"]["short"]
    assert sum(long["hv_pairs"][f"latency:{k}"] >= short["hv_pairs"][f"latency:{k}"] for k in devices()) >= N_DEVICES - 1
    code, out, _ = cli(capsys, ws, "runs", "compare", str(run12), str(tmp_path / "short"))
    assert code == 0 and "latency:ext" in out
    # select for one of the 12 devices
    code, out, _ = cli(capsys, ws, "select", str(run12), "--device", "d07", "--json")
    picks = json.loads(out)
    assert code == 0 and picks
    # the dashboard's data: 12 devices, each with its own 2-D HV curve
    data = build_data(rs.RunFolder(run12), Workspace.resolve(ws))
    assert [d["key"] for d in data["devices"]] == devices()
    assert set(data["hypervolume"]["per_device"]) == set(devices())
    assert all(len(d["lat"]) == len(data["candidates"]) for d in data["devices"])


def test_old_run_without_device_fronts_still_reads(run12: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ws: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run12, old)
    doc = json.loads((old / rs.FRONT_FILE).read_text())
    for key in ("device_fronts", "hv_indicator", "joint_front_size"):
        doc.pop(key)
    (old / rs.FRONT_FILE).write_text(json.dumps(doc))
    hv = json.loads((old / rs.HV_FILE).read_text())
    for key in ("pairs", "indicator_kind", "exact_hv_max_objectives", "joint_archive"):
        hv.pop(key)
    for row in hv["rows"]:
        row.pop("hv_pairs")
    (old / rs.HV_FILE).write_text(json.dumps(hv))
    assert cli(capsys, ws, "runs", "show", str(old))[0] == 0
    assert build_data(rs.RunFolder(old), Workspace.resolve(ws))["hypervolume"]["per_device"] == {}
    # a device front naming an arch the front lacks is refused, naming the file
    bad = json.loads((run12 / rs.FRONT_FILE).read_text())
    bad["device_fronts"][0]["rows"][0]["arch_id"] = "nope"
    (old / rs.FRONT_FILE).write_text(json.dumps(bad))
    with pytest.raises(Exception, match=r"front\.json.*device_fronts\[0\]\.rows\[0\]\.arch_id"):
        rs.RunFolder(old).front()
