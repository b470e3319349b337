"""Run folders: what a search leaves on disk, and how readers get it back.

``runs/<run-id>/`` holds (every file schema-versioned, written atomically or appended
with a flush per batch; no pickle):

- ``config.json`` (`ofa2-edge/search-config`): everything to repeat the run exactly (space,
  objectives, constraints, algorithm, operators, population, generations, seed), the
  predictor files with their sha256, the reference point and the library versions.
- ``evaluations.jsonl`` (`ofa2-edge/search-evaluations`): a header line, then one line per
  distinct network evaluated: ``arch_id``, ``arch``, ``gen`` (first evaluated), every
  metric's field (``top1_pct``, ``latency_ms:<device>``, ``macs_m``, ...) and, with
  constraints, ``feasible``.
- ``front.json`` (`ofa2-edge/search-front`) and ``front.csv``: the non-dominated feasible
  archs among all evaluated, each row as above.
- ``hypervolume.json`` (`ofa2-edge/search-hypervolume`): the reference point, and per
  generation the evaluations so far, the hypervolume of the population's non-dominated
  feasible set and its size.
- ``timings.json`` (`ofa2-edge/search-timings`): objective evaluation vs algorithm overhead
  vs run-store and hypervolume bookkeeping, as time the search's own process spent
  (evaluation rows are formatted by a child process meanwhile: `formatter`).
- ``status.json`` (`ofa2-edge/search-status`): state (running / completed / interrupted /
  infeasible), progress, and the final summary.
- ``checkpoint.json`` (`ofa2-edge/search-checkpoint`): population, RNG state and counters,
  the number of evaluations.jsonl rows it counts and the sha256 of config.json, to resume
  after an interruption (one compact line: it is rewritten at every checkpoint and read
  only by a resume, and by the dashboard for its hypervolume curve).
- ``pareto.png``: the static Pareto plot.
- ``.lock``: the writer lock (`core.locks.exclusive`), held by the one search or resume
  writing the folder; a second writer is refused. Readers take no lock.

`RunFolder` is the one reader of these files, and validates everything it returns (types,
ranges, and where files depend on each other, their agreement): a bad value is one
`Ofa2EdgeError` naming the file and the key, row or line, never a traceback or a wrong
number downstream. In evaluations.jsonl a malformed complete line is an error; only an
unterminated last line is a crash artefact, skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

import numpy as np

from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.persist import atomic_write_bytes, atomic_write_text, check_schema, write_json
from ofa2_edge.space.arch import (
    D_GENES,
    DEPTH_CHOICES,
    E_GENES,
    EXPAND_CHOICES,
    KERNEL_CHOICES,
    KS_GENES,
    N_GENES,
    NETWORK_RESOLUTIONS,
    R_GENE,
    WIDTH_MULTS,
    Arch,
    SearchSpace,
    active_mask,
)

CONFIG_SCHEMA = "ofa2-edge/search-config"
EVALUATIONS_SCHEMA = "ofa2-edge/search-evaluations"
FRONT_SCHEMA = "ofa2-edge/search-front"
HV_SCHEMA = "ofa2-edge/search-hypervolume"
TIMINGS_SCHEMA = "ofa2-edge/search-timings"
STATUS_SCHEMA = "ofa2-edge/search-status"
CHECKPOINT_SCHEMA = "ofa2-edge/search-checkpoint"
VERIFICATION_SCHEMA = "ofa2-edge/front-verification"  # verification.<device>.json, by `ofa2-edge verify`
VERSION = 1

CONFIG_FILE = "config.json"
EVALUATIONS_FILE = "evaluations.jsonl"
FRONT_FILE = "front.json"
FRONT_CSV = "front.csv"
HV_FILE = "hypervolume.json"
TIMINGS_FILE = "timings.json"
STATUS_FILE = "status.json"
CHECKPOINT_FILE = "checkpoint.json"
PLOT_FILE = "pareto.png"
LOCK_FILE = ".lock"


# --------------------------------------------------------------------- arch rows, fast
def _arch_layout(n_digits: int, w_text: str) -> tuple[bytes, list[int], list[int], int]:
    """The canonical arch JSON with a resolution of `n_digits` digits, as a template: its
    bytes, the byte offsets of the single-digit genes (d, e, ks in that order), those
    genes' columns, and the offset of the resolution's first digit."""
    text, offsets, columns = "{", [], []
    for name, genes in (("d", D_GENES), ("e", E_GENES), ("ks", KS_GENES)):
        text += ("," if name != "d" else "") + f'"{name}":['
        for k, col in enumerate(range(genes.start, genes.stop)):
            text += "," if k else ""
            offsets.append(len(text))
            columns.append(col)
            text += "0"
        text += "]"
    text += ',"r":'
    r_offset = len(text)
    text += "0" * n_digits + f',"w":{w_text}}}'
    return text.encode(), offsets, columns, r_offset


def _arch_json_bytes(genomes: np.ndarray, w: float) -> list[bytes]:
    g = np.asarray(genomes, dtype=np.int64)
    out: list[bytes] = [b""] * len(g)
    w_text = json.dumps(float(w))
    r = g[:, R_GENE]
    lengths = np.char.str_len(r.astype(str))
    for n_digits in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == n_digits)
        template, offsets, columns, r_offset = _arch_layout(n_digits, w_text)
        buf = np.frombuffer(template, dtype=np.uint8)[None, :].repeat(len(rows), axis=0)
        buf[:, offsets] = g[np.ix_(rows, columns)] + ord("0")
        place = 10 ** np.arange(n_digits - 1, -1, -1)
        buf[:, r_offset : r_offset + n_digits] = r[rows, None] // place % 10 + ord("0")
        texts = buf.view(f"S{buf.shape[1]}").ravel().tolist()  # bytes objects, no numpy scalar per row
        if len(rows) == len(g):
            return texts
        for i, t in zip(rows.tolist(), texts):
            out[i] = t
    return out


def arch_json_batch(genomes: np.ndarray, w: float) -> list[str]:
    """`Arch.canonical_json()` of every canonical value genome, without building `Arch`s.

    Kernel, expand and depth values are single digits, so all archs with the same number
    of resolution digits share one byte layout: the digits are written into a template
    with one numpy assignment per layout (a run store formats ~100k rows per search).
    `arch_json_batch(g)[i] == Arch.from_genome(g[i]).canonical_json()` (tested).
    """
    return [t.decode() for t in _arch_json_bytes(genomes, w)]


def arch_id_of(arch_json: str | bytes) -> str:
    """`Arch.id` from a canonical arch JSON text."""
    data = arch_json.encode() if isinstance(arch_json, str) else arch_json
    return "a-" + hashlib.sha256(data).hexdigest()[:12]


def format_rows(genomes: np.ndarray, w: float, gen: np.ndarray, fields: Sequence[str], values: np.ndarray, feasible: np.ndarray | None) -> list[bytes]:
    """JSON Lines (UTF-8, no newline) of evaluated archs: arch_id, arch, gen, each field,
    feasible (if any).

    Bytes throughout and one %-format per row (the run store writes ~100k rows per
    100 x 1000 search); a finite float's repr is its JSON text."""
    texts = _arch_json_bytes(genomes, w)
    ids = [arch_id_of(t).encode() for t in texts]
    cells = ",".join(f"{json.dumps(f)}:%r" for f in fields)
    tail = ',"feasible":%s' if feasible is not None else ""
    template = ('{"arch_id":"%s","arch":%s,"gen":%d,' + cells + tail + "}").encode()
    vals = values.tolist()
    gens = np.asarray(gen).tolist()
    if not np.isfinite(values).all():  # write NaN/inf as json.dumps does, never as repr's 'nan'
        template = template.replace(b"%r", b"%s")
        vals = [[json.dumps(v).encode() for v in row] for row in vals]
    if feasible is None:
        return [template % (i, t, g, *v) for i, t, g, v in zip(ids, texts, gens, vals)]
    flags = [b"true" if f else b"false" for f in np.asarray(feasible).tolist()]
    return [template % (i, t, g, *v, f) for i, t, g, v, f in zip(ids, texts, gens, vals, flags)]


# --------------------------------------------------------------------- appending
def rows_blob(genomes: np.ndarray, w: float, gen: np.ndarray, fields: Sequence[str], values: np.ndarray, feasible: np.ndarray | None) -> bytes:
    """`format_rows` as the bytes to append: each row then a newline (empty for no rows)."""
    lines = format_rows(genomes, w, gen, fields, values, feasible)
    return b"\n".join(lines) + b"\n" if lines else b""


def append_bytes(path: Path, data: bytes) -> None:
    """Append complete JSON lines in one write, then flush and fsync (one sync per batch)."""
    if not data:
        return
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def truncate_at(path: Path, size: int) -> None:
    """Keep the first `size` bytes of a JSON Lines file, atomically: drop the rows written
    after a checkpoint. `size` is where `RunFolder.read_archive` found the last row it keeps
    ending, so what is cut was validated first."""
    with open(path, "rb") as fh:
        head = fh.read(size)
    atomic_write_bytes(path, head)


# --------------------------------------------------------------------- validation
#: The states a run's status.json may hold.
STATES = ("running", "completed", "interrupted", "infeasible")
#: Keys of a search's timing report (status.json, checkpoint.json, timings.json).
TIMING_KEYS = (
    "hypervolume_s", "checkpoint_s", "loop_s", "finish_s", "plot_s", "evaluation_s", "record_s",
    "store_s", "algorithm_s", "total_s", "generations", "n_evals",
)  # fmt: skip
#: What a checkpoint may carry of a survival operator's state (`algorithms.survival_state`).
SURVIVAL_KEYS = ("ideal_point", "worst_point", "nadir_point", "extreme_points")
_ARCH_KEYS = {"d", "e", "ks", "r", "w"}
_MAX_EXACT = 2**53  # an integer beyond this is no number a run writes (and no float holds it)
_DATA_ERRORS = (Ofa2EdgeError, TypeError, ValueError, KeyError, OverflowError, RecursionError)

_FIX_CONFIG = "config.json defines the run: restore it from a copy, or start a new run"
_FIX_RESULT = "restore the file from a copy, or run the search again"
_FIX_CHECKPOINT = "restore checkpoint.json from a copy, or start the run again (nothing in the run folder was changed)"
_FIX_EVALUATIONS = "restore evaluations.jsonl from a copy, or start the run again (nothing in the run folder was changed)"


def _show(value: Any) -> str:
    """A value for an error message, cut short (a row may hold megabytes of junk)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any, lo: int = 0) -> bool:
    return type(value) is int and lo <= value <= _MAX_EXACT


def _is_num(value: Any, finite: bool = True) -> bool:
    if type(value) is float:
        return math.isfinite(value) or not finite
    return type(value) is int and abs(value) <= _MAX_EXACT


class _Doc:
    """Type checks of one run file's values; a failure is a SchemaError naming the file (or
    its line) and the key, and saying how to fix it."""

    def __init__(self, where: str, fix: str) -> None:
        self.where, self.fix = where, fix

    def fail(self, key: str, what: str) -> NoReturn:
        at = f"{self.where}: {key}" if key else self.where
        raise SchemaError(f"{at}: {what}; {self.fix}")

    def get(self, doc: dict[str, Any], key: str, prefix: str = "") -> Any:
        if key not in doc:
            self.fail(prefix + key, "missing")
        return doc[key]

    def dict_(self, value: Any, key: str) -> dict[str, Any]:
        if type(value) is not dict:
            self.fail(key, f"expected a JSON object, got {_show(value)}")
        return value

    def list_(self, value: Any, key: str, nonempty: bool = False) -> list[Any]:
        if type(value) is not list or (nonempty and not value):
            self.fail(key, f"expected a {'non-empty ' if nonempty else ''}list, got {_show(value)}")
        return value

    def str_(self, value: Any, key: str, optional: bool = False) -> str:
        if type(value) is not str and not (optional and value is None):
            self.fail(key, f"expected a text, got {_show(value)}")
        return value

    def int_(self, value: Any, key: str, lo: int = 0) -> int:
        if not _is_int(value, lo):
            self.fail(key, f"expected an integer >= {lo}, got {_show(value)}")
        return value

    def num(self, value: Any, key: str, lo: float | None = None) -> float:
        if not _is_num(value) or (lo is not None and value < lo):
            self.fail(key, f"expected a finite number{'' if lo is None else f' >= {lo:g}'}, got {_show(value)}")
        return float(value)

    def strs(self, value: Any, key: str, nonempty: bool = False) -> list[str]:
        items = self.list_(value, key, nonempty)
        for i, item in enumerate(items):
            self.str_(item, f"{key}[{i}]")
        return items

    def nums(self, value: Any, key: str) -> dict[str, float]:
        """A JSON object of finite numbers by name."""
        for name, v in self.dict_(value, key).items():
            self.num(v, f"{key}[{name!r}]")
        return value

    def array(self, value: Any, key: str, kinds: str, ndim: tuple[int, ...], finite: bool = False) -> np.ndarray:
        """A (nested) list as a numpy array of one of the dtype `kinds` ('i', 'f', ...)."""
        if type(value) is not list:
            self.fail(key, f"expected a list, got {_show(value)}")
        try:
            a = np.asarray(value)
        except (ValueError, TypeError, OverflowError, RecursionError):
            a = np.asarray([None], dtype=object)
        if a.dtype.kind not in kinds or a.ndim not in ndim or (a.dtype.kind == "i" and a.size and np.abs(a).max() > _MAX_EXACT):
            self.fail(key, f"expected a {'/'.join(map(str, ndim))}-D list of numbers, got {_show(value)}")
        if finite and a.size and not np.isfinite(a).all():
            self.fail(key, "expected finite numbers (it holds NaN or Infinity)")
        return a


def _load(path: Path, schema: str, fix: str) -> dict[str, Any]:
    """A run file's JSON document, its schema and version checked; errors name the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file; {fix}") from None
    except OSError as exc:
        raise SchemaError(f"{path}: cannot be read ({exc})") from exc
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{path}: not a readable JSON file ({str(exc)[:200]}); {fix}") from None
    return check_schema(doc, schema, [VERSION], str(path))


def _check_metric(c: _Doc, value: Any, key: str) -> dict[str, Any]:
    """An objective's description (`Metric.describe`): name, field, unit, sense, source."""
    meta = c.dict_(value, key)
    for k in ("name", "field", "unit"):
        c.str_(c.get(meta, k, f"{key}."), f"{key}.{k}")
    if c.get(meta, "sense", f"{key}.") not in ("min", "max"):
        c.fail(f"{key}.sense", f"expected 'min' or 'max', got {_show(meta['sense'])}")
    source = c.dict_(meta.get("source", {}), f"{key}.source")
    for k in ("kind", "name", "path", "sha256", "device"):
        if k in source:
            c.str_(source[k], f"{key}.source.{k}", optional=True)
    return meta


def _check_constraints(c: _Doc, value: Any, key: str) -> None:
    for i, con in enumerate(c.list_(value, key)):
        where = f"{key}[{i}]"
        c.dict_(con, where)
        c.str_(c.get(con, "metric", f"{where}."), f"{where}.metric")
        if c.get(con, "op", f"{where}.") not in ("<=", ">="):
            c.fail(f"{where}.op", f"expected '<=' or '>=', got {_show(con['op'])}")
        c.num(c.get(con, "bound", f"{where}."), f"{where}.bound")
        c.str_(c.get(con, "text", f"{where}."), f"{where}.text")


def _check_timings(c: _Doc, value: Any, key: str) -> dict[str, Any]:
    doc = c.dict_(value, key)
    for name in TIMING_KEYS:
        c.num(c.get(doc, name, f"{key}."), f"{key}.{name}", lo=0)
    for name, v in doc.items():
        if name == "machine":
            c.str_(v, f"{key}.machine")
        elif name not in TIMING_KEYS:
            c.num(v, f"{key}.{name}", lo=0)
    return doc


def _check_hv_rows(c: _Doc, value: Any, key: str) -> list[dict[str, Any]]:
    """One row per generation, in order: gen 1, 2, ...; n_evals never falls."""
    rows = c.list_(value, key)
    last = 0
    for i, row in enumerate(rows):
        where = f"{key}[{i}]"
        c.dict_(row, where)
        if c.get(row, "gen", f"{where}.") != i + 1 or not _is_int(row["gen"]):
            c.fail(f"{where}.gen", f"expected generation {i + 1}, got {_show(row['gen'])}")
        n = c.int_(c.get(row, "n_evals", f"{where}."), f"{where}.n_evals")
        if n < last:
            c.fail(f"{where}.n_evals", f"{n} is fewer evaluations than the generation before ({last})")
        last = n
        c.num(c.get(row, "hv", f"{where}."), f"{where}.hv", lo=0)
        c.int_(c.get(row, "front_size", f"{where}."), f"{where}.front_size")
    return rows


def _check_row(c: _Doc, row: Any, key: str, fields: Sequence[str], finite: bool, w: float | None = None) -> Arch:
    """One evaluated arch (a front or evaluations row): exactly arch_id, arch, gen, the
    fields and optionally feasible; the arch valid and matching its id. Returns the arch."""
    prefix = f"{key}: " if key else ""
    c.dict_(row, key)
    unknown = sorted(set(row) - {"arch_id", "arch", "gen", "feasible", *fields})
    if unknown:
        c.fail(key, f"unexpected key(s) {_show(unknown)}")
    for k in ("arch_id", "arch", "gen", *fields):
        if k not in row:
            c.fail(key, f"{k} is missing")
    c.str_(row["arch_id"], f"{prefix}arch_id")
    if not _is_int(row["gen"]):
        c.fail(key, f"gen: expected an integer >= 0, got {_show(row['gen'])}")
    for f in fields:
        if not _is_num(row[f], finite):
            c.fail(key, f"{f}: expected a {'finite ' if finite else ''}number, got {_show(row[f])}")
    if "feasible" in row and type(row["feasible"]) is not bool:
        c.fail(key, f"feasible: expected true or false, got {_show(row['feasible'])}")
    arch_doc = row["arch"]
    if type(arch_doc) is not dict or set(arch_doc) != _ARCH_KEYS:
        c.fail(key, f"arch: expected an object with d, e, ks, r, w, got {_show(arch_doc)}")
    try:
        arch = Arch.from_dict(arch_doc)
    except _DATA_ERRORS as exc:
        c.fail(key, f"arch is not a valid arch ({str(exc)[:200]})")
    if w is not None and arch.w != w:
        c.fail(key, f"arch: width {_show(arch_doc['w'])} differs from the file's width_mult {w}")
    if row["arch_id"] != arch.id:
        c.fail(key, f"says arch_id {row['arch_id'][:40]} but its arch is {arch.id}")
    if arch.to_dict() != arch_doc:
        c.fail(key, "arch is not in canonical form (inactive block slots hold 3)")
    return arch


def _check_config(doc: dict[str, Any], path: Path) -> None:
    c = _Doc(str(path), _FIX_CONFIG)
    c.strs(c.get(doc, "objectives"), "objectives", nonempty=True)
    c.strs(c.get(doc, "constraints"), "constraints")
    for key in ("algorithm", "accuracy"):
        c.str_(c.get(doc, key), key)
    for key, lo in (("pop_size", 2), ("n_gen", 1), ("seed", 0), ("checkpoint_every", 1)):
        c.int_(c.get(doc, key), key, lo)
    for key in ("space", "operators", "algorithm_params"):
        c.dict_(c.get(doc, key), key)
    try:
        SearchSpace.from_dict(doc["space"])
    except _DATA_ERRORS as exc:
        c.fail("space", f"not a valid search space ({str(exc)[:200]})")
    c.nums(c.get(doc, "reference_point"), "reference_point")
    for key in ("run_id", "created_at", "workspace"):
        if key in doc:
            c.str_(doc[key], key)
    if "pymoo_n_gen" in doc:
        c.int_(doc["pymoo_n_gen"], "pymoo_n_gen", doc["n_gen"])
    if "reference_point_minimised" in doc:
        c.array(doc["reference_point_minimised"], "reference_point_minimised", "iuf", (1,), finite=True)
    if "versions" in doc:
        c.dict_(doc["versions"], "versions")
    if "resolved" in doc:
        resolved = c.dict_(doc["resolved"], "resolved")
        for i, m in enumerate(c.list_(resolved.get("objectives", []), "resolved.objectives")):
            _check_metric(c, m, f"resolved.objectives[{i}]")
        _check_constraints(c, resolved.get("constraints", []), "resolved.constraints")
        for name, m in c.dict_(resolved.get("metrics", {}), "resolved.metrics").items():
            _check_metric(c, m, f"resolved.metrics[{name!r}]")


def _check_status(doc: dict[str, Any], path: Path) -> None:
    c = _Doc(str(path), _FIX_RESULT)
    if c.get(doc, "state") not in STATES:
        c.fail("state", f"expected one of {', '.join(STATES)}, got {_show(doc['state'])}")
    for key in ("run_id", "updated_at"):
        c.str_(c.get(doc, key), key)
    for key in ("gen", "n_gen", "n_evals", "n_archs"):
        c.int_(c.get(doc, key), key)
    if "resumed_at" in doc:
        c.str_(doc["resumed_at"], "resumed_at")
    c.str_(doc.get("message"), "message", optional=True)
    if doc.get("summary") is not None:
        summary = c.dict_(doc["summary"], "summary")
        for key in ("front_size", "n_archs", "n_feasible"):
            c.int_(c.get(summary, key, "summary."), f"summary.{key}")
        for key in ("hv_population", "hv_archive"):
            c.num(c.get(summary, key, "summary."), f"summary.{key}", lo=0)
    if doc.get("timings") is not None:
        _check_timings(c, doc["timings"], "timings")


def _check_front(doc: dict[str, Any], path: Path) -> None:
    c = _Doc(str(path), _FIX_RESULT)
    for key in ("run_id", "selection"):
        c.str_(c.get(doc, key), key)
    objectives = c.list_(c.get(doc, "objectives"), "objectives", nonempty=True)
    for i, m in enumerate(objectives):
        _check_metric(c, m, f"objectives[{i}]")
    _check_constraints(c, c.get(doc, "constraints"), "constraints")
    fields = c.strs(c.get(doc, "fields"), "fields", nonempty=True)
    if len(set(fields)) != len(fields):
        c.fail("fields", f"names a field twice: {_show(fields)}")
    missing = [m["field"] for m in objectives if m["field"] not in fields]
    if missing:
        c.fail("fields", f"lacks the objectives' field(s) {_show(missing)}")
    c.nums(c.get(doc, "reference_point"), "reference_point")
    c.num(c.get(doc, "hv"), "hv", lo=0)
    ids = set()
    for i, row in enumerate(c.list_(c.get(doc, "rows"), "rows")):
        _check_row(c, row, f"rows[{i}]", fields, finite=True)
        ids.add(row["arch_id"])
    if "device_fronts" in doc:  # many-objective runs since schema 1 of the per-device fronts; absent in older runs
        _check_device_fronts(c, doc["device_fronts"], fields, ids)


def _check_device_fronts(c: _Doc, value: Any, fields: list[str], ids: set[str]) -> None:
    """front.json's per-device 2-D fronts: each names two of the front's fields, and its
    rows are archs of the front's rows with those two values."""
    for k, pf in enumerate(c.list_(value, "device_fronts")):
        key = f"device_fronts[{k}]"
        c.dict_(pf, key)
        names = c.strs(c.get(pf, "objectives", f"{key}."), f"{key}.objectives")
        pair = c.strs(c.get(pf, "fields", f"{key}."), f"{key}.fields")
        if len(names) != 2 or len(pair) != 2 or any(f not in fields for f in pair):
            c.fail(f"{key}.fields", f"expected two of the front's fields, got {_show(pair)}")
        c.nums(c.get(pf, "reference_point", f"{key}."), f"{key}.reference_point")
        c.num(c.get(pf, "hv", f"{key}."), f"{key}.hv", lo=0)
        for i, row in enumerate(c.list_(c.get(pf, "rows", f"{key}."), f"{key}.rows")):
            where = f"{key}.rows[{i}]"
            c.dict_(row, where)
            if set(row) != {"arch_id", *pair}:
                c.fail(where, f"expected exactly arch_id and {_show(pair)}, got {_show(sorted(row))}")
            if row["arch_id"] not in ids:
                c.fail(f"{where}.arch_id", f"{_show(row['arch_id'])} is not one of the front's rows")
            for f in pair:
                c.num(row[f], f"{where}.{f}")


def _check_hypervolume(doc: dict[str, Any], path: Path) -> None:
    c = _Doc(str(path), _FIX_RESULT)
    names = c.strs(c.get(doc, "objectives"), "objectives", nonempty=True)
    c.strs(c.get(doc, "minimised"), "minimised")
    c.nums(c.get(doc, "reference_point"), "reference_point")
    ref = c.array(c.get(doc, "reference_point_minimised"), "reference_point_minimised", "iuf", (1,), finite=True)
    if len(ref) != len(names):
        c.fail("reference_point_minimised", f"has {len(ref)} values for {len(names)} objectives")
    c.str_(c.get(doc, "indicator"), "indicator")
    _check_hv_rows(c, c.get(doc, "rows"), "rows")


def _check_checkpoint(doc: dict[str, Any], path: Path) -> None:
    """The checkpoint on its own: types, ranges and the counters' agreement. How it agrees
    with the config and with evaluations.jsonl is checked by the resume (`read_archive`)."""
    c = _Doc(str(path), _FIX_CHECKPOINT)
    gen = c.int_(c.get(doc, "gen"), "gen")
    n_evals = c.int_(c.get(doc, "n_evals"), "n_evals")
    rows = c.int_(c.get(doc, "archive_rows"), "archive_rows")
    if rows > n_evals:
        c.fail("archive_rows", f"{rows} distinct archs from {n_evals} evaluations is impossible")
    c.dict_(c.get(doc, "rng_state"), "rng_state")
    pop = c.dict_(c.get(doc, "pop"), "pop")
    X = c.array(c.get(pop, "X", "pop."), "pop.X", "i", (2,))
    if X.shape[0] < 1 or X.shape[1] != N_GENES:
        c.fail("pop.X", f"expected a list of {N_GENES}-gene index genomes, got shape {X.shape}")
    for key, values in c.dict_(c.get(pop, "data", "pop."), "pop.data").items():
        a = c.array(values, f"pop.data[{key!r}]", "biuf", (1,))
        if len(a) != len(X):
            c.fail(f"pop.data[{key!r}]", f"has {len(a)} values for {len(X)} individuals")
    survival = c.dict_(c.get(doc, "survival"), "survival")
    for key, value in survival.items():
        if key not in SURVIVAL_KEYS:
            c.fail("survival", f"unexpected key {_show(key)} (known: {', '.join(SURVIVAL_KEYS)})")
        if value is not None:
            c.array(value, f"survival.{key}", "iuf", (1, 2), finite=True)
    hv_rows = _check_hv_rows(c, c.get(doc, "hv_rows"), "hv_rows")
    if len(hv_rows) != gen:
        c.fail("hv_rows", f"has {len(hv_rows)} rows for {gen} generations")
    if hv_rows and hv_rows[-1]["n_evals"] != n_evals:
        c.fail("n_evals", f"{n_evals} differs from the last generation's {hv_rows[-1]['n_evals']} (hv_rows)")
    _check_timings(c, c.get(doc, "timers"), "timers")
    c.str_(c.get(doc, "saved_at"), "saved_at")
    if "config_sha256" in doc:
        sha = c.str_(doc["config_sha256"], "config_sha256")
        if len(sha) != 64 or set(sha) - set("0123456789abcdef"):
            c.fail("config_sha256", f"expected 64 hex digits, got {_show(sha)}")


def _check_verification(doc: dict[str, Any], path: Path) -> None:
    c = _Doc(str(path), "run `ofa2-edge verify` again to rewrite it")
    for i, m in enumerate(c.list_(c.get(doc, "members"), "members")):
        m = c.dict_(m, f"members[{i}]")
        c.str_(c.get(m, "arch_id", f"members[{i}]."), f"members[{i}].arch_id")
        c.num(c.get(m, "predicted_ms", f"members[{i}]."), f"members[{i}].predicted_ms", 0.0)
        if c.get(m, "measured_ms", f"members[{i}].") is not None:
            c.num(m["measured_ms"], f"members[{i}].measured_ms", 0.0)
    for name, cov in c.dict_(c.get(doc, "coverage"), "coverage").items():
        cov = c.dict_(cov, f"coverage[{name!r}]")
        c.num(c.get(cov, "nominal", f"coverage[{name!r}]."), f"coverage[{name!r}].nominal", 0.0)
        c.int_(c.get(cov, "n", f"coverage[{name!r}]."), f"coverage[{name!r}].n")
        if c.get(cov, "actual", f"coverage[{name!r}].") is not None:
            c.num(cov["actual"], f"coverage[{name!r}].actual", 0.0)
    for level, v in c.dict_(c.get(doc, "violations"), "violations").items():
        v = c.dict_(v, f"violations[{level!r}]")
        c.int_(c.get(v, "judged", f"violations[{level!r}]."), f"violations[{level!r}].judged")
        if c.get(v, "violation_rate", f"violations[{level!r}].") is not None:
            c.num(v["violation_rate"], f"violations[{level!r}].violation_rate", 0.0)
    c.dict_(c.get(doc, "hypervolume"), "hypervolume")


def _check_timings_doc(doc: dict[str, Any], path: Path) -> None:
    c = _Doc(str(path), _FIX_RESULT)
    _check_timings(c, {k: v for k, v in doc.items() if k not in ("schema", "schema_version")}, "")


# --------------------------------------------------------------------- evaluations.jsonl
@dataclass(frozen=True)
class ArchiveRows:
    """The rows a resume keeps, as arrays, and where they end in the file."""

    genomes: np.ndarray  # (n, 46) int64 value genomes
    values: np.ndarray  # (n, len(fields)) float64, in the order of the fields asked for
    gens: np.ndarray  # (n,) int64
    end: int  # byte offset just past the last kept row
    more: bool  # complete rows follow the kept ones (written after the checkpoint)


@dataclass
class _Chunk:
    rows: list[dict[str, Any]]
    linenos: list[int]
    ends: list[int]
    genomes: np.ndarray


_CHUNK_ROWS = 4096


def _check_chunk(path: Path, batch: list[tuple[int, int, Any]], fields: list[str], w: float) -> _Chunk:
    """Validate rows of evaluations.jsonl in bulk: the types row by row (cheap checks), the
    archs with numpy (allowed values, canonical form, arch_id = sha256 of the canonical
    JSON). The first bad row is re-checked by `_check_row` for a message naming its line."""
    keys = {"arch_id", "arch", "gen", *fields}
    keys_f = keys | {"feasible"}
    genomes: list[list[Any]] = []
    for lineno, _, row in batch:
        arch = row.get("arch") if type(row) is dict else None
        if not (
            type(row) is dict
            and (row.keys() == keys or row.keys() == keys_f)
            and type(row["arch_id"]) is str
            and _is_int(row["gen"])
            and all(_is_num(row[f], False) for f in fields)
            and type(row.get("feasible", True)) is bool
            and type(arch) is dict
            and arch.keys() == _ARCH_KEYS
            and type(arch["ks"]) is list
            and type(arch["e"]) is list
            and type(arch["d"]) is list
            and arch["w"] == w
        ):
            _check_row(_Doc(f"{path}:{lineno}", _FIX_EVALUATIONS), row, "", fields, finite=False, w=w)
            raise SchemaError(f"{path}:{lineno}: not a valid row; {_FIX_EVALUATIONS}")  # pragma: no cover
        genomes.append([*arch["ks"], *arch["e"], *arch["d"], arch["r"]])
    n = len(batch)
    try:
        g = np.array(genomes)
    except (ValueError, TypeError, OverflowError):
        g = np.zeros((0,), dtype=object)
    bad = np.ones(n, dtype=bool)
    if g.dtype.kind == "i" and g.shape == (n, N_GENES):
        inactive = ~active_mask(g)
        ks, e = g[:, KS_GENES], g[:, E_GENES]
        bad = ~(
            np.isin(ks, KERNEL_CHOICES).all(axis=1)
            & np.isin(e, EXPAND_CHOICES).all(axis=1)
            & np.isin(g[:, D_GENES], DEPTH_CHOICES).all(axis=1)
            & (g[:, R_GENE] >= NETWORK_RESOLUTIONS.start)
            & (g[:, R_GENE] < NETWORK_RESOLUTIONS.stop)
            & ((ks == KERNEL_CHOICES[0]) | ~inactive).all(axis=1)
            & ((e == EXPAND_CHOICES[0]) | ~inactive).all(axis=1)
        )
        if not bad.any():
            ids = [arch_id_of(t) for t in _arch_json_bytes(g, w)]
            bad = np.array([i != row["arch_id"] for i, (_, _, row) in zip(ids, batch)], dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        lineno, _, row = batch[i]
        _check_row(_Doc(f"{path}:{lineno}", _FIX_EVALUATIONS), row, "", fields, finite=False, w=w)
        raise SchemaError(f"{path}:{lineno}: arch_id does not match its arch; {_FIX_EVALUATIONS}")
    return _Chunk([b[2] for b in batch], [b[0] for b in batch], [b[1] for b in batch], g.astype(np.int64))


def _check_header(header: Any, path: Path) -> tuple[list[str], float]:
    check_schema(header, EVALUATIONS_SCHEMA, [VERSION], str(path))
    c = _Doc(f"{path}:1", _FIX_EVALUATIONS)
    fields = c.dict_(c.get(header, "fields"), "fields")
    if not fields:
        c.fail("fields", "names no field")
    for name, meta in fields.items():
        meta = c.dict_(meta, f"fields[{name!r}]")
        for k in ("metric", "unit"):
            c.str_(c.get(meta, k, f"fields[{name!r}]."), f"fields[{name!r}].{k}")
    w = c.get(header, "width_mult")
    if not _is_num(w) or float(w) not in WIDTH_MULTS:
        c.fail("width_mult", f"expected one of {', '.join(map(str, WIDTH_MULTS))}, got {_show(w)}")
    return list(fields), float(w)


# --------------------------------------------------------------------- reading a run
@dataclass(frozen=True)
class RunFolder:
    """A run folder on disk, and the ONE reader of its files.

    Every reader validates what it returns (types, ranges, consistency) and raises one
    `Ofa2EdgeError` naming the file (and key, row or line) for anything else, so that
    `runs show`, `select`, `bundle`, `dashboard`, `compare` and a resume never meet a bad
    value. Readers take no lock: files are replaced atomically, and a torn last line of
    evaluations.jsonl (a writer killed, or still appending) is skipped."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file(CONFIG_FILE).is_file()

    def require(self) -> "RunFolder":
        if not self.exists():
            raise InvalidInputError(f"{self.path}: not a search run folder (no {CONFIG_FILE})")
        return self

    @property
    def lock_path(self) -> Path:
        """The writer lock (`core.locks.exclusive`): held by every command that writes here."""
        return self.file(LOCK_FILE)

    def config(self) -> dict[str, Any]:
        path = self.require().file(CONFIG_FILE)
        doc = _load(path, CONFIG_SCHEMA, _FIX_CONFIG)
        _check_config(doc, path)
        return doc

    def status(self) -> dict[str, Any]:
        path = self.file(STATUS_FILE)
        if not path.is_file():
            return {"state": "unknown"}
        doc = _load(path, STATUS_SCHEMA, _FIX_RESULT)
        _check_status(doc, path)
        return doc

    def front(self) -> dict[str, Any]:
        path = self.file(FRONT_FILE)
        if not path.is_file():
            raise InvalidInputError(f"{self.path}: the run has no front yet (state: {self.status().get('state')}); finish it with --resume")
        doc = _load(path, FRONT_SCHEMA, _FIX_RESULT)
        _check_front(doc, path)
        return doc

    def hypervolume(self) -> dict[str, Any]:
        path = self.file(HV_FILE)
        doc = _load(path, HV_SCHEMA, _FIX_RESULT)
        _check_hypervolume(doc, path)
        return doc

    def verification(self, device_key: str) -> dict[str, Any] | None:
        """`ofa2-edge verify`'s report for `device_key` (None if the front was not verified
        there), checked for what its readers use: members, coverage, violations, HV."""
        path = self.file(f"verification.{device_key}.json")
        if not path.is_file():
            return None
        doc = _load(path, VERIFICATION_SCHEMA, "run `ofa2-edge verify` again to rewrite it")
        _check_verification(doc, path)
        return doc

    def timings(self) -> dict[str, Any]:
        path = self.file(TIMINGS_FILE)
        doc = _load(path, TIMINGS_SCHEMA, _FIX_RESULT)
        _check_timings_doc(doc, path)
        return doc

    def checkpoint(self) -> dict[str, Any]:
        """The last checkpoint, checked on its own (see `read_archive` for the rest)."""
        path = self.file(CHECKPOINT_FILE)
        doc = _load(path, CHECKPOINT_SCHEMA, _FIX_CHECKPOINT)
        _check_checkpoint(doc, path)
        return doc

    def _chunks(self) -> Iterator[tuple[list[str], float, _Chunk]]:
        """Validated rows of evaluations.jsonl in chunks, with the header's fields and width.

        Every complete line must be a valid row: a malformed one is an error naming its
        line. Only an unterminated last line is a crash artefact (a writer killed while
        appending, or one still appending): it is skipped."""
        path = self.file(EVALUATIONS_FILE)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise InvalidInputError(f"{path}: no such file; {_FIX_EVALUATIONS}") from None
        with fh:
            first = fh.readline()
            try:
                header = json.loads(first)
            except (ValueError, RecursionError) as exc:
                raise SchemaError(f"{path}:1: not a JSON header ({str(exc)[:200]}); {_FIX_EVALUATIONS}") from None
            fields, w = _check_header(header, path)
            offset = len(first)
            batch: list[tuple[int, int, Any]] = []
            for lineno, raw in enumerate(fh, start=2):
                if not raw.endswith(b"\n"):
                    break  # the last line, unterminated: torn by a crash
                offset += len(raw)
                try:
                    row = json.loads(raw)
                except (ValueError, RecursionError) as exc:
                    raise SchemaError(f"{path}:{lineno}: not a JSON row ({str(exc)[:200]}); {_FIX_EVALUATIONS}") from None
                batch.append((lineno, offset, row))
                if len(batch) == _CHUNK_ROWS:
                    yield fields, w, _check_chunk(path, batch, fields, w)
                    batch = []
            if batch:
                yield fields, w, _check_chunk(path, batch, fields, w)

    def evaluations(self) -> Iterator[dict[str, Any]]:
        """Rows of `evaluations.jsonl`, validated (see `_chunks`)."""
        for _, _, chunk in self._chunks():
            yield from chunk.rows

    def read_archive(self, fields: Sequence[str], rows: int, gen: int) -> ArchiveRows:
        """The first `rows` rows of evaluations.jsonl as arrays, for a resume from the
        checkpoint of generation `gen` that counts them; nothing is changed on disk.

        The file must agree with the checkpoint: its fields are the run's, it has at least
        `rows` rows, those were evaluated up to `gen` and any later row after it (rows are
        in the order they were evaluated). Memory and time follow the file, not `rows`."""
        path = self.file(EVALUATIONS_FILE)
        ck = self.file(CHECKPOINT_FILE)
        kept: list[_Chunk] = []
        n, end, more, last_gen = 0, 0, False, 0
        header_fields: list[str] | None = None
        for header_fields, _, chunk in self._chunks():
            if set(header_fields) != set(fields):
                raise SchemaError(f"{path}: its fields {_show(header_fields)} are not the run's {_show(list(fields))}; {_FIX_EVALUATIONS}")
            gens = [r["gen"] for r in chunk.rows]
            for lineno, g in zip(chunk.linenos, gens):
                if g < last_gen:
                    raise SchemaError(f"{path}:{lineno}: gen {g} comes after a row of generation {last_gen} (rows are in evaluation order); {_FIX_EVALUATIONS}")
                last_gen = g
            take = min(len(chunk.rows), rows - n)
            if take > 0:
                if gens[take - 1] > gen:
                    raise SchemaError(
                        f"{ck}: archive_rows {rows} counts row {chunk.linenos[take - 1] - 1} of {path}, evaluated in generation "
                        f"{gens[take - 1]}, after the checkpoint's generation {gen}; {_FIX_CHECKPOINT}"
                    )
                kept.append(_Chunk(chunk.rows[:take], chunk.linenos[:take], chunk.ends[:take], chunk.genomes[:take]))
                n += take
                end = chunk.ends[take - 1]
            if take < len(chunk.rows):
                if gens[max(take, 0)] <= gen:
                    raise SchemaError(
                        f"{ck}: archive_rows {rows} leaves out row {chunk.linenos[take] - 1} of {path}, evaluated in generation "
                        f"{gens[take]}, up to the checkpoint's generation {gen}; {_FIX_CHECKPOINT}"
                    )
                more = True
        if header_fields is None:  # no row at all: the header alone
            with open(path, "rb") as fh:
                header_fields, _ = _check_header(json.loads(fh.readline()), path)
            if set(header_fields) != set(fields):
                raise SchemaError(f"{path}: its fields {_show(header_fields)} are not the run's {_show(list(fields))}; {_FIX_EVALUATIONS}")
        if n < rows:
            raise SchemaError(f"{ck}: archive_rows {rows} names more rows than {path} holds ({n}); {_FIX_CHECKPOINT}")
        if not kept:
            with open(path, "rb") as fh:
                end = len(fh.readline())
            return ArchiveRows(np.zeros((0, N_GENES), np.int64), np.zeros((0, len(fields))), np.zeros(0, np.int64), end, more)
        all_rows = [r for c in kept for r in c.rows]
        values = np.array([[r[f] for f in fields] for r in all_rows], dtype=np.float64)
        gens_arr = np.array([r["gen"] for r in all_rows], dtype=np.int64)
        return ArchiveRows(np.concatenate([c.genomes for c in kept]), values, gens_arr, end, more)

    def arch_of(self, arch_id: str) -> Arch | None:
        for row in self.evaluations():
            if row.get("arch_id") == arch_id:
                return Arch.from_dict(row["arch"])
        return None


def write_front_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    """The front as CSV: arch_id, every field, r, depths, the arch JSON, schema_version."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = ["feasible"] if rows and "feasible" in rows[0] else []
    writer.writerow(["arch_id", "gen", *fields, *extra, "r", "d", "arch", "schema_version"])
    for row in rows:
        arch = row["arch"]
        writer.writerow(
            [
                row["arch_id"],
                row["gen"],
                *(row[f] for f in fields),
                *(row[e] for e in extra),
                arch["r"],
                "-".join(map(str, arch["d"])),
                json.dumps(arch, sort_keys=True, separators=(",", ":")),
                VERSION,
            ]
        )
    atomic_write_text(path, buf.getvalue())


def write_doc(path: Path, schema: str, payload: dict[str, Any], *, indent: int | None = 2) -> Path:
    return write_json(path, schema, VERSION, payload, indent=indent)


def list_runs(runs_dir: Path) -> list[RunFolder]:
    """Run folders directly under `runs_dir`, oldest first by their config time."""
    if not runs_dir.is_dir():
        return []
    runs = [RunFolder(p) for p in sorted(runs_dir.iterdir()) if (p / CONFIG_FILE).is_file()]
    return sorted(runs, key=lambda r: (r.file(CONFIG_FILE).stat().st_mtime, r.run_id))
