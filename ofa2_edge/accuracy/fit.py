"""Fit an accuracy predictor from the user's own (arch, top-1) pairs.

Teams that fine-tune subnets on their own data measure a few dozen to a few thousand
(arch, accuracy) pairs; this turns them into a `DenseAccuracyPredictor` usable as the
search's `top1` objective. Features are OFA's 128-dim one-hot encoding (the same the
official predictor reads) when every resolution has a slot there (112-239 px), else the
block encoding with one slot per resolution of the data (:mod:`ofa2_edge.accuracy.features`).
Pairs come from a CSV or from an accuracy table (`ofa2-edge evaluate`: its `val` top-1 only;
the test part is never fitted on). Two scikit-learn families compete by k-fold cross-validation
on the training part: ridge regression (strong with few samples: accuracy is close to
additive in per-block choices) and a small ReLU MLP (wins with more data, captures
interactions such as depth x kernel). Both are dense ReLU networks, so the saved file is
plain JSON and inference is the same numpy forward pass as the official predictor.

The report gives held-out metrics on a split the selection never saw; the saved model is
then refitted on all pairs.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa2_edge.accuracy.features import FeatureEncoding
from ofa2_edge.accuracy.predictor import DenseAccuracyPredictor
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT, N_BLOCKS, N_STAGES, R_GENE, Arch, genomes_of

#: Gene columns accepted instead of an `arch` JSON column: ks0..ks19, e0..e19, d0..d4, r.
GENE_COLUMNS: tuple[str, ...] = (
    *(f"ks{i}" for i in range(N_BLOCKS)),
    *(f"e{i}" for i in range(N_BLOCKS)),
    *(f"d{i}" for i in range(N_STAGES)),
    "r",
)
MIN_PAIRS = 10
MODEL_KINDS = ("ridge", "mlp")


@dataclass(frozen=True)
class AccuracyData:
    """Validated training pairs: canonical archs and their top-1 in percent."""

    archs: tuple[Arch, ...]
    top1: np.ndarray

    @property
    def genomes(self) -> np.ndarray:
        return genomes_of(self.archs)


def read_accuracy_csv(path: str | Path, width_mult: float = DEFAULT_WIDTH_MULT) -> AccuracyData:
    """Read a CSV with a `top1` column (percent) and either an `arch` JSON column or the 46
    gene columns (`ks0..ks19, e0..e19, d0..d4, r`). An optional `arch_id` column is checked."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: cannot read as CSV ({exc})") from exc
    if "top1" not in columns:
        raise InvalidInputError(f"{path}: needs a `top1` column (ImageNet-style top-1 in percent); found {columns}")
    has_genes = all(c in columns for c in GENE_COLUMNS)
    if "arch" not in columns and not has_genes:
        raise InvalidInputError(
            f"{path}: needs an `arch` column (JSON like {{\"ks\": [...], \"e\": [...], \"d\": [...], \"r\": 224}}) "
            f"or the 46 gene columns {GENE_COLUMNS[0]}..{GENE_COLUMNS[-1]}"
        )
    archs: list[Arch] = []
    top1: list[float] = []
    for lineno, row in enumerate(rows, start=2):
        where = f"{path}:{lineno}"
        try:
            if "arch" in columns and row.get("arch"):
                arch = Arch.from_dict(json.loads(row["arch"]), w=width_mult)
            else:
                arch = Arch.from_genome(np.array([int(row[c]) for c in GENE_COLUMNS]), w=width_mult)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"{where}: bad arch ({exc})") from exc
        if row.get("arch_id") and row["arch_id"].strip() != arch.id:
            raise InvalidInputError(f"{where}: arch_id {row['arch_id']} does not match the arch (its id is {arch.id})")
        try:
            value = float(row["top1"])
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: top1 {row['top1']!r} is not a number") from exc
        if not (math.isfinite(value) and 0.0 <= value <= 100.0):
            raise InvalidInputError(f"{where}: top1 {value} must be a percentage in 0..100")
        archs.append(arch)
        top1.append(value)
    if len(archs) < MIN_PAIRS:
        raise InvalidInputError(f"{path}: {len(archs)} pairs; fitting needs at least {MIN_PAIRS}")
    values = np.asarray(top1)
    if values.max() <= 1.0:
        raise InvalidInputError(f"{path}: every top1 is <= 1: these look like fractions; give percent (e.g. 76.2)")
    return AccuracyData(tuple(archs), values)


def read_accuracy_table(table: Any) -> AccuracyData:
    """The (arch, val top-1 %) pairs of an accuracy table (`AccuracyTable`); test figures stay out."""
    archs, top1 = table.dataset()
    if len(archs) < MIN_PAIRS:
        raise InvalidInputError(
            f"accuracy table {table.name} holds {len(archs)} evaluated subnets; fitting needs at least {MIN_PAIRS} "
            f"(`ofa2-edge evaluate ... --table {table.name} --budget N`)"
        )
    return AccuracyData(tuple(archs), top1)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) <= 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    if len(a) <= 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def _metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "rmse_pct": float(np.sqrt((err**2).mean())),
        "mae_pct": float(np.abs(err).mean()),
        "max_abs_err_pct": float(np.abs(err).max()),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "spearman": _spearman(y, pred),
        "kendall_tau": _kendall(y, pred),
    }


def _make(kind: str, seed: int) -> Any:
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor

    if kind == "ridge":
        return RidgeCV(alphas=np.logspace(-3, 3, 13))
    if kind == "mlp":
        # Strong L2 and L-BFGS: on up to a few thousand pairs this beat wider nets and Adam
        # (held-out RMSE on pairs labelled by the official predictor, see the module tests).
        return MLPRegressor(hidden_layer_sizes=(64,), alpha=1.0, solver="lbfgs", max_iter=500, random_state=seed)
    raise InvalidInputError(f"unknown accuracy model {kind!r}; choose from {', '.join(MODEL_KINDS)}")


def _to_dense(kind: str, model: Any, mean: float, std: float) -> tuple[list[np.ndarray], list[np.ndarray], float, float]:
    """The fitted model as ReLU layers; targets were standardised, so undo that at the output."""
    if kind == "ridge":
        return [np.asarray(model.coef_, dtype=np.float64).reshape(-1, 1)], [np.atleast_1d(model.intercept_)], std, mean
    return list(model.coefs_), [np.asarray(b) for b in model.intercepts_], std, mean


def _fit_one(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[list, list, float, float]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    mean, std = float(y.mean()), float(y.std()) or 1.0
    model = _make(kind, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, (y - mean) / std)
    return _to_dense(kind, model, mean, std)


def _predictor(
    parts: tuple[list, list, float, float], resolutions: list[int], features: FeatureEncoding, **kw: Any
) -> DenseAccuracyPredictor:
    weights, biases, scale, offset = parts
    return DenseAccuracyPredictor(
        weights, biases, output_scale=scale, output_offset=offset, resolutions=resolutions, features=features, **kw
    )


def fit_accuracy_predictor(
    data: AccuracyData,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    folds: int = 5,
    kinds: tuple[str, ...] = MODEL_KINDS,
    name: str = "fitted",
) -> DenseAccuracyPredictor:
    """Choose a model family by k-fold CV, report it on a held-out split, refit on all pairs."""
    from threadpoolctl import threadpool_limits

    # Small dense problems: multi-threaded BLAS only adds contention (minutes instead of seconds on a busy host).
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit(data, seed=seed, test_fraction=test_fraction, folds=folds, kinds=kinds, name=name)


def _fit(data: AccuracyData, *, seed: int, test_fraction: float, folds: int, kinds: tuple[str, ...], name: str) -> DenseAccuracyPredictor:
    from sklearn.model_selection import KFold, train_test_split


    if not 0.0 < test_fraction < 0.5:
        raise InvalidInputError(f"test fraction {test_fraction} must be in (0, 0.5)")
    for kind in kinds:
        _make(kind, seed)  # an unknown kind fails before any fitting
    genomes = data.genomes
    y = data.top1
    resolutions = sorted({int(r) for r in genomes[:, R_GENE]})
    features = FeatureEncoding.for_resolutions(resolutions)
    x = features.encode(genomes)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed)
    cv: dict[str, dict[str, float]] = {}
    n_folds = min(folds, len(idx_train))
    for kind in kinds:
        preds = np.empty(len(idx_train))
        for tr, va in KFold(n_folds, shuffle=True, random_state=seed).split(idx_train):
            model = _predictor(_fit_one(kind, x[idx_train[tr]], y[idx_train[tr]], seed), resolutions, features)
            preds[va] = model.predict(genomes[idx_train[va]])
        cv[kind] = _metrics(y[idx_train], preds)
    best = min(kinds, key=lambda k: cv[k]["rmse_pct"])
    held = _predictor(_fit_one(best, x[idx_train], y[idx_train], seed), resolutions, features)
    report = {
        "model": best,
        "features": features.to_dict(),
        "n_pairs": int(len(y)),
        "n_train": int(len(idx_train)),
        "n_test": int(len(idx_test)),
        "seed": seed,
        "cv_folds": n_folds,
        "cv": cv,
        "held_out": _metrics(y[idx_test], held.predict(genomes[idx_test])),
        "note": "held_out: model chosen by CV on the training split, scored on pairs it never saw; "
        "the saved model is refitted on all pairs",
        "resolutions": resolutions,
        "top1_range_pct": [float(y.min()), float(y.max())],
    }
    return _predictor(
        _fit_one(best, x, y, seed), resolutions, features, source={"kind": "fitted", "name": name}, report=report
    )


def fit_table_predictor(
    table: Any,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    kinds: tuple[str, ...] = MODEL_KINDS,
    output: str | Path | None = None,
    reuse: bool = False,
) -> tuple[DenseAccuracyPredictor, Path, bool]:
    """Fit a top-1 predictor on an accuracy table (`AccuracyTable`; its val top-1), with the
    table's noise floor and binding in the report, and save it (default: the table's
    `predictor.json`). Returns (predictor, path, fitted).

    With `reuse`, a predictor already saved there from exactly these rows (the sha256 of the
    table's evaluations file) and these settings is loaded instead of refitted, so a rerun
    searches with the same predictor file (`fitted` is then False)."""
    from ofa2_edge.accuracy.predictor import load_accuracy_predictor
    from ofa2_edge.core.errors import Ofa2EdgeError
    from ofa2_edge.core.persist import sha256_file

    path = Path(output) if output is not None else table.predictor_path
    settings = {"seed": seed, "test_fraction": test_fraction, "models": list(kinds)}
    with table.lock():
        rows_sha = sha256_file(table.evaluations_path)
        if reuse and path.is_file():
            try:
                saved = load_accuracy_predictor(path)
                meta = json.loads(path.read_text(encoding="utf-8")).get("meta") or {}
            except (Ofa2EdgeError, OSError, ValueError):
                meta = {}
            if meta.get("evaluations_sha256") == rows_sha and meta.get("fit") == settings:
                return saved, path, False
        pairs = read_accuracy_table(table)
        predictor = fit_accuracy_predictor(pairs, seed=seed, test_fraction=test_fraction, kinds=kinds, name=table.name)
        floor = table.noise_floor()
        held = predictor.report["held_out"]["spearman"]
        predictor.report["noise_floor"] = floor
        predictor.report["share_of_noise_floor"] = (
            held / floor["spearman"] if floor and floor["spearman"] and floor["spearman"] > 0 else None
        )
        binding = table.binding()
        predictor.save(
            path,
            name=table.name,
            table=table.name,
            supernet_sha256=binding.supernet_sha256,
            dataset_fingerprint=binding.dataset_fingerprint,
            part="val",
            evaluations_sha256=rows_sha,
            fit=settings,
        )
    return predictor, path, True
