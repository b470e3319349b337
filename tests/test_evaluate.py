"""`ofa2-edge evaluate`: real supernet, real dataset, real BN recalibration, into a table on disk."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ofa2_edge.accuracy.evaluate import EvaluateSettings, evaluate_table, score
from ofa2_edge.accuracy.source import open_supernet
from ofa2_edge.accuracy.table import AccuracyTable
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.data import DataSpec, batches, open_dataset
from ofa2_edge.supernet import Supernet
from ofa2_edge.supernet.manifest import SupernetManifest, dataset_preprocessing, write_trained


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 120, n_test: int = 40, n_classes: int = 4, seed: int = 5) -> Path:
    """A tiny MNIST-style IDX dataset whose classes carry a learnable mark."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % n_classes
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, :8, :8] = (labels * 60)[:, None, None]
        for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
            (folder / f"{part}-{kind}-idx{nd}-ubyte.gz").write_bytes(gzip.compress(_idx(arr), mtime=0))
    return folder


def trained_stand_in(
    folder: Path, data: Path, cache: Path, seed: int = 0, resolutions: tuple[int, ...] = (32,), split_seed: int = 0
) -> Path:
    """A supernet folder bound to `data` split with `split_seed` (random weights, the dataset's
    classes and preprocessing; the manifest records the dataset as `train` does)."""
    ds = open_dataset(DataSpec(data, seed=split_seed), cache_dir=cache)
    net = Supernet.random(1.0, seed=seed, n_classes=len(ds.classes))
    with torch.no_grad():  # logits of a trained net's size (random ones reach hundreds on real images)
        net.classifier.linear.weight.mul_(0.01)
    prep = dataset_preprocessing(tuple(ds.mean), tuple(ds.std), 1.0, resolutions)
    m = SupernetManifest(1.0, tuple(ds.classes), ds.fingerprint, prep, resolutions, {}, "full", 1, True, "", dataset=ds.describe())
    write_trained(folder, net.state_dict(), m)
    return folder


def cli(capsys: pytest.CaptureFixture[str], ws: Path, *args: str) -> tuple[int, str, str]:
    code = main(["-W", str(ws), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = write_idx_set(tmp_path / "data")
    sn = trained_stand_in(tmp_path / "ws" / "supernets" / "tiny", data, tmp_path / "cache")
    return tmp_path / "ws", sn, data


def test_evaluate_writes_a_resumable_table_with_probabilities_and_a_noise_floor(
    capsys: pytest.CaptureFixture[str], setup: tuple[Path, Path, Path]
) -> None:
    ws, sn, data = setup
    args = ("evaluate", "--supernet", str(sn), "--data", str(data), "--budget", "3", "--bn-images", "32",
            "--batch-size", "32", "--repeat-fraction", "1", "--json")  # fmt: skip
    code, out, err = cli(capsys, ws, *args)
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["evaluated"], doc["repeated"], doc["skipped_already_in_table"]) == (3, 3, 0)
    table = AccuracyTable.of(Workspace.resolve(ws), "tiny")
    rows = list(table.rows())
    assert len(rows) == 6 and {r.arch.r for r in rows} == {32}
    ds = open_dataset(data)
    first = table.measured(0)
    for arch_id, row in first.items():
        p = table.probabilities(arch_id, "val")
        assert p.shape == (ds.size("val"), 4) and row.val.n_images == ds.size("val")
        assert row.test is not None and row.test.n_images == ds.size("test") == 40
        assert table.probabilities(arch_id, "test").shape == (40, 4)
        # the stored probabilities are the row's top-1
        top1 = 100.0 * float((p.astype(np.float32).argmax(1) == ds.labels("val")).mean())
        assert abs(top1 - row.val.top1_pct) <= 100.0 / ds.size("val") + 1e-9
        assert row.val.top5_pct == 100.0  # 4 classes: top-5 holds every class
    floor = doc["summary"]["noise_floor"]
    assert floor is not None and floor["n_repeated"] == 3
    assert {r.bn_seed for r in rows if r.repeat == 1} == {1} and {r.bn_seed for r in rows if r.repeat == 0} == {0}
    binding = table.binding()
    assert binding.dataset_fingerprint == ds.fingerprint and binding.supernet_sha256 == open_supernet(sn).sha256
    # rerun: nothing evaluated twice
    before = table.evaluations_path.read_bytes()
    code, out, err = cli(capsys, ws, *args)
    assert code == 0, err
    assert json.loads(out)["evaluated"] == 0 and json.loads(out)["skipped_already_in_table"] == 3
    assert table.evaluations_path.read_bytes() == before


def test_no_test_scores_val_only_and_a_table_may_mix_both(capsys: pytest.CaptureFixture[str], setup: tuple[Path, Path, Path]) -> None:
    ws, sn, data = setup
    base = ("evaluate", "--supernet", str(sn), "--data", str(data), "--bn-images", "16", "--batch-size", "32", "--json")
    assert cli(capsys, ws, *base, "--budget", "2")[0] == 0  # the min and max nets, with test
    code, out, err = cli(capsys, ws, *base, "--budget", "4", "--no-test")  # they again, and two more
    assert code == 0, err
    assert (json.loads(out)["evaluated"], json.loads(out)["skipped_already_in_table"]) == (2, 2)
    table = AccuracyTable.of(Workspace.resolve(ws), "tiny")
    rows = table.measured(0)
    assert len(rows) == 4 and sum(r.test is not None for r in rows.values()) == 2
    for arch_id, row in rows.items():
        assert table.probabilities(arch_id, "val").shape[0] == row.val.n_images
        if row.test is None:
            with pytest.raises(InvalidInputError, match="kept no test probabilities"):
                table.probabilities(arch_id, "test")


def test_a_table_is_bound_to_its_supernet_and_dataset(
    capsys: pytest.CaptureFixture[str], setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ws, sn, data = setup
    base = ("--budget", "2", "--bn-images", "16", "--batch-size", "32")
    assert cli(capsys, ws, "evaluate", "--supernet", str(sn), "--data", str(data), *base)[0] == 0
    other_sn = trained_stand_in(tmp_path / "other-sn", data, tmp_path / "cache", seed=3)
    code, _, err = cli(capsys, ws, "evaluate", "--supernet", str(other_sn), "--data", str(data), "--table", "tiny", *base)
    assert code == 1 and "supernet weights (sha256)" in err and "--table" in err
    other_data = write_idx_set(tmp_path / "data2", seed=9)
    code, _, err = cli(capsys, ws, "evaluate", "--supernet", str(sn), "--data", str(other_data), *base)
    assert code == 1 and "was trained on dataset" in err
    assert len(list(AccuracyTable.of(Workspace.resolve(ws), "tiny").rows())) == 2


def test_a_supernet_trained_on_another_split_seed_is_evaluated_on_its_own_split(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`train --seed 1` splits the data with seed 1: `evaluate --data D` (no split options)
    must score on that split's val/test parts, never on split 0's, whose val holds images
    the supernet trained on (the fingerprint covers the split, so it was refused before)."""
    data = write_idx_set(tmp_path / "data")
    sn = trained_stand_in(tmp_path / "ws" / "supernets" / "s1", data, tmp_path / "cache", split_seed=1)
    code, out, err = cli(capsys, tmp_path / "ws", "evaluate", "--supernet", str(sn), "--data", str(data), "--budget", "2",
                         "--bn-images", "16", "--batch-size", "32", "--json")  # fmt: skip
    assert code == 0, err
    table = AccuracyTable.of(Workspace.resolve(tmp_path / "ws"), "s1")
    own, default = open_dataset(DataSpec(data, seed=1)), open_dataset(data)
    assert own.fingerprint != default.fingerprint
    assert table.binding().dataset_fingerprint == own.fingerprint


def test_scores_match_a_plain_torch_evaluation(setup: tuple[Path, Path, Path]) -> None:
    _, sn, data = setup
    trained = open_supernet(sn)
    ds = open_dataset(data)
    arch = trained.net.extract
    from ofa2_edge.space.arch import Arch

    sub = arch(Arch.largest(32, w=1.0))
    data_val = list(batches(ds, "val", 32, 7))
    scores, probs = score(sub, data_val, 4)
    with torch.no_grad():
        logits = torch.cat([sub(x) for x, _ in data_val])
    y = torch.from_numpy(ds.labels("val"))
    assert scores.top1_pct == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))
    assert scores.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-6)


def test_bad_settings_fail_before_any_work(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, sn, data = setup
    with pytest.raises(InvalidInputError, match="repeat-fraction"):
        EvaluateSettings(repeat_fraction=1.5)
    table = AccuracyTable(tmp_path / "t", "x")
    with pytest.raises(InvalidInputError, match="needs n >= 2"):
        evaluate_table(table, open_supernet(sn), open_dataset(data), EvaluateSettings(budget=1, resolutions=(32,)))
    assert not table.exists()
