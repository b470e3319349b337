"""Additive latency model: a non-negative price per unit of each kind of work.

Latency is close to additive in per-layer work, so the model is
``latency = sum_j coef_j * work_j`` with every coefficient >= 0 (more work never costs less
time), fitted by non-negative least squares on *relative* error (rows divided by the measured
latency), which is the error a latency limit cares about. Positivity keeps the model sane
where it has to extrapolate (nets bigger or smaller than any measured one) and is itself a
strong regulariser, so the compact variant fits from ~10 measurements.

Every column is a sum of per-layer quantities (or a constant), so a fitted model is itself a
price per layer: it is compiled into per-resolution slot tables and predicts exactly like a
lookup table (`slotcost.evaluate`), as fast as the LUT sum.

Three feature sets (`features`):
- ``minimal``: total MACs, op count and a constant: 3 prices, for 5-10 measurements.
- ``compact``: whole-net work per kind (pointwise / depthwise MACs, depthwise elements,
  activation and weight bytes, op count) and a constant: 8 prices.
- ``stage``: the compact columns plus the same work per group (fixed stem+tail, each
  stage), whose extra prices are ridge-penalised towards zero, i.e. shrunk towards the
  compact model; the ridge strength is chosen by an inner cross-validation. Stages differ in
  spatial size and channel count, so a device's efficiency differs between them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import nnls

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT, MAX_DEPTH, N_BLOCKS
from ofa2_edge.space.slotcost import SlotTable, evaluate
from ofa2_edge.surrogates.base import finite_array, finite_number, register_surrogate
from ofa2_edge.surrogates.features import (
    COMPACT_QUANTITIES,
    GROUPS,
    MINIMAL_QUANTITIES,
    QUANTITIES,
    STAGE_QUANTITIES,
    Q,
    arch_features,
    compact_matrix,
    minimal_matrix,
    resolution_quantities,
    stage_matrix,
)
from ofa2_edge.surrogates.learned import LearnedSurrogate

FEATURE_SETS = ("minimal", "compact", "stage")
#: Ridge strengths (per sample, on columns scaled to mean 1) tried by the inner CV.
ALPHA_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
INNER_FOLDS = 5


def design(g: np.ndarray, w: float, features: str) -> tuple[np.ndarray, np.ndarray]:
    """(design matrix, mask of ridge-penalised columns) of a genome batch."""
    f = arch_features(g, w)
    if features == "minimal":
        x, _ = minimal_matrix(f)
        return x, np.zeros(x.shape[1], dtype=bool)
    compact, _ = compact_matrix(f)
    if features == "compact":
        return compact, np.zeros(compact.shape[1], dtype=bool)
    stage, _ = stage_matrix(f)
    stage = stage[:, :-1]  # the constant is already a compact column
    x = np.column_stack([compact, stage])
    return x, np.r_[np.zeros(compact.shape[1], dtype=bool), np.ones(stage.shape[1], dtype=bool)]


def column_names(features: str) -> list[str]:
    if features == "minimal":
        return [*MINIMAL_QUANTITIES, "const"]
    names = [*COMPACT_QUANTITIES, "const"]
    if features == "stage":
        names += [f"{group}.{q}" for group in GROUPS for q in STAGE_QUANTITIES]
    return names


def relative_nnls(x: np.ndarray, y: np.ndarray, penalised: np.ndarray, alpha: float) -> np.ndarray:
    """Non-negative coefficients minimising sum(((y - x b) / y)^2) + alpha * n * |b_pen * scale|^2."""
    scale = x.mean(axis=0)
    scale[scale <= 0] = 1.0
    a = x / scale / y[:, None]
    rows = [a]
    target = [np.ones(y.size)]
    if alpha > 0 and penalised.any():
        rows.append(np.sqrt(alpha * y.size) * np.diag(penalised.astype(np.float64))[penalised])
        target.append(np.zeros(int(penalised.sum())))
    coef, _ = nnls(np.vstack(rows), np.concatenate(target), maxiter=50 * x.shape[1])
    return coef / scale


def choose_alpha(x: np.ndarray, y: np.ndarray, penalised: np.ndarray, rng: np.random.Generator) -> float:
    """The ridge strength with the lowest inner-CV relative squared error."""
    folds = np.array_split(rng.permutation(y.size), min(INNER_FOLDS, y.size))
    errors = []
    for alpha in ALPHA_GRID:
        err = 0.0
        for test in folds:
            train = np.setdiff1d(np.arange(y.size), test)
            coef = relative_nnls(x[train], y[train], penalised, alpha)
            err += float(np.sum(((x[test] @ coef - y[test]) / y[test]) ** 2))
        errors.append(err)
    return ALPHA_GRID[int(np.argmin(errors))]


@register_surrogate("linear")
class LinearSurrogate(LearnedSurrogate):
    """Non-negative prices of analytic work per kind (see the module docstring)."""

    def __init__(self, width_mult: float = DEFAULT_WIDTH_MULT, features: str = "compact") -> None:
        if features not in FEATURE_SETS:
            raise InvalidInputError(
                f"linear surrogate: unknown feature set {features!r}; choose from {', '.join(FEATURE_SETS)}"
            )
        super().__init__(width_mult)
        self.features = features
        self.coef: np.ndarray | None = None
        self.alpha = 0.0
        self._tables: dict[int, SlotTable] = {}

    @property
    def min_samples(self) -> int:  # type: ignore[override]
        return {"minimal": 3, "compact": 5, "stage": 10}[self.features]

    @property
    def name(self) -> str:
        return f"linear[{self.features}]"

    @property
    def complexity(self) -> int:
        return len(column_names(self.features))

    def spec(self) -> dict[str, Any]:
        return {"features": self.features}

    def _fit_point(self, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        x, penalised = design(g, self.width_mult, self.features)
        if not penalised.any():
            self.alpha = 0.0
        elif y.size >= 2 * INNER_FOLDS:
            self.alpha = choose_alpha(x, y, penalised, rng)
        else:  # too few samples to choose: shrink hard towards the compact model
            self.alpha = ALPHA_GRID[-1]
        self._set_coef(relative_nnls(x, y, penalised, self.alpha))

    def _set_coef(self, coef: np.ndarray) -> None:
        self.coef = coef
        self._tables = {}

    def _group_prices(self) -> tuple[np.ndarray, float]:
        """(price of each quantity per layer group (6, Q), constant per arch)."""
        prices = np.zeros((len(GROUPS), len(QUANTITIES)))
        const = 0.0
        for name, c in zip(column_names(self.features), self.coef):
            group, _, quantity = name.rpartition(".")
            if name == "const":
                const = float(c)
            elif group:
                prices[GROUPS.index(group), Q[quantity]] += c
            else:
                prices[:, Q[quantity]] += c
        return prices, const

    def _slot_table(self, r: int) -> SlotTable:
        """The fitted model as a lookup table at resolution `r` (built on first use)."""
        if r not in self._tables:
            prices, const = self._group_prices()
            qty = resolution_quantities(r, self.width_mult)
            slot_prices = prices[1 + np.arange(N_BLOCKS) // MAX_DEPTH]  # (20, Q)
            slots = np.einsum("skeq,sq->ske", qty.slots, slot_prices)
            self._tables[r] = SlotTable(fixed=float(qty.fixed @ prices[0]) + const, slots=slots)
        return self._tables[r]

    def _predict_point(self, g: np.ndarray) -> np.ndarray:
        return evaluate(g, self._slot_table)

    def _state(self) -> dict[str, Any]:
        return {"columns": column_names(self.features), "coef": self.coef.tolist(), "alpha": self.alpha}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Columns of this version, one finite price >= 0 per column (NNLS never gives less)."""
        columns = column_names(self.features)
        if state["columns"] != columns:
            raise ValueError(f"columns {str(state['columns'])[:200]} do not match this version's {self.features!r} features")
        self._set_coef(finite_array(state["coef"], "state.coef", (len(columns),), 0.0))
        self.alpha = finite_number(state["alpha"], "state.alpha", 0.0)

    def contributions(self, archs: Any) -> dict[str, np.ndarray]:
        """Predicted ms per column (which kind of work the time goes to), for display."""
        self._require_fitted()
        x, _ = design(self.genomes(archs), self.width_mult, self.features)
        return {name: x[:, j] * c for j, (name, c) in enumerate(zip(column_names(self.features), self.coef))}
