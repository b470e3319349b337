"""The interface every latency predictor of a device implements, and its file format.

A predictor maps archs (or a (n, 46) genome batch) to milliseconds, vectorised. It also
gives quantiles, so a deployment limit can be met with stated confidence (`select --safe`).
Predictors are saved as schema-versioned JSON (arrays as lists; no pickle) and loaded back
through a registry keyed by `kind`, so a new kind is one decorated class.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import numpy as np

from ofa2_edge.core.errors import InvalidArchError, InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.persist import read_json, write_json
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS, DEFAULT_WIDTH_MULT, WIDTH_MULTS, Arch, as_genomes, genomes_of

SURROGATE_SCHEMA = "ofa2-edge/latency-surrogate"
SURROGATE_VERSION = 1

ArchBatch = Sequence[Arch] | np.ndarray

_REGISTRY: dict[str, type["LatencySurrogate"]] = {}
S = TypeVar("S", bound="type[LatencySurrogate]")


def register_surrogate(kind: str) -> Callable[[S], S]:
    """Class decorator: make a surrogate kind loadable from its saved `kind` field."""

    def deco(cls: S) -> S:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


#: Modules defining the built-in kinds; imported on first lookup so that loading a saved
#: surrogate works without the caller importing its kind's module first.
BUILTIN_KIND_MODULES = ("lut", "linear", "trees", "prior", "group", "verified")


def _registry() -> dict[str, type["LatencySurrogate"]]:
    for module in BUILTIN_KIND_MODULES:
        importlib.import_module(f"ofa2_edge.surrogates.{module}")
    return _REGISTRY


def surrogate_kinds() -> list[str]:
    return sorted(_registry())


def as_genome_batch(archs: ArchBatch, width_mult: float | None = None) -> np.ndarray:
    """Accept a list of archs or a genome array; return a (n, 46) genome array.

    A genome carries no width multiplier, so with `width_mult` given, archs of another
    width are refused here rather than silently priced as the model's width.
    """
    if isinstance(archs, np.ndarray):
        return as_genomes(archs)
    archs = list(archs)
    if width_mult is not None:
        for a in archs:
            if not isinstance(a, Arch):
                raise InvalidArchError(f"expected Arch values or a (n, 46) genome array, got {type(a).__name__}")
            if a.w != width_mult:
                raise InvalidArchError(
                    f"{a.id}: arch has width multiplier {a.w}, this predictor was built for w{width_mult}"
                )
    return genomes_of(archs)


class LatencySurrogate(ABC):
    """Predicts a device's latency in ms for subnets of one width multiplier."""

    kind: ClassVar[str] = ""

    def __init__(self, width_mult: float = DEFAULT_WIDTH_MULT) -> None:
        self.width_mult = width_mult
        self.report: dict[str, Any] = {}

    @abstractmethod
    def fit(self, archs: ArchBatch, latencies_ms: np.ndarray) -> "LatencySurrogate":
        """Learn from measured (arch, latency) pairs; returns self."""

    @abstractmethod
    def predict(self, archs: ArchBatch) -> np.ndarray:
        """Point predictions in ms, shape (n,)."""

    @abstractmethod
    def predict_quantile(self, archs: ArchBatch, q: float) -> np.ndarray:
        """The `q` quantile (0 < q < 1) of the latency in ms, shape (n,)."""

    def genomes(self, archs: ArchBatch) -> np.ndarray:
        """The (n, 46) genome batch of `archs`, refusing archs of another width."""
        return as_genome_batch(archs, self.width_mult)

    def predict_interval(self, archs: ArchBatch, coverage: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """Central interval holding the latency with probability `coverage`."""
        g = self.genomes(archs)
        return self.predict_quantile(g, (1 - coverage) / 2), self.predict_quantile(g, (1 + coverage) / 2)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted predictor, as JSON-able values."""

    @classmethod
    @abstractmethod
    def from_params(cls, params: dict[str, Any], width_mult: float) -> "LatencySurrogate":
        """Rebuild from `params()`."""

    def check_resolutions(self) -> tuple[int, ...]:
        """Resolutions at which a loaded predictor is sanity-checked (its min and max nets)."""
        return DEFAULT_RESOLUTIONS

    def check_loaded(self, where: str) -> None:
        """Refuse a loaded predictor whose outputs no device can produce: the smallest and
        largest nets at `check_resolutions()` must predict finite latencies within
        [MIN_PREDICTED_MS, MAX_PREDICTED_MS], with a finite 80 % interval, lower <= upper."""
        archs = [a for r in self.check_resolutions() for a in (Arch.smallest(r, self.width_mult), Arch.largest(r, self.width_mult))]
        if not archs:
            return
        with np.errstate(all="ignore"):
            try:
                mean = np.asarray(self.predict(archs), dtype=np.float64)
                lo, hi = (np.asarray(v, dtype=np.float64) for v in self.predict_interval(archs, 0.8))
            except (Ofa2EdgeError, ArithmeticError, ValueError) as exc:
                raise SchemaError(
                    f"{where}: the {self.kind!r} predictor cannot price the min/max nets ({type(exc).__name__}: {exc}); "
                    "fit again (`ofa2-edge fit --device <key>`)"
                ) from exc
        for i, arch in enumerate(archs):
            m, a, b = float(mean[i]), float(lo[i]), float(hi[i])
            if not (math.isfinite(m) and MIN_PREDICTED_MS <= m <= MAX_PREDICTED_MS):
                raise SchemaError(
                    f"{where}: the {self.kind!r} predictor gives {m!r} ms for the {arch.id} ({arch.r} px); a latency "
                    f"must be finite and within [{MIN_PREDICTED_MS}, {MAX_PREDICTED_MS:.0f}] ms. Its parameters are "
                    f"damaged: fit again (`ofa2-edge fit --device <key>`)"
                )
            if not (math.isfinite(a) and math.isfinite(b) and a <= b):
                raise SchemaError(
                    f"{where}: the {self.kind!r} predictor gives the interval [{a!r}, {b!r}] ms for {arch.id}; "
                    "it must be finite with lower <= upper. Fit again (`ofa2-edge fit --device <key>`)"
                )

    def to_doc(self) -> dict[str, Any]:
        """The JSON-able document `save` writes (without the schema header); also how a
        surrogate embeds another one (a transfer prior)."""
        return {"kind": self.kind, "width_mult": self.width_mult, "report": self.report, "params": self.params()}

    def save(self, path: str | Path, **meta: Any) -> Path:
        """Write the predictor as versioned JSON (atomic)."""
        return write_json(path, SURROGATE_SCHEMA, SURROGATE_VERSION, {**self.to_doc(), "meta": meta})


class WrappedSurrogate(LatencySurrogate):
    """A predictor around another one (`base`): the base's point prediction and fit, its name
    `<kind>[<the base's name>]`; a subclass widens the base's quantiles."""

    #: What to do where a wrapper has no base (the end of the error saying so).
    missing_base: ClassVar[str] = ""

    def __init__(self, width_mult: float = DEFAULT_WIDTH_MULT, base: LatencySurrogate | None = None) -> None:
        super().__init__(width_mult)
        if base is not None and base.width_mult != width_mult:
            raise InvalidInputError(f"a w{width_mult} {self.kind} predictor needs a w{width_mult} base, got w{base.width_mult}")
        self.base = base

    @property
    def name(self) -> str:
        """`<kind>[<the base's name>]`, as fit reports and `tables show` print it."""
        base = self.base
        return f"{self.kind}[{getattr(base, 'name', base.kind) if base is not None else '-'}]"

    def _base(self) -> LatencySurrogate:
        if self.base is None:
            raise InvalidInputError(f"this {self.kind} predictor has no base predictor; {self.missing_base}")
        return self.base

    def fit(self, archs: ArchBatch, latencies_ms: np.ndarray) -> "WrappedSurrogate":
        self._base().fit(archs, latencies_ms)
        return self

    def predict(self, archs: ArchBatch) -> np.ndarray:
        return self._base().predict(self.genomes(archs))

    def check_resolutions(self) -> tuple[int, ...]:
        return self._base().check_resolutions()


#: Bounds of a plausible predicted latency (100 ns to about 3 hours).
MIN_PREDICTED_MS = 1e-4
MAX_PREDICTED_MS = 1e7


def finite_array(value: Any, name: str, shape: tuple[int, ...] | None = None, min_value: float | None = None) -> np.ndarray:
    """A float64 array from saved parameters: finite, of `shape` (if given), >= `min_value`.

    Raises ValueError naming the parameter (`surrogate_from_doc` makes it a SchemaError)."""
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise ValueError(f"{name}: expected a list of numbers, got {type(value).__name__}")
    arr = np.asarray(value, dtype=np.float64)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: holds a non-finite value")
    if min_value is not None and arr.size and float(arr.min()) < min_value:
        raise ValueError(f"{name}: holds {float(arr.min())!r}, below {min_value}")
    return arr


def finite_number(value: Any, name: str, min_value: float | None = None) -> float:
    """A finite float from saved parameters (>= `min_value`), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or (min_value is not None and x < min_value):
        raise ValueError(f"{name}: {value!r} is not a finite number" + (f" >= {min_value}" if min_value is not None else ""))
    return x


def _check_report(report: Any, where: str) -> dict[str, Any]:
    """A fit report as `tables show/list` and `format_report` read it, or SchemaError."""
    if not isinstance(report, dict):
        raise SchemaError(f"{where}: 'report' must be an object, got {type(report).__name__}; fit again")
    held = report.get("held_out")
    if held is None:
        return report
    try:
        if not isinstance(held, dict):
            raise TypeError("held_out: expected an object")
        for key in ("share_within_5pct", "share_within_10pct", "mape_pct", "rmse_ms"):
            finite_number(held.get(key), f"held_out.{key}", 0.0)
        if held.get("spearman") is not None:
            finite_number(held["spearman"], "held_out.spearman")
        if not isinstance(held.get("method"), str) or not isinstance(report.get("name"), str):
            raise TypeError("held_out.method and name must be strings")
        if isinstance(report.get("n_train"), bool) or not isinstance(report.get("n_train"), int):
            raise TypeError("n_train: expected an integer")
        sel = report.get("selection")
        if sel is not None:
            if not isinstance(sel, dict) or not isinstance(sel.get("candidates"), list) or not isinstance(
                sel.get("skipped"), list
            ):
                raise ValueError("selection: expected an object with candidates and skipped lists")
            for row in sel["candidates"]:
                if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                    raise TypeError("selection.candidates: expected objects with a name")
                for key in ("cv_score", "cv_share_within_10pct", "cv_mape_pct"):
                    finite_number(row.get(key), f"selection.candidates.{key}")
                if isinstance(row.get("complexity"), bool) or not isinstance(row.get("complexity"), int):
                    raise TypeError("selection.candidates.complexity: expected an integer")
                if row.get("cv_spearman") is not None:
                    finite_number(row["cv_spearman"], "selection.candidates.cv_spearman")
            for row in sel["skipped"]:
                if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                    raise TypeError("selection.skipped: expected objects with a name")
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{where}: malformed fit report ({exc}); fit again (`ofa2-edge fit --device <key>`)") from exc
    return report


def surrogate_from_doc(doc: dict[str, Any], where: str = "surrogate") -> LatencySurrogate:
    """Rebuild a surrogate from `to_doc()` output, validated: each kind checks its own
    parameters (`from_params`), then the loaded model must give plausible latencies for the
    min and max nets (`check_loaded`); anything else is a SchemaError naming `where`."""
    if not isinstance(doc, dict):
        raise SchemaError(f"{where}: expected a surrogate object, got {type(doc).__name__}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in _registry():
        raise SchemaError(f"{where}: unknown surrogate kind {kind!r}; known: {', '.join(surrogate_kinds())}")
    width = doc.get("width_mult")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or float(width) not in WIDTH_MULTS:
        raise SchemaError(f"{where}: width_mult {width!r} is not one of {', '.join(map(str, WIDTH_MULTS))}")
    if not isinstance(doc.get("params"), dict):
        raise SchemaError(f"{where}: 'params' must be an object of the {kind!r} predictor's parameters")
    report = _check_report(doc.get("report", {}), where)
    try:
        model = _REGISTRY[kind].from_params(doc["params"], float(width))
    except SchemaError as exc:
        raise SchemaError(f"{where}: {exc}") from exc
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, Ofa2EdgeError) as exc:
        raise SchemaError(
            f"{where}: malformed {kind!r} surrogate parameters ({type(exc).__name__}: {exc}); fit again "
            "(`ofa2-edge fit --device <key>`) or restore the file"
        ) from exc
    model.report = report
    model.check_loaded(where)
    return model


def load_surrogate(path: str | Path) -> LatencySurrogate:
    """Load any registered surrogate kind from its JSON file."""
    doc = read_json(path, SURROGATE_SCHEMA, [SURROGATE_VERSION])
    return surrogate_from_doc(doc, str(path))
