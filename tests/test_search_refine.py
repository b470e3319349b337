"""The steps inside the budget: the memetic step (`FrontRefinement`: one-gene neighbours of the
front) and accurate-end breeding (`EliteBreeding`: a GA on objective 0 from the best found)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.mating import Mating
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.operators.selection.rnd import RandomSelection
from pymoo.optimize import minimize

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.search.algorithms import MANY_COST_ELITE, BuildContext, OperatorConfig, get_algorithm, resolve_operators
from ofa2_edge.search.archive import Archive
from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.objectives import MetricContext, build_objectives
from ofa2_edge.search.operators import ChoiceSampling, EliteBreeding, FrontRefinement, one_gene_neighbours
from ofa2_edge.search.problem import ArchProblem
from ofa2_edge.space.arch import Arch, SearchSpace

SPACES = [
    SearchSpace(),
    SearchSpace(resolutions=(96, 128, 224, 320), ks=(5, 7), e=(4,), d=(3, 4)),
    SearchSpace(resolutions=(64,), ks=(3,), e=(3, 6), d=(2,), w=1.0),
]


def _canon_keys(codec: GenomeCodec, X: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in codec.canonical(np.asarray(X, dtype=np.int64)).astype(np.int8)]


@pytest.mark.parametrize("space", SPACES)
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_a_neighbour_is_another_network_one_built_gene_away(space: SearchSpace, seed: int) -> None:
    codec = GenomeCodec(space)
    rng = np.random.default_rng(seed)
    X = ChoiceSampling(codec)._do(None, 200, random_state=rng)
    Y = one_gene_neighbours(codec, X, rng)
    changed = Y != X
    assert (changed.sum(axis=1) == 1).all()
    gene = changed.argmax(axis=1)
    built = np.concatenate([codec.active(X)] * 2 + [np.ones((len(X), 6), dtype=bool)], axis=1)
    assert built[np.arange(len(X)), gene].all()  # never a gene of an unbuilt slot
    assert all(a != b for a, b in zip(_canon_keys(codec, X), _canon_keys(codec, Y)))  # a different network
    for arch in codec.archs(Y):
        assert space.validate(arch) is arch


def _population(codec: GenomeCodec, X: np.ndarray, F: np.ndarray, cv: np.ndarray | None = None) -> Population:
    pop = Population.new("X", np.asarray(X, dtype=np.int64))
    pop.set("F", np.asarray(F, dtype=np.float64))
    pop.set("CV", (np.zeros(len(X)) if cv is None else np.asarray(cv, dtype=np.float64)).reshape(-1, 1))
    return pop


def _arrays(pop: Population) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(pop.get("X"), dtype=np.int64), np.asarray(pop.get("F")), np.asarray(pop.get("CV"))[:, 0]


def _mating(codec: GenomeCodec) -> Mating:
    ops = BuildContext(codec, 2, 10, 1, OperatorConfig(), {}).ga_operators()
    return Mating(RandomSelection(), ops["crossover"], ops["mutation"], eliminate_duplicates=ops["eliminate_duplicates"])


def test_extremes_skip_the_space_corners_and_infeasible_members() -> None:
    codec = GenomeCodec(SearchSpace())
    rng = np.random.default_rng(0)
    smallest = codec.encode(np.array([Arch.smallest(160).to_genome()]))[0]
    X = np.stack([smallest, *ChoiceSampling(codec)._do(None, 5, random_state=rng)])
    # (latency, error): 0 is the smallest net (the latency extreme), 2 the most accurate feasible one,
    # 4 more accurate still but infeasible, 5 dominated
    F = np.array([[10, 24], [20, 20], [40, 15], [30, 18], [50, 10], [45, 22]], dtype=np.float64)
    cv = np.array([0, 0, 0, 0, 1, 0], dtype=np.float64)
    pop = _population(codec, X, F, cv)
    ref = FrontRefinement(_mating(codec), codec, 0.1, anchors="extremes")
    assert set(ref.anchor_rows(*_arrays(pop), 8, rng).tolist()) == {2}
    front = FrontRefinement(_mating(codec), codec, 0.1, anchors="front").anchor_rows(*_arrays(pop), 200, rng)
    assert set(front.tolist()) == {0, 1, 2, 3}
    mixed = FrontRefinement(_mating(codec), codec, 0.1, anchors="mixed").anchor_rows(*_arrays(pop), 10, rng)
    assert (mixed[:5] == 2).all() and set(mixed[5:].tolist()) <= {0, 1, 2, 3}
    assert len(ref.anchor_rows(*_arrays(_population(codec, X, F, np.ones(6))), 8, rng)) == 0  # nothing feasible: no anchors
    # ends: the most accurate most often, then the next ones on the front by accuracy, halving
    ends = FrontRefinement(_mating(codec), codec, 0.1, anchors="ends").anchor_rows(*_arrays(pop), 4000, rng)
    counts = np.bincount(ends, minlength=6)
    assert counts[4] == counts[5] == 0 and counts[2] > counts[3] > counts[1] > 0
    assert 0.45 < counts[2] / 4000 < 0.55 and 0.2 < counts[3] / 4000 < 0.3
    mixed_ends = FrontRefinement(_mating(codec), codec, 0.1, anchors="mixed-ends").anchor_rows(*_arrays(pop), 10, rng)
    assert set(mixed_ends[:5].tolist()) <= {0, 1, 2, 3} and len(mixed_ends) == 10


def test_sparse_anchors_go_where_the_front_is_thin() -> None:
    """``mixed-sparse``: the non-end half of the anchors is drawn in proportion to crowding
    distance, so the two members that border the front's one wide gap get the most."""
    codec = GenomeCodec(SearchSpace())
    rng = np.random.default_rng(3)
    X = ChoiceSampling(codec)._do(None, 7, random_state=rng)
    # a front of 6 (latency, error) with one wide gap between members 3 and 4; member 6 is dominated
    F = np.array([[10, 24], [11, 23], [12, 22], [13, 21], [30, 12], [31, 11], [40, 20]], dtype=np.float64)
    pop = _population(codec, X, F)
    k = 6000
    rows = FrontRefinement(_mating(codec), codec, 0.1, anchors="mixed-sparse").anchor_rows(*_arrays(pop), k, rng)
    spread = np.bincount(rows[k // 2 :], minlength=7)
    assert spread[6] == 0  # only front members
    assert min(spread[3], spread[4]) > 4 * max(spread[1], spread[2]) > 0  # the gap's borders, far more than the packed middle
    # the extremes weigh as much as the most isolated interior member, not infinitely more
    assert 0.5 < spread[0] / max(spread[3], spread[4]) < 1.5
    # the end half is as with ``mixed-ends``: each objective's best member (none is a corner here) most often
    ends = np.bincount(rows[: k // 2], minlength=7)
    assert set(np.argsort(ends)[-2:].tolist()) == {0, 5} and ends[6] == 0
    # repeatable from the generator's state
    again = FrontRefinement(_mating(codec), codec, 0.1, anchors="mixed-sparse")
    a = again.anchor_rows(*_arrays(pop), 50, np.random.default_rng(9))
    assert np.array_equal(a, again.anchor_rows(*_arrays(pop), 50, np.random.default_rng(9)))
    # a front of two has no interior: spread uniformly, no failure
    two = _population(codec, X[:2], F[[0, 5]])
    assert set(again.anchor_rows(*_arrays(two), 40, rng).tolist()) == {0, 1}


def test_many_device_anchors_lie_on_every_device_front_not_on_the_joint_one() -> None:
    """With pairs (the many-device search), anchors are drawn on each (top-1, device) 2-D
    front: a member that is jointly non-dominated but on no device's front (a middling
    trade-off between devices) is never one, and every device gets anchors even when the
    anchors per generation are fewer than the devices."""
    codec = GenomeCodec(SearchSpace())
    rng = np.random.default_rng(5)
    X = ChoiceSampling(codec)._do(None, 5, random_state=rng)
    # (error, latency A, latency B): 0 and 1 are device A's front, 0 and 2 device B's; 3 is
    # jointly non-dominated (cheaper than 1 on B, than 2 on A) yet dominated on both 2-D
    # projections (by 1 on A, by 2 on B); 4 is dominated everywhere
    F = np.array([[10, 50, 50], [12, 20, 80], [12, 80, 20], [15, 30, 30], [30, 90, 90]], dtype=np.float64)
    assert np.array_equal(np.flatnonzero([not ((F <= f).all(1) & (F < f).any(1)).any() for f in F]), [0, 1, 2, 3])
    pop = _population(codec, X, F)
    pairs = [(0, 1), (0, 2)]
    ref = FrontRefinement(_mating(codec), codec, 0.1, anchors="mixed-sparse", pairs=pairs)
    rows = ref.anchor_rows(*_arrays(pop), 4000, rng)
    counts = np.bincount(rows, minlength=5)
    assert counts[3] == 0 and counts[4] == 0
    assert min(counts[1], counts[2]) > 0.2 * len(rows) / 2  # each device's cheap end gets its share
    joint = FrontRefinement(_mating(codec), codec, 0.1, anchors="mixed-sparse").anchor_rows(*_arrays(pop), 4000, rng)
    assert np.bincount(joint, minlength=5)[3] > 0  # the joint front's anchors do include it
    # one anchor per call, 12 devices: over calls every device's front is visited
    F12 = np.column_stack([np.arange(13.0)[::-1] + 1] + [np.where(np.arange(13) == j, 1.0, 100.0) for j in range(12)])
    X12 = ChoiceSampling(codec)._do(None, 13, random_state=rng)
    many = FrontRefinement(_mating(codec), codec, 0.1, anchors="front", pairs=[(0, j) for j in range(1, 13)])
    seen = {int(r) for _ in range(300) for r in many.anchor_rows(*_arrays(_population(codec, X12, F12)), 1, rng)}
    assert set(range(12)) <= seen


def test_offspring_are_the_budget_neighbours_first_and_all_distinct() -> None:
    codec = GenomeCodec(SearchSpace())
    rng = np.random.default_rng(1)
    X = ChoiceSampling(codec, corners=True)._do(None, 40, random_state=rng)
    F = np.column_stack([rng.random(40), rng.random(40)])
    pop = _population(codec, X, F)
    problem = Problem(n_var=codec.n_var, n_obj=2, xl=np.zeros(codec.n_var), xu=codec.n_choices - 1, vtype=int)
    ref = FrontRefinement(_mating(codec), codec, 0.25, anchors="mixed")
    off = ref.do(problem, pop, 40, random_state=rng)
    Y = np.asarray(off.get("X"), dtype=np.int64)
    assert len(Y) == 40
    keys = _canon_keys(codec, Y)
    assert len(set(keys)) == 40 and not set(keys) & set(_canon_keys(codec, X))
    # the first 10 are one-gene neighbours of the population's members
    assert all(((X != y).sum(axis=1) == 1).any() for y in Y[:10])


def test_same_seed_same_run_and_the_top1_end_gains() -> None:
    """On a smooth landscape whose best point is an interior one, the refined run reaches
    further at the accurate end with the same evaluations (a check that could fail: the
    step must merge improving neighbours into survival)."""
    codec = GenomeCodec(SearchSpace())
    target = ChoiceSampling(codec)._do(None, 1, random_state=np.random.default_rng(5))[0]

    class P(Problem):
        def _evaluate(self, x, out, *args, **kwargs):
            x = codec.canonical(np.asarray(x, dtype=np.int64))
            size = x.sum(axis=1).astype(np.float64)
            out["F"] = np.column_stack([size, (x != target).sum(axis=1).astype(np.float64)])

    def best(refine: float, seed: int) -> tuple[float, np.ndarray]:
        ops = OperatorConfig(refine=refine)
        algo = get_algorithm("nsga2").build(BuildContext(codec, 2, 40, seed, ops, {}))
        problem = P(n_var=codec.n_var, n_obj=2, xl=np.zeros(codec.n_var), xu=codec.n_choices - 1, vtype=int)
        res = minimize(problem, algo, ("n_gen", 60), seed=seed, verbose=False)
        assert res.algorithm.evaluator.n_eval == 40 * 60
        return float(res.F[:, 1].min()), res.F

    a, Fa = best(0.2, 1)
    b, Fb = best(0.2, 1)
    assert a == b and np.array_equal(Fa, Fb)
    assert np.mean([best(0.2, s)[0] for s in (1, 2, 3)]) < np.mean([best(0.0, s)[0] for s in (1, 2, 3)])


def test_config_checks_and_the_wrapping() -> None:
    with pytest.raises(InvalidInputError, match="refinement share 1.0"):
        OperatorConfig(refine=1.0)
    with pytest.raises(InvalidInputError, match="refine_anchors 'middle' is unknown"):
        OperatorConfig(refine_anchors="middle")
    codec = GenomeCodec(SearchSpace())
    off = get_algorithm("nsga2").build(BuildContext(codec, 2, 10, 1, OperatorConfig(refine=0.0), {}))
    on = get_algorithm("spea2").build(BuildContext(codec, 2, 10, 1, OperatorConfig(), {}))
    assert isinstance(off, NSGA2) and not isinstance(off.mating, FrontRefinement)
    assert isinstance(on.mating, FrontRefinement) and on.mating.share == 0.1 and on.mating.anchors == "mixed-sparse"
    assert OperatorConfig.ofa2().refine == 0.0  # OFA²'s own operators have no memetic step
    assert OperatorConfig.from_dict({"refine": 0.2}).refine_anchors == "mixed-sparse"
    assert OperatorConfig.from_dict({"sampling": "uniform"}).refine == 0.0  # a config from before the step ran without it


def test_best_first_is_kept_incrementally_as_if_computed_at_once(tmp_path) -> None:
    """`Archive.best_first` (the elite of accurate-end breeding) after batch upon batch equals
    the brute-force order of all rows, feasible ones only, and a fresh archive given the same
    rows at once (what a resume does) agrees."""
    space = SearchSpace()
    codec = GenomeCodec(space)
    objectives = build_objectives(["params", "macs"], ["macs<=400"], MetricContext(Workspace.resolve(tmp_path), space))
    rng = np.random.default_rng(3)
    batches = [ChoiceSampling(codec)._do(None, n, random_state=rng) for n in (7, 30, 1, 60)]
    step, once = Archive(objectives, space.w), Archive(objectives, space.w)
    for X in batches:
        ArchProblem(codec, objectives, memo=step).evaluate(X)
        g, v, _ = step.arrays()
        F, G = step.minimised(v)
        ok = np.flatnonzero((G <= 0).all(axis=1))
        brute = ok[np.lexsort((ok, F[ok, 1], F[ok, 0]))][:5]
        assert np.array_equal(step.best_first(5), g[brute])
    assert 0 < len(ok) < step.n_rows  # the constraint removed some
    ArchProblem(codec, objectives, memo=once).evaluate(np.concatenate(batches))
    assert np.array_equal(once.best_first(5), step.best_first(5))
    assert np.array_equal(step.best_first(9)[:5], step.best_first(5))  # another size starts over


def test_elite_children_are_bred_from_the_best_on_objective_0() -> None:
    codec = GenomeCodec(SearchSpace())
    rng = np.random.default_rng(2)
    X = ChoiceSampling(codec)._do(None, 40, random_state=rng)
    F = np.column_stack([rng.random(40), rng.random(40), rng.random(40)])
    cv = np.where(np.arange(40) == int(F[:, 0].argmin()), 1.0, 0.0)  # the best on objective 0 is infeasible
    pop = _population(codec, X, F, cv)
    problem = Problem(n_var=codec.n_var, n_obj=3, xl=np.zeros(codec.n_var), xu=codec.n_choices - 1, vtype=int)
    breed = EliteBreeding(_mating(codec), codec, 0.5, size=4, crossover_prob=0.0)
    elite = breed.elite(problem, pop)
    feasible = np.flatnonzero(cv == 0)
    assert np.array_equal(elite, X[feasible[np.argsort(F[feasible, 0])[:4]]])
    off = breed.do(problem, pop, 40, random_state=rng)
    Y = np.asarray(off.get("X"), dtype=np.int64)
    keys = _canon_keys(codec, Y)
    assert len(Y) == 40 and len(set(keys)) == 40 and not set(keys) & set(_canon_keys(codec, X))
    # without crossover the first 20 are mutants of an elite member: a few genes from one of them
    near = np.array([(elite != y).sum(axis=1).min() for y in Y[:20]])
    assert (near >= 1).all() and (near <= 6).all()
    far = np.array([(elite != y).sum(axis=1).min() for y in Y[20:]])
    assert far.mean() > 10  # the mating's children come from the whole population


def test_elite_breeding_reaches_further_on_objective_0_with_several_costs() -> None:
    """With five costs a joint ranking barely selects, and the best point of objective 0 (an
    interior one) is bred too little: the breeding gets closer to it with the same
    evaluations (a check that could fail: its children must reach survival)."""
    codec = GenomeCodec(SearchSpace())
    target = ChoiceSampling(codec)._do(None, 1, random_state=np.random.default_rng(5))[0]
    weights = np.random.default_rng(7).random((5, codec.n_var))

    class P(Problem):
        def _evaluate(self, x, out, *args, **kwargs):
            x = codec.canonical(np.asarray(x, dtype=np.int64))
            out["F"] = np.column_stack([(x != target).sum(axis=1).astype(np.float64), (x + 1) @ weights.T])

    def best(elite: float, seed: int) -> float:
        algo = get_algorithm("nsga2").build(BuildContext(codec, 6, 40, seed, OperatorConfig(elite=elite), {}))
        problem = P(n_var=codec.n_var, n_obj=6, xl=np.zeros(codec.n_var), xu=codec.n_choices - 1, vtype=int)
        res = minimize(problem, algo, ("n_gen", 40), seed=seed, verbose=False)
        assert res.algorithm.evaluator.n_eval == 40 * 40
        return float(res.F[:, 0].min())

    assert best(0.2, 1) == best(0.2, 1)
    assert np.mean([best(0.2, s) for s in (1, 2, 3)]) < np.mean([best(0.0, s) for s in (1, 2, 3)]) - 2


def test_elite_share_is_decided_by_the_number_of_costs() -> None:
    assert resolve_operators(OperatorConfig(), 2).elite == 0.0  # one cost: a dedicated run, unchanged
    assert resolve_operators(OperatorConfig(), 3).elite == MANY_COST_ELITE
    assert resolve_operators(OperatorConfig(elite=0.0), 13).elite == 0.0  # a choice stays
    assert OperatorConfig.from_dict({"refine": 0.1}).elite == 0.0  # a config from before the step ran without it
    assert OperatorConfig.ofa2().elite == 0.0
    for bad, match in (({"elite": 1.0}, "accurate-end share"), ({"elite": 0.5, "refine": 0.5}, "leave room"), ({"elite_size": 1}, "at least 2"),
                       ({"elite_crossover": 1.5}, "crossover probability")):  # fmt: skip
        with pytest.raises(InvalidInputError, match=match):
            OperatorConfig(**bad)
    codec = GenomeCodec(SearchSpace())
    many = get_algorithm("per-device").build(BuildContext(codec, 5, 10, 1, OperatorConfig(), {}))
    assert isinstance(many.mating, EliteBreeding) and isinstance(many.mating.mating, FrontRefinement) and many.mating.share == MANY_COST_ELITE
    one = get_algorithm("nsga2").build(BuildContext(codec, 2, 10, 1, OperatorConfig(), {}))
    assert isinstance(one.mating, FrontRefinement)
