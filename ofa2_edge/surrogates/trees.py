"""Tree-ensemble latency model: gradient-boosted trees for what is not additive.

Real runtimes are not exactly additive in per-layer work (operator fusion, cache sizes,
kernel choices that switch with tensor shape), and trees capture such interactions. Trees
alone predict a constant outside the range they were trained on, so they boost the *log
ratio* of the latency to a non-negative compact linear model (see `linear.py`): the linear
part carries the trend and extrapolates, the trees learn the multiplicative correction.

Fitting uses scikit-learn's `GradientBoostingRegressor`; the fitted trees are stored as
plain arrays (split feature, threshold, leaf value of perfect binary trees) in the
surrogate's JSON and evaluated with numpy. Why not skops: no extra dependency, a file any tool can read, no
trusted-type list to maintain, and predictions are identical before and after a save by
construction (the same numpy code evaluates both). Thresholds are compared against float32
features, as scikit-learn's trees do, so the numpy evaluation matches sklearn's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT, Arch, genomes_of
from ofa2_edge.surrogates.base import finite_array, finite_number, register_surrogate
from ofa2_edge.surrogates.features import arch_features, compact_matrix, tree_matrix
from ofa2_edge.surrogates.learned import LearnedSurrogate
from ofa2_edge.surrogates.linear import relative_nnls

#: Bounds of a saved ensemble (the fitted default is 100 trees of depth 3).
MAX_TREES = 10_000
MAX_TREE_DEPTH = 12


class PerfectTrees:
    """A boosted ensemble of depth-D trees, each padded to a perfect binary tree in heap
    order (internal node i has children 2i+1, 2i+2): a leaf above depth D becomes a node
    whose threshold is +inf (always left) with copies of itself below. Every tree then has
    the same shape, so a batch is evaluated with all split decisions at once and D gathers,
    as fast as scikit-learn's own compiled predict, with a very plain file format."""

    def __init__(
        self, feature: np.ndarray, threshold: np.ndarray, value: np.ndarray, init: float, learning_rate: float
    ) -> None:
        self.feature = np.asarray(feature, dtype=np.intp)  # (trees, 2^D - 1)
        self.threshold = np.asarray(threshold, dtype=np.float64)  # (trees, 2^D - 1)
        self.value = np.asarray(value, dtype=np.float64)  # (trees, 2^D)
        self.depth = int(np.log2(self.value.shape[1]))
        if self.feature.shape != self.threshold.shape or self.feature.shape[1] != 2**self.depth - 1:
            raise ValueError(
                f"tree arrays of inconsistent shapes {self.feature.shape}, {self.threshold.shape}, {self.value.shape}"
            )
        self.init = float(init)
        self.learning_rate = float(learning_rate)

    @classmethod
    def from_sklearn(cls, est: GradientBoostingRegressor) -> "PerfectTrees":
        depth = int(est.max_depth)
        inner = 2**depth - 1
        trees = [e.tree_ for e in est.estimators_[:, 0]]
        feature = np.zeros((len(trees), inner), dtype=np.intp)
        threshold = np.full((len(trees), inner), np.inf)
        value = np.zeros((len(trees), 2**depth))
        for t, tree in enumerate(trees):
            stack = [(0, 0, 0)]  # (sklearn node, heap position, level)
            while stack:
                node, pos, level = stack.pop()
                if level == depth:
                    value[t, pos - inner] = tree.value[node, 0, 0]
                    continue
                leaf = tree.children_left[node] < 0
                if not leaf:
                    feature[t, pos], threshold[t, pos] = tree.feature[node], tree.threshold[node]
                stack.append((node if leaf else tree.children_left[node], 2 * pos + 1, level + 1))
                stack.append((node if leaf else tree.children_right[node], 2 * pos + 2, level + 1))
        return cls(feature, threshold, value, float(est.init_.constant_.ravel()[0]), float(est.learning_rate))

    def predict(self, x: np.ndarray) -> np.ndarray:
        xt = np.ascontiguousarray(np.asarray(x, dtype=np.float32).T)  # as sklearn: float32 features
        n_trees, inner = self.feature.shape
        n = xt.shape[1]
        go_left = (xt[self.feature.ravel()] <= self.threshold.ravel()[:, None]).reshape(n_trees, inner, n)
        node = np.zeros((n_trees, n), dtype=np.intp)
        for _ in range(self.depth):
            node = 2 * node + 2 - np.take_along_axis(go_left, node[:, None, :], axis=1)[:, 0, :]
        return self.init + self.learning_rate * np.take_along_axis(self.value, node - inner, axis=1).sum(axis=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "init": self.init,
            "learning_rate": self.learning_rate,
            "feature": self.feature.tolist(),
            "threshold": [[None if v == np.inf else v for v in row] for row in self.threshold.tolist()],
            "value": self.value.tolist(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "PerfectTrees":
        threshold = [[np.inf if v is None else v for v in row] for row in doc["threshold"]]
        return cls(doc["feature"], threshold, doc["value"], doc["init"], doc["learning_rate"])


@register_surrogate("trees")
class TreeSurrogate(LearnedSurrogate):
    """Gradient-boosted trees on the log ratio to a compact linear model."""

    min_samples = 20

    def __init__(
        self,
        width_mult: float = DEFAULT_WIDTH_MULT,
        n_estimators: int = 100,
        max_depth: int = 3,
        learning_rate: float = 0.1,
        subsample: float = 0.8,
        min_samples_leaf: int = 3,
    ) -> None:
        super().__init__(width_mult)
        self.hyper = {
            "n_estimators": int(n_estimators),
            "max_depth": int(max_depth),
            "learning_rate": float(learning_rate),
            "subsample": float(subsample),
            "min_samples_leaf": int(min_samples_leaf),
        }
        self.base_coef: np.ndarray | None = None
        self.ensemble: PerfectTrees | None = None

    @property
    def complexity(self) -> int:
        return self.hyper["n_estimators"] * 2 ** self.hyper["max_depth"]

    def spec(self) -> dict[str, Any]:
        return dict(self.hyper)

    def _base(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = arch_features(g, self.width_mult)
        return compact_matrix(f)[0], tree_matrix(f)[0]

    def _fit_point(self, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        x, z = self._base(g)
        self.base_coef = relative_nnls(x, y, np.zeros(x.shape[1], dtype=bool), 0.0)
        target = np.log(y) - np.log(np.maximum(x @ self.base_coef, 1e-9))
        est = GradientBoostingRegressor(random_state=int(rng.integers(2**31 - 1)), **self.hyper)
        self.ensemble = PerfectTrees.from_sklearn(est.fit(z, target))

    def _predict_point(self, g: np.ndarray) -> np.ndarray:
        x, z = self._base(g)
        return np.maximum(x @ self.base_coef, 1e-9) * np.exp(self.ensemble.predict(z))

    def _state(self) -> dict[str, Any]:
        return {"base_coef": self.base_coef.tolist(), "ensemble": self.ensemble.to_json()}

    def _load_state(self, state: dict[str, Any]) -> None:
        """A base price >= 0 per compact column; trees whose features exist, finite values."""
        x, z = self._feature_counts()
        self.base_coef = finite_array(state["base_coef"], "state.base_coef", (x,), 0.0)
        doc = state["ensemble"]
        if not isinstance(doc, dict):
            raise TypeError("state.ensemble must be an object")
        trees = PerfectTrees.from_json(doc)
        n_trees = trees.feature.shape[0]
        if not 1 <= n_trees <= MAX_TREES or not 1 <= trees.depth <= MAX_TREE_DEPTH:
            raise ValueError(f"state.ensemble: {n_trees} trees of depth {trees.depth} (at most {MAX_TREES}, {MAX_TREE_DEPTH})")
        if trees.feature.min() < 0 or trees.feature.max() >= z:
            raise ValueError(f"state.ensemble.feature: indices must be in [0, {z})")
        if np.isnan(trees.threshold).any() or np.isneginf(trees.threshold).any():
            raise ValueError("state.ensemble.threshold: NaN or -inf")
        finite_array(trees.value, "state.ensemble.value")
        finite_number(trees.init, "state.ensemble.init")
        finite_number(trees.learning_rate, "state.ensemble.learning_rate", 0.0)
        self.ensemble = trees

    def _feature_counts(self) -> tuple[int, int]:
        """(compact columns, tree feature columns) of this kind's design."""
        x, z = self._base(genomes_of([Arch.smallest(224, self.width_mult)]))
        return x.shape[1], z.shape[1]
