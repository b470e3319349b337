"""The pymoo problem: index genomes in, minimised objectives and constraints out.

One `_evaluate` call per population: decode the batch, evaluate every metric vectorised,
hand pymoo F and G. The time spent here is accumulated separately, so a run can report
objective evaluation apart from the algorithm's own overhead. An optional `recorder`
sees every evaluated batch (the run store writes them to the run's archive).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from pymoo.core.problem import Problem

from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.objectives import Evaluation, Objectives

Recorder = Callable[[np.ndarray, np.ndarray, Evaluation], None]


class ArchProblem(Problem):
    """Minimise the objectives of `objectives` over the archs of `codec.space`."""

    def __init__(self, codec: GenomeCodec, objectives: Objectives, recorder: Recorder | None = None) -> None:
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
        self.recorder = recorder
        self.eval_seconds = 0.0
        self.n_evaluated = 0

    def _evaluate(self, x, out, *args, **kwargs):
        start = time.perf_counter()
        idx = np.asarray(x, dtype=np.int64)
        genomes = self.codec.decode(idx)
        ev = self.objectives.evaluate(genomes)
        out["F"] = ev.F
        if self.n_ieq_constr:
            out["G"] = ev.G
        self.eval_seconds += time.perf_counter() - start
        self.n_evaluated += len(idx)
        if self.recorder is not None:
            self.recorder(idx, genomes, ev)
