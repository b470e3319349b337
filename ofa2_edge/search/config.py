"""The search config: what defines a search, how a run folder's copy is read back, and the
hypervolume reference point it resolves to.

`SearchConfig` is what config.json stores (with the resolved algorithm), so a run folder is
enough to resume or repeat a search; `stored_config` reads it and names the file on error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.algorithms import AUTO, OperatorConfig, default_algorithm, resolve_operators
from ofa2_edge.search.objectives import OFFICIAL_ACCURACY, Objectives, probe_genomes
from ofa2_edge.space.arch import SearchSpace


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; stored in the run's config.json."""

    objectives: tuple[str, ...]
    constraints: tuple[str, ...] = ()
    space: SearchSpace = field(default_factory=SearchSpace)
    algorithm: str = AUTO  # resolved by the number of objectives: see `default_algorithm`
    pop_size: int = 100
    n_gen: int = 1000
    seed: int = 1
    operators: OperatorConfig = field(default_factory=OperatorConfig)
    algorithm_params: dict[str, Any] = field(default_factory=dict)
    accuracy: str = OFFICIAL_ACCURACY
    #: Hypervolume reference point in natural units by metric name (``{"top1": 75,
    #: "latency:note10": 100}``); missing ones are derived from the space's corner archs.
    reference_point: dict[str, float] = field(default_factory=dict)
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        object.__setattr__(self, "constraints", tuple(self.constraints))
        if self.algorithm == AUTO:  # stored resolved, so a run folder always names its algorithm
            object.__setattr__(self, "algorithm", default_algorithm(len(self.objectives)))
        object.__setattr__(self, "operators", resolve_operators(self.operators, len(self.objectives)))
        if self.pop_size < 2:
            raise InvalidInputError(f"population size {self.pop_size} must be at least 2")
        if self.n_gen < 1:
            raise InvalidInputError(f"generations {self.n_gen} must be at least 1")
        if self.seed < 0:
            raise InvalidInputError(f"seed {self.seed} must be a non-negative integer")
        if self.checkpoint_every < 1:
            raise InvalidInputError("checkpoint interval must be at least 1 generation")

    def to_dict(self) -> dict[str, Any]:
        return {
            "objectives": list(self.objectives),
            "constraints": list(self.constraints),
            "space": self.space.to_dict(),
            "algorithm": self.algorithm,
            "pop_size": self.pop_size,
            "n_gen": self.n_gen,
            "seed": self.seed,
            "operators": self.operators.to_dict(),
            "algorithm_params": dict(self.algorithm_params),
            "accuracy": self.accuracy,
            "reference_point": dict(self.reference_point),
            "checkpoint_every": self.checkpoint_every,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        keys = set(cls.__dataclass_fields__)
        try:
            kw = {k: data[k] for k in keys if k in data}
            kw["space"] = SearchSpace.from_dict(kw.get("space", {}))
            kw["operators"] = OperatorConfig.from_dict(kw.get("operators", {}))
            return cls(**kw)
        except Ofa2EdgeError:
            raise
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"search config does not parse: {exc}") from exc


def stored_config(run: rs.RunFolder) -> SearchConfig:
    """The `SearchConfig` of a run folder's config.json; errors name the file."""
    try:
        return SearchConfig.from_dict(run.config())
    except SchemaError as exc:
        path = str(run.file(rs.CONFIG_FILE))
        if path in str(exc):
            raise
        raise SchemaError(f"{path}: {exc}; config.json defines the run: restore it from a copy, or start a new run") from None


def reference_point(objectives: Objectives, space: SearchSpace, given: dict[str, float]) -> np.ndarray:
    """The hypervolume reference point in minimised space.

    Given values (natural units) win; others are the worst value over the space's corner
    archs (smallest and largest at every resolution) plus 10 % of the range, so every
    arch of the space counts."""
    unknown = sorted(set(given) - {m.name for m in objectives.objectives})
    if unknown:
        raise InvalidInputError(f"reference point names {', '.join(unknown)}, which are not objectives of this search")
    probes = probe_genomes(space, n_random=0)
    ev = objectives.evaluate(probes)
    ref = []
    for j, m in enumerate(objectives.objectives):
        if m.name in given:
            ref.append(float(m.minimised(np.float64(given[m.name]))))
        else:
            lo, hi = ev.F[:, j].min(), ev.F[:, j].max()
            ref.append(float(hi + 0.1 * max(hi - lo, 1e-9)))
    return np.asarray(ref)
