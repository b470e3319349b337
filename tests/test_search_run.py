"""Searches end to end: run folder schema, constraints, determinism, resume, baselines."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

# The search loads surrogate kinds lazily; scikit-learn's import (through rich.style) draws
# from Python's global `random` once. Import it up front so the tests below see only what a
# search itself does to global RNG state (nothing).
import ofa2_edge.surrogates.trees  # noqa: F401
from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.persist import read_json
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.algorithms import ALGORITHMS, OperatorConfig, resolve_operators
from ofa2_edge.search.compare import compare_runs
from ofa2_edge.search.config import SearchConfig
from ofa2_edge.search.formatter import PendingRows
from ofa2_edge.search.indicators import nondominated
from ofa2_edge.search.runner import run_search
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.surrogates.lut import LutSurrogate

SMALL = {"pop_size": 20, "n_gen": 12, "seed": 3, "checkpoint_every": 4}


@pytest.fixture(scope="module")
def workspace(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("ws")
    LutSurrogate.from_folder(assets_dir / "note10").save(root / "latency_tables" / "note10" / "surrogate.json", device="note10")
    return Workspace.resolve(root, root / "cache")


def search(workspace: Workspace, folder: Path, **kw) -> dict:
    cfg = SearchConfig(**{"objectives": ("latency:note10", "top1"), **SMALL, **kw})
    return run_search(cfg, folder, workspace=workspace, plot=False)


def rows_of(folder: Path) -> list[dict]:
    return list(rs.RunFolder(folder).evaluations())


def test_run_folder_layout_and_schemas(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "r1"
    cfg = SearchConfig(objectives=("top1", "latency:note10", "macs"), constraints=("latency:note10<=40",), **SMALL)
    status = run_search(cfg, folder, workspace=workspace, plot=True)
    assert status["state"] == "completed" and status["gen"] == 12 and status["n_evals"] == 240
    run = rs.RunFolder(folder)
    config = run.config()
    assert config["seed"] == 3 and config["objectives"] == ["top1", "latency:note10", "macs"]
    assert config["versions"]["pymoo"] and config["operators"] == resolve_operators(OperatorConfig(), 3).to_dict()
    sources = {n: m["source"] for n, m in config["resolved"]["metrics"].items()}
    assert len(sources["top1"]["sha256"]) == 64 and len(sources["latency:note10"]["sha256"]) == 64
    # evaluations: a versioned header, then one row per distinct network, with every metric
    header = json.loads((folder / rs.EVALUATIONS_FILE).read_text().splitlines()[0])
    assert header["schema"] == rs.EVALUATIONS_SCHEMA and header["schema_version"] == 1
    rows = rows_of(folder)
    assert len(rows) == status["n_archs"] and len({r["arch_id"] for r in rows}) == len(rows)
    for row in rows[:50]:
        arch = Arch.from_dict(row["arch"])
        assert arch.id == row["arch_id"] and {"top1_pct", "latency_ms:note10", "macs_m", "gen", "feasible"} <= set(row)
        assert row["feasible"] == (row["latency_ms:note10"] <= 40)
    # front: feasible, mutually non-dominated, every row of the CSV matches the JSON
    front = run.front()
    assert front["rows"] and all(r["latency_ms:note10"] <= 40 for r in front["rows"])
    F = np.array([[100 - r["top1_pct"], r["latency_ms:note10"], r["macs_m"]] for r in front["rows"]])
    assert len(nondominated(F)) == len(F)
    with open(folder / rs.FRONT_CSV) as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["arch_id"] for r in csv_rows] == [r["arch_id"] for r in front["rows"]]
    assert all(r["schema_version"] == "1" for r in csv_rows)
    assert float(csv_rows[0]["macs_m"]) == front["rows"][0]["macs_m"]
    hv = run.hypervolume()
    assert len(hv["rows"]) == 12 and set(hv["reference_point"]) == {"top1", "latency:note10", "macs"}
    assert [r["n_evals"] for r in hv["rows"]] == list(range(20, 241, 20))
    timings = run.timings()
    assert timings["evaluation_s"] > 0 and timings["algorithm_s"] >= 0 and timings["n_evals"] == 240
    assert (folder / rs.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, schema in ((rs.STATUS_FILE, rs.STATUS_SCHEMA), (rs.CHECKPOINT_FILE, rs.CHECKPOINT_SCHEMA)):
        assert read_json(folder / name, schema, [1])
    assert run.arch_of(front["rows"][0]["arch_id"]) == Arch.from_dict(front["rows"][0]["arch"])


def test_readers_refuse_unknown_versions(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "r"
    search(workspace, folder)
    path = folder / rs.EVALUATIONS_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps({**json.loads(lines[0]), "schema_version": 7}), *lines[1:]]) + "\n")
    with pytest.raises(SchemaError, match="schema_version 7"):
        next(rs.RunFolder(folder).evaluations())


def test_same_seed_same_front_and_no_global_rng_use(workspace: Workspace, tmp_path: Path) -> None:
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    search(workspace, tmp_path / "a")
    search(workspace, tmp_path / "b")
    search(workspace, tmp_path / "c", seed=4)
    assert str(np.random.get_state()) == str(np_state) and random.getstate() == py_state
    front = {k: rs.RunFolder(tmp_path / k).front()["rows"] for k in "abc"}
    assert front["a"] == front["b"]
    assert rows_of(tmp_path / "a") == rows_of(tmp_path / "b")
    assert front["a"] != front["c"]


GENETIC = [name for name in ALGORITHMS if name not in ("random", "ofa-evolution")]  # those with a mating step


@pytest.mark.parametrize(
    ("algorithm", "refine"),  # None: the default operators (with the memetic step for the genetic algorithms)
    [(name, None) for name in ALGORITHMS] + [(name, 0.0) for name in GENETIC] + [(name, 0.3) for name in GENETIC],
)
def test_interrupted_then_resumed_equals_uninterrupted(workspace: Workspace, tmp_path: Path, algorithm: str, refine: float | None) -> None:
    kw: dict = {"algorithm": algorithm}
    if refine is not None:
        kw["operators"] = OperatorConfig(refine=refine, refine_anchors="mixed" if refine else "mixed-ends")
    if algorithm == "ofa-evolution":
        kw.update(objectives=("top1",), constraints=("latency:note10<=30",))
    elif algorithm in ("nsga3", "age-moea"):
        kw.update(objectives=("top1", "latency:note10", "macs"))
    elif algorithm == "per-device":  # the many-device search: top-1 against 3 costs
        kw.update(objectives=("top1", "latency:note10", "macs", "params"))
    if algorithm == "age-moea":
        pytest.importorskip("numba", reason="AGE-MOEA needs the [agemoea] extra (numba)")
    np_state, py_state = str(np.random.get_state()), random.getstate()
    search(workspace, tmp_path / "full", **kw)
    assert str(np.random.get_state()) == np_state and random.getstate() == py_state  # no global RNG use

    def stop(progress) -> None:
        if progress.gen == 10:
            raise KeyboardInterrupt

    cfg = SearchConfig(**{"objectives": ("latency:note10", "top1"), **SMALL, **kw})
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, tmp_path / "cut", workspace=workspace, plot=False, progress=stop)
    status = rs.RunFolder(tmp_path / "cut").status()
    assert status["state"] == "interrupted" and "generation 8" in status["message"]
    done = run_search(None, tmp_path / "cut", workspace=workspace, plot=False, resume=True)
    assert done["state"] == "completed" and done["gen"] == 12 + ALGORITHMS[algorithm].extra_generations
    full, cut = rs.RunFolder(tmp_path / "full"), rs.RunFolder(tmp_path / "cut")
    assert cut.front()["rows"] == full.front()["rows"]
    assert rows_of(tmp_path / "cut") == rows_of(tmp_path / "full")
    assert cut.hypervolume()["rows"] == full.hypervolume()["rows"]


def test_resume_after_a_hard_kill_drops_rows_past_the_checkpoint(workspace: Workspace, tmp_path: Path) -> None:
    search(workspace, tmp_path / "full")
    cfg = SearchConfig(objectives=("latency:note10", "top1"), **SMALL)

    def stop(progress) -> None:
        if progress.gen == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, tmp_path / "cut", workspace=workspace, plot=False, progress=stop)
    # as if killed while appending: a row past the checkpoint, then a torn line
    with open(tmp_path / "cut" / rs.EVALUATIONS_FILE, "a") as fh:
        fh.write(json.dumps(rows_of(tmp_path / "full")[-1]) + "\n" + '{"arch_id": "a-torn')
    run_search(None, tmp_path / "cut", workspace=workspace, plot=False, resume=True)
    assert rows_of(tmp_path / "cut") == rows_of(tmp_path / "full")


def test_resume_guards(workspace: Workspace, tmp_path: Path) -> None:
    search(workspace, tmp_path / "r")
    again = run_search(None, tmp_path / "r", workspace=workspace, resume=True)
    assert again["state"] == "completed"  # nothing left to do
    with pytest.raises(InvalidInputError, match="already exists"):
        search(workspace, tmp_path / "r")
    with pytest.raises(InvalidInputError, match="settings differ from it: seed"):
        run_search(SearchConfig(objectives=("latency:note10", "top1"), **{**SMALL, "seed": 9}), tmp_path / "r", workspace=workspace, resume=True)
    other = Workspace.resolve(tmp_path / "ws2", tmp_path / "cache")
    shutil.copytree(workspace.tables_dir, other.tables_dir)
    path = other.tables_dir / "note10" / "surrogate.json"
    doc = json.loads(path.read_text())
    doc["meta"]["note"] = "refitted"
    path.write_text(json.dumps(doc))
    status = json.loads((tmp_path / "r" / rs.STATUS_FILE).read_text())
    (tmp_path / "r" / rs.STATUS_FILE).write_text(json.dumps({**status, "state": "interrupted"}))
    with pytest.raises(InvalidInputError, match="predictor behind latency:note10 changed"):
        run_search(None, tmp_path / "r", workspace=other, resume=True)


def test_constrained_front_respects_constraints(workspace: Workspace, tmp_path: Path) -> None:
    status = search(workspace, tmp_path / "c", constraints=("latency:note10<=25", "top1>=78"), n_gen=15)
    assert status["state"] == "completed"
    rows = rs.RunFolder(tmp_path / "c").front()["rows"]
    assert rows and all(r["latency_ms:note10"] <= 25 and r["top1_pct"] >= 78 and r["feasible"] for r in rows)


def test_infeasible_search_ends_with_a_clear_message(workspace: Workspace, tmp_path: Path) -> None:
    status = search(workspace, tmp_path / "x", constraints=("top1>=95",), n_gen=5)
    assert status["state"] == "infeasible"
    assert "no evaluated arch meets top1>=95" in status["message"] and "the closest had top1 = " in status["message"]
    assert rs.RunFolder(tmp_path / "x").front()["rows"] == []


def test_finder_on_an_impossible_budget_stops(workspace: Workspace, tmp_path: Path) -> None:
    # 9.9 ms: only a handful of nets at 160 px; uniform sampling almost never draws one
    cfg = SearchConfig(objectives=("top1",), constraints=("latency:note10<=9.9",), algorithm="ofa-evolution",
                       pop_size=20, n_gen=2, algorithm_params={"max_samples": 20_000})  # fmt: skip
    with pytest.raises(InvalidInputError, match="nearly\\) infeasible, relax it"):
        run_search(cfg, tmp_path / "f", workspace=workspace, plot=False)


def test_finder_reproduces_ofa_semantics(workspace: Workspace, tmp_path: Path) -> None:
    status = search(workspace, tmp_path / "f", objectives=("top1",), constraints=("latency:note10<=25",), algorithm="ofa-evolution", n_gen=5)
    assert status["n_evals"] == 20 + 5 * 20 and status["gen"] == 6  # seeded population + 5 OFA generations
    rows = rows_of(tmp_path / "f")
    assert all(r["latency_ms:note10"] <= 25 for r in rows)  # children are redrawn until they fit
    best = max(r["top1_pct"] for r in rows)
    assert rs.RunFolder(tmp_path / "f").front()["rows"][0]["top1_pct"] == best


def test_algorithm_objective_counts_are_checked(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="NSGA-II \\(nsga2\\) needs at least 2 objective"):
        search(workspace, tmp_path / "a", objectives=("top1",), algorithm="nsga2")
    with pytest.raises(InvalidInputError, match="give --constraint"):
        search(workspace, tmp_path / "b", objectives=("top1",))  # auto: one objective means OFA's finder
    assert SearchConfig(objectives=("top1", "macs")).algorithm == "nsga2"
    assert SearchConfig(objectives=("top1", "macs", "params")).algorithm == "nsga2"
    assert SearchConfig(objectives=("top1", "macs", "params", "peak-mem")).algorithm == "per-device"  # 3+ costs
    with pytest.raises(InvalidInputError, match="unknown parameter"):
        search(workspace, tmp_path / "c", algorithm="nsga2", algorithm_params={"parent_ratio": 0.3})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_arch_level_constraints_hold(workspace: Workspace, tmp_path: Path) -> None:
    space = SearchSpace(resolutions=(176, 208), ks=(3, 5), e=(4, 6), d=(2, 3))
    search(workspace, tmp_path / "s", space=space)
    for row in rows_of(tmp_path / "s"):
        space.validate(Arch.from_dict(row["arch"]))


def test_refinement_keeps_the_budget_and_records_its_evaluations(workspace: Workspace, tmp_path: Path) -> None:
    status = search(workspace, tmp_path / "m", operators=OperatorConfig(refine=0.3))
    assert status["n_evals"] == 20 * 12  # neighbours replace offspring: no extra evaluations
    rows = rows_of(tmp_path / "m")
    assert len(rows) == status["n_archs"] and len({r["arch_id"] for r in rows}) == len(rows)
    genomes = np.array([[*r["arch"]["ks"], *r["arch"]["e"], *r["arch"]["d"], r["arch"]["r"]] for r in rows])
    gens = np.array([r["gen"] for r in rows])
    # from generation 2 on, every generation has archs one built gene away from an earlier one
    one_away = [
        bool(((genomes[gens < g][None, :, :] != genomes[gens == g][:, None, :]).sum(axis=2) == 1).any()) for g in range(2, 13)
    ]
    assert all(one_away)


def test_networks_met_again_are_not_evaluated_again(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive is the problem's memo: OFA²'s operators (no duplicate elimination) breed
    the same network many times, and each distinct one goes through the predictor once."""
    from ofa2_edge.accuracy.predictor import DenseAccuracyPredictor
    from ofa2_edge.search.objectives import probe_genomes

    predicted: list[bytes] = []
    real_predict = DenseAccuracyPredictor.predict

    def counting_predict(self, genomes):
        predicted.extend(row.tobytes() for row in np.atleast_2d(genomes).astype(np.int16))
        return real_predict(self, genomes)

    monkeypatch.setattr(DenseAccuracyPredictor, "predict", counting_predict)
    status = search(workspace, tmp_path / "memo", operators=OperatorConfig.ofa2(), n_gen=30)
    # before the search: the objectives' sanity probe, and the reference point's corner archs
    n_probes = len(probe_genomes(SearchSpace())) + len(probe_genomes(SearchSpace(), n_random=0))
    assert status["n_evals"] == 20 * 30 and status["n_evals"] - status["n_archs"] >= 10  # repeats happened
    assert len(predicted) == status["n_archs"] + n_probes
    rows = rows_of(tmp_path / "memo")
    assert len({r["arch_id"] for r in rows}) == len(rows) == status["n_archs"]


def test_search_leaves_the_garbage_collector_as_it_found_it(workspace: Workspace, tmp_path: Path) -> None:
    import gc

    seen: list[int] = []
    cfg = SearchConfig(objectives=("latency:note10", "top1"), **{**SMALL, "n_gen": 2})
    run_search(cfg, tmp_path / "gc1", workspace=workspace, plot=False, progress=lambda p: seen.append(gc.get_freeze_count()))
    assert seen and all(n > 0 for n in seen)  # the heap was frozen while the search ran
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        search(workspace, tmp_path / "gc2", n_gen=2)
        assert gc.get_freeze_count() > 0  # a caller's own freeze is left in place
    finally:
        gc.unfreeze()


def test_random_search_and_compare(workspace: Workspace, tmp_path: Path) -> None:
    search(workspace, tmp_path / "ga", n_gen=20)
    search(workspace, tmp_path / "rnd", algorithm="random", n_gen=20)
    doc = compare_runs(rs.RunFolder(tmp_path / "ga"), rs.RunFolder(tmp_path / "rnd"))
    ga, rnd = doc["runs"]["ga"], doc["runs"]["rnd"]
    assert doc["objectives"] == ["latency:note10", "top1"] and not doc["projected"]
    assert ga["hv"] > rnd["hv"] and ga["coverage_of_other"] > rnd["coverage_of_other"]


def test_many_devices_and_objectives(workspace: Workspace, tmp_path: Path) -> None:
    status = search(workspace, tmp_path / "m", objectives=("top1", "latency:note10", "macs", "params", "peak-mem"), algorithm="nsga3")
    front = rs.RunFolder(tmp_path / "m").front()
    assert status["state"] == "completed" and front["fields"] == ["top1_pct", "latency_ms:note10", "macs_m", "params_m", "peak_mem_mb"]


def test_resume_before_the_first_checkpoint_starts_over(workspace: Workspace, tmp_path: Path) -> None:
    search(workspace, tmp_path / "full")
    cfg = SearchConfig(objectives=("latency:note10", "top1"), **SMALL)

    def stop(progress) -> None:
        if progress.gen == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, tmp_path / "cut", workspace=workspace, plot=False, progress=stop)
    assert "generation 0" in rs.RunFolder(tmp_path / "cut").status()["message"]
    run_search(None, tmp_path / "cut", workspace=workspace, plot=False, resume=True)
    assert rows_of(tmp_path / "cut") == rows_of(tmp_path / "full")


def test_a_failed_write_leaves_the_last_checkpoint_to_resume_from(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    search(workspace, tmp_path / "full")
    cfg = SearchConfig(objectives=("latency:note10", "top1"), **SMALL)
    # The rows of the checkpoints at 4 and 8 are formatted only after generation 11, so three
    # checkpoints wait when generation 12 lands them; the disk fills up while the rows of the
    # second are appended: neither it nor the third may land after that.
    formatted = {"yet": False}
    monkeypatch.setattr(PendingRows, "ready", lambda self: formatted["yet"])

    def formatted_after_gen_11(progress) -> None:
        formatted["yet"] = progress.gen >= 11

    real_append, calls = rs.append_bytes, []

    def disk_full_on_the_second_append(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            real_append(path, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real_append(path, data)

    monkeypatch.setattr(rs, "append_bytes", disk_full_on_the_second_append)
    with pytest.raises(Ofa2EdgeError, match="No space left on device.*--resume continues from generation 4"):
        run_search(cfg, tmp_path / "cut", workspace=workspace, plot=False, progress=formatted_after_gen_11)
    assert len(calls) == 2
    monkeypatch.undo()
    ck = read_json(tmp_path / "cut" / rs.CHECKPOINT_FILE, rs.CHECKPOINT_SCHEMA, [rs.VERSION])
    assert ck["gen"] == 4
    run_search(None, tmp_path / "cut", workspace=workspace, plot=False, resume=True)
    assert rows_of(tmp_path / "cut") == rows_of(tmp_path / "full")
    assert rs.RunFolder(tmp_path / "cut").front()["rows"] == rs.RunFolder(tmp_path / "full").front()["rows"]
