"""A device group's predictor: one replica's predictor, its intervals widened by the spread
between replicas (part-to-part variation of identical boards).

`base` is fitted on every replica's records in the group's table; its point prediction is
the group's. Replica offsets (measured on a common anchor subset, see
:mod:`ofa2_edge.calibration.group`) are log-normal with standard deviation `spread_log`;
each quantile combines the base's own spread and the replicas' in log space, so
`select --safe 0.9` on a group holds for a board drawn from the group, not only for the
boards that happened to measure.

The base's residuals are out of fold (split-conformal, see :mod:`ofa2_edge.surrogates.learned`)
and already hold some replica-to-replica variation (the design is spread over the replicas);
adding the spread on top counts part of it twice, on purpose: those residuals come from one
calibration, so they lack the variation between sessions that a later measurement on a
replica meets. Measured on the 4-board loopback fleet (replicas timed one at a time, quick
protocol, budget 30; the front measured on each replica in its own session): the base's own
intervals held 75 % / 88 % of 146 latencies (80 % / 90 % nominal), base + spread 83 % / 96 %.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT
from ofa2_edge.surrogates.base import (
    ArchBatch,
    LatencySurrogate,
    WrappedSurrogate,
    finite_number,
    register_surrogate,
    surrogate_from_doc,
)

#: The largest part-to-part spread accepted (log scale: about a factor of e between replicas).
MAX_SPREAD_LOG = 1.0


@register_surrogate("group")
class GroupSurrogate(WrappedSurrogate):
    """`base` for the point, quantiles widened by the replicas' log-normal spread."""

    missing_base = "calibrate the group first"

    def __init__(
        self, width_mult: float = DEFAULT_WIDTH_MULT, base: LatencySurrogate | None = None, spread_log: float = 0.0
    ) -> None:
        super().__init__(width_mult, base)
        if not 0.0 <= spread_log <= MAX_SPREAD_LOG:
            raise InvalidInputError(f"replica spread {spread_log!r} (log) must be within [0, {MAX_SPREAD_LOG}]")
        self.spread_log = float(spread_log)

    def predict_quantile(self, archs: ArchBatch, q: float) -> np.ndarray:
        g = self.genomes(archs)
        base = self._base()
        bq = np.asarray(base.predict_quantile(g, q), dtype=np.float64)
        z = NormalDist().inv_cdf(q)
        if self.spread_log == 0.0 or abs(z) < 1e-9:
            return bq
        point = np.maximum(np.asarray(base.predict(g), dtype=np.float64), 1e-12)
        own = np.maximum(np.log(np.maximum(bq, 1e-12) / point) / z, 0.0)  # the base's log sigma at q
        return point * np.exp(z * np.sqrt(own**2 + self.spread_log**2))

    def params(self) -> dict[str, Any]:
        return {"base": self._base().to_doc(), "spread_log": self.spread_log}

    @classmethod
    def from_params(cls, params: dict[str, Any], width_mult: float) -> "GroupSurrogate":
        base = surrogate_from_doc(params["base"], "params.base")
        spread = finite_number(params["spread_log"], "params.spread_log", 0.0)
        if spread > MAX_SPREAD_LOG:
            raise ValueError(f"params.spread_log: {spread} is above {MAX_SPREAD_LOG}")
        return cls(width_mult, base, spread)
