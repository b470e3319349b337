"""pymoo operators for the categorical arch genome (index genomes of `GenomeCodec`).

OFA² used uniform sampling of every gene, uniform crossover and per-gene random mutation
over the choice values; these are those operators on index genomes, vectorised over the
population (crossover is pymoo's own `UniformCrossover`), plus what the benchmark
(`benchmarks/search_reference.py`, numbers in `OperatorConfig`) showed to help:

- duplicate elimination on the *network* (canonical genome), not on the raw genome, so two
  genomes that differ only in unbuilt slots never both take a place in the population;
- a mutation that always moves a mutated gene to a *different* choice (a resample that
  lands on the same value is a wasted mutation: 1/3 of them with three choices);
- an initial population that contains the smallest and largest arch of every
  resolution, so the ends of the front are present from generation 1;
- optionally, a memetic step (`FrontRefinement`): a share of each generation's offspring
  are single-gene neighbours of the population's non-dominated members, chiefly of the
  front's extremes, taken from the same evaluation budget.

All randomness comes from the `random_state` pymoo passes in (the algorithm's seeded
`numpy.random.Generator`); nothing touches global RNG state.
"""

from __future__ import annotations

import weakref

import numpy as np
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.infill import InfillCriterion
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.sampling import Sampling
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.indicators import nondominated
from ofa2_edge.space.arch import N_BLOCKS, N_STAGES, R_GENE


class ChoiceSampling(Sampling):
    """Every gene uniform over its choices; optionally the space's corner archs first."""

    def __init__(self, codec: GenomeCodec, corners: bool = False) -> None:
        super().__init__()
        self.codec = codec
        self.corners = corners

    def corner_indices(self) -> np.ndarray:
        """Smallest and largest arch at every resolution, as index genomes."""
        nc = self.codec.n_choices
        rows = []
        for r_idx in range(int(nc[R_GENE])):
            small = np.zeros(len(nc), dtype=np.int64)
            large = nc - 1
            small[R_GENE] = large[R_GENE] = r_idx
            rows += [small, large.copy()]
        return self.codec.canonical(np.stack(rows))

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        x = np.floor(random_state.random((n_samples, self.codec.n_var)) * self.codec.n_choices[None, :]).astype(np.int64)
        if self.corners:
            c = self.corner_indices()[:n_samples]
            x[: len(c)] = c
        return x


class ChoiceMutation(Mutation):
    """Per-gene random resampling with probability `prob_var` per gene.

    With ``different=True`` a mutated gene moves to one of its *other* choices (OFA's
    `random.choice` may redraw the same value). Genes with a single choice never change.
    """

    def __init__(
        self, codec: GenomeCodec, prob_var: float | None = None, different: bool = True, active_only: bool = False, **kwargs
    ) -> None:
        super().__init__(prob=1.0, prob_var=prob_var, **kwargs)
        self.codec = codec
        self.different = different
        self.active_only = active_only

    def _do(self, problem, X, random_state=None, **kwargs):
        X = np.asarray(X, dtype=np.int64).copy()
        n, m = X.shape
        nc = np.broadcast_to(self.codec.n_choices[None, :], (n, m))
        p = np.asarray(self.get_prob_var(problem, size=n), dtype=np.float64).reshape(-1, 1)
        eligible = nc > 1
        if self.active_only:
            # Only genes that build something: the same expected number of changes, all of them real.
            eligible = eligible & built_genes(self.codec, X)
            p = np.minimum(1.0, p * m / np.maximum(eligible.sum(axis=1, keepdims=True), 1))
        mask = (random_state.random((n, m)) < p) & eligible
        u = random_state.random((n, m))
        if self.different:
            step = 1 + np.floor(u * (nc - 1)).astype(np.int64)  # 1 .. nc-1
            new = (X + step) % nc
        else:
            new = np.floor(u * nc).astype(np.int64)
        X[mask] = new[mask]
        return X


class OfaMutation(Mutation):
    """OFA's `EvolutionFinder.mutate_sample`: each block slot resamples its kernel and expand
    together with probability `prob`, each stage its depth, the net its resolution; a
    resample may redraw the same value."""

    def __init__(self, codec: GenomeCodec, mutate_prob: float = 0.1) -> None:
        super().__init__(prob=1.0)
        self.codec = codec
        self.mutate_prob = mutate_prob

    def _do(self, problem, X, random_state=None, **kwargs):
        X = np.asarray(X, dtype=np.int64).copy()
        n = len(X)
        block = random_state.random((n, N_BLOCKS)) < self.mutate_prob
        depth = random_state.random((n, N_STAGES)) < self.mutate_prob
        res = random_state.random((n, 1)) < self.mutate_prob
        mask = np.concatenate([block, block, depth, res], axis=1)
        new = np.floor(random_state.random(X.shape) * self.codec.n_choices[None, :]).astype(np.int64)
        X[mask] = new[mask]
        return X


class CanonicalDuplicateElimination(DuplicateElimination):
    """Offspring that build the same network as another offspring or a member of the
    population are dropped (and regenerated by pymoo's mating loop)."""

    def __init__(self, codec: GenomeCodec) -> None:
        super().__init__()
        self.codec = codec
        # An individual's genome never changes once it is offered for elimination (mutation
        # and repair come first), so its key is computed once: the population is compared
        # against on every mating round, and recomputing its keys dominated the cost.
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _keys(self, pop) -> list[bytes]:
        keys = [self._cache.get(ind) for ind in pop]
        missing = [i for i, k in enumerate(keys) if k is None]
        if missing:
            x = self.codec.canonical(np.array([pop[i].X for i in missing], dtype=np.int64))
            for i, row in zip(missing, x.astype(np.int8)):
                keys[i] = self._cache[pop[i]] = row.tobytes()
        return keys  # type: ignore[return-value]

    def _do(self, pop, other, is_duplicate):
        seen = set(self._keys(other)) if other is not None else set()
        for i, key in enumerate(self._keys(pop)):
            if key in seen:
                is_duplicate[i] = True
            else:
                seen.add(key)
        return is_duplicate


REFINE_ANCHORS = ("extremes", "ends", "front", "mixed", "mixed-ends", "mixed-sparse")


def built_genes(codec: GenomeCodec, X: np.ndarray) -> np.ndarray:
    """(n, n_var) bool: the genes that build something, i.e. a kernel or expand of an
    active slot, every depth, the resolution (an inactive slot's genes change nothing)."""
    slots = codec.active(X)
    return np.concatenate([slots, slots, np.ones((len(slots), codec.n_var - 2 * N_BLOCKS), dtype=bool)], axis=1)


def one_gene_neighbours(codec: GenomeCodec, X: np.ndarray, random_state: np.random.Generator) -> np.ndarray:
    """One neighbour per row: a single gene that builds something (`built_genes`) moved to
    another of its choices."""
    X = np.asarray(X, dtype=np.int64)
    n, m = X.shape
    nc = codec.n_choices
    eligible = built_genes(codec, X) & (nc[None, :] > 1)
    keys = np.where(eligible, random_state.random((n, m)), -1.0)
    gene = np.argmax(keys, axis=1)
    out = X.copy()
    movable = keys[np.arange(n), gene] >= 0
    rows, genes = np.flatnonzero(movable), gene[movable]
    step = 1 + np.floor(random_state.random(len(rows)) * (nc[genes] - 1)).astype(np.int64)  # 1 .. nc-1
    out[rows, genes] = (out[rows, genes] + step) % nc[genes]
    return out


class ShareOfOffspring(InfillCriterion):
    """Of each generation's `n_offsprings`, ``share`` (rounded down) come from `own`; the rest
    from the wrapped mating. All are evaluated in the same batch and merged before the
    algorithm's own survival, so the run makes no extra evaluations. Duplicates (on the
    built network) of the population or of each other are dropped before the mating fills
    the remaining places."""

    def __init__(self, mating: InfillCriterion, share: float) -> None:
        super().__init__(repair=mating.repair, eliminate_duplicates=mating.eliminate_duplicates, n_max_iterations=mating.n_max_iterations)
        self.mating = mating
        self.share = share

    def own(self, problem, pop, k: int, random_state: np.random.Generator) -> Population:
        raise NotImplementedError

    def do(self, problem, pop, n_offsprings, random_state=None, **kwargs):
        k = int(self.share * n_offsprings)
        off = self.own(problem, pop, k, random_state) if k > 0 else Population.create()
        for _ in range(self.n_max_iterations):
            if len(off) >= n_offsprings:
                break
            bred = self.mating.do(problem, pop, n_offsprings - len(off), random_state=random_state, **kwargs)
            if len(bred) == 0:
                break
            if len(off):
                bred = self.eliminate_duplicates.do(bred, off, to_itself=False)
            off = Population.merge(off, bred[: n_offsprings - len(off)])
        return off


class FrontRefinement(ShareOfOffspring):
    """Memetic local search inside the evolutionary loop, on the same evaluation budget.

    Of each generation's `n_offsprings`, ``share`` are single-gene neighbours
    (`one_gene_neighbours`) of the population's feasible non-dominated members; the rest
    come from the algorithm's own mating. All of them are evaluated in the same batch and
    merged before survival, so an improving neighbour simply survives; the run makes no
    extra evaluations.

    Where the neighbours go (``anchors``):
    - ``extremes``: the front's best member on each objective, unless it is one of the
      space's corner archs (the smallest net is the exact optimum of every cost, and its
      neighbours are all costlier). On top-1 vs costs this is the most accurate net found,
      the end of the front that crossover rarely moves: the largest nets are not the
      most accurate, so that end is found only by search, and crowding keeps it but
      seldom breeds from it alone;
    - ``ends``: as ``extremes``, but the next-best front members on that objective get a
      share too (the best half the neighbours, the second a quarter, ...): once the best
      is a local optimum its neighbours are all worse, and the runners-up can still climb;
    - ``front``: uniformly drawn front members;
    - ``mixed`` / ``mixed-ends``: half ``extremes`` / ``ends``, half ``front``;
    - ``mixed-sparse``: half ``ends``, half front members drawn in proportion to their
      crowding distance: local search goes where the front is thin, so the gaps between
      members (what a latency budget falling in one costs) close faster.

    The share is of `n_offsprings` rounded down, so a steady-state algorithm (SMS-EMOA:
    one offspring a generation) gets no neighbours. Deterministic given the population and
    the algorithm's generator, so resumed runs are exact; duplicates (on the built network) of the population or of each other are
    dropped before the mating fills the remaining places.
    """

    def __init__(
        self,
        mating: InfillCriterion,
        codec: GenomeCodec,
        share: float,
        anchors: str = "extremes",
        pairs: list[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(mating, share)
        if anchors not in REFINE_ANCHORS:
            raise ValueError(f"refine anchors {anchors!r}: choose from {', '.join(REFINE_ANCHORS)}")
        self.codec = codec
        self.anchors = anchors
        self.pairs = pairs
        self._corners = {row.tobytes() for row in ChoiceSampling(codec).corner_indices().astype(np.int8)}

    def anchor_rows(self, X: np.ndarray, F: np.ndarray, cv: np.ndarray, k: int, random_state: np.random.Generator) -> np.ndarray:
        """k row indices (of the population's X, F, CV) to take neighbours of, may repeat;
        empty if nothing is feasible.

        With ``pairs`` (the many-device search) the anchors are taken on each pair's own 2-D
        front, the pairs in turn from a random first one (so each device's front gets its
        share even when k is smaller than the number of pairs); otherwise on the joint front."""
        feasible = np.flatnonzero(cv <= 0)
        if not len(feasible):
            return np.zeros(0, dtype=np.int64)
        share = {"extremes": 1.0, "ends": 1.0, "front": 0.0, "mixed": 0.5, "mixed-ends": 0.5, "mixed-sparse": 0.5}[self.anchors]
        n_ends = int(k * share)
        if not self.pairs:
            return self._anchors_on(feasible[nondominated(F[feasible])], X, F, k, n_ends, random_state)
        # slot i goes to pair (i + offset) mod n_pairs; the first n_ends slots are end anchors
        n_pairs = len(self.pairs)
        pair_of = (np.arange(k) + random_state.integers(n_pairs)) % n_pairs
        out = []
        for p, (a, b) in enumerate(self.pairs):
            mine = pair_of == p
            if mine.any():
                F2 = F[:, [a, b]]
                front = feasible[nondominated(F2[feasible])]
                out.append(self._anchors_on(front, X, F2, int(mine.sum()), int(mine[:n_ends].sum()), random_state))
        return np.concatenate(out)

    def _anchors_on(
        self, front: np.ndarray, X: np.ndarray, F: np.ndarray, k: int, n_ends: int, random_state: np.random.Generator
    ) -> np.ndarray:
        """k anchors among the rows `front` (non-dominated on F's columns): `n_ends` at the
        front's ends (none if every end is a corner arch), the rest spread over it."""
        ends: list[np.ndarray] = []  # per objective whose best member is not a corner: the front, best first
        for j in range(F.shape[1]):
            keys = [F[front, i] for i in reversed(range(F.shape[1])) if i != j] + [F[front, j]]
            order = front[np.lexsort(keys)]  # best on objective j first, ties broken by the others
            corner = self.codec.canonical(X[order[:1]]).astype(np.int8)[0].tobytes() in self._corners
            if not corner and not any(e[0] == order[0] for e in ends):
                ends.append(order)
        n_ends = n_ends if ends else 0
        if self.anchors.endswith(("ends", "sparse")):
            # the best member most often, the next ones geometrically less (1/2, 1/4, ...)
            ranks = np.floor(np.log2(1.0 / (1.0 - random_state.random(n_ends)))).astype(np.int64)
        else:
            ranks = np.zeros(n_ends, dtype=np.int64)
        rows = np.empty(n_ends, dtype=np.int64)
        which = np.arange(n_ends) % max(len(ends), 1)  # the objectives' ends in turn
        for e, order in enumerate(ends):
            rows[which == e] = order[np.minimum(ranks[which == e], len(order) - 1)]
        weights = self._spread_weights(F[front])
        if weights is None:
            spread = front[random_state.integers(0, len(front), size=k - n_ends)]
        else:
            spread = front[random_state.choice(len(front), size=k - n_ends, p=weights)]
        return np.concatenate([rows, spread])

    def _spread_weights(self, F: np.ndarray) -> np.ndarray | None:
        """How the non-end neighbours are spread over the front's members (None: uniformly).

        ``mixed-sparse``: in proportion to the member's crowding distance (NSGA-II's, on
        the front alone), i.e. where the front is thin; the extremes (infinite distance)
        weigh as much as the most isolated interior member."""
        if self.anchors != "mixed-sparse" or len(F) < 3:
            return None
        cd = calc_crowding_distance(F)
        finite = np.isfinite(cd)
        if not finite.any() or cd[finite].max() <= 0:
            return None
        cd = np.where(finite, cd, cd[finite].max())
        return cd / cd.sum()

    def own(self, problem, pop, k: int, random_state: np.random.Generator) -> Population:
        # attribute access per individual: several times cheaper than Population.get here
        X = np.array([ind.X for ind in pop], dtype=np.int64)
        F = np.array([ind.F for ind in pop], dtype=np.float64)
        cv = np.array([ind.CV[0] for ind in pop], dtype=np.float64)
        rows = self.anchor_rows(X, F, cv, 2 * k, random_state)  # twice as many: some will be duplicates
        if not len(rows):
            return Population.create()
        rows = np.concatenate([rows[0::2], rows[1::2]])  # the first k keep the anchors' shares
        off = self.eliminate_duplicates.do(Population.new("X", one_gene_neighbours(self.codec, X[rows], random_state)), pop)
        return off[:k]


class EliteBreeding(ShareOfOffspring):
    """Accurate-end breeding: a small single-objective GA on objective 0 (top-1) inside the
    loop, on the same evaluation budget.

    Every device's front starts at the same network, the most accurate one the run found,
    and that network is a local optimum that moves with the seed (84.4-85.4 % over 60
    dedicated runs on OFA's predictor). With several cost objectives the population is
    spread over several fronts, so that shared end is bred less than in a dedicated run.
    Here ``share`` of each generation's offspring are bred from the ``size`` best feasible
    networks on objective 0 evaluated so far (`Archive.best_first`; the population's when
    the problem keeps no archive): binary tournament on that order, uniform crossover with
    probability ``crossover_prob`` (low: a child of two good nets stays close to one of
    them), then the always-moving mutation. Survival stays the algorithm's own, so a child
    survives only where it improves some front. The elite is a function of the archive's
    rows, so a resumed run is exact. Figures: `benchmarks/results/search_decisions.md`.
    """

    def __init__(self, mating: InfillCriterion, codec: GenomeCodec, share: float, size: int, crossover_prob: float = 0.5) -> None:
        super().__init__(mating, share)
        self.codec = codec
        self.size = size
        self.crossover_prob = crossover_prob
        self.mutation = ChoiceMutation(codec, different=True)

    def elite(self, problem, pop) -> np.ndarray:
        """Index genomes of the `size` best feasible networks on objective 0, best first: of
        everything evaluated when the problem keeps an archive (`Archive.best_first`), else
        of the population (ties: the other objectives in order)."""
        memo = getattr(problem, "memo", None)
        if hasattr(memo, "best_first"):
            return self.codec.encode(memo.best_first(self.size))
        X = np.array([ind.X for ind in pop], dtype=np.int64)
        F = np.array([ind.F for ind in pop], dtype=np.float64)
        feasible = np.flatnonzero(np.array([ind.CV[0] for ind in pop], dtype=np.float64) <= 0)
        keys = [F[feasible, j] for j in reversed(range(F.shape[1]))]
        return X[feasible[np.lexsort(keys)][: self.size]]

    def own(self, problem, pop, k: int, random_state: np.random.Generator) -> Population:
        elite = self.elite(problem, pop)
        if len(elite) < 2:
            return Population.create()
        n = 2 * k  # twice as many: some will be duplicates
        picks = random_state.integers(0, len(elite), size=(2, n, 2)).min(axis=2)  # binary tournaments on elite rank
        a, b = elite[picks[0]], elite[picks[1]]
        cross = (random_state.random((n, 1)) < self.crossover_prob) & (random_state.random(a.shape) < 0.5)
        child = self.mutation._do(problem, np.where(cross, b, a), random_state=random_state)
        off = self.eliminate_duplicates.do(Population.new("X", child), pop)
        return off[:k]
