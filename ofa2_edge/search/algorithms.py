"""The algorithms a search can run, all pymoo: a registry filled by decorators.

Multi-objective: NSGA-II, SMS-EMOA and SPEA2 (the three OFA² ran), NSGA-III and AGE-MOEA
(for 3+ objectives). Baselines on the same problem, run store and seeding: random search
with the same evaluation budget, and OFA's single-objective constrained finder. Each entry
builds a configured pymoo `Algorithm` from a `BuildContext`; operators come from
`OperatorConfig`, so an operator study is a config change, not a code change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.duplicate import NoDuplicateElimination
from pymoo.operators.crossover.ux import UniformCrossover

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.finder import Feasible, OfaEvolutionFinder
from ofa2_edge.search.operators import (
    REFINE_ANCHORS,
    CanonicalDuplicateElimination,
    ChoiceMutation,
    ChoiceSampling,
    FrontRefinement,
)

AUTO = "auto"


def default_algorithm(n_obj: int) -> str:
    """The algorithm `auto` means, by number of objectives (picked by the benchmark,
    `benchmarks/search_reference.py`): OFA's finder for one, NSGA-II for two or more.

    Two objectives: the same mean hypervolume as SPEA2 over 10 seeds (775.2 vs 774.3) and
    closer to OFA's finder across the latency budgets. Four (top1, two device latencies,
    macs: the main job's shape), each device's 2-D projection of the front against a
    dedicated 2-objective NSGA-II run of the same seed, default operators, seeds 1-10 (20
    projections): NSGA-II within 1 % 15 of 20 times, mean gap +0.03 %, and the means over
    the seeds within 1 % (note10 +0.44 %, roofline -0.35 %); SPEA2 12 of 20, +0.72 %, and
    slower. Before the front refinement step: AGE-MOEA +1.14 % and SMS-EMOA +1.30 % (seeds
    1-6), NSGA-III ~6 %. The per-seed 1 % test is at its noise floor: a dedicated run is
    within 1 % of another seed's dedicated run 16 of 20 times, since how far a run gets at
    the high-accuracy end varies by ~1 % of HV from seed to seed. Tried without gain (each
    on seeds 1-10 or more): a projection-aware survival (branch `proj-survival`); the
    refinement's neighbours placed per 2-D projection (its fronts, its ends, or its crowding:
    13-17 of 20); a population of 200 for the 4-objective run (twice the evaluations):
    15 of 20, mean -0.22 %."""
    if n_obj <= 1:
        return "ofa-evolution"
    return "nsga2"

SAMPLINGS = ("uniform", "uniform+corners")
MUTATIONS = ("choice", "choice-different", "active-different")
DEDUPES = ("canonical", "none")


@dataclass(frozen=True)
class OperatorConfig:
    """Variation operators of the genetic algorithms (see `ofa2_edge.search.operators`).

    OFA²'s own setting is ``OperatorConfig.ofa2()``. The defaults won the operator study of
    `benchmarks/search_reference.py` on the OFA² reference problem (Note10 latency vs top-1,
    NSGA-II, 100 x 1000, HV of the final population, results in `benchmarks/results/`):
    canonical duplicate elimination alone moved the 5-seed mean from 762.6 to 770.5, and
    corner seeding and always-moving mutation on top reach 775.2 +- 8.8 over 10 seeds
    against 759.7 +- 10.3 for OFA²'s operators.

    The memetic step (`refine`, `FrontRefinement`: 10 of every 100 offspring are one-gene
    neighbours, half of them at the front's accurate end, half spread over the front; no
    extra evaluations) was chosen among 9 settings (share 0.05-0.3; anchors extremes,
    front, mixed, mixed-ends) on seeds 1-3 and checked on seeds 4-6 (branch `memetic`):
    HV 788.1 vs 767.3 (seeds 1-3) and 785.7 vs 770.3 (1-6); one run vs OFA's finder
    within 0.05 points at 49 of 54 (seed, budget) pairs vs 46; 4-objective projections
    within 1 % of the dedicated runs (both with these operators) 11 of 12 vs 10 of 12,
    mean gap -0.77 % vs +0.05 %; the same run time (the step costs ~0.5 ms a generation,
    offset by fewer new archs to record).

    Where the non-end half of the neighbours goes (branch `budgets`,
    `benchmarks/budget_study.py`, seeds 1-12, final-population HV and the 9 budgets vs
    OFA's finder): ``mixed-sparse`` (in proportion to crowding distance, where the front is
    thin) against ``mixed-ends`` (uniform over the front): HV 789.2 vs 782.7 (1-12; better
    on 8 of 12 seeds, paired mean +6.4 +- 9.9), 792.2 vs 785.7 (1-6), 797.5 vs 788.1
    (1-3); budgets within 0.05 points 27/27 vs 26/27 (seeds 1-3), 51/54 vs 49/54 (1-6),
    100/108 vs 98/108 (1-12), mean margin +0.24 vs +0.18 points; the same run time
    (interleaved pairs 5.7 s both; 92k distinct archs of the 100k offspring vs 88k).
    Not adopted there (no gain on the budgets, on seeds 1-6): a crossover that hands down
    whole blocks (kernel + expand) or whole stages (depth + its blocks) instead of single
    genes, 45/54 and 45/54 budgets vs 49/54, HV 787.7 and 786.0 vs 785.7; mating
    restriction (MOEA/D-style: the second parent among the first's 10 or 20 nearest on the
    front, probability 0.5-0.9), 47-50/54, HV 785.9-788.1, but ~35 % slower (near parents
    breed duplicates: 3.3 mating rounds a generation vs 2.3).
    ``mixed-sparse`` is the default since. Its cost: with 4 objectives the dedicated
    2-objective runs gain more than the 4-objective run's projections, so fewer
    projections are within 1 % (seeds 1-6, both runs with the same anchors: 8 of 12, mean
    gap +0.45 %, vs 11 of 12, -0.77 %; the projections' own HV is within noise, -3.4 and
    -3.0 on average on note10 and roofline); in the reference benchmark (seeds 1-3)
    NSGA-II's 4-objective projections are within 1 % 3 of 6 times (was 5 of 6), SPEA2's
    2 of 6 (was 6 of 6); over seeds 1-10 NSGA-II's are 15 of 20, at the noise floor of that
    test (see `default_algorithm`).
    """

    sampling: str = "uniform+corners"
    crossover_prob: float = 0.9
    mutation: str = "choice-different"
    mutation_prob_var: float | None = None  # None: pymoo's default 1 / n_var per gene
    dedupe: str = "canonical"
    #: Memetic step (`FrontRefinement`): the share of each generation's offspring that are
    #: single-gene neighbours of the front (0: off), and where on the front they go.
    refine: float = 0.1
    refine_anchors: str = "mixed-sparse"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("sampling", self.sampling, SAMPLINGS),
            ("mutation", self.mutation, MUTATIONS),
            ("dedupe", self.dedupe, DEDUPES),
            ("refine_anchors", self.refine_anchors, REFINE_ANCHORS),
        ):
            if value not in allowed:
                raise InvalidInputError(f"operator {name} {value!r} is unknown; choose from {', '.join(allowed)}")
        if not 0.0 <= self.crossover_prob <= 1.0:
            raise InvalidInputError(f"crossover probability {self.crossover_prob} must be in [0, 1]")
        if self.mutation_prob_var is not None and not 0.0 < self.mutation_prob_var <= 1.0:
            raise InvalidInputError(f"per-gene mutation probability {self.mutation_prob_var} must be in (0, 1]")
        if not 0.0 <= self.refine < 1.0:
            raise InvalidInputError(f"refinement share {self.refine} must be in [0, 1): the rest of the offspring come from mating")

    @classmethod
    def ofa2(cls) -> "OperatorConfig":
        """OFA²'s operators: uniform sampling, uniform crossover, per-gene random resample."""
        return cls(sampling="uniform", mutation="choice", dedupe="none", refine=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OperatorConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInputError(f"unknown operator setting(s): {', '.join(unknown)}")
        # A stored config without `refine` predates the memetic step: it ran without it.
        return cls(**{"refine": 0.0, **data})


@dataclass
class BuildContext:
    codec: GenomeCodec
    n_obj: int
    pop_size: int
    seed: int
    operators: OperatorConfig
    params: dict[str, Any]
    feasible: Feasible | None = None  # constraint check for algorithms that redraw (OFA finder)

    def ga_operators(self) -> dict[str, Any]:
        ops = self.operators
        return {
            "sampling": ChoiceSampling(self.codec, corners=ops.sampling == "uniform+corners"),
            "crossover": UniformCrossover(prob=ops.crossover_prob),
            "mutation": ChoiceMutation(
                self.codec,
                prob_var=ops.mutation_prob_var,
                different=ops.mutation != "choice",
                active_only=ops.mutation == "active-different",
            ),
            "eliminate_duplicates": CanonicalDuplicateElimination(self.codec)
            if ops.dedupe == "canonical"
            else NoDuplicateElimination(),
        }

    def refined(self, algorithm: Algorithm) -> Algorithm:
        """The algorithm with its mating wrapped in the memetic step, if the operators ask for it."""
        if self.operators.refine > 0:
            algorithm.mating = FrontRefinement(algorithm.mating, self.codec, self.operators.refine, self.operators.refine_anchors)
        return algorithm


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    title: str
    build: Callable[[BuildContext], Algorithm] = field(repr=False)
    min_obj: int = 2
    max_obj: int | None = None
    needs_constraint: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # tunables and their defaults
    #: How pymoo's generation count relates to the user's: OFA's finder counts generations
    #: after its seeded population, pymoo counts the seeding as generation 1.
    extra_generations: int = 0

    def check(self, n_obj: int, n_constr: int) -> None:
        if n_obj < self.min_obj or (self.max_obj is not None and n_obj > self.max_obj):
            want = f"{self.min_obj}" if self.max_obj == self.min_obj else f"at least {self.min_obj}"
            raise InvalidInputError(f"{self.title} ({self.name}) needs {want} objective(s), got {n_obj}")
        if self.needs_constraint and n_constr == 0:
            raise InvalidInputError(f"{self.title} ({self.name}) searches under a budget: give --constraint, e.g. latency:note10<=25")

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise InvalidInputError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; known: {known}")
        return {**self.params, **given}


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register_algorithm(name: str, title: str, **kw: Any) -> Callable[[Callable[[BuildContext], Algorithm]], Callable]:
    def deco(fn: Callable[[BuildContext], Algorithm]) -> Callable[[BuildContext], Algorithm]:
        ALGORITHMS[name] = AlgorithmSpec(name, title, fn, **kw)
        return fn

    return deco


def get_algorithm(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise InvalidInputError(f"unknown algorithm {name!r}; choose from {AUTO}, {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


@register_algorithm("nsga2", "NSGA-II")
def _nsga2(ctx: BuildContext) -> Algorithm:
    from pymoo.algorithms.moo.nsga2 import NSGA2

    return ctx.refined(NSGA2(pop_size=ctx.pop_size, **ctx.ga_operators()))


@register_algorithm("sms-emoa", "SMS-EMOA")
def _sms(ctx: BuildContext) -> Algorithm:
    from pymoo.algorithms.moo.sms import SMSEMOA

    return ctx.refined(SMSEMOA(pop_size=ctx.pop_size, **ctx.ga_operators()))


@register_algorithm("spea2", "SPEA2")
def _spea2(ctx: BuildContext) -> Algorithm:
    from pymoo.algorithms.moo.spea2 import SPEA2, SPEA2Survival

    # pymoo's default survival is one SPEA2Survival instance shared by every SPEA2 in the
    # process, and it keeps normalisation bounds across runs: a second search would start
    # from the first one's ideal/nadir points. A fresh one per run keeps runs independent.
    return ctx.refined(SPEA2(pop_size=ctx.pop_size, survival=SPEA2Survival(normalize=True), **ctx.ga_operators()))


@register_algorithm("nsga3", "NSGA-III")
def _nsga3(ctx: BuildContext) -> Algorithm:
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.util.ref_dirs import get_reference_directions

    # Riesz s-energy directions, one per population member, fixed by the run's seed.
    ref_dirs = get_reference_directions("energy", ctx.n_obj, ctx.pop_size, seed=ctx.seed)
    return ctx.refined(NSGA3(ref_dirs=ref_dirs, pop_size=ctx.pop_size, **ctx.ga_operators()))


@register_algorithm("age-moea", "AGE-MOEA")
def _agemoea(ctx: BuildContext) -> Algorithm:
    try:
        from pymoo.algorithms.moo.age import AGEMOEA
    except Exception as exc:  # pymoo raises a bare Exception when numba is missing
        raise InvalidInputError(
            "AGE-MOEA needs numba (pymoo compiles its survival with it): pip install 'ofa2-edge[agemoea]'"
        ) from exc
    return ctx.refined(AGEMOEA(pop_size=ctx.pop_size, **ctx.ga_operators()))


@register_algorithm("random", "random search (same evaluation budget)")
def _random(ctx: BuildContext) -> Algorithm:
    from pymoo.algorithms.soo.nonconvex.random_search import RandomSearch

    return RandomSearch(n_points_per_iteration=ctx.pop_size, sampling=ChoiceSampling(ctx.codec, corners=False))


@register_algorithm(
    "ofa-evolution",
    "OFA's constrained evolutionary finder",
    min_obj=1,
    max_obj=1,
    needs_constraint=True,
    params={"parent_ratio": 0.25, "mutation_ratio": 0.5, "mutate_prob": 0.1, "max_tries": 1000, "max_samples": 5_000_000},
    extra_generations=1,
)
def _ofa_evolution(ctx: BuildContext) -> Algorithm:
    assert ctx.feasible is not None
    p = ctx.params
    return OfaEvolutionFinder(
        ctx.codec,
        ctx.feasible,
        pop_size=ctx.pop_size,
        parent_ratio=float(p["parent_ratio"]),
        mutation_ratio=float(p["mutation_ratio"]),
        mutate_prob=float(p["mutate_prob"]),
        max_tries=int(p["max_tries"]),
        max_samples=int(p["max_samples"]),
    )


def restore_survival_state(algorithm: Algorithm, state: dict[str, Any]) -> None:
    """Put back what a survival operator carries across generations: the normalisation
    bounds of NSGA-III and SPEA2 (`HyperplaneNormalization`)."""
    if not state:
        return
    from pymoo.algorithms.moo.nsga3 import HyperplaneNormalization

    survival = algorithm.survival
    if getattr(survival, "norm", None) is None:
        survival.norm = HyperplaneNormalization(algorithm.problem.n_obj)
    for key, value in state.items():
        setattr(survival.norm, key, None if value is None else np.asarray(value, dtype=np.float64))


def survival_state(algorithm: Algorithm) -> dict[str, Any]:
    """What `restore_survival_state` needs, as JSON-able lists."""
    norm = getattr(getattr(algorithm, "survival", None), "norm", None)
    if norm is None:
        return {}
    keys = ("ideal_point", "worst_point", "nadir_point", "extreme_points")
    return {k: (None if getattr(norm, k, None) is None else np.asarray(getattr(norm, k)).tolist()) for k in keys if hasattr(norm, k)}
