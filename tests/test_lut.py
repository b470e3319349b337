"""OFA-format lookup tables: import, exact LUT sums, round trips, malformed input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ofa2_edge.core.errors import InvalidArchError, SchemaError
from ofa2_edge.space.arch import Arch, SearchSpace, genomes_of
from ofa2_edge.surrogates.base import load_surrogate
from ofa2_edge.surrogates.lut import LutSurrogate, lut_latency, read_ofa_table, write_ofa_table


@pytest.fixture(scope="module")
def note10(assets_dir: Path) -> LutSurrogate:
    return LutSurrogate.from_folder(assets_dir / "note10")


def test_note10_reproduces_ofa_published_sums(note10: LutSurrogate) -> None:
    # OFA² reports these for its min and max nets on the Note10 table
    assert note10.predict([Arch.smallest(160)])[0] == pytest.approx(9.89, abs=0.005)
    assert note10.predict([Arch.largest(224)])[0] == pytest.approx(92.40, abs=0.005)
    assert note10.width_mult == 1.2 and note10.resolutions == (160, 176, 192, 208, 224)
    assert all(note10.covers(r) for r in note10.resolutions)


def test_vectorised_sum_equals_layer_by_layer_sum(note10: LutSurrogate, assets_dir: Path) -> None:
    archs = SearchSpace().sample(300, np.random.default_rng(1))
    tables = {r: read_ofa_table(assets_dir / "note10" / f"{r}_lookup_table.yaml") for r in note10.resolutions}
    expected = [lut_latency(a, tables[a.r]) for a in archs]
    np.testing.assert_allclose(note10.predict(archs), expected, rtol=1e-12)


def test_prediction_is_fast(note10: LutSurrogate) -> None:
    g = SearchSpace().sample_genomes(10_000, np.random.default_rng(2))
    note10.predict(g[:10])  # build the slot tables once
    start = time.perf_counter()
    note10.predict(g)
    assert time.perf_counter() - start < 1.0  # a smoke bound; the real figure is in benchmarks/


def test_quantiles_bracket_the_mean(note10: LutSurrogate) -> None:
    g = SearchSpace().sample_genomes(50, np.random.default_rng(3))
    lo, hi = note10.predict_interval(g, 0.8)
    mean = note10.predict(g)
    assert (lo < mean).all() and (mean < hi).all()


def test_save_load_roundtrip(note10: LutSurrogate, tmp_path: Path) -> None:
    g = SearchSpace().sample_genomes(100, np.random.default_rng(4))
    path = note10.save(tmp_path / "surrogate.json", device="note10")
    again = load_surrogate(path)
    assert isinstance(again, LutSurrogate)
    np.testing.assert_array_equal(again.predict(g), note10.predict(g))


def test_yaml_roundtrip(tmp_path: Path, assets_dir: Path) -> None:
    table = read_ofa_table(assets_dir / "note10" / "160_lookup_table.yaml")
    write_ofa_table(tmp_path / "160_lookup_table.yaml", table)
    assert read_ofa_table(tmp_path / "160_lookup_table.yaml") == table


def test_uncovered_resolution_and_missing_entries_are_named(note10: LutSurrogate) -> None:
    with pytest.raises(InvalidArchError, match="covers resolutions 160, 176, 192, 208, 224, not 128"):
        note10.predict([Arch.smallest(128)])
    partial = {160: {k: v for k, v in note10.tables[160].items() if "kernel:7" not in k}}
    lut = LutSurrogate(partial)
    assert not lut.covers(160)
    with pytest.raises(InvalidArchError, match="no entry for expanded_conv-.*kernel:7"):
        lut.predict(genomes_of([Arch.largest(160)]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("Conv-x: {mean: fast}\n", "non-numeric"),
        ("Conv-x: {mean: -1.0, std: 0.1, count: 3}\n", "mean >= 0"),
        ("Conv-x: 3.5\n", "must be a mapping"),
    ],
)
def test_malformed_tables_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "160_lookup_table.yaml"
    path.write_text(text)
    with pytest.raises(SchemaError, match=message):
        read_ofa_table(path)

