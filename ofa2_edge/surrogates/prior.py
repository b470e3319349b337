"""Surrogates that correct a prior predictor: the LUT hybrid and few-shot transfer.

Both start from a predictor `P` that already knows the shape of the latency landscape and
learn a small, shrunk correction from end-to-end measurements:
- `hybrid`: `P` is this device's own block lookup table (LUT sum). Summing isolated blocks
  misses what happens between them (fusion, memory reuse, per-call overhead), a gap that is
  mostly additive, so the default link is additive: ``y = a * P + x . b``.
- `transfer`: `P` is another device's predictor or table; the new device is reached from a
  handful (5-10) of measurements. Devices differ mostly by a scale and by how they price
  kinds of work, so the default link is multiplicative: ``log y = log P + c + (s - 1) log P
  + z . b``, i.e. a power-law map of the prior times a correction on log work features.

Either way the correction coefficients (all but the prior's scale) are ridge-penalised
towards "the prior is right up to scale", with the strength chosen by exact leave-one-out
(closed form for ridge), so with 5 samples the fit is essentially a rescaled prior and with
more samples the correction grows as the data supports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT
from ofa2_edge.surrogates.base import (
    LatencySurrogate,
    finite_array,
    finite_number,
    register_surrogate,
    surrogate_from_doc,
)
from ofa2_edge.surrogates.features import Q, arch_features
from ofa2_edge.surrogates.learned import LearnedSurrogate
from ofa2_edge.surrogates.lut import LutSurrogate

LINKS = ("log", "add")
#: Ridge strengths (per sample, on standardised columns) tried by leave-one-out.
ALPHA_GRID = tuple(10.0**k for k in np.arange(-4.0, 4.5, 0.5))
#: Whole-net work whose logs (multiplicative link) or values (additive link) correct the prior.
CORRECTION_QUANTITIES = ("pw_macs", "dw_macs", "dw_out_elems", "act_read_bytes", "weight_bytes", "ops")


def ridge_loo(
    a: np.ndarray, b: np.ndarray, penalised: np.ndarray, alphas: tuple[float, ...]
) -> tuple[np.ndarray, float]:
    """Ridge (penalty alpha * n on the `penalised` coefficients) with alpha chosen by exact
    leave-one-out (the LOO residual of a linear smoother is e_i / (1 - h_ii)) and the
    one-standard-error rule: the strongest shrinkage whose LOO error is within one paired
    standard error of the best, since with 5-10 samples the LOO minimum is mostly noise."""
    n = b.size
    d = np.diag(penalised.astype(np.float64))
    fits, losses = [], []
    for alpha in alphas:
        inv = np.linalg.pinv(a.T @ a + alpha * n * d)
        coef = inv @ a.T @ b
        h = np.einsum("ij,jk,ik->i", a, inv, a)
        losses.append(((b - a @ coef) / np.maximum(1.0 - h, 1e-6)) ** 2)
        fits.append(coef)
    loss = np.array(losses)
    best = int(np.argmin(loss.mean(axis=1)))
    chosen = best
    for i in range(len(alphas) - 1, best, -1):  # strongest shrinkage first
        diff = loss[i] - loss[best]
        if diff.mean() <= (diff.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0):
            chosen = i
            break
    return fits[chosen], alphas[chosen]


class PriorCorrectedSurrogate(LearnedSurrogate):
    """A prior predictor times (log link) or plus (additive link) a shrunk correction."""

    min_samples = 3
    default_link = "log"

    def __init__(
        self,
        width_mult: float = DEFAULT_WIDTH_MULT,
        prior: LatencySurrogate | None = None,
        link: str | None = None,
        prior_label: str = "",
    ) -> None:
        if not isinstance(prior, LatencySurrogate):
            raise InvalidInputError(
                f"{self.kind} surrogate needs a prior predictor (a fitted surrogate or a lookup table)"
            )
        if prior.width_mult != width_mult:
            raise InvalidInputError(
                f"the prior predicts w{prior.width_mult} subnets, this surrogate is for w{width_mult}"
            )
        link = link or self.default_link
        if link not in LINKS:
            raise InvalidInputError(f"{self.kind} surrogate: unknown link {link!r}; choose from {', '.join(LINKS)}")
        super().__init__(width_mult)
        self.prior, self.link, self.prior_label = prior, link, prior_label
        self.coef: np.ndarray | None = None
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.unit = 1.0
        self.alpha = 0.0

    @property
    def name(self) -> str:
        return f"{self.kind}[{self.link}]"

    @property
    def complexity(self) -> int:
        return 3  # scale and offset of the prior plus a LOO-shrunk correction: as simple as linear[minimal]

    def spec(self) -> dict[str, Any]:
        return {"prior": self.prior, "link": self.link, "prior_label": self.prior_label}

    def spec_doc(self) -> dict[str, Any]:
        return {"prior": self.prior.to_doc(), "link": self.link, "prior_label": self.prior_label}

    @classmethod
    def spec_from_doc(cls, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "prior": surrogate_from_doc(doc["prior"], "prior"),
            "link": doc["link"],
            "prior_label": doc.get("prior_label", ""),
        }

    def spec_summary(self) -> dict[str, Any]:
        prior = {"kind": self.prior.kind, "label": self.prior_label}
        if self.prior.report.get("name"):
            prior["name"] = self.prior.report["name"]
        return {"prior": prior, "link": self.link}

    def _raw(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prior prediction, correction features) before standardisation."""
        p = self.prior.predict(g)
        if not np.all(np.isfinite(p) & (p > 0)):
            raise InvalidInputError(f"the prior ({self.prior.kind}) predicted a non-positive or missing latency")
        total = arch_features(g, self.width_mult).total[:, [Q[k] for k in CORRECTION_QUANTITIES]]
        return p, (np.log(np.maximum(total, 1.0)) if self.link == "log" else total)

    def _design(self, p: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Log link: [1, standardised log P and log work]; additive link: [P, unit, work
        scaled to the prior's mean] (so every coefficient is in units of the prior)."""
        if self.link == "log":
            return np.column_stack([np.ones(p.size), (np.column_stack([np.log(p), z]) - self.center) / self.scale])
        return np.column_stack([p, np.full(p.size, self.unit), z / self.scale])

    def _fit_point(self, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        p, z = self._raw(g)
        if self.link == "log":
            cols = np.column_stack([np.log(p), z])
            self.center, spread, self.unit = cols.mean(axis=0), cols.std(axis=0), 1.0
            self.scale = np.where(spread > 0, spread, 1.0)
            x = self._design(p, z)
            # log y - log P = offset + correction; all but the offset is penalised.
            penalised = np.r_[False, np.ones(x.shape[1] - 1, dtype=bool)]
            self.coef, self.alpha = ridge_loo(x, np.log(y) - np.log(p), penalised, ALPHA_GRID)
        else:
            self.unit = float(p.mean())
            self.center = np.zeros(z.shape[1])
            spread = z.mean(axis=0) / self.unit
            self.scale = np.where(spread > 0, spread, 1.0)
            x = self._design(p, z)
            # y = a P + correction, fitted on relative error (rows / y, target 1); a is free.
            penalised = np.r_[False, np.ones(x.shape[1] - 1, dtype=bool)]
            self.coef, self.alpha = ridge_loo(x / y[:, None], np.ones(y.size), penalised, ALPHA_GRID)

    def _predict_point(self, g: np.ndarray) -> np.ndarray:
        p, z = self._raw(g)
        x = self._design(p, z)
        if self.link == "log":
            return p * np.exp(x @ self.coef)
        return np.maximum(x @ self.coef, 0.05 * p)  # an additive correction must not go below zero

    def _state(self) -> dict[str, Any]:
        return {
            "coef": self.coef.tolist(),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "unit": self.unit,
            "alpha": self.alpha,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        """Arrays of the link's shapes (see `_design`), finite; scales and unit > 0."""
        n_work = len(CORRECTION_QUANTITIES)
        n_cols = n_work + 1 if self.link == "log" else n_work  # log link also standardises log P
        self.coef = finite_array(state["coef"], "state.coef", (n_work + 2,))
        self.center = finite_array(state["center"], "state.center", (n_cols,))
        self.scale = finite_array(state["scale"], "state.scale", (n_cols,))
        if not np.all(self.scale > 0):
            raise ValueError("state.scale: every scale must be > 0")
        self.unit = finite_number(state["unit"], "state.unit", 0.0)
        if self.unit <= 0:
            raise ValueError("state.unit must be > 0")
        self.alpha = finite_number(state["alpha"], "state.alpha", 0.0)

    def check_resolutions(self) -> tuple[int, ...]:
        return self.prior.check_resolutions()


@register_surrogate("hybrid")
class HybridSurrogate(PriorCorrectedSurrogate):
    """This device's LUT sum, corrected by end-to-end measurements (additive by default)."""

    default_link = "add"

    def __init__(
        self,
        width_mult: float = DEFAULT_WIDTH_MULT,
        prior: LatencySurrogate | None = None,
        link: str | None = None,
        prior_label: str = "",
    ) -> None:
        if prior is not None and not isinstance(prior, LutSurrogate):
            raise InvalidInputError(
                f"a hybrid surrogate corrects this device's block lookup table, got a {prior.kind!r} predictor; "
                "use a transfer surrogate to start from another device's predictor"
            )
        super().__init__(width_mult, prior, link, prior_label)


@register_surrogate("transfer")
class TransferSurrogate(PriorCorrectedSurrogate):
    """Another device's predictor or table, mapped to this device from few measurements."""

    default_link = "log"
