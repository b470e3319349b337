"""What every surrogate fitted from end-to-end (arch, latency) pairs shares.

A fitted kind implements only its point model (`_fit_point`, `_predict_point`, `_state`,
`_load_state`). This base checks the training data, cross-validates the point model to get
out-of-fold predictions, and keeps their log-ratio residuals, from which it derives:
- the held-out report of every fit (share within +-5/10 %, MAPE, RMSE, Spearman);
- the quantiles (`predict_quantile`): split-conformal style, the prediction times the
  empirical quantile of exp(out-of-fold log residual), with the finite-sample rank
  ceil((n + 1) q); where n is too small for that rank to exist (e.g. q = 0.9 with n < 9),
  a Student-t bound on the log residuals instead, so tiny-K fits still give a finite,
  honest (wide) bound. Log residuals make the interval relative, as latency noise is.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from scipy.stats import t as student_t

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT
from ofa2_edge.surrogates.base import ArchBatch, LatencySurrogate, finite_array
from ofa2_edge.surrogates.metrics import latency_metrics

#: Leave-one-out up to this many samples, `MAX_FOLDS`-fold above.
LOO_UP_TO = 20
MAX_FOLDS = 10
#: More residuals than any calibration measures: a saved file holding more is damaged.
MAX_RESIDUALS = 1_000_000
#: A held-out prediction off by more than e^20 (5e8 times) is no fit: the file is damaged.
MAX_ABS_LOG_RESIDUAL = 20.0


def check_quantile(q: float) -> float:
    if not (isinstance(q, (int, float, np.floating)) and 0.0 < float(q) < 1.0):
        raise InvalidInputError(f"quantile must be strictly between 0 and 1, got {q!r}")
    return float(q)


def check_latencies(latencies_ms: Any, n_archs: int) -> np.ndarray:
    """Measured latencies as a float64 vector, refusing what no latency can be."""
    try:
        y = np.asarray(latencies_ms, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"latencies must be numbers in ms ({exc})") from exc
    if y.ndim != 1:
        raise InvalidInputError(f"latencies must be a 1-D sequence of ms values, got shape {y.shape}")
    if y.size != n_archs:
        raise InvalidInputError(f"got {n_archs} archs but {y.size} latencies: pass one latency (ms) per arch")
    bad = np.flatnonzero(~np.isfinite(y) | (y <= 0))
    if bad.size:
        raise InvalidInputError(
            f"latencies must be finite and > 0 ms; entry {int(bad[0])} is {float(y[bad[0]])!r} "
            f"({bad.size} bad value(s)); drop failed measurements before fitting"
        )
    return y


def cv_folds(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Test-index folds: leave-one-out for small n (every sample counts), else 10-fold."""
    order = rng.permutation(n)
    k = n if n <= LOO_UP_TO else MAX_FOLDS
    return [np.sort(part) for part in np.array_split(order, k)]


def folds_label(n: int) -> str:
    return "leave-one-out" if n <= LOO_UP_TO else f"{MAX_FOLDS}-fold"


class LearnedSurrogate(LatencySurrogate):
    """A surrogate fitted from end-to-end measurements, with conformal quantiles."""

    #: Fewest training samples the kind can be fitted from (plus one held out for CV).
    min_samples: ClassVar[int] = 2

    def __init__(self, width_mult: float = DEFAULT_WIDTH_MULT) -> None:
        super().__init__(width_mult)
        self.residuals: np.ndarray | None = None  # sorted out-of-fold log(measured / predicted)

    # ------------------------------------------------------------- what a kind implements
    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """Constructor arguments: `type(self)(width_mult, **spec())` is an unfitted twin."""

    def spec_doc(self) -> dict[str, Any]:
        """`spec()` as JSON-able values (kinds holding objects, like a prior, override)."""
        return self.spec()

    @classmethod
    def spec_from_doc(cls, doc: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from `spec_doc()` output."""
        return dict(doc)

    def spec_summary(self) -> dict[str, Any]:
        """The spec as shown in reports (short: no embedded tables)."""
        return self.spec_doc()

    @property
    def name(self) -> str:
        """Short label for reports, e.g. ``linear[stage]``."""
        return self.kind

    @property
    @abstractmethod
    def complexity(self) -> int:
        """Rough count of free parameters: model selection prefers the simpler of two
        candidates that cross-validate equally well."""

    @abstractmethod
    def _fit_point(self, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        """Fit the point model on genomes `g` and latencies `y` (already checked)."""

    @abstractmethod
    def _predict_point(self, g: np.ndarray) -> np.ndarray:
        """Point predictions in ms of the fitted model."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The fitted point model as JSON-able values."""

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore `_state()` output."""

    # ------------------------------------------------------------- shared machinery
    def unfitted(self) -> "LearnedSurrogate":
        return type(self)(self.width_mult, **self.spec())

    def cross_val_predict(
        self, g: np.ndarray, y: np.ndarray, folds: list[np.ndarray], rng: np.random.Generator
    ) -> np.ndarray:
        """Out-of-fold predictions of this kind (each sample predicted by a twin fitted without it)."""
        oof = np.empty_like(y)
        for test in folds:
            train = np.setdiff1d(np.arange(y.size), test, assume_unique=True)
            twin = self.unfitted()
            twin._fit_point(g[train], y[train], rng)
            oof[test] = twin._predict_point(g[test])
        return oof

    def fit(
        self,
        archs: ArchBatch,
        latencies_ms: Any,
        rng: np.random.Generator | None = None,
        oof_ms: np.ndarray | None = None,
    ) -> "LearnedSurrogate":
        """Fit on (arch, latency ms) pairs; the residuals of a cross-validation of the same
        kind give the quantiles and the held-out report. `rng` seeds folds and any random
        part of the model (default: a fixed seed, so fits are reproducible). `oof_ms` passes
        out-of-fold predictions already computed on exactly these pairs (by `fit_best`)."""
        rng = np.random.default_rng(0) if rng is None else rng
        g = self.genomes(archs)
        y = check_latencies(latencies_ms, g.shape[0])
        if y.size < self.min_samples:
            raise InvalidInputError(
                f"{self.name} needs at least {self.min_samples} measured archs to fit, got {y.size}; "
                "measure more subnets or choose a simpler kind"
            )
        if oof_ms is None:
            oof_ms = self.cross_val_predict(g, y, cv_folds(y.size, rng), rng)
        self._fit_point(g, y, rng)
        self.residuals = np.sort(np.log(y / np.maximum(oof_ms, 1e-9)))
        self.report = {
            "kind": self.kind,
            "name": self.name,
            "spec": self.spec_summary(),
            "n_train": int(y.size),
            "held_out": {"method": f"{folds_label(y.size)} cross-validation", **latency_metrics(y, oof_ms)},
        }
        return self

    def _require_fitted(self) -> None:
        if self.residuals is None:
            raise InvalidInputError(f"this {self.name} surrogate is not fitted yet: call fit() or load a saved one")

    def predict(self, archs: ArchBatch) -> np.ndarray:
        self._require_fitted()
        return self._predict_point(self.genomes(archs))

    def log_residual_quantile(self, q: float) -> float:
        """The q quantile of log(measured / predicted), conformal where n allows it."""
        self._require_fitted()
        q = check_quantile(q)
        r = self.residuals
        n = r.size
        rank = math.ceil((n + 1) * q) if q >= 0.5 else math.floor((n + 1) * q)
        if 1 <= rank <= n:
            return float(r[rank - 1])
        spread = float(np.std(r, ddof=1)) if n >= 2 else math.inf
        return float(np.mean(r) + student_t.ppf(q, max(n - 1, 1)) * spread * math.sqrt(1 + 1 / n))

    def predict_quantile(self, archs: ArchBatch, q: float) -> np.ndarray:
        return self.predict(archs) * math.exp(self.log_residual_quantile(q))

    def params(self) -> dict[str, Any]:
        self._require_fitted()
        return {"spec": self.spec_doc(), "state": self._state(), "residuals": self.residuals.tolist()}

    @classmethod
    def from_params(cls, params: dict[str, Any], width_mult: float) -> "LearnedSurrogate":
        """Rebuild from `params()`; each kind's `_load_state` checks its own arrays, and the
        residuals must be finite, at least one and at most MAX_RESIDUALS (ValueError else)."""
        if not isinstance(params.get("spec"), dict) or not isinstance(params.get("state"), dict):
            raise TypeError("params.spec and params.state must be objects")
        model = cls(width_mult, **cls.spec_from_doc(params["spec"]))
        model._load_state(params["state"])
        residuals = finite_array(params["residuals"], "residuals")
        if residuals.ndim != 1 or not 1 <= residuals.size <= MAX_RESIDUALS:
            raise ValueError(f"residuals: expected 1 to {MAX_RESIDUALS} out-of-fold log residuals, got shape {residuals.shape}")
        if float(np.abs(residuals).max()) > MAX_ABS_LOG_RESIDUAL:
            raise ValueError(f"residuals: a log residual beyond +-{MAX_ABS_LOG_RESIDUAL} (a factor of e^{MAX_ABS_LOG_RESIDUAL})")
        model.residuals = np.sort(residuals)
        return model
