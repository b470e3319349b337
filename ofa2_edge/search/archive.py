"""The run's archive of every distinct network evaluated (`Archive`).

Apart from the loop because it has two users: the pymoo problem reads it as its memo, and
the run's checkpoints (`runner.SearchRun`) take its new rows for evaluations.jsonl.
"""

from __future__ import annotations

import time

import numpy as np

from ofa2_edge.core.errors import SchemaError
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.formatter import PendingRows, submit_rows
from ofa2_edge.search.objectives import Evaluation, Objectives
from ofa2_edge.space.arch import N_GENES


class Archive:
    """Every distinct network evaluated, in memory, and which rows are not handed over for
    writing yet.

    It is the problem's memo (`ArchProblem`): a network met again takes its stored values.
    Rows live in arrays that double when full; a checkpoint hands over only the rows that
    came since the last one, so writing the archive costs O(new rows), not O(all rows)."""

    def __init__(self, objectives: Objectives, w: float) -> None:
        self.objectives = objectives
        self.w = w
        self.names = list(objectives.metrics)
        self.fields = [objectives.metrics[n].field for n in self.names]
        self._row_of: dict[bytes, int] = {}  # genome bytes (int16) -> row
        self._genomes = np.zeros((0, N_GENES), dtype=np.int64)
        self._values = np.zeros((0, len(self.names)), dtype=np.float64)
        self._gens = np.zeros(0, dtype=np.int64)
        self.n_rows = 0
        self.n_handed = 0
        self.gen = 0
        self.seconds = 0.0
        self._forget_best()

    def _forget_best(self) -> None:
        self._best_rows = np.zeros(0, dtype=np.int64)  # `best_first`'s rows, best first
        self._best_F = np.zeros((0, self.objectives.n_obj), dtype=np.float64)
        self._best_seen = 0  # rows `best_first` has looked at
        self._best_m = 0

    def lookup(self, genomes: np.ndarray) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        keys = [row.tobytes() for row in genomes.astype(np.int16)]
        rows = [self._row_of.get(k, -1) for k in keys]
        known = np.fromiter((r >= 0 for r in rows), dtype=bool, count=len(rows))
        return keys, known, self._values[[r for r in rows if r >= 0]]

    def record(self, keys: list[bytes], genomes: np.ndarray, ev: Evaluation) -> None:
        start = time.perf_counter()
        new = []
        for i, key in enumerate(keys):
            if key not in self._row_of:  # a batch may hold one network twice (no duplicate elimination)
                self._row_of[key] = self.n_rows + len(new)
                new.append(i)
        if new:
            values = np.column_stack([ev.values[name][new] for name in self.names])
            self._append(genomes[new], values, np.full(len(new), self.gen, dtype=np.int64))
        self.seconds += time.perf_counter() - start

    def _append(self, genomes: np.ndarray, values: np.ndarray, gens: np.ndarray) -> None:
        end = self.n_rows + len(genomes)
        if end > len(self._gens):
            cap = max(end, 2 * len(self._gens), 1024)
            self._genomes, self._values, self._gens = (_grown(a, cap) for a in (self._genomes, self._values, self._gens))
        self._genomes[self.n_rows : end] = genomes
        self._values[self.n_rows : end] = values
        self._gens[self.n_rows : end] = gens
        self.n_rows = end

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(genomes, values, gen) of every row, in the order they were evaluated."""
        return self._genomes[: self.n_rows], self._values[: self.n_rows], self._gens[: self.n_rows]

    def best_first(self, m: int) -> np.ndarray:
        """Genomes of the `m` best feasible networks evaluated so far on the first objective,
        best first (ties: the other objectives in order, then the earlier row): the accurate
        end of everything the run has seen (`operators.EliteBreeding`). Kept incrementally,
        O(new rows) a call; a function of the rows alone, so a resumed run gets the same."""
        if m != self._best_m:
            self._forget_best()
            self._best_m = m
        if self._best_seen < self.n_rows:
            F, G = self.minimised(self._values[self._best_seen : self.n_rows])
            ok = (G <= 0).all(axis=1)
            rows = np.concatenate([self._best_rows, np.arange(self._best_seen, self.n_rows)[ok]])
            Fs = np.concatenate([self._best_F, F[ok]])
            keep = np.lexsort((rows, *(Fs[:, j] for j in reversed(range(Fs.shape[1])))))[:m]
            self._best_rows, self._best_F, self._best_seen = rows[keep], Fs[keep], self.n_rows
        return self._genomes[self._best_rows]

    def minimised(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F, G) of archive values."""
        ev = self.objectives.from_values({n: values[:, i] for i, n in enumerate(self.names)})
        return ev.F, ev.G

    def _row_args(self, rows: slice | np.ndarray) -> tuple:
        """`runstore.format_rows` arguments for the archive rows `rows`."""
        g, v, n = (a[rows] for a in self.arrays())
        feasible = None
        if self.objectives.constraints:
            _, G = self.minimised(v)
            feasible = (G <= 0).all(axis=1)
        return g, self.w, n, self.fields, v, feasible

    def lines(self, rows: np.ndarray) -> list[bytes]:
        """JSON Lines of the archive rows `rows`."""
        return rs.format_rows(*self._row_args(rows))

    def hand_over(self) -> PendingRows | None:
        """Start formatting the rows evaluated since the last hand-over (`formatter`)."""
        if self.n_handed == self.n_rows:
            return None
        args = self._row_args(slice(self.n_handed, self.n_rows))
        self.n_handed = self.n_rows
        return submit_rows(*args)

    def load(self, rows: rs.ArchiveRows) -> None:
        """Rebuild from the rows of evaluations.jsonl a checkpoint counts (on resume;
        `RunFolder.read_archive` validated them)."""
        self._row_of.clear()
        self.n_rows = 0
        self._forget_best()
        if len(rows.genomes):
            g = rows.genomes
            self._row_of = {row.tobytes(): i for i, row in enumerate(g.astype(np.int16))}
            if len(self._row_of) != len(g):
                raise SchemaError(f"evaluations.jsonl holds an arch twice among the {len(g)} rows its checkpoint counts; restore it or start the run again")
            self._append(g, rows.values, rows.gens)
        self.n_handed = self.n_rows


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out
