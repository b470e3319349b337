"""Many-device search: one shared population, survival by every device's own 2-D front.

With one ``latency:<device>`` objective per device, a joint Pareto ranking stops selecting
anything past a handful of devices: in 9 or 13 dimensions almost every network is
non-dominated, so NSGA-II's rank is 0 for all and only its crowding (meaningless in that
many dimensions) decides. What a user picks from is, per device, the 2-D front of the
*quality* objective (the first one, top-1) against that device's cost. So the survival
here ranks every member on each pair (objective 0, objective j) separately: 2-D
non-dominated sorting and crowding distance per pair, both O(n log n). The survivors are
drawn round-robin, one pair at a time, each pair taking its best member not yet taken
(lowest front, then largest crowding: the ends of each front first). Every device's
front is therefore kept as well as a population of ``pop_size / n_pairs`` own places plus
what the devices share, and the cost grows linearly with the number of devices.

Each member's ``rank`` is its best front over all pairs and ``crowding`` its crowding
distance on that pair, so NSGA-II's binary tournament (by rank, then crowding) works
unchanged. The memetic step (`FrontRefinement`) takes its anchors on the pairs' own 2-D
fronts, the pairs in turn: on the joint front its "thin places" would be measured in 13
dimensions, where most members lie on no device's front. Every device's front starts at the
same member, the most accurate network found; the accurate-end breeding
(`operators.EliteBreeding`, on by default with two or more costs) feeds that shared end.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
from pymoo.core.population import Population
from pymoo.core.survival import Survival

from ofa2_edge.search.indicators import nondominated

#: The joint front (non-dominated on all objectives) written to front.json holds every
#: member of a per-device 2-D front, and in all at most this many rows: in many dimensions
#: almost every evaluated arch is jointly non-dominated (`bounded_front`).
FRONT_MAX_ROWS = 2000


def pairs_of(n_obj: int) -> list[tuple[int, int]]:
    """The 2-D projections a many-device search ranks on: objective 0 against each other one."""
    return [(0, j) for j in range(1, n_obj)]


def fronts_2d(F: np.ndarray) -> np.ndarray:
    """Non-dominated sorting level of each row of a 2-column minimised F (0: the front).

    Rows are visited by (f0, f1); a row joins the first level whose last member has a
    larger f1 (that member cannot dominate it, and no earlier one of that level can): the
    patience-sorting form of 2-D non-dominated sorting, O(n log n). An exact duplicate of
    a row goes one level down (the pair is kept, but only one of them on the front)."""
    n = len(F)
    rank = np.zeros(n, dtype=np.int64)
    if n == 0:
        return rank
    order = np.lexsort((F[:, 1], F[:, 0]))
    last: list[float] = []  # per level, the f1 of its last (lowest f1) member
    for i in order:
        f1 = float(F[i, 1])
        k = bisect_right(last, f1)
        if k == len(last):
            last.append(f1)
        else:
            last[k] = f1
        rank[i] = k
    return rank


def crowding_2d(F: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row within its own level (2-D; ends: inf)."""
    n = len(F)
    cd = np.zeros(n, dtype=np.float64)
    if n == 0:
        return cd
    span = F.max(axis=0) - F.min(axis=0)
    span[span <= 0] = 1.0
    order = np.lexsort((F[:, 1], F[:, 0], rank))
    r_sorted = rank[order]
    cuts = np.flatnonzero(np.diff(r_sorted)) + 1
    for level in np.split(order, cuts):
        if len(level) <= 2:
            cd[level] = np.inf
            continue
        f = F[level] / span
        gap = (f[2:, 0] - f[:-2, 0]) + (f[:-2, 1] - f[2:, 1])
        cd[level[1:-1]] = gap
        cd[level[0]] = cd[level[-1]] = np.inf
    return cd


def per_pair_order(F: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ranks, crowding, orders), each n_pairs x n: every row's level and crowding on each
    pair, and each pair's preference order over the rows (level, then crowding, larger first;
    ties by row index, so the order is deterministic)."""
    n, k = len(F), len(pairs)
    ranks = np.zeros((k, n), dtype=np.int64)
    crowd = np.zeros((k, n), dtype=np.float64)
    orders = np.zeros((k, n), dtype=np.int64)
    idx = np.arange(n)
    for p, (a, b) in enumerate(pairs):
        F2 = F[:, [a, b]]
        ranks[p] = fronts_2d(F2)
        crowd[p] = crowding_2d(F2, ranks[p])
        orders[p] = np.lexsort((idx, -crowd[p], ranks[p]))
    return ranks, crowd, orders


def round_robin(orders: np.ndarray, n_survive: int) -> np.ndarray:
    """Rows taken by the pairs in turn, each its best row not taken yet, until `n_survive`."""
    k, n = orders.shape
    n_survive = min(n_survive, n)
    taken = np.zeros(n, dtype=bool)
    out: list[int] = []
    ptr = [0] * k
    while len(out) < n_survive:
        for p in range(k):
            order, i = orders[p], ptr[p]
            while i < n and taken[order[i]]:
                i += 1
            ptr[p] = i
            if i < n:
                taken[order[i]] = True
                out.append(int(order[i]))
                if len(out) == n_survive:
                    break
    return np.asarray(out, dtype=np.int64)


class PerDeviceSurvival(Survival):
    """Survival of the many-device search (see the module docstring); feasible members only,
    pymoo fills up with the least infeasible ones."""

    def __init__(self) -> None:
        super().__init__(filter_infeasible=True)

    def _do(self, problem, pop, *args, random_state=None, n_survive=None, **kwargs) -> Population:  # type: ignore[override]
        F = np.array([ind.F for ind in pop], dtype=np.float64)
        pairs = pairs_of(F.shape[1])
        if not pairs:  # one objective: nothing to pair with
            pairs = [(0, 0)]
        ranks, crowd, orders = per_pair_order(F, pairs)
        keep = round_robin(orders, n_survive if n_survive is not None else len(pop))
        best = ranks.min(axis=0)
        # the crowding of a member on the pair where it ranks best (the largest if several)
        cd = np.where(ranks == best[None, :], crowd, -np.inf).max(axis=0)
        for i in keep:
            pop[i].set("rank", int(best[i]))
            pop[i].set("crowding", float(cd[i]))
        return pop[keep]


def bounded_front(
    F: np.ndarray, joint_idx: np.ndarray, pairs: list[tuple[int, int]], max_rows: int = FRONT_MAX_ROWS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(rows to keep, each pair's 2-D front), as indices into F; `joint_idx` are F's jointly
    non-dominated feasible rows.

    The kept rows are the joint front when it has at most `max_rows` members; otherwise
    every member of a per-pair 2-D front (each of them is jointly non-dominated) and, of
    the rest, those on the lowest 2-D level of any pair (the nearest to some device's
    front; ties: better objective 0), up to `max_rows` in all. Kept rows are sorted by the
    objectives in order; each pair's front cheapest first."""
    pair_fronts = []
    for a, b in pairs:
        on = joint_idx[nondominated(F[joint_idx][:, [a, b]])] if len(joint_idx) else joint_idx
        pair_fronts.append(on[np.lexsort((F[on, a], F[on, b]))])
    keep = joint_idx
    if len(joint_idx) > max_rows and pairs:
        must = np.unique(np.concatenate(pair_fronts))
        rest = np.setdiff1d(joint_idx, must)
        room = max(0, max_rows - len(must))
        if len(rest) and room:
            level = np.min([fronts_2d(F[rest][:, [a, b]]) for a, b in pairs], axis=0)
            rest = rest[np.lexsort((F[rest, 0], level))[:room]]
        else:
            rest = rest[:0]
        keep = np.concatenate([must, rest])
    keep = keep[np.lexsort(F[keep].T[::-1])] if keep.size else keep
    return keep, pair_fronts
