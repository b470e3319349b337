"""The interface every latency predictor of a device implements, and its file format.

A predictor maps archs (or a (n, 46) genome batch) to milliseconds, vectorised. It also
gives quantiles, so a deployment limit can be met with stated confidence (`select --safe`).
Predictors are saved as schema-versioned JSON (arrays as lists; no pickle) and loaded back
through a registry keyed by `kind`, so a new kind is one decorated class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import numpy as np

from ofa2_edge.errors import SchemaError
from ofa2_edge.persist import read_json, write_json
from ofa2_edge.space import DEFAULT_WIDTH_MULT, Arch, as_genomes, genomes_of

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


def surrogate_kinds() -> list[str]:
    return sorted(_REGISTRY)


def as_genome_batch(archs: ArchBatch) -> np.ndarray:
    """Accept a list of archs or a genome array; return a (n, 46) genome array."""
    if isinstance(archs, np.ndarray):
        return as_genomes(archs)
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

    def predict_interval(self, archs: ArchBatch, coverage: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """Central interval holding the latency with probability `coverage`."""
        g = as_genome_batch(archs)
        return self.predict_quantile(g, (1 - coverage) / 2), self.predict_quantile(g, (1 + coverage) / 2)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted predictor, as JSON-able values."""

    @classmethod
    @abstractmethod
    def from_params(cls, params: dict[str, Any], width_mult: float) -> "LatencySurrogate":
        """Rebuild from `params()`."""

    def save(self, path: str | Path, **meta: Any) -> Path:
        """Write the predictor as versioned JSON (atomic)."""
        return write_json(
            path,
            SURROGATE_SCHEMA,
            SURROGATE_VERSION,
            {"kind": self.kind, "width_mult": self.width_mult, "meta": meta, "report": self.report, "params": self.params()},
        )


def load_surrogate(path: str | Path) -> LatencySurrogate:
    """Load any registered surrogate kind from its JSON file."""
    doc = read_json(path, SURROGATE_SCHEMA, [SURROGATE_VERSION])
    kind = doc.get("kind")
    if kind not in _REGISTRY:
        raise SchemaError(f"{path}: unknown surrogate kind {kind!r}; known: {', '.join(surrogate_kinds())}")
    model = _REGISTRY[kind].from_params(doc["params"], float(doc["width_mult"]))
    model.report = doc.get("report", {})
    return model
