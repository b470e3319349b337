"""OFA's single-objective constrained evolutionary finder, as a pymoo algorithm.

A faithful port of `ofa.tutorial.evolution_finder.EvolutionFinder.run_evolution_search`
(regularised evolution under one efficiency budget), so the OFA² comparison "one
multi-objective run vs one single-objective run per budget" runs through the same problem,
run store and seeding as every other search:

- the first population is `pop_size` uniformly sampled archs that meet the constraints
  (drawn in vectorised chunks, at most `max_samples` in all);
- each generation keeps the best ``round(parent_ratio * pop_size)`` of the population as
  parents, makes ``round(mutation_ratio * pop_size)`` children by mutating a random parent
  (kernel and expand of each block together, each depth, the resolution, each resampled
  with probability `mutate_prob`) and the rest by uniform crossover of two random parents;
- a child that breaks a constraint is redrawn from the same parent(s) until it meets them,
  as OFA does, but at most `max_tries` times: where OFA would loop forever on an
  infeasible budget, this raises a clear error;
- the next population is parents + children.

OFA counts `max_time_budget` generations *after* the seeded population; pymoo counts the
seeding as generation 1, so OFA's 500 generations are ``n_gen = 501`` here (the run
config records both). Deviation: OFA returns the best parent at the start of its last
generation; we report the best arch ever evaluated (which includes the last children).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.operators import OfaMutation

Feasible = Callable[[np.ndarray], np.ndarray]


class OfaEvolutionFinder(Algorithm):
    """Regularised evolution for one objective under constraints checked by `feasible`."""

    def __init__(
        self,
        codec: GenomeCodec,
        feasible: Feasible,
        pop_size: int = 100,
        parent_ratio: float = 0.25,
        mutation_ratio: float = 0.5,
        mutate_prob: float = 0.1,
        max_tries: int = 1000,
        max_samples: int = 5_000_000,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < parent_ratio <= 1 or not 0 <= mutation_ratio <= 1:
            raise InvalidInputError("parent ratio must be in (0, 1] and mutation ratio in [0, 1]")
        self.codec = codec
        self.feasible = feasible
        self.pop_size = pop_size
        self.n_parents = max(1, int(round(parent_ratio * pop_size)))
        self.n_mutants = int(round(mutation_ratio * pop_size))
        self.mutation = OfaMutation(codec, mutate_prob)
        self.max_tries = max_tries
        self.max_samples = max_samples
        self.parents: Population | None = None

    def _redraw(self, make: Callable[[np.ndarray], np.ndarray], n: int, what: str) -> np.ndarray:
        """`make(rows)` proposes genomes for rows; keep proposing for rows that break a constraint."""
        rows = np.arange(n)
        out = np.empty((n, self.codec.n_var), dtype=np.int64)
        for _ in range(self.max_tries):
            proposal = make(rows)
            ok = self.feasible(proposal)
            out[rows[ok]] = proposal[ok]
            rows = rows[~ok]
            if rows.size == 0:
                return out
        raise InvalidInputError(
            f"the constraint(s) of this search rejected {rows.size} {what} after {self.max_tries} redraws each; "
            "the budget is (nearly) infeasible for this search space: relax it"
        )

    def _sample(self, n: int) -> np.ndarray:
        nc = self.codec.n_choices[None, :]
        return np.floor(self.random_state.random((n, self.codec.n_var)) * nc).astype(np.int64)

    def _initialize_infill(self):
        """`pop_size` uniform archs that meet the constraints (OFA's `random_sample` loop,
        vectorised: candidates are drawn in chunks, up to `max_samples` in all)."""
        found: list[np.ndarray] = []
        n_found = drawn = rounds = 0
        while n_found < self.pop_size:
            if drawn >= self.max_samples:
                raise InvalidInputError(
                    f"only {n_found} of {drawn} uniformly drawn archs meet the constraint(s) of this search; "
                    f"the finder needs {self.pop_size} to start: the budget is (nearly) infeasible, relax it"
                )
            size = max(1000, 20 * (self.pop_size - n_found)) * 2 ** min(rounds, 8)  # grows on tight budgets
            chunk = self._sample(min(size, self.max_samples - drawn))
            rounds += 1
            drawn += len(chunk)
            ok = chunk[self.feasible(chunk)]
            found.append(ok)
            n_found += len(ok)
        return Population.new("X", np.concatenate(found)[: self.pop_size])

    def _infill(self):
        rng = self.random_state
        f = self.pop.get("F")[:, 0]
        self.parents = self.pop[np.argsort(f, kind="stable")[: self.n_parents]]
        px = np.asarray(self.parents.get("X"), dtype=np.int64)
        mut_parent = rng.integers(len(px), size=self.n_mutants)
        mutants = self._redraw(
            lambda rows: self.mutation._do(self.problem, px[mut_parent[rows]], random_state=rng),
            self.n_mutants,
            "mutations",
        )
        n_cross = self.pop_size - self.n_mutants
        pa, pb = rng.integers(len(px), size=n_cross), rng.integers(len(px), size=n_cross)

        def cross(rows: np.ndarray) -> np.ndarray:
            pick = rng.random((len(rows), self.codec.n_var)) < 0.5
            return np.where(pick, px[pa[rows]], px[pb[rows]])

        children = self._redraw(cross, n_cross, "crossovers")
        return Population.new("X", np.concatenate([mutants, children]))

    def _advance(self, infills=None, **kwargs):
        self.pop = Population.merge(self.parents, infills)
