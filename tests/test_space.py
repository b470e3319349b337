"""The Arch value type, its encodings and the search space."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ofa2_edge.core.errors import InvalidArchError
from ofa2_edge.space.arch import (
    DEPTH_CHOICES,
    EXPAND_CHOICES,
    KERNEL_CHOICES,
    N_BLOCKS,
    N_GENES,
    Arch,
    SearchSpace,
    active_mask,
    archs_of,
    canonicalize_genomes,
    genomes_of,
    predictor_features,
)

genome_st = st.tuples(
    st.lists(st.sampled_from(KERNEL_CHOICES), min_size=20, max_size=20),
    st.lists(st.sampled_from(EXPAND_CHOICES), min_size=20, max_size=20),
    st.lists(st.sampled_from(DEPTH_CHOICES), min_size=5, max_size=5),
    st.sampled_from((160, 176, 192, 208, 224)),
).map(lambda t: np.array([*t[0], *t[1], *t[2], t[3]], dtype=np.int64))


def reference_features(arch: dict) -> np.ndarray:
    """OFA tutorial's spec2feats, written out per arch as the reference."""
    ks, ex = list(arch["ks"]), list(arch["e"])
    for stage, depth in enumerate(arch["d"]):
        for j in range(stage * 4 + depth, stage * 4 + 4):
            ks[j] = ex[j] = 0
    feats = np.zeros(128, dtype=np.float32)
    for i in range(20):
        if ks[i]:
            feats[i * 3 + {3: 0, 5: 1, 7: 2}[ks[i]]] = 1
        if ex[i]:
            feats[60 + i * 3 + {3: 0, 4: 1, 6: 2}[ex[i]]] = 1
    feats[120 + (arch["r"] - 112) // 16] = 1
    return feats


@given(genome_st)
def test_genome_dict_roundtrip(genome: np.ndarray) -> None:
    arch = Arch.from_genome(genome)
    assert Arch.from_dict(arch.to_dict()) == arch
    assert Arch.from_genome(arch.to_genome()) == arch
    # the OFA² data-set form stores r as a one-element list
    assert Arch.from_dict({**arch.to_dict(), "r": [arch.r]}) == arch


@given(genome_st, genome_st)
def test_canonical_form_identifies_equal_networks(g1: np.ndarray, g2: np.ndarray) -> None:
    # copy g1's active genes into g2's inactive-agnostic shape: same depths, same r
    g2 = g2.copy()
    g2[40:46] = g1[40:46]
    mask = active_mask(g1)[0]
    g2[:20][mask] = g1[:20][mask]
    g2[20:40][mask] = g1[20:40][mask]
    a1, a2 = Arch.from_genome(g1), Arch.from_genome(g2)
    assert a1 == a2 and hash(a1) == hash(a2) and a1.id == a2.id
    assert (canonicalize_genomes(g2) == a1.to_genome()).all()


@given(genome_st, genome_st)
def test_different_networks_get_different_ids(g1: np.ndarray, g2: np.ndarray) -> None:
    a1, a2 = Arch.from_genome(g1), Arch.from_genome(g2)
    assert (a1 == a2) == (a1.id == a2.id)


@settings(max_examples=50)
@given(st.lists(genome_st, min_size=1, max_size=8))
def test_predictor_features_match_reference(genomes: list[np.ndarray]) -> None:
    g = np.stack(genomes)
    feats = predictor_features(g)
    expected = np.stack([reference_features(Arch.from_genome(x).to_dict()) for x in g])
    np.testing.assert_array_equal(feats, expected)


def test_id_is_stable_and_short() -> None:
    arch = Arch.smallest(160)
    assert arch.id == Arch.from_dict(arch.to_dict()).id
    assert arch.id.startswith("a-") and len(arch.id) == 14
    # pinned: ids are the key of tables, runs and bundles, so they must never drift
    assert arch.canonical_json() == (
        '{"d":[2,2,2,2,2],"e":[3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3],'
        '"ks":[3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3],"r":160,"w":1.2}'
    )
    assert Arch.smallest(160, w=1.0).id != arch.id


def test_inactive_zeros_from_ofa_tools_are_accepted() -> None:
    ks = [3, 5, 0, 0] * 5
    arch = Arch(ks=tuple(ks), e=tuple([4, 6, 0, 0] * 5), d=(2,) * 5, r=224)
    assert arch.ks[2] == 3 and arch.e[3] == 3


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"ks": [3] * 19, "e": [3] * 20, "d": [2] * 5, "r": 224}, "ks: expected 20 values"),
        ({"ks": [4] + [3] * 19, "e": [3] * 20, "d": [2] * 5, "r": 224}, "ks[0]: kernel size 4 is not allowed; choose from 3, 5, 7"),
        ({"ks": [3] * 20, "e": [5] * 20, "d": [4] * 5, "r": 224}, "e[0]: expand ratio 5"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [1] * 5, "r": 224}, "d[0]: depth 1 is not allowed; choose from 2, 3, 4"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 2000}, "r: resolution 2000"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224.5}, "r: expected an integer"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": "224"}, "r: expected an integer"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [2, 2, 2, 2, True], "r": 224}, "d[4]: expected an integer"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5}, "missing field(s): r"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224, "x": 1}, "unknown arch field(s) x"),
        ({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224, "w": 0.75}, "w: width multiplier 0.75"),
        # a zero is only allowed where the block is not built
        ({"ks": [0] + [3] * 19, "e": [3] * 20, "d": [2] * 5, "r": 224}, "ks[0]: kernel size 0"),
    ],
)
def test_invalid_archs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(InvalidArchError) as info:
        Arch.from_dict(data)
    assert field in str(info.value)


def test_genome_length_is_checked() -> None:
    with pytest.raises(InvalidArchError, match="expected 46 genes"):
        Arch.from_genome(np.zeros(45, dtype=int))


def test_search_space_validation_and_network_resolutions() -> None:
    space = SearchSpace()
    released = Arch.smallest(236)  # the network runs it (OFA's 595M net uses 236 px) ...
    with pytest.raises(InvalidArchError, match="r: resolution 236 is outside the search space; choose from 160, 176"):
        space.validate(released)  # ... but the default search space does not offer it
    narrow = SearchSpace(ks=(3, 5), resolutions=(224,))
    with pytest.raises(InvalidArchError, match=r"ks\[0\]: kernel 7 is outside the search space"):
        narrow.validate(Arch.largest(224))
    assert narrow.contains(narrow.largest())
    with pytest.raises(InvalidArchError, match="search space: ks value 4"):
        SearchSpace(ks=(3, 4))
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_sampling_is_seeded_and_canonical() -> None:
    space = SearchSpace()
    a = space.sample_genomes(200, np.random.default_rng(7))
    b = space.sample_genomes(200, np.random.default_rng(7))
    c = space.sample_genomes(200, np.random.default_rng(8))
    assert (a == b).all() and not (a == c).all()
    assert a.shape == (200, N_GENES)
    assert (canonicalize_genomes(a) == a).all()
    assert genomes_of(archs_of(a)).tolist() == a.tolist()
    assert set(a[:, 45]) == set(space.resolutions)


def test_predictor_features_refuse_resolution_outside_range() -> None:
    with pytest.raises(InvalidArchError, match="outside the accuracy predictor's range"):
        predictor_features(Arch.smallest(260).to_genome())


def test_active_mask_counts_blocks() -> None:
    g = genomes_of([Arch.smallest(160), Arch.largest(224)])
    assert active_mask(g).sum(axis=1).tolist() == [10, N_BLOCKS]
