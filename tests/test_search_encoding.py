"""The index genome, the categorical operators, canonical dedupe and fast arch rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.core.population import Population
from pymoo.core.problem import Problem

from ofa2_edge.core.errors import InvalidArchError
from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.indicators import coverage, hypervolume, nondominated
from ofa2_edge.search.operators import CanonicalDuplicateElimination, ChoiceMutation, ChoiceSampling, OfaMutation
from ofa2_edge.search.runstore import arch_id_of, arch_json_batch, format_rows
from ofa2_edge.space.arch import D_GENES, E_GENES, KS_GENES, R_GENE, Arch, SearchSpace, canonicalize_genomes

SPACES = [
    SearchSpace(),
    SearchSpace(resolutions=(96, 128, 224, 320), ks=(5, 7), e=(4,), d=(3, 4)),
    SearchSpace(resolutions=(64,), ks=(3,), e=(3, 6), d=(2,), w=1.0),
]


def _problem(codec: GenomeCodec) -> Problem:
    return Problem(n_var=codec.n_var, n_obj=2, xl=np.zeros(codec.n_var), xu=codec.n_choices - 1, vtype=int)


@pytest.mark.parametrize("space", SPACES)
def test_operators_never_leave_the_space(space: SearchSpace) -> None:
    codec = GenomeCodec(space)
    rng = np.random.default_rng(0)
    x = ChoiceSampling(codec, corners=True)._do(None, 300, random_state=rng)
    mutations = (
        ChoiceMutation(codec, prob_var=0.3, different=True),
        ChoiceMutation(codec, prob_var=0.3, different=False),
        ChoiceMutation(codec, prob_var=0.3, active_only=True),
        OfaMutation(codec, 0.3),
    )
    for mutation in mutations:
        x = mutation._do(_problem(codec), x, random_state=rng)
    for arch in codec.archs(x):
        assert space.validate(arch) is arch


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_encode_decode_round_trip(seed: int) -> None:
    space = SPACES[1]
    codec = GenomeCodec(space)
    g = space.sample_genomes(20, np.random.default_rng(seed))
    idx = codec.encode(g)
    np.testing.assert_array_equal(codec.decode(idx), canonicalize_genomes(g))
    np.testing.assert_array_equal(codec.canonical(idx), codec.encode(codec.decode(idx)))


def test_encode_refuses_values_outside_the_space() -> None:
    codec = GenomeCodec(SPACES[1])
    with pytest.raises(InvalidArchError, match="e: value 6 is not allowed; choose from 4"):
        codec.encode(np.array([Arch.largest(160).to_genome()]))
    inside = Arch(ks=(7,) * 20, e=(4,) * 20, d=(4,) * 5, r=160)
    with pytest.raises(InvalidArchError, match="r: value 160 is not allowed"):
        codec.encode(np.array([inside.to_genome()]))
    with pytest.raises(InvalidArchError, match="outside the search space's choices"):
        codec.decode(np.full((1, 46), 7))


def test_corners_are_the_smallest_and_largest_arch_of_each_resolution() -> None:
    space = SPACES[0]
    codec = GenomeCodec(space)
    corners = set(codec.archs(ChoiceSampling(codec, corners=True).corner_indices()))
    assert corners == {a for r in space.resolutions for a in (space.smallest(r), space.largest(r))}


def test_choice_mutation_moves_to_another_choice() -> None:
    codec = GenomeCodec(SearchSpace())
    x = np.zeros((500, 46), dtype=np.int64)
    y = ChoiceMutation(codec, prob_var=1.0, different=True)._do(_problem(codec), x, random_state=np.random.default_rng(1))
    assert (y != x).all()
    y_same = ChoiceMutation(codec, prob_var=1.0, different=False)._do(_problem(codec), x, random_state=np.random.default_rng(1))
    assert 0.2 < (y_same == x).mean() < 0.45  # a resample keeps the value 1 in 3 (or 1 in 5 for r)


def test_ofa_mutation_resamples_kernel_and_expand_of_a_block_together() -> None:
    codec = GenomeCodec(SearchSpace())
    x = np.zeros((2000, 46), dtype=np.int64)
    # mutate_prob 1 with choices drawn again: a block either resamples both or neither
    rng = np.random.default_rng(2)
    y = OfaMutation(codec, mutate_prob=0.5)._do(_problem(codec), x, random_state=rng)
    changed_k, changed_e = y[:, KS_GENES] != 0, y[:, E_GENES] != 0
    # where the kernel changed the block was resampled, so the expand changed ~2/3 of the time
    assert 0.55 < changed_e[changed_k].mean() < 0.78
    assert 0.35 < (y[:, R_GENE] != 0).mean() < 0.45  # 0.5 x 4/5
    assert 0.29 < (y[:, D_GENES] != 0).mean() < 0.38  # 0.5 x 2/3


def test_canonical_duplicates_are_dropped() -> None:
    codec = GenomeCodec(SearchSpace())
    base = codec.encode(np.array([Arch.smallest(160).to_genome()]))[0]
    twin = base.copy()
    twin[3] = 2  # slot 3 is beyond stage 0's depth 2: builds the same network
    other = base.copy()
    other[0] = 2
    dedupe = CanonicalDuplicateElimination(codec)
    pop = Population.new("X", np.stack([base, twin, other]))
    kept = dedupe.do(pop)
    assert len(kept) == 2
    assert len(dedupe.do(Population.new("X", np.stack([twin])), Population.new("X", np.stack([base])))) == 0


@given(seed=st.integers(0, 2**32 - 1), w=st.sampled_from([1.0, 1.2]))
@settings(max_examples=30, deadline=None)
def test_fast_arch_rows_match_arch_json_and_id(seed: int, w: float) -> None:
    space = SearchSpace(resolutions=(32, 64, 99, 100, 224, 512, 1024), w=w)
    g = space.sample_genomes(30, np.random.default_rng(seed))
    texts = arch_json_batch(g, w)
    for row, text in zip(g, texts):
        arch = Arch.from_genome(row, w=w)
        assert text == arch.canonical_json() and arch_id_of(text) == arch.id
    values = np.random.default_rng(seed).normal(size=(30, 2)) * 100
    lines = format_rows(g, w, np.arange(30), ["top1_pct", "latency_ms:x"], values, np.arange(30) % 2 == 0)
    rec = json.loads(lines[3])
    assert rec["arch"] == Arch.from_genome(g[3], w=w).to_dict() and rec["gen"] == 3 and rec["feasible"] is False
    assert rec["top1_pct"] == values[3, 0] and rec["latency_ms:x"] == values[3, 1]


def test_indicators() -> None:
    from pymoo.indicators.hv import HV

    rng = np.random.default_rng(3)
    F = rng.random((60, 2)) * [90, 10] + [10, 15]
    ref = np.array([100.0, 25.0])
    nd = nondominated(F)
    assert hypervolume(F, ref) == pytest.approx(HV(ref_point=ref)(F[nd]), rel=1e-12)
    assert hypervolume(F[nd], ref) == pytest.approx(hypervolume(F, ref))
    assert hypervolume(np.array([[120.0, 10.0]]), ref) == 0.0  # outside the box adds nothing
    assert coverage(F[nd], F) == 1.0 and coverage(F, F[nd]) == 1.0
    assert coverage(F + 100, F) == 0.0


def test_active_only_mutation_changes_only_built_genes() -> None:
    codec = GenomeCodec(SearchSpace())
    x = codec.encode(np.stack([Arch.smallest(160).to_genome()] * 400))  # depth 2: 10 of 20 slots built
    y = ChoiceMutation(codec, active_only=True)._do(_problem(codec), x, random_state=np.random.default_rng(4))
    active = np.concatenate([codec.active(x)] * 2 + [np.ones((400, 6), dtype=bool)], axis=1)
    assert not (y != x)[~active].any()
    assert 0.8 < (y != x).sum(axis=1).mean() < 1.2  # one change per child on average, all of them real
