"""`ofa2-edge search`, `runs list|show|compare` and `fit-accuracy` through the real entry point."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE
from ofa2_edge.space.arch import SearchSpace, archs_of
from ofa2_edge.surrogates.lut import LutSurrogate

SMALL = ["--pop", "16", "--gens", "8", "--seed", "2"]


@pytest.fixture()
def ws(tmp_path: Path, assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace whose only device is Note10 (its OFA table as a fitted LUT predictor)."""
    LutSurrogate.from_folder(assets_dir / "note10").save(tmp_path / "latency_tables" / "note10" / "surrogate.json", device="note10")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OFA2_EDGE_ASSETS", str(assets_dir))
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], ws: Path, *args: str) -> tuple[int, str, str]:
    code = main(["-W", str(ws), *args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich wraps long messages


def test_search_end_to_end_then_runs(capsys: pytest.CaptureFixture[str], ws: Path) -> None:
    code, out, _ = cli(capsys, ws, "search", "--objectives", "top1,latency:note10", *SMALL, "-o", "runs/a", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["state"] == "completed" and doc["summary"]["front_size"] > 0 and doc["n_evals"] == 16 * 8
    for name in ("config.json", "evaluations.jsonl", "front.json", "front.csv", "hypervolume.json", "timings.json", "pareto.png"):
        assert (ws / "runs" / "a" / name).is_file(), name
    code, out, _ = cli(capsys, ws, "search", "--objectives", "top1,latency:note10,macs", "--algo", "spea2", *SMALL,
                       "-c", "latency:note10<=40", "--resolutions", "160,192", "--no-plot", "-o", "runs/b")  # fmt: skip
    assert code == 0 and "completed" in out and not (ws / "runs" / "b" / "pareto.png").exists()
    front = json.loads((ws / "runs" / "b" / "front.json").read_text())["rows"]
    assert all(r["latency_ms:note10"] <= 40 and r["arch"]["r"] in (160, 192) for r in front)

    code, out, _ = cli(capsys, ws, "runs", "list", "--json")
    listed = {r["run_id"]: r for r in json.loads(out)}
    assert set(listed) == {"a", "b"} and listed["b"]["algorithm"] == "spea2" and listed["b"]["constraints"] == ["latency:note10<=40"]
    code, out, _ = cli(capsys, ws, "runs", "list")
    assert code == 0 and "spea2" in out
    code, out, _ = cli(capsys, ws, "runs", "show", "a", "--top", "3")
    assert code == 0 and "top1_pct" in out and "more rows in" in out
    code, out, _ = cli(capsys, ws, "runs", "show", str(ws / "runs" / "b"), "--json")
    assert json.loads(out)["front"]["rows"][0]["arch_id"] == front[0]["arch_id"]
    code, out, _ = cli(capsys, ws, "runs", "compare", "a", "b", "--json")
    cmp = json.loads(out)
    assert code == 0 and cmp["objectives"] == ["top1", "latency:note10"] and cmp["projected"]
    assert set(cmp["runs"]) == {"a", "b"} and all(r["hv"] > 0 for r in cmp["runs"].values())
    code, out, _ = cli(capsys, ws, "runs", "compare", "a", "b")
    assert code == 0 and "covers other" in out
    # an arch id from the run resolves in other commands
    code, out, _ = cli(capsys, ws, "arch", "show", front[0]["arch_id"], "--json")
    assert code == 0 and json.loads(out)["arch"] == front[0]["arch"]


def test_resume_and_repeat_from_config(capsys: pytest.CaptureFixture[str], ws: Path) -> None:
    assert cli(capsys, ws, "search", "--objectives", "top1,macs", *SMALL, "-o", "runs/a", "--no-plot")[0] == 0
    code, _, err = cli(capsys, ws, "search", "--objectives", "top1,macs", *SMALL, "-o", "runs/a")
    assert code == EXIT_FAILURE and "already exists" in err
    code, out, _ = cli(capsys, ws, "search", "--resume", "-o", "runs/a", "--json")
    assert code == 0 and json.loads(out)["state"] == "completed"
    code, _, err = cli(capsys, ws, "search", "--resume", "--seed", "5", "-o", "runs/a")
    assert code == EXIT_FAILURE and "settings differ from it: seed" in err
    code, _, _ = cli(capsys, ws, "search", "--config", "runs/a/config.json", "-o", "runs/again", "--no-plot")
    assert code == 0
    assert (ws / "runs/a/front.json").read_text().replace('"run_id": "a"', "") == (ws / "runs/again/front.json").read_text().replace('"run_id": "again"', "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objectives", "top1,latency:rpi4"], "unknown device 'rpi4'"),
        (["--objectives", "top1,latency:note10", "-c", "latency:note10<5"], "use <= or >="),
        (["--objectives", "top1,latency:note10", "-c", "latency:note10<=5"], "cannot be met"),
        (["--objectives", "top1,energy"], "unknown objective 'energy'"),
        (["--objectives", "top1,macs", "--algo", "moead"], "unknown algorithm 'moead'"),
        (["--objectives", "top1,macs", "--resolutions", "160,abc"], "comma-separated integers"),
        (["--objectives", "top1,macs", "--resolutions", "100"], "knows resolutions"),
        (["--objectives", "top1,macs", "--ks", "9"], "ks value 9 is not allowed"),
        (["--objectives", "top1,macs", "--ref-point", "top1"], "KEY=VALUE"),
        (["--objectives", "top1,macs", "--ref-point", "latency:note10=5"], "not objectives of this search"),
        (["--objectives", "top1,macs", "--mutation", "gaussian"], "operator mutation 'gaussian' is unknown"),
        (["--objectives", "top1,macs", "--refine", "1"], "refinement share 1.0 must be in [0, 1)"),
        (["--objectives", "top1,macs", "--refine-anchors", "middle"], "operator refine_anchors 'middle' is unknown"),
        (["--pop", "10"], "give --objectives"),
    ],
)
def test_bad_input_fails_before_any_work(capsys: pytest.CaptureFixture[str], ws: Path, args: list[str], message: str) -> None:
    code, _, err = cli(capsys, ws, "search", *args, "-o", "runs/bad")
    assert code == EXIT_FAILURE and message in err
    assert not (ws / "runs" / "bad").exists()


def test_infeasible_constraint_exits_with_the_reason(capsys: pytest.CaptureFixture[str], ws: Path) -> None:
    code, _, err = cli(capsys, ws, "search", "--objectives", "latency:note10,macs", "-c", "top1>=90", *SMALL, "-o", "runs/x", "--no-plot")
    assert code == EXIT_FAILURE and "no evaluated arch meets top1>=90" in err
    assert json.loads((ws / "runs" / "x" / "status.json").read_text())["state"] == "infeasible"


def test_fit_accuracy_then_search_with_it(capsys: pytest.CaptureFixture[str], ws: Path, assets_dir: Path) -> None:
    from ofa2_edge.accuracy.official import official_predictor

    archs = archs_of(SearchSpace().sample_genomes(80, np.random.default_rng(5)))
    top1 = official_predictor(assets_dir).predict(np.stack([a.to_genome() for a in archs])) - 3.0  # "our own dataset"
    with open(ws / "mine.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch_id", "arch", "top1"])
        for a, t in zip(archs, top1):
            w.writerow([a.id, json.dumps(a.to_dict()), f"{t:.3f}"])
    code, out, _ = cli(capsys, ws, "fit-accuracy", "mine.csv", "--models", "ridge", "--json")
    assert code == 0
    doc = json.loads(out)
    assert Path(doc["path"]) == ws / "accuracy_predictors" / "mine.json" and doc["report"]["model"] == "ridge"
    assert doc["report"]["held_out"]["spearman"] > 0.5
    code, out, _ = cli(capsys, ws, "fit-accuracy", "mine.csv", "--models", "ridge", "-o", "acc.json")
    assert code == 0 and "held-out" in out and (ws / "acc.json").is_file()
    code, out, _ = cli(capsys, ws, "search", "--objectives", "top1,latency:note10", "--accuracy", "acc.json", *SMALL, "-o", "runs/mine", "--json", "--no-plot")
    assert code == 0
    config = json.loads((ws / "runs" / "mine" / "config.json").read_text())
    assert config["resolved"]["metrics"]["top1"]["source"]["kind"] == "fitted"
    code, _, err = cli(capsys, ws, "fit-accuracy", "missing.csv")
    assert code == EXIT_FAILURE and "cannot read as CSV" in err


def test_runs_show_an_interrupted_run(capsys: pytest.CaptureFixture[str], ws: Path) -> None:
    from ofa2_edge.core.workspace import Workspace
    from ofa2_edge.search.config import SearchConfig
    from ofa2_edge.search.runner import run_search

    def stop(progress) -> None:
        if progress.gen == 5:
            raise KeyboardInterrupt

    cfg = SearchConfig(objectives=("top1", "macs"), pop_size=10, n_gen=8, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, ws / "runs" / "cut", workspace=Workspace.resolve(ws), plot=False, progress=stop)
    code, out, _ = cli(capsys, ws, "runs", "show", "cut")
    assert code == 0 and "interrupted" in out and "--resume continues from generation 4" in " ".join(out.split())
    code, out, _ = cli(capsys, ws, "runs", "list", "--json")
    assert json.loads(out)[0]["state"] == "interrupted"
    code, _, err = cli(capsys, ws, "runs", "compare", "cut", "cut")
    assert code == EXIT_FAILURE and "has no front yet" in err
    code, _, err = cli(capsys, ws, "runs", "show", "nope")
    assert code == EXIT_FAILURE and "no run 'nope'" in err


def test_refinement_options_reach_the_run_config(capsys: pytest.CaptureFixture[str], ws: Path) -> None:
    code, out, _ = cli(capsys, ws, "search", "--objectives", "top1,latency:note10", *SMALL, "--refine", "0.25",
                       "--refine-anchors", "mixed", "-o", "runs/m", "--no-plot", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["n_evals"] == 16 * 8  # the same budget: neighbours replace offspring
    ops = json.loads((ws / "runs" / "m" / "config.json").read_text())["operators"]
    assert ops["refine"] == 0.25 and ops["refine_anchors"] == "mixed"
