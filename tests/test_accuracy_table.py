"""The accuracy table store: binding, strict rows, probabilities, noise floor, fitted predictors
with features for any resolution, and `search --accuracy TABLE`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ofa2_edge.accuracy.features import BLOCKS_R_ONEHOT, OFA_ONEHOT, FeatureEncoding
from ofa2_edge.accuracy.fit import fit_accuracy_predictor, read_accuracy_table
from ofa2_edge.accuracy.predictor import load_accuracy_predictor
from ofa2_edge.accuracy.table import AccuracyRow, AccuracyTable, PartScores, TableBinding, accuracy_source
from ofa2_edge.calibration.design import size_stratified_genomes
from ofa2_edge.core.errors import InvalidArchError, InvalidInputError, LockedError, SchemaError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.space.arch import Arch, SearchSpace, archs_of, genomes_of

CLASSES = ("a", "b", "c")
BINDING = TableBinding("ab" * 32, 1.0, "cd" * 32, CLASSES, n_val=6, n_test=4)
SETTINGS = {"bn_part": "train", "bn_seed": 0, "bn_images": 10, "batch_size": 5}


def _probs(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.random((n, len(CLASSES))) + 0.01
    return p / p.sum(axis=1, keepdims=True)


def _row(arch: Arch, top1: float, repeat: int = 0, seed: int = 0) -> AccuracyRow:
    return AccuracyRow(
        arch=arch, repeat=repeat, bn_seed=seed, bn_images=10, val=PartScores(top1, min(100.0, top1 + 10), 0.5, 6),
        test=PartScores(top1 - 1, top1, 0.6, 4) if repeat == 0 else None, probs_sha256={}, elapsed_s=0.1,
        evaluated_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def _archs(n: int, resolutions: tuple[int, ...] = (32, 40)) -> list[Arch]:
    space = SearchSpace(resolutions=resolutions, w=1.0)
    return archs_of(size_stratified_genomes(n, np.random.default_rng(0), space), w=1.0)


def _true_top1(archs: list[Arch]) -> np.ndarray:
    g = genomes_of(archs)
    return 50.0 + 2.0 * (g[:, 40:45].sum(axis=1) - 10) + 0.2 * (g[:, 20:40].sum(axis=1) - 60) + 0.3 * (g[:, 45] - 32)


@pytest.fixture()
def table(tmp_path: Path) -> AccuracyTable:
    t = AccuracyTable.of(Workspace(tmp_path, tmp_path / "cache"), "fm")
    t.bind(BINDING, (32, 40), SETTINGS, {"note": "test"})
    return t


def test_rows_and_probabilities_round_trip(table: AccuracyTable) -> None:
    rng = np.random.default_rng(0)
    arch = _archs(4)[0]
    p_val, p_test = _probs(6, rng), _probs(4, rng)
    stored = table.append(_row(arch, 60.0), {"val": p_val, "test": p_test})
    assert set(stored.probs_sha256) == {"val", "test"}
    (row,) = table.rows()
    assert row == stored and row.val.top1_pct == 60.0 and row.test is not None
    back = table.probabilities(arch.id, "val")
    assert back.dtype == np.float16 and back.shape == (6, 3)
    np.testing.assert_allclose(back.astype(np.float32), p_val, atol=1e-3)
    assert table.probabilities(arch.id, "test").shape == (4, 3)
    # the predictor's data is the val part only
    archs, top1 = table.dataset()
    assert [a.id for a in archs] == [arch.id] and top1.tolist() == [60.0]


def test_probabilities_are_checked_against_the_row(table: AccuracyTable) -> None:
    rng = np.random.default_rng(1)
    arch = _archs(4)[1]
    table.append(_row(arch, 55.0), {"val": _probs(6, rng)})
    path = table.probs_path("val", arch.id)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(SchemaError, match="sha256 differs"):
        table.probabilities(arch.id)
    with pytest.raises(SchemaError, match=r"shape \(6, 3\)"):
        table.append(_row(_archs(4)[2], 50.0), {"val": _probs(5, rng)})
    with pytest.raises(SchemaError, match="sum to 1"):
        table.append(_row(_archs(4)[2], 50.0), {"val": np.full((6, 3), 0.5)})


def test_binding_refuses_another_supernet_dataset_or_settings(table: AccuracyTable) -> None:
    other = TableBinding("ef" * 32, 1.0, "cd" * 32, CLASSES, 6, 4)
    with pytest.raises(InvalidInputError, match=r"supernet weights \(sha256\) 'abab.*'efef"):
        table.bind(other, (32,), SETTINGS, {})
    with pytest.raises(InvalidInputError, match="dataset fingerprint"):
        table.bind(TableBinding("ab" * 32, 1.0, "00" * 32, CLASSES, 6, 4), (32,), SETTINGS, {})
    with pytest.raises(InvalidInputError, match="bn_seed=0"):
        table.bind(BINDING, (32,), {**SETTINGS, "bn_seed": 3}, {})
    before = table.table_path.read_bytes()
    table.bind(BINDING, (36,), SETTINGS, {})  # new resolutions extend the table
    assert table.resolutions() == (32, 36, 40) and table.table_path.read_bytes() != before


def test_a_malformed_middle_row_names_file_and_line_a_torn_last_row_is_skipped(table: AccuracyTable) -> None:
    archs = _archs(6)
    for a, v in zip(archs[:3], (50.0, 60.0, 70.0)):
        table.append(_row(a, v), {"val": _probs(6, np.random.default_rng(2))})
    lines = table.evaluations_path.read_text().splitlines()
    doc = json.loads(lines[1])
    doc["val_top1_pct"] = 140.0
    table.evaluations_path.write_text("\n".join([lines[0], json.dumps(doc), lines[2]]) + "\n")
    with pytest.raises(SchemaError, match=r"evaluations.jsonl:2: field val_top1_pct"):
        list(table.rows())
    doc = json.loads(lines[1])
    doc["arch_id"] = archs[0].id
    table.evaluations_path.write_text("\n".join([lines[0], json.dumps(doc), lines[2]]) + "\n")
    with pytest.raises(SchemaError, match=r":2: field arch_id"):
        list(table.rows())
    table.evaluations_path.write_text("\n".join(lines) + "\n" + lines[2][:40])
    assert len(list(table.rows())) == 3
    table.append(_row(archs[3], 65.0), {"val": _probs(6, np.random.default_rng(3))})  # cuts the torn line off
    assert len(list(table.rows())) == 4


def test_noise_floor_from_repeats(table: AccuracyTable) -> None:
    archs = _archs(8)
    rng = np.random.default_rng(4)
    values = np.linspace(40, 80, len(archs))
    for a, v in zip(archs, values):
        table.append(_row(a, float(v)), {"val": _probs(6, rng)})
    assert table.noise_floor() is None
    for a, v in zip(archs[:5], values[:5]):
        table.append(_row(a, float(v) + 0.5, repeat=1, seed=1))
    floor = table.noise_floor()
    assert floor is not None and floor["n_repeated"] == 5
    assert floor["spearman"] == pytest.approx(1.0) and floor["mean_abs_delta_top1_pct"] == pytest.approx(0.5)
    assert table.summary()["n_repeated"] == 5 and table.summary()["n_evaluated"] == 8


def test_one_writer_at_a_time(table: AccuracyTable) -> None:
    with table.lock():
        with pytest.raises(LockedError, match="accuracy table fm"):
            with table.lock():
                pass


def test_block_features_cover_small_resolutions_and_refuse_unknown_ones() -> None:
    enc = FeatureEncoding.for_resolutions([32, 40])
    assert enc.kind == BLOCKS_R_ONEHOT and enc.n_features == 122
    assert FeatureEncoding.for_resolutions([160, 224]).kind == OFA_ONEHOT
    x = enc.encode(genomes_of(_archs(6)))
    assert x.shape == (6, 122) and set(np.unique(x)) <= {0.0, 1.0}
    assert (x[:, 120:].sum(axis=1) == 1).all()
    with pytest.raises(InvalidArchError, match="48 px has no slot"):
        enc.encode(genomes_of([Arch.smallest(48, w=1.0)]))


def test_fit_on_a_table_saves_a_v2_predictor_that_search_finds_by_name(table: AccuracyTable, tmp_path: Path) -> None:
    archs = _archs(40)
    truth = _true_top1(archs)
    for a, v in zip(archs, truth):
        table.append(_row(a, float(v)), {"val": _probs(6, np.random.default_rng(5))})
    data = read_accuracy_table(table)
    model = fit_accuracy_predictor(data, seed=0, kinds=("ridge",), name="fm")
    assert model.report["features"] == {"kind": BLOCKS_R_ONEHOT, "resolutions": [32, 40]}
    assert model.report["held_out"]["spearman"] > 0.9 and -1 <= model.report["held_out"]["kendall_tau"] <= 1
    model.save(table.predictor_path, name="fm", table="fm")
    doc = json.loads(table.predictor_path.read_text())
    assert doc["schema_version"] == 2 and doc["features"]["kind"] == BLOCKS_R_ONEHOT
    ws = Workspace(tmp_path, tmp_path / "cache")
    assert accuracy_source("fm", ws) == table.predictor_path
    loaded = load_accuracy_predictor(accuracy_source("fm", ws))
    g = genomes_of(archs)
    np.testing.assert_allclose(loaded.predict(g), model.predict(g), rtol=1e-5)
    with pytest.raises(InvalidArchError, match="knows resolutions 32, 40"):
        loaded.check_resolutions([224])


def test_a_table_without_a_predictor_says_how_to_fit_one(table: AccuracyTable, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="fit-accuracy --table fm"):
        accuracy_source("fm", Workspace(tmp_path, tmp_path / "cache"))
    with pytest.raises(InvalidInputError, match="at least 10"):
        read_accuracy_table(table)
