"""Accuracy predictors: the official file in numpy, refused bad files, user-fitted ones."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ofa2_edge.accuracy.fit import GENE_COLUMNS, AccuracyData, fit_accuracy_predictor, read_accuracy_csv
from ofa2_edge.accuracy.official import EXPECTED_SHAPES, find_asset, load_official_predictor, official_predictor
from ofa2_edge.accuracy.predictor import DenseAccuracyPredictor, load_accuracy_predictor
from ofa2_edge.core.errors import AssetError, InvalidArchError, InvalidInputError, SchemaError
from ofa2_edge.space.arch import Arch, SearchSpace, archs_of, genomes_of, predictor_features


@pytest.fixture(scope="module")
def official(assets_dir: Path) -> DenseAccuracyPredictor:
    return official_predictor(assets_dir)


def test_official_predictor_gives_the_published_values(official: DenseAccuracyPredictor) -> None:
    top1 = official.predict(genomes_of([Arch.smallest(160), Arch.largest(224)]))
    assert top1[0] == pytest.approx(75.31, abs=0.005)
    assert top1[1] == pytest.approx(83.59, abs=0.005)
    assert official.source["kind"] == "official" and len(official.source["sha256"]) == 64


def test_numpy_forward_equals_torch(official: DenseAccuracyPredictor, assets_dir: Path) -> None:
    net = torch.nn.Sequential(
        torch.nn.Linear(128, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
        torch.nn.Linear(400, 400), torch.nn.ReLU(), torch.nn.Linear(400, 1),
    )  # fmt: skip
    net.load_state_dict(torch.load(assets_dir / "acc_predictor.pth", weights_only=True, map_location="cpu"))
    g = SearchSpace().sample_genomes(500, np.random.default_rng(0))
    with torch.no_grad():
        expected = net(torch.from_numpy(predictor_features(g))).numpy()[:, 0] * 100
    np.testing.assert_allclose(official.predict(g), expected, atol=1e-4)


def test_population_is_one_vectorised_call(official: DenseAccuracyPredictor) -> None:
    from threadpoolctl import threadpool_limits

    g = SearchSpace().sample_genomes(100, np.random.default_rng(1))
    with threadpool_limits(1, "blas"):
        official.predict(g)
        start = time.perf_counter()
        for _ in range(20):
            official.predict(g)
    assert (time.perf_counter() - start) / 20 < 0.05  # smoke bound; benchmarks/ has the real figure


def _save_state(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def _good_state(assets_dir: Path) -> dict:
    return torch.load(assets_dir / "acc_predictor.pth", weights_only=True, map_location="cpu")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("6.bias"), "wrong keys"),
        (lambda s: s.update({"8.weight": torch.zeros(1)}), "wrong keys"),
        (lambda s: s.update({"2.weight": torch.zeros(400, 300)}), r"2.weight has shape \(400, 300\)"),
        (lambda s: s.update({"0.bias": s["0.bias"].double()}), "dtype torch.float64"),
        (lambda s: s.update({"4.bias": torch.full((400,), float("nan"))}), "non-finite"),
    ],
)
def test_wrong_predictor_files_are_one_clear_error(tmp_path: Path, assets_dir: Path, mutate, message: str) -> None:
    state = _good_state(assets_dir)
    mutate(state)
    with pytest.raises(AssetError, match=message):
        load_official_predictor(_save_state(tmp_path / "acc_predictor.pth", state))


def test_corrupt_and_foreign_files_are_refused(tmp_path: Path, assets_dir: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes((assets_dir / "acc_predictor.pth").read_bytes()[:5000])
    with pytest.raises(AssetError, match="cannot be read as a torch state_dict"):
        load_official_predictor(corrupt)
    with pytest.raises(AssetError, match="not a state_dict"):
        load_official_predictor(_save_state(tmp_path / "list.pth", [torch.zeros(1)]))  # type: ignore[arg-type]
    with pytest.raises(AssetError, match="no such file"):
        load_official_predictor(tmp_path / "missing.pth")
    assert set(EXPECTED_SHAPES) == {f"{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")}


def test_asset_lookup_names_the_file_and_the_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assets_dir: Path) -> None:
    # `find_asset` as the official loader sees it (the private stand-in until ofa2_edge.core.assets is merged)
    monkeypatch.delenv("OFA2_EDGE_ASSETS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetError, match=r"acc_predictor.pth.*assets fetch.*OFA2_EDGE_ASSETS"):
        official_predictor(tmp_path / "empty")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "acc_predictor.pth").write_bytes((assets_dir / "acc_predictor.pth").read_bytes())
    assert find_asset("acc_predictor.pth", tmp_path / "mine") == tmp_path / "mine" / "acc_predictor.pth"


def test_resolutions_outside_what_was_learned_are_refused(official: DenseAccuracyPredictor) -> None:
    official.check_resolutions((160, 224))
    with pytest.raises(InvalidArchError, match="not 96"):
        official.check_resolutions((96, 160))
    with pytest.raises(InvalidArchError, match="knows resolutions"):
        official.predict(genomes_of([Arch.smallest(120)]))


# --------------------------------------------------------------------- fitted predictors
def _pairs(official: DenseAccuracyPredictor, n: int, seed: int, noise: float = 0.1) -> AccuracyData:
    rng = np.random.default_rng(seed)
    g = SearchSpace().sample_genomes(n, rng)
    return AccuracyData(tuple(archs_of(g)), official.predict(g) + rng.normal(0, noise, n))


def test_fitted_predictor_learns_and_round_trips(official: DenseAccuracyPredictor, tmp_path: Path) -> None:
    # Labels: the official predictor plus 0.1-point noise, standing in for a user's fine-tuned accuracies.
    model = fit_accuracy_predictor(_pairs(official, 200, 0), seed=0, folds=3)
    report = model.report
    assert report["model"] in ("ridge", "mlp") and set(report["cv"]) == {"ridge", "mlp"}
    assert report["n_train"] + report["n_test"] == 200
    assert report["held_out"]["spearman"] > 0.9 and report["held_out"]["rmse_pct"] < 0.6
    test = SearchSpace().sample_genomes(200, np.random.default_rng(9))
    assert np.corrcoef(model.predict(test), official.predict(test))[0, 1] > 0.95
    path = model.save(tmp_path / "mine.json", name="mine")
    again = load_accuracy_predictor(path)
    np.testing.assert_array_equal(again.predict(test), model.predict(test))
    assert again.source["kind"] == "fitted" and again.source["sha256"] and again.report == json.loads(json.dumps(report))


def test_fitted_predictor_refuses_resolutions_it_never_saw(official: DenseAccuracyPredictor) -> None:
    data = _pairs(official, 60, 1)
    only_160 = AccuracyData(tuple(Arch.from_dict({**a.to_dict(), "r": 160}) for a in data.archs), data.top1)
    model = fit_accuracy_predictor(only_160, seed=0, kinds=("ridge",))
    with pytest.raises(InvalidArchError, match="knows resolutions 160, not 224"):
        model.check_resolutions((160, 224))


def test_accuracy_files_with_bad_content_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": "ofa2-edge/accuracy-predictor", "schema_version": 1, "kind": "dense-relu",
                                "features": "ofa-onehot-128", "params": {"weights": [[[1.0]]], "biases": [[0.0]],
                                "output_scale": 1, "output_offset": 0, "resolutions": [160]}}))  # fmt: skip
    with pytest.raises(SchemaError, match=r"expected weight \(128, k\)"):
        load_accuracy_predictor(path)
    path.write_text(json.dumps({"schema": "ofa2-edge/accuracy-predictor", "schema_version": 9}))
    with pytest.raises(SchemaError, match="schema_version 9"):
        load_accuracy_predictor(path)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_with_arch_json_or_gene_columns(official: DenseAccuracyPredictor, tmp_path: Path) -> None:
    data = _pairs(official, 20, 2)
    rows = [{"arch_id": a.id, "arch": json.dumps(a.to_dict()), "top1": f"{t:.3f}"} for a, t in zip(data.archs, data.top1)]
    a = read_accuracy_csv(_write_csv(tmp_path / "a.csv", rows, ["arch_id", "arch", "top1"]))
    genes = [{**dict(zip(GENE_COLUMNS, map(int, arch.to_genome()))), "top1": t} for arch, t in zip(data.archs, data.top1)]
    b = read_accuracy_csv(_write_csv(tmp_path / "b.csv", genes, [*GENE_COLUMNS, "top1"]))
    assert a.archs == b.archs == data.archs
    np.testing.assert_allclose(a.top1, data.top1, atol=5e-4)


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([{"arch": "{}", "acc": 1}], ["arch", "acc"], "needs a `top1` column"),
        ([{"top1": 70}], ["top1"], "needs an `arch` column"),
        ([{"arch": '{"ks": [3]}', "top1": 70}], ["arch", "top1"], r":2: bad arch"),
        ([{"arch": json.dumps(Arch.smallest(160).to_dict()), "top1": "high"}], ["arch", "top1"], "not a number"),
        ([{"arch": json.dumps(Arch.smallest(160).to_dict()), "top1": 170}], ["arch", "top1"], "percentage in 0..100"),
        ([{"arch": json.dumps(Arch.smallest(160).to_dict()), "arch_id": "a-000000000000", "top1": 70}], ["arch", "arch_id", "top1"], "does not match"),
        ([{"arch": json.dumps(Arch.smallest(160).to_dict()), "top1": 70}] * 3, ["arch", "top1"], "at least 10"),
        ([{"arch": json.dumps(Arch.smallest(r).to_dict()), "top1": 0.7} for r in range(160, 224, 4)], ["arch", "top1"], "look like fractions"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path: Path, rows: list[dict], columns: list[str], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        read_accuracy_csv(_write_csv(tmp_path / "bad.csv", rows, columns))
