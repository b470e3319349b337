"""The algorithms a search can run, all pymoo: a registry filled by decorators.

Multi-objective: NSGA-II, SMS-EMOA and SPEA2 (the three OFA² ran), NSGA-III and AGE-MOEA
(for 3+ objectives), and the many-device search `per-device` (one population ranked on
every device's own 2-D front, `ofa2_edge.search.perdevice`). Baselines on the same problem, run store and seeding: random search
with the same evaluation budget, and OFA's single-objective constrained finder. Each entry
builds a configured pymoo `Algorithm` from a `BuildContext`; operators come from
`OperatorConfig`, so an operator study is a config change, not a code change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
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
    EliteBreeding,
    FrontRefinement,
)

AUTO = "auto"


#: From this many cost objectives (objectives after the first), `auto` runs the many-device
#: search: a joint Pareto ranking no longer selects (`benchmarks/many_devices.py`).
MANY_DEVICE_MIN_COSTS = 3


def default_algorithm(n_obj: int) -> str:
    """The algorithm `auto` means: OFA's finder for one objective, NSGA-II for two or three
    (chosen with `benchmarks/search_reference.py`; the figures and what was tried are in
    `benchmarks/results/search_decisions.md`), and `per-device` from 3 cost objectives on
    (4 objectives: top-1 and 3 devices; `benchmarks/results/many_devices.md`)."""
    if n_obj <= 1:
        return "ofa-evolution"
    if n_obj - 1 >= MANY_DEVICE_MIN_COSTS:
        return "per-device"
    return "nsga2"

SAMPLINGS = ("uniform", "uniform+corners")
MUTATIONS = ("choice", "choice-different", "active-different")
DEDUPES = ("canonical", "none")


@dataclass(frozen=True)
class OperatorConfig:
    """Variation operators of the genetic algorithms (see `ofa2_edge.search.operators`).

    OFA²'s own setting is ``OperatorConfig.ofa2()``. The defaults (canonical duplicate
    elimination, corner seeding, always-moving mutation, and the memetic step `refine`:
    10 of every 100 offspring are one-gene neighbours of the front, half at its accurate
    end, half where it is thin) won the operator studies of `benchmarks/search_reference.py`
    and `benchmarks/budget_study.py`; their figures, the settings tried and those not
    adopted are in `benchmarks/results/search_decisions.md`.
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
    #: Accurate-end breeding (`EliteBreeding`): the share of each generation's offspring
    #: bred by a single-objective GA on objective 0 from the `elite_size` best networks on
    #: it so far (0: off), crossover probability `elite_crossover`; taken first, so the memetic
    #: step's share is of the rest. None: `resolve_operators` decides by the number of objectives.
    elite: float | None = None
    elite_size: int = 20
    elite_crossover: float = 0.5

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
        if self.elite is not None and (not 0.0 <= self.elite < 1.0 or self.refine + self.elite >= 1.0):
            raise InvalidInputError(
                f"accurate-end share {self.elite} must be in [0, 1) and leave room for mating (with refine {self.refine})"
            )
        if self.elite_size < 2:
            raise InvalidInputError(f"accurate-end elite size {self.elite_size} must be at least 2 (it breeds pairs)")
        if not 0.0 <= self.elite_crossover <= 1.0:
            raise InvalidInputError(f"accurate-end crossover probability {self.elite_crossover} must be in [0, 1]")

    @classmethod
    def ofa2(cls) -> "OperatorConfig":
        """OFA²'s operators: uniform sampling, uniform crossover, per-gene random resample."""
        return cls(sampling="uniform", mutation="choice", dedupe="none", refine=0.0, elite=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OperatorConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInputError(f"unknown operator setting(s): {', '.join(unknown)}")
        # A stored config without `refine` (or `elite`) predates that step: it ran without it.
        return cls(**{"refine": 0.0, "elite": 0.0, **data})


#: The accurate-end share (`OperatorConfig.elite`) a search with two or more cost objectives
#: gets by default: 8 devices, HV gap mean 1.41 % -> -0.20 % (`search_decisions.md`).
MANY_COST_ELITE = 0.1


def resolve_operators(ops: OperatorConfig, n_obj: int) -> OperatorConfig:
    """`ops` with ``elite=None`` decided: `MANY_COST_ELITE` when the search has two or more
    cost objectives (its devices' fronts share their accurate end, which the spread-out
    population breeds too little), off for one cost (no gain measured there)."""
    if ops.elite is not None:
        return ops
    return replace(ops, elite=MANY_COST_ELITE if n_obj - 1 >= 2 else 0.0)


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

    def refined(self, algorithm: Algorithm, pairs: list[tuple[int, int]] | None = None) -> Algorithm:
        """The algorithm with its mating wrapped in the memetic step, if the operators ask for
        it; with `pairs`, its anchors lie on those 2-D fronts (the many-device search)."""
        ops = resolve_operators(self.operators, self.n_obj)
        if ops.refine > 0:
            algorithm.mating = FrontRefinement(algorithm.mating, self.codec, ops.refine, ops.refine_anchors, pairs)
        if ops.elite:
            algorithm.mating = EliteBreeding(algorithm.mating, self.codec, ops.elite, ops.elite_size, ops.elite_crossover)
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


@register_algorithm("per-device", "many-device search (per-device 2-D fronts, one population)", min_obj=3)
def _per_device(ctx: BuildContext) -> Algorithm:
    from pymoo.algorithms.moo.nsga2 import NSGA2

    from ofa2_edge.search.perdevice import PerDeviceSurvival, pairs_of

    algorithm = NSGA2(pop_size=ctx.pop_size, survival=PerDeviceSurvival(), **ctx.ga_operators())
    # Joint dominance decides almost nothing in many dimensions: the tournament compares the
    # best per-device front each member is on, then its crowding there.
    algorithm.tournament_type = "comp_by_rank_and_crowding"
    return ctx.refined(algorithm, pairs_of(ctx.n_obj))


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
