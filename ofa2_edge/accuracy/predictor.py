"""Accuracy predictors as dense ReLU networks on OFA's 128-dim one-hot arch features.

OFA's official predictor is such a network (128 -> 400 -> 400 -> 400 -> 1), and the
predictors a user fits from their own (arch, accuracy) pairs are too (a ridge model is one
linear layer, an MLP several), so one numpy forward pass serves them all: a population
of 100 costs a few hundred microseconds, with no torch at search time.

Outputs are percent top-1 (`output_scale` maps the network's raw output, e.g. OFA's
fraction, to percent). Fitted predictors are saved as schema-versioned JSON; no pickle.
Version 2 files record their feature encoding (:mod:`ofa2_edge.accuracy.features`: OFA's
128 slots, or block slots plus one slot per resolution of the table they were fitted on,
for datasets at e.g. 32 px); version 1 files (OFA's encoding) are still read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ofa2_edge.accuracy.features import OFA_ONEHOT, FeatureEncoding
from ofa2_edge.core.errors import InvalidArchError, SchemaError
from ofa2_edge.core.persist import read_json, sha256_file, write_json
from ofa2_edge.space.arch import PREDICTOR_RESOLUTIONS, R_GENE, as_genomes

ACCURACY_SCHEMA = "ofa2-edge/accuracy-predictor"
ACCURACY_VERSION = 2
#: Versions this reader knows: 1 (OFA's 128-slot features only), 2 (features recorded).
ACCURACY_VERSIONS = (1, 2)
#: No predictor output may exceed this in magnitude (float32 overflows near 3.4e38).
MAX_OUTPUT = 1e30


class DenseAccuracyPredictor:
    """Predicted top-1 (%) = output_scale * net(features) + output_offset, net = ReLU MLP.

    `resolutions` are the input sizes the predictor has learned about; asking for another
    one is refused (its one-hot slot was never trained, the answer would be the bias alone).
    `source` says where it came from (kind, file, sha256) and travels into run configs.
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        *,
        output_scale: float = 1.0,
        output_offset: float = 0.0,
        resolutions: Sequence[int] = tuple(PREDICTOR_RESOLUTIONS),
        source: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
        features: FeatureEncoding | None = None,
    ) -> None:
        self.features = features or FeatureEncoding()
        if len(weights) != len(biases) or not weights:
            raise SchemaError("an accuracy predictor needs matching, non-empty lists of weights and biases")
        ws = [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
        bs = [np.ascontiguousarray(b, dtype=np.float32).reshape(-1) for b in biases]
        fan_in = self.features.n_features
        for i, (w, b) in enumerate(zip(ws, bs)):
            if w.ndim != 2 or w.shape[0] != fan_in or b.shape != (w.shape[1],):
                raise SchemaError(
                    f"accuracy predictor layer {i}: expected weight ({fan_in}, k) and bias (k,), "
                    f"got {w.shape} and {b.shape}"
                )
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise SchemaError(f"accuracy predictor layer {i} holds non-finite values")
            fan_in = w.shape[1]
        if fan_in != 1:
            raise SchemaError(f"accuracy predictor must end in one output, got {fan_in}")
        for name, value in (("output_scale", output_scale), ("output_offset", output_offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
                raise SchemaError(f"accuracy predictor {name} must be a finite number, got {value!r}")
        res = list(resolutions) if isinstance(resolutions, (list, tuple, range)) else None
        if not res or any(
            isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)) or not self.features.covers(int(r))
            for r in res
        ):
            allowed = (
                f"{PREDICTOR_RESOLUTIONS.start}..{PREDICTOR_RESOLUTIONS.stop - 1}"
                if self.features.kind == OFA_ONEHOT
                else ", ".join(map(str, self.features.resolutions))
            )
            raise SchemaError(
                f"accuracy predictor resolutions must be a non-empty list of integers in {allowed} "
                f"(its {self.features.kind} features), got {str(resolutions)[:60]}"
            )
        # Inputs are one-hot (each feature in [0, 1]): bound |output| through the layers, so a
        # predictor whose float32 forward pass could overflow is refused here, not mid-search.
        bound = np.ones(self.features.n_features)
        with np.errstate(all="ignore"):
            for w, b in zip(ws, bs):
                bound = bound @ np.abs(w.astype(np.float64)) + np.abs(b.astype(np.float64))
            out = float(bound[0]) * abs(float(output_scale)) + abs(float(output_offset))
        if not (np.isfinite(bound).all() and out <= MAX_OUTPUT):
            raise SchemaError(f"accuracy predictor weights are too large: its outputs could reach {out:.3g}")
        self.weights, self.biases = ws, bs
        self.output_scale = float(output_scale)
        self.output_offset = float(output_offset)
        self.resolutions = tuple(sorted({int(r) for r in res}))
        self._known_r = np.zeros(max(self.resolutions) + 2, dtype=bool)
        self._known_r[list(self.resolutions)] = True
        self.source = dict(source or {})
        self.report = dict(report or {})

    def check_resolutions(self, resolutions: Sequence[int]) -> None:
        """Refuse, before any work, resolutions this predictor has not learned."""
        unknown = sorted(set(int(r) for r in resolutions) - set(self.resolutions))
        if unknown:
            raise InvalidArchError(
                f"the accuracy predictor ({self.describe()}) knows resolutions "
                f"{_ranges(self.resolutions)}, not {', '.join(map(str, unknown))}; "
                "restrict --resolutions or fit a predictor on data at those sizes"
            )

    def predict(self, genomes: np.ndarray) -> np.ndarray:
        """Top-1 in percent for a (n, 46) genome batch, shape (n,), float64."""
        g = as_genomes(genomes)
        r = np.clip(g[:, R_GENE], 0, len(self._known_r) - 1)
        if not self._known_r[r].all():
            self.check_resolutions(np.unique(g[:, R_GENE]).tolist())
        h = self.features.encode(g)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w
            h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        return h[:, 0].astype(np.float64) * self.output_scale + self.output_offset

    def describe(self) -> str:
        return self.source.get("name") or self.source.get("kind") or "accuracy predictor"

    def save(self, path: str | Path, **meta: Any) -> Path:
        """Write as versioned JSON (atomic); weights as nested lists of float32 values."""
        return write_json(
            path,
            ACCURACY_SCHEMA,
            ACCURACY_VERSION,
            {
                "kind": "dense-relu",
                "features": self.features.to_dict(),
                "output": "top1_pct",
                "meta": meta,
                "report": self.report,
                "params": {
                    "weights": [w.tolist() for w in self.weights],
                    "biases": [b.tolist() for b in self.biases],
                    "output_scale": self.output_scale,
                    "output_offset": self.output_offset,
                    "resolutions": list(self.resolutions),
                },
            },
        )


def load_accuracy_predictor(path: str | Path) -> DenseAccuracyPredictor:
    """Load a predictor saved by `DenseAccuracyPredictor.save` (e.g. by `fit-accuracy`)."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such accuracy predictor file; fit one with `ofa2-edge fit-accuracy`")
    doc = read_json(path, ACCURACY_SCHEMA, ACCURACY_VERSIONS)
    fix = "fit it again (`ofa2-edge fit-accuracy`) or restore the file"
    if doc.get("kind") != "dense-relu" or (doc["schema_version"] == 1 and doc.get("features") != OFA_ONEHOT):
        raise SchemaError(
            f"{path}: unknown accuracy predictor kind {str(doc.get('kind'))[:40]!r} / features {str(doc.get('features'))[:80]!r}"
        )
    try:
        features = FeatureEncoding.from_doc(doc.get("features"))
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}; {fix}") from exc
    p, meta, report = doc.get("params"), doc.get("meta", {}), doc.get("report", {})
    for name, value in (("params", p), ("meta", meta), ("report", report)):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: {name!r} must be an object, got {type(value).__name__}; {fix}")
    try:
        weights = [_layer(w) for w in p["weights"]]
        biases = [_layer(b) for b in p["biases"]]
        scale, offset, res = p["output_scale"], p["output_offset"], p["resolutions"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"{path}: malformed accuracy predictor parameters ({type(exc).__name__}: {exc}); {fix}") from exc
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else path.stem
    source = {"kind": "fitted", "name": name, "path": str(path.resolve()), "sha256": sha256_file(path)}
    try:
        return DenseAccuracyPredictor(
            weights,
            biases,
            output_scale=scale,
            output_offset=offset,
            resolutions=res,
            source=source,
            report=report,
            features=features,
        )
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}; {fix}") from exc


def _layer(value: Any) -> np.ndarray:
    """A weight matrix or bias vector from nested JSON lists of numbers (not texts, not booleans)."""
    if not isinstance(value, list):
        raise TypeError(f"expected a list of numbers, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"expected numbers, got {arr.dtype} values")
    with np.errstate(all="ignore"):
        return arr.astype(np.float32)  # a value beyond float32 becomes inf: refused as non-finite


def _ranges(values: Sequence[int]) -> str:
    vals = sorted(values)
    if len(vals) > 4 and vals == list(range(vals[0], vals[-1] + 1)):
        return f"{vals[0]}..{vals[-1]}"
    return ", ".join(map(str, vals))
