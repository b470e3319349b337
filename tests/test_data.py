"""Datasets: IDX files and image folders, split, fingerprint, statistics, batches, bad input."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.data import PARTS, DataSpec, batches, open_dataset
from ofa2_edge.data.dataset import augment_batch
from ofa2_edge.data.preprocessing import preprocess_image

FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 120, n_test: int = 40, n_classes: int = 4, gz: bool = True) -> Path:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % n_classes
        images = rng.integers(0, 256, size=(n, 12, 12), dtype=np.uint8)
        images[:, :4, :4] = (labels * 60)[:, None, None]  # a learnable mark
        for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
            name = f"{part}-{kind}-idx{nd}-ubyte" + (".gz" if gz else "")
            data = idx_bytes(arr)
            (folder / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return folder


def write_png_classes(folder: Path, classes: dict[str, int], size: tuple[int, int] = (10, 14), seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            px = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(px).save(folder / name / f"img{i:03d}.png")


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


# ------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_opens_splits_stratified_and_measures_stats(tmp_path: Path, gz: bool) -> None:
    data = write_idx_set(tmp_path / "d", gz=gz)
    ds = open_dataset(data, cache_dir=tmp_path / "cache")
    assert ds.format == "idx" and ds.classes == ("0", "1", "2", "3")
    assert (ds.size("train"), ds.size("val"), ds.size("test")) == (108, 12, 40)
    for part in PARTS:  # stratified: every class in every part
        assert set(ds.labels(part).tolist()) == {0, 1, 2, 3}
    assert np.bincount(ds.labels("val")).tolist() == [3, 3, 3, 3]
    imgs = ds.images("train", np.array([0, 5]))
    assert imgs.shape == (2, 12, 12, 3) and imgs.dtype == np.uint8
    assert (imgs[..., 0] == imgs[..., 2]).all()  # grayscale replicated
    # mean/std measured on the train part
    raw = np.stack([ds.image("train", i)[..., 0] for i in range(ds.size("train"))]) / 255.0
    assert ds.mean[0] == pytest.approx(raw.mean(), abs=1e-9) and ds.std[0] == pytest.approx(raw.std(), abs=1e-9)
    prep = ds.preprocessing(32)
    assert prep.input_size == prep.resize_size == 32 and prep.mean == ds.mean
    # the statistics and the split record went to the cache, never beside the user's files
    assert {p.name for p in files_under(tmp_path / "cache")} == {
        "stats.json",
        f"ofa2-edge-split-{ds.fingerprint[:12]}.json",
    }
    assert len(files_under(data)) == 4
    desc = ds.describe()
    json.dumps(desc)
    assert desc["sizes"] == {"train": 108, "val": 12, "test": 40} and desc["fingerprint"] == ds.fingerprint


def test_fingerprint_is_content_and_split_bound(tmp_path: Path) -> None:
    a = write_idx_set(tmp_path / "a")
    b = write_idx_set(tmp_path / "b", gz=False)  # same content, other compression and place
    fa = open_dataset(a, cache_dir=tmp_path / "c").fingerprint
    assert open_dataset(b, cache_dir=tmp_path / "c").fingerprint == fa
    assert open_dataset(DataSpec(a, seed=1), cache_dir=tmp_path / "c").fingerprint != fa
    assert open_dataset(DataSpec(a, val_fraction=0.2), cache_dir=tmp_path / "c").fingerprint != fa
    raw = gzip.decompress((a / "t10k-labels-idx1-ubyte.gz").read_bytes())
    flipped = raw[:-1] + bytes([(raw[-1] + 1) % 4])
    (a / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(flipped))
    assert open_dataset(a, cache_dir=tmp_path / "c").fingerprint != fa


def test_batches_are_deterministic_and_exactly_preprocessed(tmp_path: Path) -> None:
    ds = open_dataset(write_idx_set(tmp_path / "d"), cache_dir=tmp_path / "c")
    one = list(batches(ds, "train", 32, 16, shuffle_rng=np.random.default_rng(3), augment=True))
    two = list(batches(ds, "train", 32, 16, shuffle_rng=np.random.default_rng(3), augment=True))
    other = list(batches(ds, "train", 32, 16, shuffle_rng=np.random.default_rng(4), augment=True))
    assert [len(y) for _, y in one] == [16] * 6 + [12]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(one, two))
    assert not torch.equal(one[0][1], other[0][1])
    assert sorted(torch.cat([y for _, y in one]).tolist()) == sorted(ds.labels("train").tolist())
    # without shuffle: the given indices in order, preprocessed exactly as preprocess_image does
    idx = np.array([7, 2, 9])
    (x, y), *_ = batches(ds, "val", 40, 8, indices=idx)
    assert y.tolist() == ds.labels("val")[idx].tolist()
    prep = ds.preprocessing(40)
    for row, i in zip(x, idx):
        assert torch.allclose(row, preprocess_image(ds.image("val", int(i)), prep), atol=1e-6)
    assert x.shape == (3, 3, 40, 40) and abs(float(x.mean())) < 1.0


def test_augmentation_is_a_padded_crop_or_flip(tmp_path: Path) -> None:
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    out = augment_batch(x, np.random.default_rng(0))
    assert out.shape == x.shape
    for a, b in zip(out, x):
        # every non-padding value of the output comes from the input, in the same rows order
        vals = a[a != 0]
        assert set(vals.tolist()) <= set(b.flatten().tolist())


@pytest.mark.parametrize(
    "damage",
    ["truncate_gz", "truncate_plain", "bad_magic", "count_mismatch", "missing_file", "label_gap"],
)
def test_bad_idx_is_one_error_naming_the_file_and_nothing_is_written(tmp_path: Path, damage: str) -> None:
    data = write_idx_set(tmp_path / "d", gz=damage != "truncate_plain")
    ext = "" if damage == "truncate_plain" else ".gz"
    target = data / f"train-images-idx3-ubyte{ext}"
    if damage in ("truncate_gz", "truncate_plain"):
        target.write_bytes(target.read_bytes()[:-50])
    elif damage == "bad_magic":
        target.write_bytes(gzip.compress(b"\x12\x34" + gzip.decompress(target.read_bytes())[2:]))
    elif damage == "count_mismatch":
        target = data / "train-labels-idx1-ubyte.gz"
        target.write_bytes(gzip.compress(idx_bytes(np.arange(119) % 4)))
    elif damage == "missing_file":
        target = data / "t10k-labels-idx1-ubyte.gz"
        target.unlink()
    elif damage == "label_gap":
        target = data / "train-labels-idx1-ubyte.gz"
        target.write_bytes(gzip.compress(idx_bytes(np.arange(120) % 4 * (np.arange(120) % 4 != 2))))
    before = files_under(data)
    with pytest.raises(InvalidInputError) as err:
        open_dataset(data, cache_dir=tmp_path / "cache")
    assert (target.name if damage != "missing_file" else "t10k-labels") in str(err.value)
    assert files_under(data) == before and not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ image folders
def test_one_folder_is_split_stratified_and_the_split_is_saved_beside_it(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    write_png_classes(root, {"cat": 20, "dog": 10, "eel": 12})
    ds = open_dataset(DataSpec(root, seed=3), cache_dir=tmp_path / "c")
    assert ds.format == "imagefolder" and ds.classes == ("cat", "dog", "eel")
    assert sum(ds.size(p) for p in PARTS) == 42
    for part in PARTS:
        assert set(ds.labels(part).tolist()) == {0, 1, 2}
    files = {p: {ds.file(p, i) for i in range(ds.size(p))} for p in PARTS}
    assert not (files["train"] & files["val"] or files["train"] & files["test"] or files["val"] & files["test"])
    record = root / f".ofa2-edge-split-{ds.fingerprint[:12]}.json"
    doc = json.loads(record.read_text())
    assert doc["schema_version"] == 1 and doc["fingerprint"] == ds.fingerprint
    assert sorted(r[0] for r in doc["parts"]["test"]) == sorted(str(f.relative_to(root)) for f in files["test"])
    x = ds.images("train", np.arange(3))
    assert x.shape == (3, 10, 14, 3)
    again = open_dataset(DataSpec(root, seed=3), cache_dir=tmp_path / "c")
    assert again.fingerprint == ds.fingerprint and again.mean == ds.mean
    assert open_dataset(DataSpec(root, seed=4), cache_dir=tmp_path / "c").fingerprint != ds.fingerprint
    # non-square images: resized on the shorter side, centre-cropped
    (xb, _), *_ = batches(ds, "test", 32, 64)
    assert xb.shape == (ds.size("test"), 3, 32, 32)


def test_train_val_layout_keeps_val_and_carves_test_from_train(tmp_path: Path) -> None:
    root = tmp_path / "tv"
    write_png_classes(root / "train", {"a": 10, "b": 10})
    write_png_classes(root / "val", {"a": 3, "b": 2}, seed=1)
    ds = open_dataset(root, cache_dir=tmp_path / "c")
    assert (ds.size("train"), ds.size("val"), ds.size("test")) == (18, 5, 2)
    assert all(ds.file("val", i).parent.parent.name == "val" for i in range(5))
    write_png_classes(root / "test", {"a": 2, "b": 2}, seed=2)
    ds3 = open_dataset(root, cache_dir=tmp_path / "c")
    assert (ds3.size("train"), ds3.size("test")) == (20, 4)


@pytest.mark.parametrize("damage", ["empty_class", "unreadable", "missing_from_val", "one_image_class"])
def test_bad_image_folder_is_one_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "tv"
    write_png_classes(root / "train", {"a": 6, "b": 6})
    write_png_classes(root / "val", {"a": 2, "b": 2}, seed=1)
    if damage == "empty_class":
        (root / "val" / "b").joinpath("img000.png").unlink()
        (root / "val" / "b").joinpath("img001.png").unlink()
        named = str(root / "val" / "b")
    elif damage == "unreadable":
        bad = root / "train" / "a" / "img003.png"
        bad.write_bytes(b"not a png at all")
        named = str(bad)
    elif damage == "missing_from_val":
        for p in (root / "val" / "b").iterdir():
            p.unlink()
        (root / "val" / "b").rmdir()
        named = str(root / "val" / "b")
    else:
        root = tmp_path / "flat"
        write_png_classes(root, {"a": 6, "b": 1})
        named = str(root)
    before = files_under(root)
    with pytest.raises(InvalidInputError) as err:
        open_dataset(root, cache_dir=tmp_path / "cache")
    assert named in str(err.value)
    assert files_under(root) == before and not (tmp_path / "cache").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_folder_gets_its_split_record_in_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    write_png_classes(root, {"a": 6, "b": 6})
    os.chmod(root, 0o555)
    try:
        ds = open_dataset(root, cache_dir=tmp_path / "c")
    finally:
        os.chmod(root, 0o755)
    assert not list(root.glob(".ofa2-edge-split-*"))
    assert list((tmp_path / "c").rglob(f"ofa2-edge-split-{ds.fingerprint[:12]}.json"))


def test_bad_spec_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        open_dataset(tmp_path / "nope", cache_dir=tmp_path / "c")
    with pytest.raises(InvalidInputError, match="format"):
        DataSpec(tmp_path, format="csv")
    with pytest.raises(InvalidInputError, match="val_fraction"):
        DataSpec(tmp_path, val_fraction=0.7)
    ds = open_dataset(write_idx_set(tmp_path / "d"), cache_dir=tmp_path / "c")
    with pytest.raises(InvalidInputError, match="part"):
        ds.size("holdout")
    with pytest.raises(InvalidInputError, match="out of range"):
        ds.images("val", np.array([999]))
    with pytest.raises(InvalidInputError, match="shuffle_rng"):
        next(batches(ds, "train", 32, 4, augment=True))


# ------------------------------------------------------------------ the real Fashion-MNIST
@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed (scripts/install-system-deps)")
def test_real_fashion_mnist(tmp_path: Path) -> None:
    ds = open_dataset(FASHION, cache_dir=tmp_path / "c")
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert (ds.size("train"), ds.size("val"), ds.size("test")) == (54000, 6000, 10000)
    assert np.bincount(ds.labels("val")).tolist() == [600] * 10
    assert ds.native_size == (28, 28)
    assert 0.25 < ds.mean[0] < 0.32 and 0.3 < ds.std[0] < 0.4  # Fashion-MNIST: 0.286 / 0.353
    (x, y), *_ = batches(ds, "test", 32, 5, indices=np.arange(5))
    assert x.shape == (5, 3, 32, 32) and y.tolist() == ds.labels("test")[:5].tolist()
