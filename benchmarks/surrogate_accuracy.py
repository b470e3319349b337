"""Surrogate accuracy against the goals of issue 5: curves over K, the noise floor, transfer.

Two datasets:
- **Note10 (clean)**: the official Samsung Note10 lookup table gives a clean, additive
  latency for any arch; the surrogates see only (arch, latency) pairs. Training sets come
  from the size-stratified design, the test set is 1,000 other archs from the same design.
- **This CPU (noisy, real)**: onnxruntime latencies measured by the stopgap collector
  (`benchmarks/_collect_cpu_latency.py`): a first session (default C) for training and
  testing and a second, separate session (default D) on a subset of the same archs for the
  test-retest floor. The test set is 100 archs measured in both sessions; training sets are
  drawn from the other archs of the first. `--target` picks the per-model statistic (default:
  the minimum of per-run thread-CPU times, which excludes preemption by other processes; the
  wall-clock minimum and median are reported beside it, with their own test-retest floors).

For each K in {10, 20, 30, 50, 100, 200} and each kind (and the CV-selected one), `--repeats`
training sets are drawn and the held-out figures averaged. Few-shot transfer is evaluated in
both directions (Note10 table as the prior for the CPU, and a CPU-fitted predictor as the
prior for Note10) at K = 5, 10 and 20. Prediction speed for 10,000 archs (features included) is
the minimum of repeated runs, also given as a ratio to the LUT sum measured in the same run.

    python benchmarks/surrogate_accuracy.py [--data /work/data/cpu_latency] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import spearmanr

from ofa2_edge.latency.design import size_stratified_genomes
from ofa2_edge.latency.learned import LearnedSurrogate
from ofa2_edge.latency.linear import LinearSurrogate
from ofa2_edge.latency.lut import LutSurrogate
from ofa2_edge.latency.metrics import latency_metrics
from ofa2_edge.latency.prior import TransferSurrogate
from ofa2_edge.latency.select import fit_best
from ofa2_edge.latency.trees import TreeSurrogate
from ofa2_edge.persist import iter_jsonl
from ofa2_edge.space import Arch, SearchSpace

KS = (10, 20, 30, 50, 100, 200)
FEW_SHOT_KS = (5, 10, 20)
N_CPU_TEST = 100
#: Per-model statistics whose test-retest agreement is reported.
FLOOR_FIELDS = (
    "min_ms",
    "median_ms",
    "cpu_min_ms",
    "cpu_p10_ms",
    "cpu_median_ms",
    "cpu_min_refnorm_ms",
    "cpu_median_refnorm_ms",
)
FIGURES = ("share_within_10pct", "share_within_5pct", "mape_pct", "spearman")


def load_session(path: Path, target: str) -> dict[str, tuple[np.ndarray, float, dict[str, Any]]]:
    """arch id -> (genome, latency, record); the first record of an arch measured twice wins.

    A target ``X_refnorm_ms`` is field ``X_ms`` rescaled by the reference net timed in the
    same group: times (session median of ``ref_X_ms``) / (the group's ``ref_X_ms``).
    """
    records: dict[str, dict[str, Any]] = {}
    for rec in iter_jsonl(path):
        if rec.get("kind") == "measurement" and rec["arch_id"] not in records:
            records[rec["arch_id"]] = rec
    if target.endswith("_refnorm_ms"):
        field = target.replace("_refnorm", "")
        ref_median = float(np.median([r[f"ref_{field}"] for r in records.values()]))
        value = lambda r: r[field] * ref_median / r[f"ref_{field}"]
    else:
        value = lambda r: r[target]
    return {i: (Arch.from_dict(r["arch"]).to_genome(), float(value(r)), r) for i, r in records.items()}


def floor(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Test-retest agreement of the same archs in two sessions."""
    rel = np.abs(b - a) / a
    return {
        "n": int(a.size),
        "share_within_10pct": float(np.mean(rel <= 0.10)),
        "share_within_5pct": float(np.mean(rel <= 0.05)),
        "median_rel_diff_pct": float(100 * np.median(rel)),
        "mean_rel_diff_pct": float(100 * rel.mean()),
        "median_ratio_b_over_a": float(np.median(b / a)),
        "spearman": float(spearmanr(a, b).statistic),
    }


def session_load(records: list[dict[str, Any]]) -> dict[str, float]:
    load = np.array([r["loadavg_after"][0] for r in records])
    ratio = np.array([np.median(r["cpu_wall_ratio"]) for r in records])
    cv = np.array([np.std(r["runs_ms"]) / np.mean(r["runs_ms"]) for r in records])
    span = (max(r["time"] for r in records) - min(r["time"] for r in records)) / 60
    return {
        "loadavg_1min_median": float(np.median(load)),
        "loadavg_1min_max": float(load.max()),
        "within_model_cv_median_pct": float(100 * np.median(cv)),
        "within_model_cv_p90_pct": float(100 * np.percentile(cv, 90)),
        "cpu_over_wall_median": float(np.median(ratio)),
        "minutes": float(span),
    }


Maker = Callable[[], LearnedSurrogate]


def evaluate_curve(
    makers: dict[str, Maker | None],
    draw: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    g_test: np.ndarray,
    y_test: np.ndarray,
    ks: tuple[int, ...],
    repeats: int,
    select_kwargs: dict[str, dict[str, Any]],
) -> dict[str, dict[int, dict[str, Any]]]:
    """Held-out figures per kind per K, averaged over `repeats` training draws. A maker of
    None means the CV-selected model (`fit_best`) with `select_kwargs[name]`."""
    out: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in makers}
    for k in ks:
        for name, make in makers.items():
            rows, chosen, cover = [], [], []
            for rep in range(repeats):
                rng = np.random.default_rng(1000 * k + rep)
                g, y = draw(k, rng)
                if make is None:
                    model, report = fit_best(g, y, rng=rng, nested=False, **select_kwargs[name])
                    chosen.append(report["selection"]["chosen"])
                else:
                    model = make()
                    if k < model.min_samples:
                        break
                    model.fit(g, y, rng=rng)
                rows.append(latency_metrics(y_test, model.predict(g_test)))
                cover.append(float(np.mean(y_test <= model.predict_quantile(g_test, 0.9))))
            if not rows:
                continue
            mean = {f: float(np.mean([r[f] for r in rows if r[f] is not None])) for f in FIGURES}
            mean["share_within_10pct_worst"] = float(min(r["share_within_10pct"] for r in rows))
            mean["q90_coverage"] = float(np.mean(cover))
            mean["repeats"] = len(rows)
            if chosen:
                mean["chosen"] = {c: chosen.count(c) for c in sorted(set(chosen))}
            out[name][k] = mean
            print(
                f"  {name:<24} K={k:<4} +-10%: {mean['share_within_10pct']:.3f}  rho: {mean['spearman']:.3f}  "
                f"MAPE: {mean['mape_pct']:.2f}%",
                file=sys.stderr,
                flush=True,
            )
    return out


def predict_speed(models: dict[str, Any], n: int = 10_000, repeats: int = 7) -> dict[str, dict[str, float]]:
    g = SearchSpace().sample_genomes(n, np.random.default_rng(0))
    out = {}
    for name, model in models.items():
        model.predict(g[:10])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.predict(g)
            times.append(time.perf_counter() - start)
        out[name] = {"min_ms": 1e3 * min(times), "median_ms": 1e3 * float(np.median(times))}
    base = out["lut"]["min_ms"]
    for row in out.values():
        row["ratio_to_lut"] = row["min_ms"] / base
    return out


def print_curve(title: str, curve: dict[str, dict[int, dict[str, Any]]], ks: tuple[int, ...]) -> None:
    print(f"\n{title}")
    print(f"{'kind':<26}" + "".join(f"{'K=' + str(k):>20}" for k in ks))
    print(f"{'':<26}" + "".join(f"{'+-10%  rho   MAPE':>20}" for _ in ks))
    for name, per_k in curve.items():
        cells = []
        for k in ks:
            m = per_k.get(k)
            cells.append(
                f"{m['share_within_10pct']:>7.3f} {m['spearman']:.3f} {m['mape_pct']:>5.2f}" if m else f"{'-':>20}"
            )
        print(f"{name:<26}" + "".join(f"{c:>20}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data/cpu_latency"))
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("OFA2_EDGE_ASSETS", "../shared/ofa_assets")))
    ap.add_argument(
        "--target",
        default="cpu_min_ms",
        help="which per-model statistic is 'the latency' (cpu_median_ms, min_ms, median_ms, cpu_median_refnorm_ms, ...)",
    )
    ap.add_argument(
        "--extra-targets",
        nargs="*",
        default=["cpu_min_refnorm_ms", "cpu_median_ms", "min_ms"],
        help="other statistics to report the CV-selected surrogate's curve for",
    )
    ap.add_argument("--train-session", default="C", help="CPU session for training and testing")
    ap.add_argument("--retest-session", default="D", help="second session of the same archs: the test-retest floor")
    ap.add_argument(
        "--also-retest", nargs="*", default=["A"], help="earlier sessions of the same archs to compare (wall clock)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("/work/data/cpu_latency/surrogate_accuracy.json"))
    args = ap.parse_args()
    result: dict[str, Any] = {"target": args.target, "repeats": args.repeats, "loadavg_at_start": os.getloadavg()}

    note10 = LutSurrogate.from_folder(args.assets / "note10")
    feature_kinds: dict[str, Maker | None] = {
        "linear[minimal]": lambda: LinearSurrogate(features="minimal"),
        "linear[compact]": lambda: LinearSurrogate(features="compact"),
        "linear[stage]": lambda: LinearSurrogate(features="stage"),
        "trees": lambda: TreeSurrogate(),
        "cv-selected": None,
    }

    # ---------------------------------------------------------------- Note10 (clean)
    print("Note10 (clean LUT data)", file=sys.stderr)
    g_n10_test = size_stratified_genomes(1000, np.random.default_rng(99), include_extremes=False)
    y_n10_test = note10.predict(g_n10_test)

    def draw_n10(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        g = size_stratified_genomes(k, rng, include_extremes=k >= 20)
        return g, note10.predict(g)

    result["note10"] = evaluate_curve(
        feature_kinds, draw_n10, g_n10_test, y_n10_test, KS, args.repeats, {"cv-selected": {}}
    )

    # ---------------------------------------------------------------- CPU (noisy, real)
    a = load_session(args.data / f"{args.train_session}.jsonl", args.target)
    retest = args.data / f"{args.retest_session}.jsonl"
    b = load_session(retest, args.target) if retest.exists() else {}
    both = sorted(set(a) & set(b))
    rng = np.random.default_rng(7)
    test_ids = [both[i] for i in rng.permutation(len(both))[:N_CPU_TEST]] if len(both) >= N_CPU_TEST else []
    if not test_ids:
        print(
            "no second session with >= 100 shared archs: CPU test set drawn from the first session only",
            file=sys.stderr,
        )
        test_ids = [sorted(a)[i] for i in rng.permutation(len(a))[:N_CPU_TEST]]
    pool_ids = sorted(set(a) - set(test_ids))
    g_pool = np.stack([a[i][0] for i in pool_ids])
    y_pool = np.array([a[i][1] for i in pool_ids])
    g_cpu_test = np.stack([a[i][0] for i in test_ids])
    y_cpu_test = np.array([a[i][1] for i in test_ids])
    cpu_ks = tuple(k for k in KS if k <= len(pool_ids))
    result["cpu_data"] = {
        "sessions": [args.train_session, args.retest_session],
        "first": len(a),
        "second": len(b),
        "shared": len(both),
        "pool": len(pool_ids),
        "test": len(test_ids),
        "load_first": session_load([r for _, _, r in a.values()]),
    }
    if b:
        result["cpu_data"]["load_second"] = session_load([r for _, _, r in b.values()])
        fields = [f for f in FLOOR_FIELDS if f.replace("_refnorm", "") in next(iter(a.values()))[2]]
        result["floor"] = {}
        for field in fields:
            fa = load_session(args.data / f"{args.train_session}.jsonl", field)
            fb = load_session(retest, field)
            result["floor"][field] = floor(np.array([fa[i][1] for i in both]), np.array([fb[i][1] for i in both]))
    for older in args.also_retest:
        # the same archs measured in an earlier session (e.g. under a wall-clock-only protocol)
        path = args.data / f"{older}.jsonl"
        if path.exists():
            for field in ("min_ms", "median_ms"):
                fo, fa = load_session(path, field), load_session(args.data / f"{args.train_session}.jsonl", field)
                shared = sorted(set(fo) & set(fa))
                result.setdefault("floor_other_sessions", {})[f"{older}-vs-{args.train_session}:{field}"] = floor(
                    np.array([fo[i][1] for i in shared]), np.array([fa[i][1] for i in shared])
                )

    def draw_cpu(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.choice(len(pool_ids), size=k, replace=False)
        return g_pool[idx], y_pool[idx]

    print(f"CPU ({len(pool_ids)} pool, {len(test_ids)} test, target {args.target})", file=sys.stderr)
    cpu_kinds = dict(feature_kinds)
    cpu_kinds["cv-selected+note10-prior"] = None
    cpu_kinds["transfer[log] from note10"] = lambda: TransferSurrogate(prior=note10, prior_label="note10")
    result["cpu"] = evaluate_curve(
        cpu_kinds,
        draw_cpu,
        g_cpu_test,
        y_cpu_test,
        cpu_ks,
        args.repeats,
        {"cv-selected": {}, "cv-selected+note10-prior": {"prior": note10, "prior_label": "note10"}},
    )
    if b and set(test_ids) <= set(b):
        # the same trained models, scored against the test archs as measured in the second session
        y_b = np.array([b[i][1] for i in test_ids])
        result["cpu_vs_second_session"] = evaluate_curve(
            {"cv-selected": None}, draw_cpu, g_cpu_test, y_b, cpu_ks, args.repeats, {"cv-selected": {}}
        )

    for extra in args.extra_targets:
        ea = load_session(args.data / f"{args.train_session}.jsonl", extra)
        ey_pool = np.array([ea[i][1] for i in pool_ids])
        ey_test = np.array([ea[i][1] for i in test_ids])

        def draw_extra(
            k: int, rng: np.random.Generator, ey_pool: np.ndarray = ey_pool
        ) -> tuple[np.ndarray, np.ndarray]:
            idx = rng.choice(len(pool_ids), size=k, replace=False)
            return g_pool[idx], ey_pool[idx]

        print(f"CPU, target {extra}", file=sys.stderr)
        result.setdefault("cpu_other_targets", {})[extra] = evaluate_curve(
            {"cv-selected": None}, draw_extra, g_cpu_test, ey_test, cpu_ks, args.repeats, {"cv-selected": {}}
        )["cv-selected"]

    # ---------------------------------------------------------------- few-shot transfer
    print("few-shot transfer", file=sys.stderr)
    cpu_prior, _ = fit_best(g_pool, y_pool, nested=False)
    result["transfer"] = {
        "note10_prior_to_cpu": evaluate_curve(
            {
                "transfer[log]": lambda: TransferSurrogate(prior=note10, link="log", prior_label="note10"),
                "transfer[add]": lambda: TransferSurrogate(prior=note10, link="add", prior_label="note10"),
                "linear[compact] (no prior)": lambda: LinearSurrogate(features="compact"),
            },
            draw_cpu,
            g_cpu_test,
            y_cpu_test,
            FEW_SHOT_KS,
            args.repeats,
            {},
        ),
        "cpu_prior_to_note10": evaluate_curve(
            {
                "transfer[log]": lambda: TransferSurrogate(prior=cpu_prior, link="log", prior_label="cpu"),
                "transfer[add]": lambda: TransferSurrogate(prior=cpu_prior, link="add", prior_label="cpu"),
                "linear[compact] (no prior)": lambda: LinearSurrogate(features="compact"),
            },
            draw_n10,
            g_n10_test,
            y_n10_test,
            FEW_SHOT_KS,
            args.repeats,
            {},
        ),
        "raw_prior_spearman": {
            "note10_table_vs_cpu_test": float(spearmanr(note10.predict(g_cpu_test), y_cpu_test).statistic),
            "cpu_model_vs_note10_test": float(spearmanr(cpu_prior.predict(g_n10_test), y_n10_test).statistic),
        },
        "cpu_prior": cpu_prior.report["name"],
    }

    # ---------------------------------------------------------------- speed
    g_fit, y_fit = draw_n10(100, np.random.default_rng(5))
    speed_models: dict[str, Any] = {"lut": note10}
    for name, make in feature_kinds.items():
        if make is not None:
            speed_models[name] = make().fit(g_fit, y_fit)
    speed_models["transfer[log] (note10 prior)"] = TransferSurrogate(prior=note10).fit(g_fit, y_fit)
    speed_models["transfer[log] (trees prior)"] = TransferSurrogate(prior=speed_models["trees"]).fit(g_fit, y_fit)
    result["predict_10k"] = predict_speed(speed_models)
    result["loadavg_at_end"] = os.getloadavg()

    # ---------------------------------------------------------------- report
    print_curve(
        "Note10 LUT data (clean), 1000 held-out archs: share within +-10% / Spearman / MAPE %", result["note10"], KS
    )
    print_curve(f"CPU onnxruntime ({args.target}), {len(test_ids)} held-out archs", result["cpu"], cpu_ks)
    if "cpu_vs_second_session" in result:
        print_curve(
            "CPU: same models scored against the second session's measurement of the test archs",
            result["cpu_vs_second_session"],
            cpu_ks,
        )
    if "cpu_other_targets" in result:
        print_curve(
            "CPU: the CV-selected surrogate with other per-model statistics as the target",
            {f"cv-selected on {t}": c for t, c in result["cpu_other_targets"].items()},
            cpu_ks,
        )
    if "floor" in result:
        print("\nCPU test-retest floor (same archs, two separate sessions):")
        for field, f in result["floor"].items():
            print(
                f"  {field:<16} n={f['n']}  within +-10%: {f['share_within_10pct']:.3f}  within +-5%: {f['share_within_5pct']:.3f}  "
                f"median rel. diff: {f['median_rel_diff_pct']:.2f}%  rho: {f['spearman']:.4f}"
            )
        for s in ("load_first", "load_second"):
            ld = result["cpu_data"][s]
            print(
                f"  {s.replace('load_', '')} session: loadavg median {ld['loadavg_1min_median']:.2f} (max {ld['loadavg_1min_max']:.2f}), "
                f"within-model CV median {ld['within_model_cv_median_pct']:.1f}% (p90 {ld['within_model_cv_p90_pct']:.1f}%), "
                f"{ld['minutes']:.0f} min"
            )
    for name, f in result.get("floor_other_sessions", {}).items():
        print(
            f"  {name:<28} n={f['n']}  within +-10%: {f['share_within_10pct']:.3f}  median rel. diff: {f['median_rel_diff_pct']:.2f}%"
        )
    for direction, curve in result["transfer"].items():
        if (
            isinstance(curve, dict)
            and all(isinstance(v, dict) for v in curve.values())
            and direction != "raw_prior_spearman"
        ):
            print_curve(f"Few-shot transfer: {direction}", curve, FEW_SHOT_KS)
    print(f"  raw prior Spearman (no fitting): {result['transfer']['raw_prior_spearman']}")
    print("\nPredict 10,000 archs (features included), min of 7 runs:")
    for name, row in result["predict_10k"].items():
        print(f"  {name:<30} {row['min_ms']:>8.1f} ms  ({row['ratio_to_lut']:.1f}x the LUT sum)")
    print(
        f"load average at start {result['loadavg_at_start'][0]:.2f}, at end {result['loadavg_at_end'][0]:.2f} (2 cores, shared)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
