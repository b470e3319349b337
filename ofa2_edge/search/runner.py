"""Run a search end to end: resolve, search with pymoo, record, checkpoint, resume, finish.

What defines a search is `config.SearchConfig`; the networks evaluated are kept in
`archive.Archive`; this module owns the loop and everything a checkpoint or resume does.

`run_search` drives a pymoo algorithm generation by generation (``has_next()`` / ``next()``)
so that after each one it can record the new archs, the population's hypervolume and, every
`checkpoint_every` generations, a checkpoint. A checkpoint is plain JSON: the population's
index genomes and per-individual survival data (rank, crowding, ...), the survival's
carried state (NSGA-III's normalisation), the evaluation counter and the algorithm's
``numpy.random.Generator`` bit-generator state. Resuming rebuilds the algorithm from the
config, re-evaluates the saved population (objectives are deterministic), puts all of that
back and continues, so an interrupted-then-resumed run is identical to an uninterrupted one.

Seeding: pymoo 0.6.2 draws all randomness from ``algorithm.random_state``, a Generator
made from the run's seed in ``setup``; it does not touch NumPy's or Python's global RNGs
(checked by the tests). BLAS runs on one thread while a search runs (`BLAS_THREADS`): a
second thread makes a population's pass through the accuracy MLP ~1.5x faster on an idle
machine, but when another process competes for the cores OpenBLAS's waiting threads spin
and the same evaluation became 20x slower (measured: 1.3 s -> 29 s per 100 x 1000 run). One
thread also fixes the summation order, so a resumed run reproduces the floats of an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import logging
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ofa2_edge import __version__
from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.locks import exclusive
from ofa2_edge.core.persist import atomic_write_text, sha256_file
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.algorithms import BuildContext, get_algorithm, restore_survival_state, survival_state
from ofa2_edge.search.archive import Archive
from ofa2_edge.search.config import SearchConfig, reference_point, stored_config
from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.formatter import PendingRows
from ofa2_edge.search.indicators import (
    EXACT,
    EXACT_HV_MAX_OBJ,
    PAIR_MEAN,
    front_indicator,
    hypervolume,
    nondominated,
    pair_hypervolumes,
)
from ofa2_edge.search.objectives import MetricContext, Objectives, build_objectives
from ofa2_edge.search.perdevice import FRONT_MAX_ROWS, bounded_front, pairs_of
from ofa2_edge.search.problem import ArchProblem

log = logging.getLogger(__name__)

BLAS_THREADS = 1


@dataclass(frozen=True)
class Progress:
    gen: int
    n_gen: int
    n_evals: int
    hv: float
    front_size: int
    elapsed_s: float


# --------------------------------------------------------------------- helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    import pymoo

    return {"ofa2_edge": __version__, "pymoo": pymoo.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _pop_front(algorithm) -> np.ndarray:
    """Minimised objectives of the population's non-dominated feasible members."""
    pop = algorithm.pop  # attribute access per individual: ~30 % cheaper than Population.get
    F = np.array([ind.F for ind in pop], dtype=np.float64)
    feasible = np.array([ind.CV[0] for ind in pop], dtype=np.float64) <= 0
    F = F[feasible]
    return F[nondominated(F)] if len(F) else F


def _pop_state(algorithm) -> dict[str, Any]:
    """The population's genomes and the numeric per-individual fields every member carries
    (rank, crowding, ...). A field only some carry (e.g. one a restored checkpoint added,
    which offspring lack) mixes values with None: it is dropped, not written half-JSON."""
    pop = algorithm.pop
    keys = sorted(set.intersection(*(set(ind.data) for ind in pop))) if len(pop) else []
    data = {}
    for k in keys:
        vals = np.asarray(pop.get(k))
        if vals.dtype.kind in "biuf":
            data[k] = vals.tolist()
    return {"X": np.asarray(pop.get("X"), dtype=np.int64).tolist(), "data": data}


# --------------------------------------------------------------------- the run
class SearchRun:
    """One run folder being written: set up, stepped, checkpointed, finished."""

    def __init__(
        self,
        config: SearchConfig,
        folder: Path,
        workspace: Workspace,
        assets_dir: Path | None = None,
        allow_emulated: bool = False,
    ) -> None:
        self.config = config
        self.run = rs.RunFolder(Path(folder))
        self.workspace = workspace
        spec = get_algorithm(config.algorithm)
        self.spec = spec
        params = spec.resolve_params(config.algorithm_params)
        ctx = MetricContext(
            workspace, config.space, accuracy=config.accuracy, assets_dir=assets_dir, allow_emulated=allow_emulated
        )
        self.objectives = build_objectives(config.objectives, config.constraints, ctx)
        spec.check(self.objectives.n_obj, self.objectives.n_constr)
        self.ref = reference_point(self.objectives, config.space, config.reference_point)
        n_obj = self.objectives.n_obj
        # Per-device 2-D fronts (objective 0 against each cost) from 3 objectives on; the
        # joint hypervolume is exact up to EXACT_HV_MAX_OBJ objectives only.
        self.pairs = pairs_of(n_obj) if n_obj >= 3 else []
        self.many = n_obj > EXACT_HV_MAX_OBJ
        self.codec = GenomeCodec(config.space)
        self.archive = Archive(self.objectives, config.space.w)
        self.problem = ArchProblem(self.codec, self.objectives, memo=self.archive)
        self.params = params
        self.algorithm = spec.build(
            BuildContext(
                codec=self.codec,
                n_obj=self.objectives.n_obj,
                pop_size=config.pop_size,
                seed=config.seed,
                operators=config.operators,
                params=params,
                feasible=self._feasible,
            )
        )
        self.pymoo_n_gen = config.n_gen + spec.extra_generations
        self.algorithm.setup(self.problem, termination=("n_gen", self.pymoo_n_gen), seed=config.seed, verbose=False)
        self.hv_rows: list[dict[str, Any]] = []
        self.done = 0
        self.timers = {"hypervolume_s": 0.0, "checkpoint_s": 0.0, "loop_s": 0.0, "finish_s": 0.0, "plot_s": 0.0}
        self._prior = {"evaluation_s": 0.0, "record_s": 0.0}  # from sessions before a resume
        self.last_checkpoint = 0  # the generation a resume would continue from
        self._unlanded: list[tuple[PendingRows | None, dict[str, Any]]] = []  # checkpoints taken, not yet on disk
        self.config_sha256: str | None = None  # of config.json as written at the start; checkpoints carry it

    # ---------------------------------------------------------------- pieces
    def _feasible(self, idx: np.ndarray) -> np.ndarray:
        """Constraint check on index genomes without a full evaluation (for redrawing finders)."""
        genomes = self.codec.decode(idx)
        ok = np.ones(len(idx), dtype=bool)
        for c in self.objectives.constraints:
            ok &= c.g(np.asarray(self.objectives.metrics[c.metric].evaluate(genomes), dtype=np.float64)) <= 0
        return ok

    def config_doc(self) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id,
            "created_at": _now(),
            **self.config.to_dict(),
            "algorithm_params": self.params,
            "pymoo_n_gen": self.pymoo_n_gen,
            "reference_point_minimised": self.ref.tolist(),
            "workspace": str(self.workspace.root),
            "resolved": self.objectives.describe(),
            "versions": _versions(),
        }

    def _check_same_predictors(self, stored: dict[str, Any]) -> None:
        now = self.objectives.describe()["metrics"]
        for name, meta in stored.get("resolved", {}).get("metrics", {}).items():
            old, new = meta.get("source", {}).get("sha256"), now.get(name, {}).get("source", {}).get("sha256")
            if old != new:
                raise InvalidInputError(
                    f"{self.run.path}: the predictor behind {name} changed since the run started "
                    f"(sha256 {str(old)[:12]} then, {str(new)[:12]} now); resuming would mix two predictors. "
                    "Start a new run instead."
                )

    def _status(self, state: str, **extra: Any) -> dict[str, Any]:
        doc = {
            "run_id": self.run.run_id,
            "state": state,
            "gen": self.done,
            "n_gen": self.config.n_gen + self.spec.extra_generations,
            "n_evals": int(self.algorithm.evaluator.n_eval),
            "n_archs": self.archive.n_rows,
            "updated_at": _now(),
            **extra,
        }
        rs.write_doc(self.run.file(rs.STATUS_FILE), rs.STATUS_SCHEMA, doc)
        return doc

    def _hv_doc(self, joint: dict[str, Any] | None = None) -> dict[str, Any]:
        objs = self.objectives.objectives
        if self.many:
            indicator = (
                f"mean over the 2-D projections ({objs[0].name}, cost) of their exact hypervolume (moocore) of the "
                f"population's feasible set: the joint hypervolume of {len(objs)} objectives is not computed exactly "
                f"(exact up to {EXACT_HV_MAX_OBJ}); per-projection values in hv_pairs; minimised objectives, raw values"
            )
        else:
            indicator = "hypervolume (moocore, what pymoo's HV computes) of the population's non-dominated feasible set; minimised objectives, raw values"
        doc = {
            "objectives": [m.name for m in objs],
            "minimised": [m.describe()["minimised_as"] for m in objs],
            "reference_point": {m.name: float(m.natural(np.float64(r))) for m, r in zip(objs, self.ref)},
            "reference_point_minimised": self.ref.tolist(),
            "indicator": indicator,
            "indicator_kind": PAIR_MEAN if self.many else EXACT,
            "exact_hv_max_objectives": EXACT_HV_MAX_OBJ,
            "rows": self.hv_rows,
        }
        if self.pairs:
            doc["pairs"] = [[objs[a].name, objs[b].name] for a, b in self.pairs]
        if joint is not None:
            doc["joint_archive"] = joint
        return doc

    def _timings(self) -> dict[str, Any]:
        t = dict(self.timers)
        t["evaluation_s"] = self._prior["evaluation_s"] + self.problem.eval_seconds
        t["record_s"] = self._prior["record_s"] + self.archive.seconds
        t["store_s"] = t["record_s"] + t["checkpoint_s"] + t["finish_s"]
        inside = t["evaluation_s"] + t["hypervolume_s"] + t["record_s"] + t["checkpoint_s"]
        t["algorithm_s"] = max(0.0, t["loop_s"] - inside)  # pymoo itself: mating, survival, bookkeeping
        t["total_s"] = t["loop_s"] + t["finish_s"]
        t["generations"] = self.done
        t["n_evals"] = int(self.algorithm.evaluator.n_eval)
        return t

    # ---------------------------------------------------------------- start / resume
    def check_empty(self) -> None:
        """A new run goes into a missing or empty folder (its lock file aside)."""
        if self.run.path.exists() and (not self.run.path.is_dir() or any(p.name != rs.LOCK_FILE for p in self.run.path.iterdir())):
            raise InvalidInputError(f"{self.run.path} already exists and is not empty; resume it with --resume or choose another -o")

    def start(self, restart: bool = False) -> None:
        if restart:
            self.run.config()  # it must be one of our run folders
            for name in (rs.EVALUATIONS_FILE, rs.FRONT_FILE, rs.FRONT_CSV, rs.HV_FILE, rs.TIMINGS_FILE, rs.STATUS_FILE, rs.PLOT_FILE):
                self.run.file(name).unlink(missing_ok=True)
        else:
            self.check_empty()  # again, under the lock: another search may have started meanwhile
        self.run.path.mkdir(parents=True, exist_ok=True)
        rs.write_doc(self.run.file(rs.CONFIG_FILE), rs.CONFIG_SCHEMA, self.config_doc())
        self.config_sha256 = sha256_file(self.run.file(rs.CONFIG_FILE))
        header = {
            "schema": rs.EVALUATIONS_SCHEMA,
            "schema_version": rs.VERSION,
            "fields": {f: {"metric": n, "unit": self.objectives.metrics[n].unit} for n, f in zip(self.archive.names, self.archive.fields)},
            "width_mult": self.config.space.w,
        }
        atomic_write_text(self.run.file(rs.EVALUATIONS_FILE), json.dumps(header) + "\n")
        self._status("running")

    def resume(self) -> bool:
        """Restore from the checkpoint; False if the run had already finished.

        Everything is checked before anything on disk changes: the checkpoint on its own
        (`RunFolder.checkpoint`), against evaluations.jsonl (`RunFolder.read_archive`:
        row count, generations) and against the config and the algorithm (generations,
        genomes, population data, RNG and survival state). Only then are rows written after
        the checkpoint dropped, and never from a finished run."""
        stored = self.run.config()
        self._check_same_predictors(stored)
        status = self.run.status()
        ck = self.run.checkpoint()
        where, fix = self.run.file(rs.CHECKPOINT_FILE), "restore it from a copy, or start the run again (nothing in the run folder was changed)"
        gen = ck["gen"]
        self.config_sha256 = sha256_file(self.run.file(rs.CONFIG_FILE))
        if ck.get("config_sha256", self.config_sha256) != self.config_sha256:
            raise SchemaError(
                f"{self.run.file(rs.CONFIG_FILE)}: changed since the checkpoint was taken (its sha256 differs from the "
                f"checkpoint's config_sha256); resuming would continue another run. Restore it from a copy, or start a new run"
            )
        if gen > self.pymoo_n_gen:
            raise SchemaError(f"{where}: gen {gen} is past the run's {self.pymoo_n_gen} generations; {fix}")
        rows = self.run.read_archive(self.archive.fields, ck["archive_rows"], gen)
        if status.get("state") in ("completed", "infeasible") and gen >= self.pymoo_n_gen:
            if rows.more:
                raise SchemaError(
                    f"{where}: the run is {status['state']} but {rs.EVALUATIONS_FILE} holds rows after the "
                    f"{ck['archive_rows']} its last checkpoint counts; {fix}"
                )
            return False  # nothing to do, and nothing changed
        self.archive.load(rows)
        X = self._checked_population(ck, where, fix)
        self._check_algorithm_state(ck, where, fix)
        # Checked: from here on the run folder changes.
        evaluations = self.run.file(rs.EVALUATIONS_FILE)
        if evaluations.stat().st_size != rows.end:
            rs.truncate_at(evaluations, rows.end)  # rows after the checkpoint, a torn last line
        self.hv_rows = list(ck["hv_rows"])
        self.done = self.last_checkpoint = gen
        self.timers.update({k: float(v) for k, v in ck["timers"].items() if k in self.timers})
        self._prior = {k: float(ck["timers"].get(k, 0.0)) for k in self._prior}
        algo = self.algorithm
        from pymoo.core.evaluator import Evaluator
        from pymoo.core.population import Population

        pop = Population.new("X", X)
        Evaluator().eval(self.problem, pop)  # every member is in the archive: the stored F, G, CV
        for key, values in ck["pop"]["data"].items():
            pop.set(key, np.asarray(values))
        algo.pop = pop
        algo.off = None
        algo.is_initialized = True
        algo.n_iter = self.done + 1
        algo.start_time = time.time()
        algo.evaluator.n_eval = int(ck["n_evals"])
        restore_survival_state(algo, ck.get("survival", {}))
        if hasattr(getattr(algo, "survival", None), "opt"):
            algo.survival.opt = pop[np.asarray(pop.get("rank")) == 0] if "rank" in ck["pop"]["data"] else pop
        algo._set_optimum()
        algo.random_state.bit_generator.state = ck["rng_state"]
        self.problem.eval_seconds = self.archive.seconds = 0.0
        self._status("running", resumed_at=_now())
        return True

    def _checked_population(self, ck: dict[str, Any], where: Path, fix: str) -> np.ndarray:
        """The checkpoint's population as index genomes of this run's space, every member
        among the rows the checkpoint counts (so the resume re-evaluates nothing)."""
        X = np.asarray(ck["pop"]["X"], dtype=np.int64)
        if ((X < 0) | (X >= self.codec.n_choices[None, :])).any():
            raise SchemaError(f"{where}: pop.X holds a gene index outside the run's search space; {fix}")
        _, known, _ = self.archive.lookup(self.codec.decode(X))
        if not known.all():
            raise SchemaError(
                f"{where}: {int((~known).sum())} individual(s) of pop.X are not among the {ck['archive_rows']} "
                f"rows of {rs.EVALUATIONS_FILE} it counts; {fix}"
            )
        from pymoo.core.individual import Individual

        core = Individual()
        for key in ck["pop"]["data"]:
            if key in core.__dict__ or f"_{key}" in core.__dict__ or hasattr(Individual, key):
                raise SchemaError(f"{where}: pop.data[{key!r}] would overwrite an individual's own {key}; {fix}")
        return X

    def _check_algorithm_state(self, ck: dict[str, Any], where: Path, fix: str) -> None:
        """The RNG state fits the algorithm's generator, and the survival state its objectives."""
        scratch = type(self.algorithm.random_state.bit_generator)()
        try:
            scratch.state = ck["rng_state"]
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise SchemaError(f"{where}: rng_state is not a state of the run's {type(scratch).__name__} generator ({exc}); {fix}") from None
        n = self.objectives.n_obj
        for key, value in ck["survival"].items():
            shape = np.shape(value) if value is not None else None
            want = (n, n) if key == "extreme_points" else (n,)
            if shape is not None and shape != want:
                raise SchemaError(f"{where}: survival.{key} has shape {shape}, expected {want} for {n} objectives; {fix}")

    # ---------------------------------------------------------------- stepping
    def checkpoint(self) -> None:
        """Take a checkpoint of the generation just completed: the archive rows evaluated
        since the last one go to the formatter, and the state (population, RNG, counters,
        hypervolume rows) waits with them until `land` writes both.

        Called between generations only, where pymoo's state is consistent; an
        interruption in the middle of a generation resumes from the last checkpoint that
        landed. Rows appended after it are dropped on resume."""
        algo = self.algorithm
        doc = {
            "gen": self.done,
            "n_evals": int(algo.evaluator.n_eval),
            "rng_state": algo.random_state.bit_generator.state,  # a dict of ints: JSON as it is
            "pop": _pop_state(algo),
            "survival": survival_state(algo),
            "archive_rows": self.archive.n_rows,
            **({"config_sha256": self.config_sha256} if self.config_sha256 else {}),
            "hv_rows": list(self.hv_rows),
            "timers": self._timings(),
            "saved_at": _now(),
        }
        self._unlanded.append((self.archive.hand_over(), doc))

    def land(self, wait: bool = True) -> None:
        """Write the checkpoints taken so far, oldest first: each one's rows appended, then
        the checkpoint that counts them, then the status, so a checkpoint on disk never
        names rows that are not. Without `wait`, only those whose rows are formatted."""
        try:
            while self._unlanded and (wait or self._unlanded[0][0] is None or self._unlanded[0][0].ready()):
                rows, doc = self._unlanded[0]
                if rows is not None:
                    rs.append_bytes(self.run.file(rs.EVALUATIONS_FILE), rows.blob())
                rs.write_doc(self.run.file(rs.CHECKPOINT_FILE), rs.CHECKPOINT_SCHEMA, doc, indent=None)
                self._unlanded.pop(0)
                self.last_checkpoint = int(doc["gen"])
                self._status("running")
        except BaseException as exc:
            # After a failed write no later checkpoint may land: it would count rows that are
            # not all on disk. The last one that landed stays what a resume continues from.
            self._unlanded.clear()
            if isinstance(exc, OSError):
                raise Ofa2EdgeError(
                    f"{self.run.path}: cannot write the run folder ({exc}); once that is fixed, "
                    f"--resume continues from generation {self.last_checkpoint} (the last checkpoint written)"
                ) from exc
            raise

    def step(self) -> Progress:
        algo = self.algorithm
        t0 = time.perf_counter()
        self.archive.gen = self.done + 1
        algo.next()
        self.done += 1
        t1 = time.perf_counter()
        front = _pop_front(algo)
        row: dict[str, Any] = {"gen": self.done, "n_evals": int(algo.evaluator.n_eval)}
        if self.pairs:
            # a point dominated on all objectives adds nothing to any projection's hypervolume
            row["hv_pairs"] = pair_hypervolumes(front, self.ref, self.pairs)
        hv = float(np.mean(row["hv_pairs"])) if self.many else hypervolume(front, self.ref)
        self.hv_rows.append({**row, "hv": hv, "front_size": len(front)})
        t2 = time.perf_counter()
        if self.done % self.config.checkpoint_every == 0 or not algo.has_next():
            self.checkpoint()
        self.land(wait=False)
        t3 = time.perf_counter()
        self.timers["hypervolume_s"] += t2 - t1
        self.timers["checkpoint_s"] += t3 - t2
        self.timers["loop_s"] += t3 - t0
        return Progress(self.done, self.pymoo_n_gen, int(algo.evaluator.n_eval), hv, len(front), self.timers["loop_s"])

    # ---------------------------------------------------------------- finishing
    def finish(self, plot: bool = True) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.land()
        g, v, n = self.archive.arrays()
        F, G = self.archive.minimised(v)
        feasible = (G <= 0).all(axis=1) if G.shape[1] else np.ones(len(F), dtype=bool)
        idx = np.flatnonzero(feasible)
        joint_idx = idx[nondominated(F[idx])] if idx.size else idx
        front_idx, pair_fronts = bounded_front(F, joint_idx, self.pairs, FRONT_MAX_ROWS)
        rows = [json.loads(line) for line in self.archive.lines(front_idx)]
        meta = self.objectives.describe()
        joint = front_indicator(F[joint_idx], self.ref, seed=self.config.seed)
        pair_hv = [
            pair_hypervolumes(F[pf], self.ref, [pair])[0] for pf, pair in zip(pair_fronts, self.pairs)
        ]
        hv_archive = float(np.mean(pair_hv)) if self.many else (joint["value"] if front_idx.size else 0.0)
        hv_population = self.hv_rows[-1]["hv"] if self.hv_rows else 0.0
        truncated = len(front_idx) < len(joint_idx)
        selection = "non-dominated feasible archs among all evaluated"
        if truncated:
            selection += (
                f" (bounded: {len(joint_idx)} are; kept the {len(front_idx)} on or nearest a per-device 2-D front, "
                f"every per-device front member among them)"
            )
        hv_doc = self._hv_doc(joint={**joint, "front_size": int(len(joint_idx)), "what": "the joint front of all evaluated archs"})
        front_doc = {
            "run_id": self.run.run_id,
            "selection": selection,
            "objectives": meta["objectives"],
            "constraints": meta["constraints"],
            "fields": self.archive.fields,
            "reference_point": hv_doc["reference_point"],
            "hv": hv_archive,
            "hv_indicator": PAIR_MEAN if self.many else EXACT,
            "joint_front_size": int(len(joint_idx)),
            "rows": rows,
        }
        if self.pairs:
            front_doc["device_fronts"] = self._device_fronts(front_idx, rows, pair_fronts, pair_hv)
        rs.write_doc(self.run.file(rs.FRONT_FILE), rs.FRONT_SCHEMA, front_doc)
        rs.write_front_csv(self.run.file(rs.FRONT_CSV), rows, self.archive.fields)
        rs.write_doc(self.run.file(rs.HV_FILE), rs.HV_SCHEMA, hv_doc)
        state, message = "completed", None
        if not feasible.any():
            state = "infeasible"
            message = _infeasible_message(self.objectives, v, G, self.archive.names)
        summary = {
            "front_size": len(rows),
            "hv_population": hv_population,
            "hv_archive": hv_archive,
            "hv_indicator": PAIR_MEAN if self.many else EXACT,
            **({"hv_archive_pairs": pair_hv} if self.pairs else {}),
            "n_archs": self.archive.n_rows,
            "n_feasible": int(feasible.sum()),
        }
        self.timers["finish_s"] += time.perf_counter() - t0
        if plot:
            t1 = time.perf_counter()
            from ofa2_edge.search.plot import pareto_plot

            pareto_plot(self.run.file(rs.PLOT_FILE), self.objectives, F, feasible, front_idx, _pop_front(self.algorithm), self.run.run_id)
            self.timers["plot_s"] += time.perf_counter() - t1
        timings = self._timings()
        rs.write_doc(self.run.file(rs.TIMINGS_FILE), rs.TIMINGS_SCHEMA, {**timings, "machine": platform.node(), "blas_threads": BLAS_THREADS})
        return self._status(state, message=message, summary=summary, timings=timings)


    def _device_fronts(self, front_idx: np.ndarray, rows: list[dict[str, Any]], pair_fronts: list[np.ndarray], pair_hv: list[float]) -> list[dict[str, Any]]:
        """front.json's `device_fronts`: per pair (objective 0, a cost), its 2-D front among
        all evaluated archs, cheapest first, as arch ids of `rows` with the two values."""
        objs, fields = self.objectives.objectives, self.archive.fields
        row_of = {int(i): r for i, r in zip(front_idx, rows)}
        names = self.archive.names
        out = []
        for (a, b), members, hv in zip(self.pairs, pair_fronts, pair_hv):
            fa, fb = (fields[names.index(objs[k].name)] for k in (a, b))
            out.append({
                "objectives": [objs[a].name, objs[b].name],
                "fields": [fa, fb],
                "reference_point": {objs[k].name: float(objs[k].natural(np.float64(self.ref[k]))) for k in (a, b)},
                "hv": hv,
                "rows": [{"arch_id": row_of[int(i)]["arch_id"], fa: row_of[int(i)][fa], fb: row_of[int(i)][fb]} for i in members],
            })  # fmt: skip
        return out

def _infeasible_message(objectives: Objectives, values: np.ndarray, G: np.ndarray, names: list[str]) -> str:
    if not len(values):
        return "no arch was evaluated"
    best = int(np.argmin(np.clip(G, 0, None).sum(axis=1)))
    have = ", ".join(f"{n} = {values[best, names.index(n)]:.4g}" for n in {c.metric for c in objectives.constraints})
    texts = ", ".join(c.text for c in objectives.constraints)
    return f"no evaluated arch meets {texts}; the closest had {have}. Relax the constraint(s) or enlarge the search space"


def run_search(
    config: SearchConfig | None,
    folder: str | Path,
    *,
    workspace: Workspace | None = None,
    assets_dir: Path | None = None,
    resume: bool = False,
    progress: Callable[[Progress], None] | None = None,
    plot: bool = True,
    allow_emulated: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a search into `folder`; return the final status document.

    A device table measured under emulation is refused as a latency source unless
    `allow_emulated` (the CLI's ``--allow-emulated``).

    With `resume`, the stored config is used; a `config` given as well must match it
    (the checkpoint interval may differ). Ctrl-C marks the run interrupted and re-raises;
    a resume continues from the last checkpoint, bit-identical to an uninterrupted run.
    """
    from threadpoolctl import threadpool_limits

    folder = Path(folder)
    workspace = workspace or Workspace.resolve()
    store = rs.RunFolder(folder)
    # One writer per run folder (`core.locks.exclusive` on its .lock): a second search or
    # resume of the same folder is refused before it reads or writes anything.
    what = f"run {store.run_id} ({folder})"
    # The same BLAS thread count throughout, including the re-evaluation on resume.
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        if resume:
            with exclusive(store.require().lock_path, what):
                run = SearchRun(_resumed_config(config, store), folder, workspace, assets_dir, allow_emulated)
                if run.run.file(rs.CHECKPOINT_FILE).is_file():
                    if not run.resume():
                        return run.run.status()
                else:
                    run.start(restart=True)  # resuming a run stopped before its first checkpoint starts it over
                return _drive(run, progress, plot)
        if config is None:
            raise InvalidInputError("a new search needs a config")
        run = SearchRun(config, folder, workspace, assets_dir, allow_emulated)  # checks everything before the folder is made
        run.check_empty()
        with exclusive(store.lock_path, what):
            run.start()
            return _drive(run, progress, plot)


def _resumed_config(config: SearchConfig | None, run: rs.RunFolder) -> SearchConfig:
    """The stored config; a `config` given as well must match it (but for the checkpoint interval)."""
    stored = stored_config(run)
    if config is None:
        return stored
    a, b = config.to_dict(), stored.to_dict()
    diff = [k for k in a if a[k] != b[k] and k != "checkpoint_every"]  # the interval does not change results
    if diff:
        raise InvalidInputError(f"{run.path}: --resume continues the stored run; these settings differ from it: {', '.join(diff)}")
    return replace(stored, checkpoint_every=config.checkpoint_every)


def _drive(run: SearchRun, progress: Callable[[Progress], None] | None, plot: bool) -> dict[str, Any]:
    """Step the run to its end, then finish it; on an interruption, land what was taken."""
    with _frozen_heap():
        try:
            while run.algorithm.has_next():
                p = run.step()
                if progress is not None:
                    progress(p)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                run.land()  # the checkpoints already taken reach the disk
            if isinstance(exc, KeyboardInterrupt):
                run._status("interrupted", message=f"interrupted; --resume continues from generation {run.last_checkpoint} (the last checkpoint)")
            raise
        return run.finish(plot=plot)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the objects alive when the search starts out of the garbage collector's scans.

    The predictors bring torch and scikit-learn along (~240k tracked objects), and a search
    allocates millions of short-lived pymoo objects plus a growing archive, which triggers
    full collections that walk all of them: freezing them made a 100 x 1000 run ~8 %
    faster (measured in alternating pairs; pymoo alone was unaffected). A frozen object
    that turns into cyclic garbage meanwhile is collected after the search; a caller that
    froze the heap itself keeps its own state."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
