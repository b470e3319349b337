"""An accuracy table on disk: `accuracy_tables/<name>/`, the twin of a device's latency table.

- `table.json`: what the table is bound to, written once by the first `evaluate`: the
  supernet (its weights file's sha256, width, resolutions, classes) and the dataset (its
  fingerprint, classes, split sizes), and the evaluation settings (BN-recalibration subset
  seed and size, batch size). Evaluating another supernet or dataset into it is refused;
- `evaluations.jsonl`: one row per evaluated subnet, appended and fsynced as each finishes:
  top-1, top-5 and loss on the `val` (selection) part, the same on the `test` part (only
  reported: predictors and searches read `val` alone), the BN subset it was recalibrated
  on, and the sha256 of its stored probabilities. `repeat` 0 is the measurement; `repeat` 1
  rows are the same subnet recalibrated on a different BN batch (the noise floor);
- `probs/val/<arch id>.npy`, `probs/test/<arch id>.npy`: each subnet's class probabilities
  (float16, shape (n images, n classes), `np.save`, read with `allow_pickle=False` and checked
  against the row's sha256, shape and sums), so ensembles are scored exactly without
  running the nets again. The file is written before its row: a row always has its file;
- `predictor.json`: the top-1 predictor fitted on the table (`ofa2-edge fit-accuracy --table`).

Reading is strict, like the latency table's: a malformed middle row is an error naming
file and line; only an unterminated last row (a killed writer's) is skipped. Writers hold
`accuracy_tables/.<name>.lock`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.locks import exclusive
from ofa2_edge.core.persist import append_jsonl, atomic_write_bytes, iter_jsonl_numbered, read_json, write_json
from ofa2_edge.core.workspace import DEVICE_KEY_PATTERN, Workspace
from ofa2_edge.space.arch import Arch

TABLE_SCHEMA = "ofa2-edge/accuracy-table"
TABLE_VERSION = 1
ROW_SCHEMA = "ofa2-edge/accuracy-row"
ROW_VERSION = 1
TABLE = "table.json"
EVALUATIONS = "evaluations.jsonl"
PREDICTOR = "predictor.json"
PROBS = "probs"
PARTS_STORED = ("val", "test")
ROW_FIX = "fix or remove that line (the table was not changed)"
MAX_LINE_BYTES = 64 * 1024
#: float16 probabilities of one image sum to 1 within this (n classes x half-precision rounding).
PROB_SUM_TOL = 2e-2


def accuracy_tables_dir(workspace: Workspace) -> Path:
    """`accuracy_tables/` of a workspace (beside `latency_tables/`)."""
    return workspace.root / "accuracy_tables"


@dataclass(frozen=True)
class PartScores:
    """Top-1, top-5 (percent) and mean cross-entropy of one subnet on one part."""

    top1_pct: float
    top5_pct: float
    loss: float
    n_images: int

    def to_dict(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}top1_pct": self.top1_pct,
            f"{prefix}top5_pct": self.top5_pct,
            f"{prefix}loss": self.loss,
            f"{prefix}n_images": self.n_images,
        }


@dataclass(frozen=True)
class AccuracyRow:
    """One evaluated subnet (see the module docstring for the fields)."""

    arch: Arch
    repeat: int
    bn_seed: int
    bn_images: int
    val: PartScores
    test: PartScores | None
    probs_sha256: dict[str, str]  # part -> sha256 of probs/<part>/<arch id>.npy (repeat 0 only)
    elapsed_s: float
    evaluated_at: str

    @property
    def arch_id(self) -> str:
        return self.arch.id

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ROW_SCHEMA,
            "schema_version": ROW_VERSION,
            "arch_id": self.arch.id,
            "arch": self.arch.to_dict(),
            "repeat": self.repeat,
            "bn_seed": self.bn_seed,
            "bn_images": self.bn_images,
            **self.val.to_dict("val_"),
            **(self.test.to_dict("test_") if self.test is not None else {}),
            "probs_sha256": dict(self.probs_sha256),
            "elapsed_s": self.elapsed_s,
            "evaluated_at": self.evaluated_at,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str) -> "AccuracyRow":
        """A row, checked field by field; SchemaError names `where` and the field."""

        def bad(field: str, what: str) -> SchemaError:
            return SchemaError(f"{where}: field {field} {what}; {ROW_FIX}")

        if doc.get("schema") != ROW_SCHEMA or doc.get("schema_version") != ROW_VERSION:
            raise bad(
                "schema/schema_version",
                f"is {doc.get('schema')!r} v{doc.get('schema_version')!r}, expected {ROW_SCHEMA!r} v{ROW_VERSION}",
            )
        known = {
            "schema", "schema_version", "arch_id", "arch", "repeat", "bn_seed", "bn_images", "probs_sha256",
            "elapsed_s", "evaluated_at",
            *(f"{p}_{k}" for p in PARTS_STORED for k in ("top1_pct", "top5_pct", "loss", "n_images")),
        }  # fmt: skip
        extra = sorted(set(doc) - known)
        if extra:
            raise bad(extra[0], "is not a field of an accuracy row")
        try:
            arch = Arch.from_dict(doc.get("arch"))  # type: ignore[arg-type]
        except (Ofa2EdgeError, TypeError, ValueError, OverflowError) as exc:
            raise bad("arch", f"is not a valid arch ({exc})") from exc
        if doc.get("arch_id") != arch.id:
            raise bad("arch_id", f"{str(doc.get('arch_id'))[:40]!r} is not the id of its arch ({arch.id})")

        def integer(field: str, low: int, high: int) -> int:
            v = doc.get(field)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise bad(field, f"must be an integer in {low}..{high}, got {str(v)[:40]!r}")
            return v

        def number(field: str, low: float, high: float) -> float:
            v = doc.get(field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                raise bad(field, f"must be a finite number in {low}..{high}, got {str(v)[:40]!r}")
            return float(v)

        def part(prefix: str) -> PartScores:
            return PartScores(
                number(f"{prefix}top1_pct", 0.0, 100.0),
                number(f"{prefix}top5_pct", 0.0, 100.0),
                number(f"{prefix}loss", 0.0, 1e6),
                integer(f"{prefix}n_images", 1, 1 << 40),
            )

        val = part("val_")
        if val.top5_pct < val.top1_pct:
            raise bad("val_top5_pct", f"{val.top5_pct} is below val_top1_pct {val.top1_pct}")
        test = part("test_") if "test_top1_pct" in doc else None
        sums = doc.get("probs_sha256")
        if not isinstance(sums, dict) or any(
            k not in PARTS_STORED or not isinstance(v, str) or len(v) != 64 for k, v in sums.items()
        ):
            raise bad("probs_sha256", "must map val/test to 64-hex sha256 texts")
        repeat = integer("repeat", 0, 1)
        if repeat == 0 and "val" not in sums:
            raise bad("probs_sha256", "lacks 'val': a measurement row keeps its validation probabilities")
        evaluated_at = doc.get("evaluated_at")
        if not isinstance(evaluated_at, str) or len(evaluated_at) > 64:
            raise bad("evaluated_at", "must be an ISO time text")
        return cls(
            arch=arch,
            repeat=repeat,
            bn_seed=integer("bn_seed", 0, 2**63 - 1),
            bn_images=integer("bn_images", 1, 1 << 40),
            val=val,
            test=test,
            probs_sha256=dict(sums),
            elapsed_s=number("elapsed_s", 0.0, 1e9),
            evaluated_at=evaluated_at,
        )


@dataclass(frozen=True)
class TableBinding:
    """What an accuracy table is bound to: one supernet's weights and one dataset's split."""

    supernet_sha256: str
    width_mult: float
    dataset_fingerprint: str
    classes: tuple[str, ...]
    n_val: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "supernet_sha256": self.supernet_sha256,
            "width_mult": self.width_mult,
            "dataset_fingerprint": self.dataset_fingerprint,
            "classes": list(self.classes),
            "n_val": self.n_val,
            "n_test": self.n_test,
        }


class AccuracyTable:
    """The folder of one accuracy table; the one reader and writer of its files."""

    def __init__(self, root: str | Path, name: str) -> None:
        if not DEVICE_KEY_PATTERN.match(name or ""):
            raise InvalidInputError(
                f"accuracy table name {name!r} is not valid: lowercase letters, digits, '.', '_', '-' (e.g. fmnist-w1)"
            )
        self.name = name
        self.folder = Path(root) / name

    @classmethod
    def of(cls, workspace: Workspace, name: str) -> "AccuracyTable":
        return cls(accuracy_tables_dir(workspace), name)

    @property
    def table_path(self) -> Path:
        return self.folder / TABLE

    @property
    def evaluations_path(self) -> Path:
        return self.folder / EVALUATIONS

    @property
    def predictor_path(self) -> Path:
        return self.folder / PREDICTOR

    @property
    def lock_path(self) -> Path:
        return self.folder.parent / f".{self.name}.lock"

    def probs_path(self, part: str, arch_id: str) -> Path:
        if part not in PARTS_STORED:
            raise InvalidInputError(f"probabilities are kept for {', '.join(PARTS_STORED)}, not {part!r}")
        return self.folder / PROBS / part / f"{arch_id}.npy"

    def exists(self) -> bool:
        return self.table_path.is_file()

    def lock(self, wait_s: float = 0.0) -> AbstractContextManager[None]:
        """The writer lock: `evaluate` and `fit-accuracy --table` hold it."""
        return exclusive(self.lock_path, f"accuracy table {self.name}", wait_s)

    def require(self) -> "AccuracyTable":
        """This table, or an error saying how to make it."""
        if not self.exists():
            raise InvalidInputError(
                f"no accuracy table {self.name!r} ({self.table_path} is missing); make one with "
                f"`ofa2-edge evaluate --supernet supernets/NAME --data DATA --table {self.name}`"
            )
        return self

    # ------------------------------------------------------------------ binding
    def info(self) -> dict[str, Any] | None:
        """`table.json`, checked (None when the table does not exist yet)."""
        if not self.table_path.exists():
            return None
        doc = read_json(self.table_path, TABLE_SCHEMA, [TABLE_VERSION])
        fix = "restore it from a copy, or remove the table folder and evaluate again"
        for key, kind in (("binding", dict), ("evaluation", dict), ("resolutions", list), ("name", str)):
            if not isinstance(doc.get(key), kind):
                raise SchemaError(f"{self.table_path}: field {key!r} must be a {kind.__name__}; {fix}")
        b = doc["binding"]
        if not (
            isinstance(b.get("supernet_sha256"), str)
            and isinstance(b.get("dataset_fingerprint"), str)
            and isinstance(b.get("classes"), list)
            and b["classes"]
            and all(isinstance(c, str) for c in b["classes"])
            and all(isinstance(b.get(k), int) and not isinstance(b.get(k), bool) and b[k] >= 0 for k in ("n_val", "n_test"))
            and b.get("width_mult") in (1.0, 1.2)
        ):
            raise SchemaError(
                f"{self.table_path}: field 'binding' needs supernet_sha256, width_mult, dataset_fingerprint, "
                f"classes, n_val, n_test; {fix}"
            )
        res = doc["resolutions"]
        if not res or any(isinstance(r, bool) or not isinstance(r, int) or not 32 <= r <= 1024 for r in res):
            raise SchemaError(f"{self.table_path}: field 'resolutions' must list pixel sizes in 32..1024; {fix}")
        return doc

    def binding(self) -> TableBinding:
        doc = self.require().info()
        assert doc is not None
        b = doc["binding"]
        return TableBinding(
            b["supernet_sha256"], float(b["width_mult"]), b["dataset_fingerprint"], tuple(b["classes"]), b["n_val"], b["n_test"]
        )

    def resolutions(self) -> tuple[int, ...]:
        doc = self.require().info()
        assert doc is not None
        return tuple(sorted(set(doc["resolutions"])))

    def bind(self, binding: TableBinding, resolutions: tuple[int, ...], evaluation: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Write `table.json` on first use; later, refuse another supernet, dataset or settings.

        New resolutions extend the table (a design at other sizes adds rows); anything else
        that differs is an error naming both values."""
        doc = self.info()
        if doc is None:
            write_json(
                self.table_path,
                TABLE_SCHEMA,
                TABLE_VERSION,
                {
                    "name": self.name,
                    "binding": binding.to_dict(),
                    "resolutions": sorted(resolutions),
                    "evaluation": dict(evaluation),
                    "meta": dict(meta),
                    "created_at": datetime.now(timezone.utc).isoformat(),
                },
            )
            return
        old = doc["binding"]
        new = binding.to_dict()
        labels = {
            "supernet_sha256": "supernet weights (sha256)",
            "width_mult": "supernet width",
            "dataset_fingerprint": "dataset fingerprint",
            "classes": "dataset classes",
            "n_val": "validation part size",
            "n_test": "test part size",
        }
        for key, label in labels.items():
            if old.get(key) != new[key]:
                raise InvalidInputError(
                    f"accuracy table {self.name} ({self.table_path}) was evaluated with {label} "
                    f"{_short(old.get(key))}, this evaluation has {_short(new[key])}; give another --table name, or "
                    "the supernet and data the table was made with"
                )
        for key, value in evaluation.items():
            if doc["evaluation"].get(key) != value:
                raise InvalidInputError(
                    f"accuracy table {self.name} ({self.table_path}) was evaluated with {key}={_short(doc['evaluation'].get(key))}, "
                    f"this evaluation asks {key}={_short(value)}; rows of one table must be comparable: give another --table "
                    "name or the table's settings"
                )
        merged = sorted(set(doc["resolutions"]) | set(resolutions))
        if merged != doc["resolutions"]:
            payload = {k: v for k, v in doc.items() if k not in ("schema", "schema_version")}
            payload["resolutions"] = merged
            write_json(self.table_path, TABLE_SCHEMA, TABLE_VERSION, payload)

    def check_binding(self, binding: TableBinding) -> None:
        """Refuse a supernet or dataset the table was not made with (read-only use, e.g. bundles)."""
        old = self.binding()
        for field, label in (("supernet_sha256", "supernet weights (sha256)"), ("dataset_fingerprint", "dataset fingerprint")):
            if getattr(old, field) != getattr(binding, field):
                raise InvalidInputError(
                    f"accuracy table {self.name} belongs to {label} {getattr(old, field)[:16]}..., not "
                    f"{getattr(binding, field)[:16]}...; use the table made with this supernet and data"
                )

    # ------------------------------------------------------------------ rows
    def append(self, row: AccuracyRow, probs: Mapping[str, np.ndarray] | None = None) -> AccuracyRow:
        """Store `probs` (part -> (n, classes) probabilities) as float16 files, then the row,
        fsynced: a row never names a file that is not there. Returns the row as stored."""
        sums: dict[str, str] = {}
        if probs:
            binding = self.binding()
            for part, p in probs.items():
                arr = np.ascontiguousarray(p, dtype=np.float16)
                n = binding.n_val if part == "val" else binding.n_test
                _check_probs(arr, (n, len(binding.classes)), f"probabilities of {row.arch_id} ({part})")
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                data = buf.getvalue()
                atomic_write_bytes(self.probs_path(part, row.arch_id), data)
                sums[part] = hashlib.sha256(data).hexdigest()
        stored = dataclasses.replace(row, probs_sha256=sums or dict(row.probs_sha256))
        doc = stored.to_dict()
        AccuracyRow.from_dict(doc, f"{self.evaluations_path} (new row)")  # never write what we could not read
        append_jsonl(self.evaluations_path, doc)
        return stored

    def rows(self) -> Iterator[AccuracyRow]:
        """Every row, validated; a malformed one stops with its file and line."""
        if not self.evaluations_path.exists():
            return
        width = self.binding().width_mult
        for lineno, doc in iter_jsonl_numbered(self.evaluations_path, MAX_LINE_BYTES):
            where = f"{self.evaluations_path}:{lineno}"
            row = AccuracyRow.from_dict(doc, where)
            if row.arch.w != width:
                raise SchemaError(f"{where}: field arch has width {row.arch.w}, the table's supernet is w{width}; {ROW_FIX}")
            yield row

    def measured(self, repeat: int = 0) -> dict[str, AccuracyRow]:
        """Rows of `repeat` (0: the measurements) by arch id; the first one of an arch wins."""
        out: dict[str, AccuracyRow] = {}
        for row in self.rows():
            if row.repeat == repeat:
                out.setdefault(row.arch_id, row)
        return out

    def dataset(self) -> tuple[list[Arch], np.ndarray]:
        """(archs, val top-1 %) of every measured subnet: what predictors are fitted on.
        Test figures are never part of it (split hygiene)."""
        rows = list(self.measured(0).values())
        return [r.arch for r in rows], np.array([r.val.top1_pct for r in rows], dtype=np.float64)

    def probabilities(self, arch_id: str, part: str = "val") -> np.ndarray:
        """A subnet's stored probabilities, (n images, n classes) float16, checked against its row."""
        row = self.measured(0).get(arch_id)
        if row is None:
            raise InvalidInputError(f"accuracy table {self.name} has no evaluation of {arch_id}")
        if part not in row.probs_sha256:
            raise InvalidInputError(f"accuracy table {self.name} kept no {part} probabilities of {arch_id}")
        path = self.probs_path(part, arch_id)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SchemaError(f"{path}: cannot read ({exc}); evaluate {arch_id} again into a new table") from exc
        if hashlib.sha256(data).hexdigest() != row.probs_sha256[part]:
            raise SchemaError(f"{path}: sha256 differs from its row in {self.evaluations_path}: modified or corrupted")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SchemaError(f"{path}: not a .npy array ({exc})") from exc
        binding = self.binding()
        n = binding.n_val if part == "val" else binding.n_test
        _check_probs(arr, (n, len(binding.classes)), str(path))
        return arr

    def noise_floor(self) -> dict[str, Any] | None:
        """Spearman between the two evaluations of the repeated subnets and their mean |delta top-1|
        (None with fewer than 3 repeated subnets)."""
        first, again = self.measured(0), self.measured(1)
        common = sorted(set(first) & set(again))
        if len(common) < 3:
            return None
        from scipy.stats import spearmanr

        a = np.array([first[i].val.top1_pct for i in common])
        b = np.array([again[i].val.top1_pct for i in common])
        rho = float(spearmanr(a, b).statistic) if a.std() > 0 and b.std() > 0 else float("nan")
        return {
            "n_repeated": len(common),
            "spearman": rho,
            "mean_abs_delta_top1_pct": float(np.abs(a - b).mean()),
            "max_abs_delta_top1_pct": float(np.abs(a - b).max()),
        }

    def summary(self) -> dict[str, Any]:
        doc = self.require().info() or {}
        rows = list(self.rows())
        first = [r for r in rows if r.repeat == 0]
        top1 = [r.val.top1_pct for r in first]
        return {
            "name": self.name,
            "binding": doc.get("binding"),
            "resolutions": doc.get("resolutions"),
            "evaluation": doc.get("evaluation"),
            "n_evaluated": len({r.arch_id for r in first}),
            "n_repeated": len({r.arch_id for r in rows if r.repeat == 1}),
            "val_top1_pct_range": [min(top1), max(top1)] if top1 else None,
            "noise_floor": self.noise_floor(),
            "predictor": self.predictor_path.is_file(),
        }

    @classmethod
    def all(cls, root: str | Path) -> list["AccuracyTable"]:
        folder = Path(root)
        names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        return [cls(folder, n) for n in names if DEVICE_KEY_PATTERN.match(n) and (folder / n / TABLE).is_file()]


def _check_probs(arr: np.ndarray, shape: tuple[int, int], where: str) -> None:
    if arr.dtype != np.float16:
        raise SchemaError(f"{where}: expected float16 probabilities, got {arr.dtype}")
    if arr.shape != shape:
        raise SchemaError(f"{where}: expected shape {shape} (images, classes), got {arr.shape}")
    a = arr.astype(np.float32)
    if not np.isfinite(a).all() or (a < 0).any() or (a > 1.001).any():
        raise SchemaError(f"{where}: probabilities must be finite values in [0, 1]")
    if shape[0] and np.abs(a.sum(axis=1) - 1.0).max() > PROB_SUM_TOL:
        raise SchemaError(f"{where}: an image's probabilities do not sum to 1")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def accuracy_source(text: str, workspace: Workspace) -> Path:
    """The predictor file `search --accuracy TEXT` means: a path to a predictor JSON, or the
    name of an accuracy table (its fitted `predictor.json`)."""
    path = Path(text)
    if path.is_file() or not DEVICE_KEY_PATTERN.match(text) or text.endswith(".json"):
        return path
    table = AccuracyTable.of(workspace, text)
    if not table.exists():
        return path  # neither a file nor a table: the loader says the file is missing
    if not table.predictor_path.is_file():
        raise InvalidInputError(
            f"accuracy table {text} has no fitted predictor ({table.predictor_path}); run "
            f"`ofa2-edge fit-accuracy --table {text}` first"
        )
    return table.predictor_path


def table_space(text: str | None, workspace: Workspace) -> tuple[tuple[int, ...], float] | None:
    """(resolutions, width) of the accuracy table `text` names (None when it names no table)."""
    if not text or not DEVICE_KEY_PATTERN.match(text) or Path(text).is_file():
        return None
    table = AccuracyTable.of(workspace, text)
    if not table.exists():
        return None
    return table.resolutions(), table.binding().width_mult
