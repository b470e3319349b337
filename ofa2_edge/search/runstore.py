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
  to resume after an interruption (one compact line: it is rewritten at every checkpoint
  and read only by a resume).
- ``pareto.png``: the static Pareto plot.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import atomic_write_text, check_schema, read_json, write_json
from ofa2_edge.space.arch import D_GENES, E_GENES, KS_GENES, R_GENE, Arch

CONFIG_SCHEMA = "ofa2-edge/search-config"
EVALUATIONS_SCHEMA = "ofa2-edge/search-evaluations"
FRONT_SCHEMA = "ofa2-edge/search-front"
HV_SCHEMA = "ofa2-edge/search-hypervolume"
TIMINGS_SCHEMA = "ofa2-edge/search-timings"
STATUS_SCHEMA = "ofa2-edge/search-status"
CHECKPOINT_SCHEMA = "ofa2-edge/search-checkpoint"
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


def truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` lines of a JSON Lines file (drop rows written after a checkpoint)."""
    with open(path, "rb") as fh:
        head = [next(fh, b"") for _ in range(keep)]
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in head if line)
    atomic_write_text(path, data.decode("utf-8"))


# --------------------------------------------------------------------- reading a run
@dataclass(frozen=True)
class RunFolder:
    """A run folder on disk, with typed readers for what consumers need."""

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

    def config(self) -> dict[str, Any]:
        return read_json(self.require().file(CONFIG_FILE), CONFIG_SCHEMA, [VERSION])

    def status(self) -> dict[str, Any]:
        path = self.file(STATUS_FILE)
        return read_json(path, STATUS_SCHEMA, [VERSION]) if path.is_file() else {"state": "unknown"}

    def front(self) -> dict[str, Any]:
        path = self.file(FRONT_FILE)
        if not path.is_file():
            raise InvalidInputError(f"{self.path}: the run has no front yet (state: {self.status().get('state')}); finish it with --resume")
        return read_json(path, FRONT_SCHEMA, [VERSION])

    def hypervolume(self) -> dict[str, Any]:
        return read_json(self.file(HV_FILE), HV_SCHEMA, [VERSION])

    def timings(self) -> dict[str, Any]:
        return read_json(self.file(TIMINGS_FILE), TIMINGS_SCHEMA, [VERSION])

    def evaluations(self) -> Iterator[dict[str, Any]]:
        """Rows of `evaluations.jsonl` after checking its header."""
        path = self.file(EVALUATIONS_FILE)
        with open(path, "rb") as fh:
            first = fh.readline()
            try:
                header = json.loads(first)
            except ValueError as exc:
                raise SchemaError(f"{path}: first line is not a JSON header ({exc})") from exc
            check_schema(header, EVALUATIONS_SCHEMA, [VERSION], str(path))
            for lineno, raw in enumerate(fh, start=2):
                if not raw.strip():
                    continue
                try:
                    yield json.loads(raw)
                except ValueError:
                    if raw.endswith(b"\n"):
                        raise SchemaError(f"{path}:{lineno}: unreadable row") from None
                    return  # a torn last line from a crash

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
