"""The interface every latency predictor of a device implements, and its file format.

A predictor maps archs (or a (n, 46) genome batch) to milliseconds, vectorised. It also
gives quantiles, so a deployment limit can be met with stated confidence (`select --safe`).
Predictors are saved as schema-versioned JSON (arrays as lists; no pickle) and loaded back
through a registry keyed by `kind`, so a new kind is one decorated class.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import numpy as np

from ofa2_edge.core.errors import InvalidArchError, SchemaError
from ofa2_edge.core.persist import read_json, write_json
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT, Arch, as_genomes, genomes_of

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
BUILTIN_KIND_MODULES = ("lut", "linear", "trees", "prior")


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

    def to_doc(self) -> dict[str, Any]:
        """The JSON-able document `save` writes (without the schema header); also how a
        surrogate embeds another one (a transfer prior)."""
        return {"kind": self.kind, "width_mult": self.width_mult, "report": self.report, "params": self.params()}

    def save(self, path: str | Path, **meta: Any) -> Path:
        """Write the predictor as versioned JSON (atomic)."""
        return write_json(path, SURROGATE_SCHEMA, SURROGATE_VERSION, {**self.to_doc(), "meta": meta})


def surrogate_from_doc(doc: dict[str, Any], where: str = "surrogate") -> LatencySurrogate:
    """Rebuild a surrogate from `to_doc()` output."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in _registry():
        raise SchemaError(f"{where}: unknown surrogate kind {kind!r}; known: {', '.join(surrogate_kinds())}")
    try:
        model = _REGISTRY[kind].from_params(doc["params"], float(doc["width_mult"]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SchemaError(f"{where}: malformed {kind!r} surrogate parameters ({type(exc).__name__}: {exc})") from exc
    model.report = doc.get("report", {})
    return model


def load_surrogate(path: str | Path) -> LatencySurrogate:
    """Load any registered surrogate kind from its JSON file."""
    doc = read_json(path, SURROGATE_SCHEMA, [SURROGATE_VERSION])
    return surrogate_from_doc(doc, str(path))
