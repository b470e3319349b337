"""The ensemble search: NSGA-II over inclusion masks of a front (OFA³), into a run folder.

Genome: one bit per candidate (OFA³'s binary inclusion mask). Objectives, all minimised:
the soft-vote top-1 error on the `val` split (exact, from stored probabilities), the
predicted latency on the device (`pool.predicted_latency_ms`: sum, or the parallel bound)
and MACs (the members' sum). Constraints: 1 <= members <= `max_members`. Operators keep
genomes inside the constraint (so the whole budget is spent on feasible ensembles): the
initial population holds every single candidate (the single-subnet front is part of the
ensemble search space, ensembles must beat it, not replace it) then random subsets of 2 to
`max_members`; crossover draws a child from the union of its parents' members, of one
parent's size; mutation adds, removes or swaps one member. Duplicates are eliminated.

Run folder `runs/<id>/` (same layout as a subnet search; schemas `ofa2-edge/ensemble-*`):
`ensemble.json` (the config: source run, table, device, mode, cores, algorithm, seed; the
pool's candidates and predictor sha256), `evaluations.jsonl` (a header, then one row per
distinct ensemble: `ensemble_id`, `members`, `gen`, `val_top1_pct`, `latency_ms`, `macs_m`,
`feasible`), `checkpoint.json` (population, RNG state, counters, rows it counts),
`front.json`/`front.csv` (the non-dominated feasible ensembles of all evaluated, with
`test_top1_pct` added for reporting only, and `front_2d`: the (top-1, latency) front),
`hypervolume.json`, `timings.json`, `status.json`, `.lock`. The config file is not
`config.json`, so `runs list` (subnet runs) does not mistake it for one of its own.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ofa2_edge import __version__
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.locks import exclusive
from ofa2_edge.core.persist import (
    append_jsonl,
    atomic_write_text,
    read_json,
    sha256_file,
    write_json,
)
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.ensemble.pool import MODES, RULE, MemberPool, ensemble_id

VERSION = 1
CONFIG_FILE = "ensemble.json"
EVALUATIONS_FILE = "evaluations.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
FRONT_FILE = "front.json"
FRONT_CSV = "front.csv"
HV_FILE = "hypervolume.json"
TIMINGS_FILE = "timings.json"
STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
SCHEMAS = {
    CONFIG_FILE: "ofa2-edge/ensemble-config",
    EVALUATIONS_FILE: "ofa2-edge/ensemble-evaluations",
    CHECKPOINT_FILE: "ofa2-edge/ensemble-checkpoint",
    FRONT_FILE: "ofa2-edge/ensemble-front",
    HV_FILE: "ofa2-edge/ensemble-hypervolume",
    TIMINGS_FILE: "ofa2-edge/ensemble-timings",
    STATUS_FILE: "ofa2-edge/ensemble-status",
}
ALGORITHMS = ("nsga2",)
FIELDS = ("val_top1_pct", "latency_ms", "macs_m")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class EnsembleConfig:
    """What defines an ensemble search (its pool comes from `source_run`, `table`, `device`)."""

    source_run: str
    table: str
    device: str
    mode: str = "sequential"
    max_members: int = 3
    algorithm: str = "nsga2"
    pop_size: int = 100
    n_gen: int = 100
    seed: int = 1
    cores: int | None = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"--mode {self.mode!r}: choose {' or '.join(MODES)}")
        if self.algorithm not in ALGORITHMS:
            raise InvalidInputError(f"--algo {self.algorithm!r}: choose from {', '.join(ALGORITHMS)}")
        if not 1 <= self.max_members <= 64:
            raise InvalidInputError(f"--max-members {self.max_members}: give 1..64")
        if self.pop_size < 4 or self.n_gen < 1 or self.seed < 0 or self.checkpoint_every < 1:
            raise InvalidInputError("--pop must be >= 4, --gens >= 1, --seed >= 0, checkpoint interval >= 1")
        if self.cores is not None and self.cores < 1:
            raise InvalidInputError(f"--cores {self.cores}: give a positive core count")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> "EnsembleConfig":
        try:
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"{where}: not a valid ensemble config ({exc}); restore it from a copy or start a new run") from exc


# --------------------------------------------------------------------- pymoo pieces
def _problem(
    pool: MemberPool,
    config: EnsembleConfig,
    on_new: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
    memo: Callable[[np.ndarray], list[np.ndarray | None]],
):
    from pymoo.core.problem import Problem

    class EnsembleProblem(Problem):
        """Vectorised: one call scores a whole population from the stored val probabilities."""

        def __init__(self) -> None:
            super().__init__(n_var=pool.size, n_obj=3, n_ieq_constr=2, xl=0, xu=1, vtype=bool)

        def _evaluate(self, X, out, *args, **kwargs):  # noqa: ANN001 - pymoo's signature
            masks = np.asarray(X, dtype=bool)
            values = np.zeros((len(masks), 3))
            known = memo(masks)  # ensembles met before take their stored values (deterministic anyway)
            todo = [i for i, v in enumerate(known) if v is None]
            for i, v in enumerate(known):
                if v is not None:
                    values[i] = v
            if todo:
                values[todo] = evaluate_masks(pool, masks[todo], config.mode)
            n = masks.sum(axis=1)
            out["F"] = np.column_stack([100.0 - values[:, 0], values[:, 1], values[:, 2]])
            out["G"] = np.column_stack([n - config.max_members, 1 - n]).astype(np.float64)
            on_new(masks, values, (n >= 1) & (n <= config.max_members))

    return EnsembleProblem()


def evaluate_masks(pool: MemberPool, masks: np.ndarray, mode: str) -> np.ndarray:
    """(val top-1 %, predicted latency ms, MACs M) of each ensemble: what the search sees.
    Only the `val` split enters (split hygiene)."""
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    n = masks.sum(axis=1)
    top1 = np.where(n > 0, pool.val.top1_pct(masks), 0.0)
    safe = masks.copy()
    safe[n == 0, 0] = True  # an empty genome is infeasible; give it finite costs
    return np.column_stack([top1, pool.predicted_latency_ms(safe, mode), pool.macs(safe)])


def _operators(n: int, max_members: int):
    from pymoo.core.crossover import Crossover
    from pymoo.core.mutation import Mutation
    from pymoo.core.sampling import Sampling

    k_max = min(max_members, n)

    def random_subset(rng: np.random.Generator, pool_idx: np.ndarray, k: int) -> np.ndarray:
        row = np.zeros(n, dtype=bool)
        row[rng.choice(pool_idx, size=k, replace=False)] = True
        return row

    class SubsetSampling(Sampling):
        """Every single candidate first (up to the population size), then random subsets."""

        def _do(self, problem, n_samples, random_state=None, **kwargs):  # noqa: ANN001
            rows = [np.eye(n, dtype=bool)[i] for i in range(min(n, n_samples))]
            everyone = np.arange(n)
            while len(rows) < n_samples:
                k = int(random_state.integers(min(2, k_max), k_max + 1))
                rows.append(random_subset(random_state, everyone, k))
            return np.array(rows, dtype=bool)

    class SubsetCrossover(Crossover):
        """Two children, each a random subset of the parents' union, of one parent's size."""

        def __init__(self) -> None:
            super().__init__(2, 2)

        def _do(self, problem, X, random_state=None, **kwargs):  # noqa: ANN001
            _, n_matings, _ = X.shape
            Y = np.zeros((2, n_matings, n), dtype=bool)
            for m in range(n_matings):
                a, b = X[0, m].astype(bool), X[1, m].astype(bool)
                union = np.flatnonzero(a | b)
                for c, parent in enumerate((a, b)):
                    k = int(min(max(parent.sum(), 1), k_max, union.size))
                    Y[c, m] = random_subset(random_state, union, k) if union.size else parent
            return Y

    class SubsetMutation(Mutation):
        """Add, remove or swap one member (within 1..max_members)."""

        def _do(self, problem, X, random_state=None, **kwargs):  # noqa: ANN001
            X = np.asarray(X, dtype=bool).copy()
            for row in X:
                inside, outside = np.flatnonzero(row), np.flatnonzero(~row)
                moves = []
                if inside.size < k_max and outside.size:
                    moves.append("add")
                if inside.size > 1:
                    moves.append("remove")
                if inside.size and outside.size:
                    moves.append("swap")
                if not moves:
                    continue
                move = moves[int(random_state.integers(len(moves)))]
                if move in ("remove", "swap"):
                    row[inside[int(random_state.integers(inside.size))]] = False
                if move in ("add", "swap"):
                    row[outside[int(random_state.integers(outside.size))]] = True
            return X

    return SubsetSampling(), SubsetCrossover(), SubsetMutation()


def _algorithm(pool: MemberPool, config: EnsembleConfig):
    from pymoo.algorithms.moo.nsga2 import NSGA2

    sampling, crossover, mutation = _operators(pool.size, config.max_members)
    return NSGA2(pop_size=config.pop_size, sampling=sampling, crossover=crossover, mutation=mutation, eliminate_duplicates=True)


# --------------------------------------------------------------------- the run folder
class EnsembleRunFolder:
    """An ensemble run folder on disk: the one reader of its files (validated)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def lock_path(self) -> Path:
        return self.file(LOCK_FILE)

    def exists(self) -> bool:
        return self.file(CONFIG_FILE).is_file()

    def require(self) -> "EnsembleRunFolder":
        if not self.exists():
            raise InvalidInputError(f"{self.path}: not an ensemble run folder (no {CONFIG_FILE}); run `ofa2-edge ensemble` first")
        return self

    def _doc(self, name: str) -> dict[str, Any]:
        return read_json(self.require().file(name), SCHEMAS[name], [VERSION])

    def config(self) -> dict[str, Any]:
        doc = self._doc(CONFIG_FILE)
        EnsembleConfig.from_dict(doc.get("settings") or {}, str(self.file(CONFIG_FILE)))
        cands = doc.get("candidates")
        if not isinstance(cands, list) or not cands or not all(isinstance(c, dict) and isinstance(c.get("arch_id"), str) for c in cands):
            raise SchemaError(f"{self.file(CONFIG_FILE)}: field 'candidates' must list the pool's subnets; restore it from a copy")
        return doc

    def settings(self) -> EnsembleConfig:
        return EnsembleConfig.from_dict(self.config()["settings"], str(self.file(CONFIG_FILE)))

    def status(self) -> dict[str, Any]:
        return self._doc(STATUS_FILE) if self.file(STATUS_FILE).is_file() else {"state": "unknown"}

    def front(self) -> dict[str, Any]:
        path = self.file(FRONT_FILE)
        if not path.is_file():
            raise InvalidInputError(f"{self.path}: no {FRONT_FILE} yet (the ensemble search has not finished); rerun it with --resume")
        doc = self._doc(FRONT_FILE)
        for key in ("rows", "front_2d"):
            rows = doc.get(key)
            if not isinstance(rows, list) or not all(_valid_row(r) for r in rows):
                raise SchemaError(f"{path}: field {key!r} must list ensemble rows (ensemble_id, members, {', '.join(FIELDS)})")
        return doc

    def checkpoint(self) -> dict[str, Any]:
        doc = self._doc(CHECKPOINT_FILE)
        for key, kind in (("gen", int), ("n_evals", int), ("archive_rows", int), ("pop", list), ("rng_state", dict), ("hv_rows", list)):
            if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
                raise SchemaError(f"{self.file(CHECKPOINT_FILE)}: field {key!r} must be a {kind.__name__}; start the run again")
        return doc

    def rows(self, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """The evaluation rows (validated; an unterminated last line skipped) and the byte
        offset after the last one returned."""
        path = self.file(EVALUATIONS_FILE)
        out: list[dict[str, Any]] = []
        end = 0
        with path.open("rb") as fh:
            header = fh.readline()
            end = len(header)
            try:
                head = json.loads(header)
            except ValueError as exc:
                raise SchemaError(f"{path}:1: not a header line ({exc}); start the run again") from exc
            if head.get("schema") != SCHEMAS[EVALUATIONS_FILE] or head.get("schema_version") != VERSION:
                raise SchemaError(f"{path}:1: expected schema {SCHEMAS[EVALUATIONS_FILE]!r} v{VERSION}")
            lineno = 1
            for raw in fh:
                lineno += 1
                if not raw.endswith(b"\n"):
                    break  # a killed writer's unterminated last line
                if limit is not None and len(out) >= limit:
                    break
                try:
                    row = json.loads(raw)
                except ValueError as exc:
                    raise SchemaError(f"{path}:{lineno}: not JSON ({exc}); restore the file or start the run again") from exc
                if not _valid_row(row):
                    raise SchemaError(f"{path}:{lineno}: not an ensemble row; restore the file or start the run again")
                out.append(row)
                end += len(raw)
        return out, end


def find_ensemble_run(text: str, workspace: Workspace) -> EnsembleRunFolder | None:
    """The ensemble run folder `text` names (a path, or a run id under runs/), or None."""
    for candidate in dict.fromkeys((Path(text), workspace.root / text, workspace.runs_dir / text)):
        run = EnsembleRunFolder(candidate)
        if run.exists():
            return run
    return None


def list_ensemble_runs(runs_dir: Path) -> list[EnsembleRunFolder]:
    """Ensemble run folders directly under `runs_dir` (beside the search runs), oldest first."""
    if not runs_dir.is_dir():
        return []
    runs = [EnsembleRunFolder(p) for p in sorted(runs_dir.iterdir()) if (p / CONFIG_FILE).is_file()]
    return sorted(runs, key=lambda r: (r.file(CONFIG_FILE).stat().st_mtime, r.run_id))


def _valid_row(row: Any) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("ensemble_id"), str) or not isinstance(row.get("members"), list):
        return False
    if not row["members"] or not all(isinstance(m, str) for m in row["members"]) or ensemble_id(row["members"]) != row["ensemble_id"]:
        return False
    return all(isinstance(row.get(f), (int, float)) and not isinstance(row.get(f), bool) and np.isfinite(row[f]) for f in FIELDS)


# --------------------------------------------------------------------- the run
class EnsembleRun:
    """One ensemble run folder being written: start or resume, step, checkpoint, finish."""

    def __init__(self, pool: MemberPool, config: EnsembleConfig, folder: str | Path) -> None:
        if config.mode == "parallel" and not pool.cores:
            raise InvalidInputError(
                f"--mode parallel: the core count of device {pool.device} is not known (no probe in its table); give --cores N"
            )
        self.pool, self.config = pool, config
        self.run = EnsembleRunFolder(folder)
        self.rows: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}
        self.pending: list[dict[str, Any]] = []
        self.gen = 0
        self.hv_rows: list[dict[str, Any]] = []
        self.eval_s = 0.0
        self.ref = self._reference()
        self.problem = _problem(pool, config, self._record, self._known)
        self.algorithm = _algorithm(pool, config)
        self.algorithm.setup(self.problem, termination=("n_gen", config.n_gen), seed=config.seed, verbose=False)

    def _reference(self) -> np.ndarray:
        k = min(self.config.max_members, self.pool.size)
        lat = np.sort(self.pool.latency_ms)[::-1][:k].sum()
        macs = np.sort(self.pool.macs_m)[::-1][:k].sum()
        return np.array([100.0, 1.1 * lat, 1.1 * macs])

    def _known(self, masks: np.ndarray) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for mask in masks:
            members = self.pool.members_of(mask)
            i = self.seen.get(ensemble_id(members)) if members else None
            out.append(None if i is None else np.array([self.rows[i][f] for f in FIELDS]))
        return out

    def _record(self, masks: np.ndarray, values: np.ndarray, feasible: np.ndarray) -> None:
        for mask, v, ok in zip(masks, values, feasible):
            members = self.pool.members_of(mask)
            if not members:
                continue
            eid = ensemble_id(members)
            if eid in self.seen:
                continue
            self.seen[eid] = len(self.rows)
            row = {
                "ensemble_id": eid,
                "members": sorted(members),
                "n_members": len(members),
                "gen": self.gen,
                "val_top1_pct": float(v[0]),
                "latency_ms": float(v[1]),
                "macs_m": float(v[2]),
                "feasible": bool(ok),
            }
            self.rows.append(row)
            self.pending.append(row)

    def config_doc(self) -> dict[str, Any]:
        import pymoo

        return {
            "run_id": self.run.run_id,
            "created_at": _now(),
            "settings": self.config.to_dict(),
            "pool": {k: v for k, v in self.pool.describe().items()},
            "objectives": [
                {"name": "top1", "field": "val_top1_pct", "sense": "max", "split": "val", "rule": RULE},
                {"name": f"latency:{self.pool.device}", "field": "latency_ms", "sense": "min", "mode": self.config.mode,
                 "cores": self.pool.cores},
                {"name": "macs", "field": "macs_m", "sense": "min"},
            ],
            "constraints": [f"1 <= members <= {self.config.max_members}"],
            "candidates": [
                {"arch_id": a.id, "arch": a.to_dict(), "latency_ms": float(t), "macs_m": float(m), "val_top1_pct": float(v)}
                for a, t, m, v in zip(self.pool.archs, self.pool.latency_ms, self.pool.macs_m, self.pool.single_val_top1_pct)
            ],
            "reference_point_minimised": self.ref.tolist(),
            "versions": {"ofa2_edge": __version__, "pymoo": pymoo.__version__, "numpy": np.__version__},
        }

    def _status(self, state: str, **extra: Any) -> dict[str, Any]:
        doc = {"run_id": self.run.run_id, "state": state, "gen": self.gen, "n_gen": self.config.n_gen,
               "n_ensembles": len(self.rows), "updated_at": _now(), **extra}  # fmt: skip
        write_json(self.run.file(STATUS_FILE), SCHEMAS[STATUS_FILE], VERSION, doc)
        return doc

    # ---------------------------------------------------------------- start / resume
    def start(self) -> None:
        if self.run.path.exists() and any(p.name != LOCK_FILE for p in self.run.path.iterdir()):
            raise InvalidInputError(f"{self.run.path} already exists and is not empty; resume it with --resume or choose another -o")
        self.run.path.mkdir(parents=True, exist_ok=True)
        write_json(self.run.file(CONFIG_FILE), SCHEMAS[CONFIG_FILE], VERSION, self.config_doc())
        header = {"schema": SCHEMAS[EVALUATIONS_FILE], "schema_version": VERSION, "fields": list(FIELDS),
                  "device": self.pool.device, "mode": self.config.mode}  # fmt: skip
        atomic_write_text(self.run.file(EVALUATIONS_FILE), json.dumps(header) + "\n")
        self._status("running")

    def resume(self) -> bool:
        """Continue from the checkpoint (False: the run had finished). Checked before anything changes:
        the stored candidates must be this pool's, the checkpoint's rows must all be there."""
        stored = self.run.config()
        if [c["arch_id"] for c in stored["candidates"]] != self.pool.ids:
            raise InvalidInputError(
                f"{self.run.path}: the candidates changed since the run started (another front or table); start a new run"
            )
        old_lat = np.array([c["latency_ms"] for c in stored["candidates"]])
        if not np.allclose(old_lat, self.pool.latency_ms, rtol=1e-9, atol=0):
            raise InvalidInputError(f"{self.run.path}: the latency predictor of {self.pool.device} changed since the run started; start a new run")
        if not self.run.file(CHECKPOINT_FILE).is_file():
            for name in (EVALUATIONS_FILE, STATUS_FILE):
                self.run.file(name).unlink(missing_ok=True)
            for p in self.run.path.iterdir():
                if p.name != LOCK_FILE:
                    p.unlink()
            self.start()
            return True
        ck = self.run.checkpoint()
        if ck.get("config_sha256") != sha256_file(self.run.file(CONFIG_FILE)):
            raise SchemaError(f"{self.run.file(CONFIG_FILE)}: changed since the checkpoint was taken; start a new run")
        rows, end = self.run.rows(ck["archive_rows"])
        if len(rows) != ck["archive_rows"]:
            raise SchemaError(
                f"{self.run.file(CHECKPOINT_FILE)}: counts {ck['archive_rows']} rows, {EVALUATIONS_FILE} holds {len(rows)}; "
                "start the run again"
            )
        if self.run.status().get("state") == "completed" and ck["gen"] >= self.config.n_gen:
            return False
        X = np.asarray(ck["pop"], dtype=bool)
        if X.ndim != 2 or X.shape[1] != self.pool.size:
            raise SchemaError(f"{self.run.file(CHECKPOINT_FILE)}: pop does not fit the {self.pool.size} candidates; start the run again")
        # checked: from here on the folder changes
        path = self.run.file(EVALUATIONS_FILE)
        if path.stat().st_size != end:
            with path.open("r+b") as fh:
                fh.truncate(end)
        self.rows = rows
        self.seen = {r["ensemble_id"]: i for i, r in enumerate(rows)}
        self.gen = int(ck["gen"])
        self.hv_rows = list(ck["hv_rows"])
        self.eval_s = float(ck.get("evaluation_s", 0.0))
        from pymoo.core.evaluator import Evaluator
        from pymoo.core.population import Population

        algo = self.algorithm
        pop = Population.new("X", X)
        Evaluator().eval(self.problem, pop)
        for key, values in (ck.get("pop_data") or {}).items():
            pop.set(key, np.asarray(values))
        algo.pop, algo.off = pop, None
        algo.is_initialized = True
        algo.n_iter = self.gen + 1
        algo.start_time = time.time()
        algo.evaluator.n_eval = int(ck["n_evals"])
        algo._set_optimum()
        algo.random_state.bit_generator.state = ck["rng_state"]
        self.pending = []
        self._status("running", resumed_at=_now())
        return True

    # ---------------------------------------------------------------- stepping
    def _checkpoint(self) -> None:
        for row in self.pending:
            append_jsonl(self.run.file(EVALUATIONS_FILE), row)
        self.pending = []
        algo = self.algorithm
        pop = algo.pop
        data = {k: np.asarray(pop.get(k)).tolist() for k in ("rank", "crowding") if pop.get(k) is not None and None not in list(pop.get(k))}
        doc = {
            "gen": self.gen,
            "n_evals": int(algo.evaluator.n_eval),
            "archive_rows": len(self.rows),
            "pop": np.asarray(pop.get("X"), dtype=bool).astype(int).tolist(),
            "pop_data": data,
            "rng_state": algo.random_state.bit_generator.state,
            "hv_rows": self.hv_rows,
            "config_sha256": sha256_file(self.run.file(CONFIG_FILE)),
            "evaluation_s": self.eval_s,
            "saved_at": _now(),
        }
        write_json(self.run.file(CHECKPOINT_FILE), SCHEMAS[CHECKPOINT_FILE], VERSION, doc, indent=None)
        self._status("running")

    def step(self) -> dict[str, Any]:
        from ofa2_edge.search.indicators import hypervolume, nondominated

        t0 = time.perf_counter()
        self.gen += 1
        self.algorithm.next()
        self.eval_s += time.perf_counter() - t0
        pop = self.algorithm.pop
        F = np.array([ind.F for ind in pop], dtype=np.float64)
        ok = np.array([ind.CV[0] for ind in pop]) <= 0
        front = F[ok][nondominated(F[ok])] if ok.any() else F[:0]
        hv = hypervolume(front, self.ref) if len(front) else 0.0
        row = {"gen": self.gen, "n_evals": int(self.algorithm.evaluator.n_eval), "hv": hv, "front_size": int(len(front))}
        self.hv_rows.append(row)
        if self.gen % self.config.checkpoint_every == 0 or not self.algorithm.has_next():
            self._checkpoint()
        return row

    # ---------------------------------------------------------------- finishing
    def finish(self) -> dict[str, Any]:
        from ofa2_edge.search.indicators import hypervolume, nondominated

        self._checkpoint()
        V = np.array([[r[f] for f in FIELDS] for r in self.rows], dtype=np.float64)
        feasible = np.array([r["feasible"] for r in self.rows], dtype=bool)
        idx = np.flatnonzero(feasible)
        F = np.column_stack([100.0 - V[:, 0], V[:, 1], V[:, 2]])
        front_idx = idx[nondominated(F[idx])]
        front_idx = front_idx[np.lexsort((-V[front_idx, 0], V[front_idx, 1]))]
        idx2 = idx[nondominated(F[idx][:, :2])]
        idx2 = idx2[np.lexsort((-V[idx2, 0], V[idx2, 1]))]
        report = self._report_rows(sorted(set(front_idx.tolist()) | set(idx2.tolist())))
        rows = [report[i] for i in front_idx]
        rows2 = [report[i] for i in idx2]
        hv3 = hypervolume(F[front_idx], self.ref) if len(front_idx) else 0.0
        hv2 = hypervolume(F[idx2][:, :2], self.ref[:2]) if len(idx2) else 0.0
        doc = {
            "run_id": self.run.run_id,
            "selection": "non-dominated feasible ensembles among all evaluated, chosen on the val split",
            "device": self.pool.device,
            "mode": self.config.mode,
            "cores": self.pool.cores,
            "rule": RULE,
            "fields": list(FIELDS) + ["test_top1_pct"],
            "test_note": "test_top1_pct is reported only: no choice saw the test split",
            "reference_point": {"top1_pct": 0.0, "latency_ms": float(self.ref[1]), "macs_m": float(self.ref[2])},
            "hv": hv3,
            "hv_2d": hv2,
            "rows": rows,
            "front_2d": rows2,
        }
        write_json(self.run.file(FRONT_FILE), SCHEMAS[FRONT_FILE], VERSION, doc)
        _write_csv(self.run.file(FRONT_CSV), rows)
        write_json(self.run.file(HV_FILE), SCHEMAS[HV_FILE], VERSION, {
            "indicator": "hypervolume (moocore) of the population's non-dominated feasible set: (100 - val top-1, latency, MACs)",
            "reference_point_minimised": self.ref.tolist(),
            "rows": self.hv_rows,
        })  # fmt: skip
        write_json(self.run.file(TIMINGS_FILE), SCHEMAS[TIMINGS_FILE], VERSION, {"evaluation_and_algorithm_s": self.eval_s, "generations": self.gen})
        summary = {"front_size": len(rows), "front_2d_size": len(rows2), "hv": hv3, "hv_2d": hv2, "n_ensembles": len(self.rows),
                   "max_members_on_front": max((r["n_members"] for r in rows), default=0)}  # fmt: skip
        return self._status("completed", summary=summary)

    def _report_rows(self, indices: list[int]) -> dict[int, dict[str, Any]]:
        """Rows already chosen, with what is reported beside them: test top-1 (if the table has
        it) and the members' own predicted latencies."""
        out = {i: dict(self.rows[i]) for i in indices}
        if not indices:
            return out
        masks = self.pool.masks_of([self.rows[i]["members"] for i in indices])
        test = self.pool.test.top1_pct(masks) if self.pool.test is not None else [None] * len(indices)
        lat = {a: float(t) for a, t in zip(self.pool.ids, self.pool.latency_ms)}
        for i, t in zip(indices, test):
            out[i]["test_top1_pct"] = None if t is None else float(t)
            out[i]["member_latency_ms"] = [lat[m] for m in out[i]["members"]]
            out[i]["latency_sum_ms"] = float(sum(out[i]["member_latency_ms"]))
            out[i]["latency_max_ms"] = float(max(out[i]["member_latency_ms"]))
        return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["ensemble_id", "members", "n_members", "val_top1_pct", "test_top1_pct", "latency_ms", "macs_m"]
    w.writerow(cols)
    for r in rows:
        w.writerow([" ".join(r["members"]) if c == "members" else r.get(c) for c in cols])
    atomic_write_text(path, buf.getvalue())


def run_ensemble_search(
    pool: MemberPool,
    config: EnsembleConfig | None,
    folder: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or, with `resume`, continue) an ensemble search into `folder`; the final status.
    With `resume` the stored settings are used (a given `config` must match them)."""
    store = EnsembleRunFolder(folder)
    if resume:
        stored = store.require().settings()
        if config is not None:
            diff = [k for k, v in config.to_dict().items() if v != stored.to_dict()[k] and k != "checkpoint_every"]
            if diff:
                raise InvalidInputError(f"{store.path}: --resume continues the stored run; these settings differ from it: {', '.join(diff)}")
        config = stored
    if config is None:
        raise InvalidInputError("a new ensemble search needs its settings")
    run = EnsembleRun(pool, config, folder)
    if not resume:
        if run.run.path.exists() and any(p.name != LOCK_FILE for p in run.run.path.iterdir()):
            raise InvalidInputError(f"{run.run.path} already exists and is not empty; resume it with --resume or choose another -o")
        run.run.path.mkdir(parents=True, exist_ok=True)
    with exclusive(store.lock_path, f"ensemble run {store.run_id} ({store.path})"):
        if resume:
            if not run.resume():
                return run.run.status()
        else:
            run.start()
        try:
            while run.algorithm.has_next():
                row = run.step()
                if progress is not None:
                    progress(row)
        except KeyboardInterrupt:
            run._status("interrupted", message="interrupted; --resume continues from the last checkpoint")
            raise
        return run.finish()
