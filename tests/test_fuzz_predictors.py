"""Fuzz tests (hypothesis) of the predictor files: a fitted accuracy predictor's JSON, OFA's
`acc_predictor.pth`, and OFA-format `<r>_lookup_table.yaml` block tables.

The property (issue 16): a damaged file gives a predictor whose outputs are finite, or one
Ofa2EdgeError naming the file; never another exception, never a change on disk. The
official asset is only read (copies are damaged in a temporary folder).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import byte_mutations, file_damage, read_or_clear_error

from ofa2_edge.accuracy.official import OFFICIAL_FILE, load_official_predictor
from ofa2_edge.accuracy.predictor import DenseAccuracyPredictor, load_accuracy_predictor
from ofa2_edge.core.errors import AssetError, InvalidArchError, SchemaError
from ofa2_edge.space.arch import PREDICTOR_RESOLUTIONS, Arch, SearchSpace, genomes_of
from ofa2_edge.surrogates.base import MAX_PREDICTED_MS, MIN_PREDICTED_MS
from ofa2_edge.surrogates.lut import LutSurrogate, read_ofa_tables

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def json_text(tree: Any) -> str:
    return json.dumps(tree, indent=2)


def yaml_text(tree: Any) -> str:
    return yaml.safe_dump(tree, sort_keys=True, allow_unicode=True)


def _genomes(resolutions: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    archs = [a for r in resolutions for a in (Arch.smallest(r), Arch.largest(r))]
    return np.concatenate([genomes_of(archs), genomes_of(SearchSpace(resolutions=resolutions).sample(6, rng))])


def _check_predictor(model: DenseAccuracyPredictor) -> None:
    assert model.resolutions and all(r in PREDICTOR_RESOLUTIONS for r in model.resolutions)
    top1 = model.predict(_genomes(model.resolutions))
    assert top1.shape == (len(model.resolutions) * 2 + 6,) and np.all(np.isfinite(top1))


# --------------------------------------------------------------------------- fitted accuracy predictor
@pytest.fixture(scope="module")
def accuracy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fitted-style predictor (128 -> 4 -> 1), saved as `fit-accuracy` saves one."""
    rng = np.random.default_rng(0)
    model = DenseAccuracyPredictor(
        [rng.normal(0, 0.1, (128, 4)), rng.normal(0, 0.1, (4, 1))], [np.zeros(4), np.zeros(1)],
        output_scale=2.0, output_offset=75.0, resolutions=[160, 176, 192, 208, 224],
        report={"model": "mlp", "n_pairs": 40},
    )
    return model.save(tmp_path_factory.mktemp("accuracy") / "mine.json", name="mine")


@FUZZ
@given(data=st.data())
def test_a_damaged_accuracy_predictor_loads_finite_or_is_one_clear_error(
    accuracy_file: Path, tmp_path: Path, data: st.DataObject
) -> None:
    raw = accuracy_file.read_bytes()
    path = tmp_path / "mine.json"
    path.write_bytes(data.draw(file_damage(json.loads(raw), raw, json_text)))
    model = read_or_clear_error(path, load_accuracy_predictor)
    if model is not None:
        _check_predictor(model)
        assert isinstance(model.describe(), str)
        json.dumps(model.source) and json.dumps(model.report, allow_nan=True)  # noqa: B015  (goes into run configs)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("params", "resolutions"), [10**30], "resolutions must be"),
        (("params", "resolutions"), [], "resolutions must be"),
        (("params", "resolutions"), ["a"], "resolutions must be"),
        (("params", "output_scale"), "inf", "output_scale must be a finite number"),
        (("params", "weights", 0, 0, 0), 1e38, "weights are too large"),
        (("params", "weights", 0, 0, 0), "1.0", "malformed accuracy predictor parameters"),
        (("meta",), [], "'meta' must be an object"),
    ],
)
def test_accuracy_predictor_errors_name_the_file_and_the_field(
    accuracy_file: Path, tmp_path: Path, path: tuple, value: Any, message: str
) -> None:
    doc = json.loads(accuracy_file.read_text())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    target = tmp_path / "mine.json"
    target.write_text(json.dumps(doc))
    with pytest.raises(SchemaError) as info:
        load_accuracy_predictor(target)
    assert str(target) in str(info.value) and message in str(info.value)


# --------------------------------------------------------------------------- OFA's acc_predictor.pth
@st.composite
def pth_damage(draw: st.DrawFn, raw: bytes) -> bytes:
    """A few bytes changed where a zip/pickle reader looks (local headers and pickle at the start,
    central directory at the end) or anywhere, or the file cut or spliced."""
    if draw(st.booleans()):
        return draw(byte_mutations(raw))
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["head", "tail", "any"]))
        span = 4096 if where != "any" else len(data)
        offset = draw(st.integers(0, span - 1))
        at = offset if where != "tail" else len(data) - 1 - offset
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.fixture(scope="module")
def official_bytes(assets_dir: Path) -> bytes:
    return (assets_dir / OFFICIAL_FILE).read_bytes()


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_a_damaged_official_predictor_loads_finite_or_is_one_clear_error(
    official_bytes: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    path = tmp_path / OFFICIAL_FILE
    path.write_bytes(data.draw(pth_damage(official_bytes)))
    model = read_or_clear_error(path, load_official_predictor)
    if model is not None:  # a flipped weight byte the zip does not checksum: still a working predictor
        _check_predictor(model)


def test_an_official_predictor_whose_outputs_could_overflow_is_an_asset_error(
    official_bytes: bytes, tmp_path: Path
) -> None:
    """Found by the fuzz (HYPOTHESIS_PROFILE=explore): one flipped byte made a weight ~1e28."""
    import io

    import torch

    state = torch.load(io.BytesIO(official_bytes), weights_only=True, map_location="cpu")
    state["6.weight"][0, 0] = 1e28
    path = tmp_path / OFFICIAL_FILE
    torch.save(state, path)
    with pytest.raises(AssetError) as info:
        load_official_predictor(path)
    assert str(path) in str(info.value) and "too large" in str(info.value)


# --------------------------------------------------------------------------- OFA lookup tables
@pytest.fixture(scope="module")
def note10_pair(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("note10")
    for r in (160, 176):
        shutil.copyfile(assets_dir / "note10" / f"{r}_lookup_table.yaml", folder / f"{r}_lookup_table.yaml")
    return folder


def _read_tables(folder: Path) -> LutSurrogate:
    return LutSurrogate(read_ofa_tables(folder))  # as `tables import` and `run` build it


@FUZZ
@given(data=st.data(), r=st.sampled_from([160, 176]))
def test_a_damaged_lookup_table_reads_back_or_is_one_clear_error(
    note10_pair: Path, tmp_path: Path, data: st.DataObject, r: int
) -> None:
    folder = Path(shutil.copytree(note10_pair, Path(tempfile.mkdtemp(dir=tmp_path)) / "t"))
    path = folder / f"{r}_lookup_table.yaml"
    raw = path.read_bytes()
    path.write_bytes(data.draw(file_damage(yaml.safe_load(raw), raw, yaml_text)))
    other = (folder / f"{336 - r}_lookup_table.yaml").read_bytes()
    lut = read_or_clear_error(path, lambda _: _read_tables(folder), str(folder))
    assert (folder / f"{336 - r}_lookup_table.yaml").read_bytes() == other
    if lut is None:
        return
    assert set(lut.tables) == {160, 176} and lut.width_mult == 1.2
    for arch in (Arch.smallest(160), Arch.largest(160), Arch.smallest(176), Arch.largest(176)):
        try:
            ms = float(lut.predict([arch])[0])
            lo, hi = (float(v[0]) for v in lut.predict_interval([arch], 0.8))
        except InvalidArchError as exc:  # an entry the mutation removed or renamed
            assert "has no entry" in str(exc)
            continue
        assert math.isfinite(ms) and MIN_PREDICTED_MS <= ms and math.isfinite(lo) and math.isfinite(hi) and lo <= hi
        assert ms <= MAX_PREDICTED_MS * 100  # a sum of ~30 layers, each at most MAX_PREDICTED_MS


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("0160_lookup_table.yaml", "without leading zeros"),
        ("0_lookup_table.yaml", "is not a resolution the network runs"),
        ("99999999999999999999999999_lookup_table.yaml", "is not a resolution the network runs"),
    ],
)
def test_a_lookup_table_name_that_is_no_resolution_is_refused(
    note10_pair: Path, tmp_path: Path, name: str, message: str
) -> None:
    folder = Path(shutil.copytree(note10_pair, tmp_path / "t"))
    shutil.copyfile(folder / "160_lookup_table.yaml", folder / name)
    with pytest.raises(SchemaError) as info:
        read_ofa_tables(folder)
    assert str(folder / name) in str(info.value) and message in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("count: 498", "count: .inf", 1), "non-numeric"),
        (lambda t: t.replace("count: 498", "count: 1.5", 1), "non-numeric"),
        (lambda t: t.replace("mean: 0.4", "mean: true #", 1), "non-numeric"),
        (lambda t: t.replace("mean: 0.4", "mean: 1.0e+300 #", 1), "at most"),
        (lambda t: t.replace("mean: 0.4", "mean: 1" + "0" * 400 + " #", 1), "at most"),
        (lambda t: "1: {mean: 1.0}\n" + t, "is not a text"),
        (lambda t: t + t.split("\n", 4)[0] + "\n  count: 1\n  mean: 1.0\n  std: 0.0\n", "given twice"),
        (lambda t: "\udcff" + t, "not UTF-8"),
    ],
)
def test_lookup_table_errors_name_the_file_and_the_entry(note10_pair: Path, tmp_path: Path, edit: Any, message: str) -> None:
    folder = Path(shutil.copytree(note10_pair, tmp_path / "t"))
    path = folder / "160_lookup_table.yaml"
    path.write_bytes(edit(path.read_text()).encode("utf-8", "surrogateescape"))
    with pytest.raises(SchemaError) as info:
        read_ofa_tables(folder)
    assert str(path) in str(info.value) and message in str(info.value)
