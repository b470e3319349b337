"""The pymoo problem: index genomes in, minimised objectives and constraints out.

One `_evaluate` call per population: decode the batch, evaluate every metric vectorised,
hand pymoo F and G. The time spent here is accumulated separately, so a run can report
objective evaluation apart from the algorithm's own overhead.

The `memo` (the run's archive of every network evaluated so far) gives networks met
before their stored values instead of evaluating them again: pymoo's duplicate elimination
only looks at the current population, so ~12 % of a 100 x 1000 run's offspring are
networks an earlier generation already had. The same network then always gets the very
same values, and only new ones reach the memo's `record`.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
from pymoo.core.problem import Problem

from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.objectives import Evaluation, Objectives


class Memo(Protocol):
    def lookup(self, genomes: np.ndarray) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """(key per genome, mask of those known, their values (n_known, n_metrics))."""
        ...

    def record(self, keys: list[bytes], genomes: np.ndarray, ev: Evaluation) -> None:
        """Store networks not known before (`keys` and `ev` rows line up with `genomes`)."""
        ...


class ArchProblem(Problem):
    """Minimise the objectives of `objectives` over the archs of `codec.space`."""

    def __init__(self, codec: GenomeCodec, objectives: Objectives, memo: Memo) -> None:
        super().__init__(
            n_var=codec.n_var,
            n_obj=objectives.n_obj,
            n_ieq_constr=objectives.n_constr,
            xl=np.zeros(codec.n_var, dtype=np.int64),
            xu=codec.n_choices - 1,
            vtype=int,
        )
        self.codec = codec
        self.objectives = objectives
        self.memo = memo
        self.eval_seconds = 0.0
        self.n_evaluated = 0

    def _evaluate(self, x, out, *args, **kwargs):
        start = time.perf_counter()
        genomes = self.codec.decode(np.asarray(x, dtype=np.int64))
        keys, known, stored = self.memo.lookup(genomes)
        new = ~known
        fresh = self.objectives.values(genomes[new]) if new.any() else {}
        values = {}
        for j, name in enumerate(self.objectives.metrics):
            values[name] = np.empty(len(genomes), dtype=np.float64)
            values[name][known] = stored[:, j]
            if new.any():
                values[name][new] = fresh[name]
        ev = self.objectives.from_values(values)
        out["F"] = ev.F
        if self.n_ieq_constr:
            out["G"] = ev.G
        self.eval_seconds += time.perf_counter() - start
        self.n_evaluated += len(genomes)
        if new.any():
            ev_new = Evaluation({k: v[new] for k, v in ev.values.items()}, ev.F[new], ev.G[new])
            self.memo.record([k for k, is_new in zip(keys, new) if is_new], genomes[new], ev_new)
