"""Choose a device's surrogate kind by cross-validation, and say how well it does.

Every candidate is cross-validated on the same folds (leave-one-out up to 20 samples,
10-fold above), scored per sample by the squared log ratio of measured to predicted
latency (relative error, symmetric in over/under-prediction). The rule is the paired
one-standard-error rule: take the candidate with the lowest mean score, then prefer the
*simplest* candidate (fewest free parameters) whose mean score is within one standard
error of the paired score differences from it (or within 10 % of it: nearly nested models
differ consistently by tiny amounts, which makes their paired error tinier still). With 10-30 samples the differences between
kinds are mostly noise, and this rule does not let a flexible kind win on noise.

Selection on cross-validation scores is itself optimistic, so with `nested=True` the whole
procedure (selection included) is run again inside an outer cross-validation and its
out-of-fold predictions give the report's honest `held_out` figures.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT
from ofa2_edge.surrogates.base import ArchBatch, LatencySurrogate, as_genome_batch
from ofa2_edge.surrogates.learned import LearnedSurrogate, check_latencies, cv_folds, folds_label
from ofa2_edge.surrogates.linear import LinearSurrogate
from ofa2_edge.surrogates.lut import LutSurrogate
from ofa2_edge.surrogates.metrics import latency_metrics
from ofa2_edge.surrogates.prior import HybridSurrogate, TransferSurrogate
from ofa2_edge.surrogates.trees import TreeSurrogate

SELECTION_RULE = (
    "paired one-standard-error rule on the cross-validated mean squared log(measured/predicted): "
    "the simplest candidate within one standard error (or 10 %) of the best"
)
OUTER_FOLDS = 5
#: Scores within this fraction of the best are equivalent in practice (10 % of a mean squared
#: log error is ~5 % of the typical relative error), even when the paired standard error of
#: two nearly nested models is tinier still.
EQUIVALENCE = 0.10


def default_candidates(
    width_mult: float = DEFAULT_WIDTH_MULT,
    prior: LatencySurrogate | None = None,
    lut: LutSurrogate | None = None,
    prior_label: str = "",
) -> list[LearnedSurrogate]:
    """The kinds worth trying: the feature models always, the LUT hybrid when this device
    has a block table, few-shot transfer when another device's predictor is given."""
    cands: list[LearnedSurrogate] = [
        LinearSurrogate(width_mult, features="minimal"),
        LinearSurrogate(width_mult, features="compact"),
        LinearSurrogate(width_mult, features="stage"),
        TreeSurrogate(width_mult),
    ]
    if lut is not None:
        cands += [HybridSurrogate(width_mult, prior=lut, link=link, prior_label="lut") for link in ("add", "log")]
    if prior is not None:
        cands += [
            TransferSurrogate(width_mult, prior=prior, link=link, prior_label=prior_label) for link in ("log", "add")
        ]
    return cands


def _select(
    cands: Sequence[LearnedSurrogate], g: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[int, list[np.ndarray], list[dict[str, Any]]]:
    """Index of the chosen candidate, every candidate's out-of-fold predictions, CV rows."""
    folds = cv_folds(y.size, rng)
    oofs = [c.cross_val_predict(g, y, folds, rng) for c in cands]
    scores = np.array([np.log(y / np.maximum(o, 1e-9)) ** 2 for o in oofs])  # (candidates, n)
    best = int(np.argmin(scores.mean(axis=1)))
    rows = []
    eligible = []
    for i, c in enumerate(cands):
        diff = scores[i] - scores[best]
        se = float(diff.std(ddof=1) / np.sqrt(y.size)) if y.size > 1 else 0.0
        within = bool(diff.mean() <= max(se, EQUIVALENCE * scores[best].mean()))
        if within:
            eligible.append(i)
        rows.append(
            {
                "name": c.name,
                "kind": c.kind,
                "complexity": c.complexity,
                "cv_score": float(scores[i].mean()),
                "cv_score_minus_best": float(diff.mean()),
                "cv_score_se_vs_best": se,
                "within_one_se": within,
                **{f"cv_{k}": v for k, v in latency_metrics(y, oofs[i]).items() if k != "n"},
            }
        )
    chosen = min(eligible, key=lambda i: (cands[i].complexity, scores[i].mean()))
    return chosen, oofs, rows


def fit_best(
    archs: ArchBatch,
    latencies_ms: Any,
    candidates: Sequence[LearnedSurrogate] | None = None,
    prior: LatencySurrogate | None = None,
    lut: LutSurrogate | None = None,
    rng: np.random.Generator | None = None,
    nested: bool = True,
    width_mult: float = DEFAULT_WIDTH_MULT,
    prior_label: str = "",
) -> tuple[LearnedSurrogate, dict[str, Any]]:
    """Cross-validate the candidates, fit the chosen one on all pairs, and report.

    Returns the fitted surrogate and its report (also stored as `surrogate.report`): the
    selection rule, the CV table of every candidate, skipped candidates with the reason,
    and the held-out metrics (nested CV of the whole procedure when `nested`, else the
    chosen kind's own CV, which is optimistic by the selection).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    g = as_genome_batch(archs, width_mult)
    y = check_latencies(latencies_ms, g.shape[0])
    cands = list(candidates) if candidates is not None else default_candidates(width_mult, prior, lut, prior_label)
    if not cands:
        raise InvalidInputError("fit_best needs at least one candidate surrogate")
    for c in cands:
        if c.width_mult != width_mult:
            raise InvalidInputError(f"candidate {c.name} is for w{c.width_mult}, the data is w{width_mult}")
    usable = [c for c in cands if y.size >= c.min_samples]
    skipped = [
        {"name": c.name, "reason": f"needs >= {c.min_samples} samples, got {y.size}"} for c in cands if c not in usable
    ]
    if not usable:
        need = min(c.min_samples for c in cands)
        raise InvalidInputError(f"too few measurements to fit any candidate: got {y.size}, the simplest needs {need}")
    chosen, oofs, rows = _select(usable, g, y, rng)
    model = usable[chosen].unfitted()
    model.fit(g, y, rng=rng, oof_ms=oofs[chosen])
    report: dict[str, Any] = {
        **model.report,
        "selection": {
            "rule": SELECTION_RULE,
            "folds": folds_label(y.size),
            "chosen": usable[chosen].name,
            "candidates": rows,
            "skipped": skipped,
        },
    }
    if nested and y.size >= 2 * OUTER_FOLDS:
        report["held_out"] = {
            "method": f"nested cross-validation ({OUTER_FOLDS} outer folds, selection repeated inside each)",
            **latency_metrics(y, _nested_oof(usable, g, y, rng)),
        }
    else:
        report["held_out"]["method"] += " of the chosen kind (optimistic: it was also used to choose)"
    model.report = report
    return model, report


def _nested_oof(
    cands: Sequence[LearnedSurrogate], g: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    oof = np.empty_like(y)
    for test in np.array_split(rng.permutation(y.size), OUTER_FOLDS):
        train = np.setdiff1d(np.arange(y.size), test)
        usable = [c for c in cands if train.size >= c.min_samples]
        chosen, _, _ = _select(usable, g[train], y[train], rng)
        twin = usable[chosen].unfitted()
        twin._fit_point(g[train], y[train], rng)
        oof[test] = twin._predict_point(g[test])
    return oof


def format_report(report: dict[str, Any]) -> str:
    """A fit report as plain text (the CLI prints this; `--json` prints the dict)."""
    held = report["held_out"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    lines = [
        f"surrogate: {report['name']}  (trained on {report['n_train']} measurements)",
        f"held out ({held['method']}):",
        (
            f"  within +-5%: {held['share_within_5pct']:.1%}   within +-10%: {held['share_within_10pct']:.1%}   "
            f"MAPE: {held['mape_pct']:.2f}%   RMSE: {held['rmse_ms']:.3f} ms   Spearman: {fmt(held['spearman'], '.3f')}"
        ),
    ]
    sel = report.get("selection")
    if sel:
        lines.append(f"selection ({sel['folds']} CV; {sel['rule']}):")
        lines.append(f"  {'candidate':<18}{'params':>7}{'score':>10}{'+-10%':>8}{'MAPE%':>8}{'rho':>7}")
        for row in sel["candidates"]:
            mark = "*" if row["name"] == sel["chosen"] else " "
            lines.append(
                f"{mark} {row['name']:<18}{row['complexity']:>7}{row['cv_score']:>10.5f}"
                f"{row['cv_share_within_10pct']:>8.1%}{row['cv_mape_pct']:>8.2f}{fmt(row['cv_spearman'], '.3f'):>7}"
            )
        for row in sel["skipped"]:
            lines.append(f"  {row['name']:<18} skipped: {row['reason']}")
    return "\n".join(lines)
