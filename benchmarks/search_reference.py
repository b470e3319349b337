"""OFA² reference reproduction: HV vs the published front, speed vs pymoo's floor, the
9-budget comparison with OFA's single-objective finder, and the many-devices check.

One command (from the repository root):

    OFA2_EDGE_ASSETS=../shared/ofa_assets python benchmarks/search_reference.py   # ~8 min here
    python benchmarks/search_reference.py --quick          # a smoke run in a few minutes
    python benchmarks/search_reference.py --study --study-set broad --study-seeds 1-5
    python benchmarks/search_reference.py --study --study-set finalists --study-seeds 1-10

Everything runs through the toolkit's own entry point (`run_search`: objectives, pymoo
problem, algorithms registry, run store) in a temporary workspace whose
`latency_tables/note10/surrogate.json` is OFA's Samsung Note10 lookup table
(`LutSurrogate.from_folder(assets/note10)`), with OFA's official accuracy predictor.

Setting (OFA²): space w1.2, resolutions {160,176,192,208,224}; minimise (Note10 latency ms,
100 - top-1 %); population 100, 1000 generations; HV on raw values with reference point
(100 ms, 25 %), pymoo's HV. Published OFA² front: 758.3; the authors' code with pymoo 0.6.2
on the lead's machine: 756.4 / 759.8 / 756.7 (seeds 1/2/3) in ~21 s.

The floor is pymoo alone (`pymoo.optimize.minimize`) with the same algorithm, encoding and
operators on trivial vectorised objectives (pseudo-random functions of the genome, see
`TrivialProblem`), measured just before each run in the same process. On a shared
machine single pairs are noisy: the report gives every pair and the ratio of the fastest
run to the fastest floor. Run time is the whole search loop plus writing the run folder
(without the plot and without loading the predictors); "store" is the time the search's own
process spends on it (the evaluation rows are formatted by a child process meanwhile,
`ofa2_edge.search.formatter`, so on a machine with a second core that work is off the
search's path).

Many devices: the only public device table here is Note10's; the second device is
"roofline", an analytic per-layer model (MACs at 10 GMAC/s + weight and activation bytes
at 4 GB/s, float32) written as an OFA-format lookup table and loaded through the same
surrogate registry. It is a stand-in with a different cost structure (memory-bound layers
weigh more), not a measured device.

Reports: benchmarks/results/search_reference.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ofa2_edge.core.workspace import Workspace  # noqa: E402
from ofa2_edge.search.algorithms import OperatorConfig, default_algorithm  # noqa: E402
from ofa2_edge.search.config import SearchConfig  # noqa: E402
from ofa2_edge.search.indicators import hypervolume, nondominated  # noqa: E402
from ofa2_edge.search.runner import run_search  # noqa: E402
from ofa2_edge.search.runstore import RunFolder  # noqa: E402
from ofa2_edge.space.arch import EXPAND_CHOICES, KERNEL_CHOICES, N_BLOCKS, SearchSpace  # noqa: E402
from ofa2_edge.space.costs import layer_macs, layer_params  # noqa: E402
from ofa2_edge.space.netplan import slot_layer, stem_layers, tail_layers  # noqa: E402
from ofa2_edge.surrogates.lut import LayerStat, LutSurrogate  # noqa: E402
from ofa2_edge.tables.device import DeviceTable  # noqa: E402

PUBLISHED_HV = 758.3
AUTHORS_HV = {1: 756.4, 2: 759.8, 3: 756.7}
REFERENCE = {"latency:note10": 100.0, "top1": 75.0}  # (100 ms, 25 % error)
BUDGETS = tuple(range(15, 60, 5))
DEFAULT = "default"
OPS = "ops"  # our default operators with the --ops overrides
OPS_CONFIG: OperatorConfig | None = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- workspace
def roofline_table(r: int, w: float, gmacs: float = 10.0, gbytes: float = 4.0) -> dict[str, LayerStat]:
    """An analytic device: per layer, MACs / throughput + bytes moved / bandwidth (ms)."""

    def latency(layer) -> float:
        act = layer.in_size**2 * layer.in_ch + layer.out_size**2 * layer.out_ch
        if layer.kind == "expanded_conv":
            act += 2 * layer.in_size**2 * layer.mid_ch
        moved = 4 * (act + layer_params(layer))
        return layer_macs(layer) / (gmacs * 1e6) + moved / (gbytes * 1e6)

    layers = [*stem_layers(r, w), *tail_layers(r, w)]
    layers += [slot_layer(r, w, i, k, e) for i in range(N_BLOCKS) for k in KERNEL_CHOICES for e in EXPAND_CHOICES]
    return {layer.lut_key(): LayerStat(latency(layer), 0.0, 1) for layer in layers}


def make_workspace(root: Path, assets: Path) -> Workspace:
    workspace = Workspace.resolve(root, root / "cache")
    note10 = DeviceTable.of(workspace, "note10").surrogate_path
    LutSurrogate.from_folder(assets / "note10").save(note10, device="note10")
    space = SearchSpace()
    tables = {r: roofline_table(r, space.w) for r in space.resolutions}
    roofline = DeviceTable.of(workspace, "roofline").surrogate_path
    LutSurrogate(tables, space.w).save(roofline, device="roofline", note="analytic roofline stand-in")
    return workspace


# --------------------------------------------------------------------- runs
def operators(variant: str) -> OperatorConfig:
    if variant == OPS:
        assert OPS_CONFIG is not None, "the ops variant needs --ops"
        return OPS_CONFIG
    return OperatorConfig.ofa2() if variant == "ofa2" else OperatorConfig()


def ours() -> tuple[str, OperatorConfig]:
    """The variant the budget and many-devices parts run: our default, or --ops if given."""
    return (OPS, OPS_CONFIG) if OPS_CONFIG is not None else (DEFAULT, OperatorConfig())


def run(ws: Workspace, name: str, **kw: Any) -> tuple[RunFolder, dict[str, Any]]:
    """One search through the toolkit's entry point (`run_search`), no plot."""
    folder = ws.runs_dir / name
    doc = run_search(SearchConfig(**kw), folder, workspace=ws, plot=False)
    return RunFolder(folder), doc


def reference_run(ws: Workspace, name: str, algorithm: str, ops: OperatorConfig, seed: int, pop: int, gens: int) -> tuple[RunFolder, dict[str, Any]]:
    """One run in OFA²'s setting: minimise (Note10 latency, 100 - top-1), HV against REFERENCE."""
    return run(ws, name, objectives=("latency:note10", "top1"), algorithm=algorithm, operators=ops, pop_size=pop, n_gen=gens,
               seed=seed, reference_point=REFERENCE)  # fmt: skip


def hv_at(rows: list[dict[str, Any]], evals: int) -> float | None:
    best = [row["hv"] for row in rows if row["n_evals"] <= evals]
    return best[-1] if best else None


class TrivialProblem:
    """Two pseudo-random functions of the genome: vectorised, microseconds per population.

    A landscape without structure keeps the population diverse, so duplicate elimination
    rarely sends pymoo back for another mating round: this is the *cheapest* generation
    pymoo can run with these operators, i.e. the strictest floor. (A smooth trivial
    problem, e.g. linear forms, makes the population collapse onto duplicates and costs
    pymoo several mating rounds per generation: a floor inflated by the landscape.)"""

    def __new__(cls, codec, seed: int = 0):
        from pymoo.core.problem import Problem

        w = np.random.default_rng(seed).random((2, codec.n_var))

        class _P(Problem):
            def _evaluate(self, x, out, *args, **kwargs):
                out["F"] = np.mod(np.sin(np.asarray(x, dtype=np.float64) @ w.T * 12.9898) * 43758.5453, 1.0)

        return _P(n_var=codec.n_var, n_obj=2, xl=np.zeros(codec.n_var), xu=codec.n_choices - 1, vtype=int)


class MatingRounds:
    """Counts pymoo mating rounds (a round repeats when duplicates were eliminated)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        from pymoo.core.mating import Mating

        original = Mating._do

        def counted(self, *args, **kwargs):
            cls.count += 1
            return original(self, *args, **kwargs)

        Mating._do = counted

    @classmethod
    def take(cls) -> int:
        n, cls.count = cls.count, 0
        return n


def floor_time(ws: Workspace, algorithm: str, variant: str, pop: int, gens: int, seed: int) -> tuple[float, float]:
    """pymoo alone: same algorithm, encoding and operators, trivial objectives."""
    from pymoo.optimize import minimize
    from threadpoolctl import threadpool_limits

    from ofa2_edge.search.algorithms import BuildContext, get_algorithm
    from ofa2_edge.search.encoding import GenomeCodec

    codec = GenomeCodec(SearchSpace())
    spec = get_algorithm(algorithm)
    algo = spec.build(BuildContext(codec, 2, pop, seed, operators(variant), spec.resolve_params({})))
    MatingRounds.take()
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        minimize(TrivialProblem(codec), algo, ("n_gen", gens), seed=seed, verbose=False)
        return time.perf_counter() - t0, MatingRounds.take() / max(gens - 1, 1)


def reference_runs(ws: Workspace, algos: list[tuple[str, str]], seeds: list[int], pop: int, gens: int) -> list[dict[str, Any]]:
    out = []
    for algorithm, variant in algos:
        for seed in seeds:
            floor, floor_rounds = floor_time(ws, algorithm, variant, pop, gens, seed)
            r, doc = reference_run(ws, f"ref-{algorithm}-{variant}-s{seed}", algorithm, operators(variant), seed, pop, gens)
            t = doc["timings"]
            rec = {
                "algorithm": algorithm,
                "operators": variant,
                "seed": seed,
                "hv_population": doc["summary"]["hv_population"],
                "hv_archive": doc["summary"]["hv_archive"],
                "hv_at_25k": hv_at(r.hypervolume()["rows"], 25_000),
                "hv_at_50k": hv_at(r.hypervolume()["rows"], 50_000),
                "front_size": doc["summary"]["front_size"],
                "n_evals": doc["n_evals"],
                "n_archs": doc["n_archs"],
                "time_s": t["total_s"],
                "evaluation_s": t["evaluation_s"],
                "algorithm_s": t["algorithm_s"],
                "store_s": t["store_s"],
                "hypervolume_s": t["hypervolume_s"],
                "floor_s": floor,
                "mating_rounds_per_gen": MatingRounds.take() / max(gens - 1, 1),
                "floor_mating_rounds_per_gen": floor_rounds,
                "ratio_to_floor": t["total_s"] / floor,
                "search_only_ratio": (t["evaluation_s"] + t["algorithm_s"]) / floor,
                "folder": str(r.path),
            }
            log(
                f"{algorithm:9s} {variant:8s} seed {seed}: HV {rec['hv_population']:.2f} (archive {rec['hv_archive']:.2f}; "
                f"25k {rec['hv_at_25k']:.1f}, 50k {rec['hv_at_50k']:.1f})  {rec['time_s']:.1f} s = eval {rec['evaluation_s']:.1f} "
                f"+ algo {rec['algorithm_s']:.1f} + store {rec['store_s']:.1f} + hv {rec['hypervolume_s']:.1f}; floor {floor:.1f} s "
                f"-> x{rec['ratio_to_floor']:.2f}; mating rounds/gen {rec['mating_rounds_per_gen']:.2f} (floor {floor_rounds:.2f})"
            )
            out.append(rec)
    return out


def speed_pairs(ws: Workspace, algorithm: str, variant: str, seed: int, pop: int, gens: int, repeats: int) -> dict[str, Any]:
    """The same run and its floor `repeats` times, alternating which goes first (floor-run,
    run-floor, ...) so a slow spell of a shared machine does not always land on one side.
    The median of the per-pair ratios and the ratio of the minimums are the figures."""
    pairs = []
    for i in range(repeats):
        first_floor = i % 2 == 0
        if first_floor:
            floor, _ = floor_time(ws, algorithm, variant, pop, gens, seed)
        _, doc = reference_run(ws, f"speed-{algorithm}-{variant}-{i}", algorithm, operators(variant), seed, pop, gens)
        if not first_floor:
            floor, _ = floor_time(ws, algorithm, variant, pop, gens, seed)
        t = doc["timings"]
        pairs.append({"floor_s": floor, **{k: t[k] for k in ("total_s", "evaluation_s", "algorithm_s", "store_s", "hypervolume_s")}})
        log(f"speed pair {i + 1}/{repeats}: run {t['total_s']:.2f} s, floor {floor:.2f} s -> x{t['total_s'] / floor:.2f}")
    ratios = [p["total_s"] / p["floor_s"] for p in pairs]
    return {
        "algorithm": algorithm,
        "operators": variant,
        "seed": seed,
        "pairs": pairs,
        "ratios": ratios,
        "median_ratio": float(np.median(ratios)),
        "ratio_of_minimums": min(p["total_s"] for p in pairs) / min(p["floor_s"] for p in pairs),
        "median_split_s": {k: float(np.median([p[k] for p in pairs])) for k in ("evaluation_s", "algorithm_s", "store_s", "hypervolume_s", "floor_s", "total_s")},
    }


def best_under(front: dict[str, Any], budget: float, latency_field: str = "latency_ms:note10") -> float | None:
    vals = [row["top1_pct"] for row in front["rows"] if row[latency_field] <= budget]
    return max(vals) if vals else None


def finder_best(ws: Workspace, seed: int, budget: float, gens: int) -> tuple[float, dict[str, Any]]:
    """OFA's finder (population 100, parent ratio 0.25, mutation ratio 0.5, mutation
    probability 0.1) under a Note10 latency budget: its best top-1 and the run's status."""
    r, doc = run(ws, f"finder-{budget}ms-s{seed}", objectives=("top1",), constraints=(f"latency:note10<={budget}",),
                 algorithm="ofa-evolution", pop_size=100, n_gen=gens, seed=seed)  # fmt: skip
    return max(row["top1_pct"] for row in r.front()["rows"]), doc


def operator_overrides(text: str) -> OperatorConfig:
    """Our default operators with KEY=VALUE,... overrides (numbers for the numeric settings)."""
    pairs = dict(part.split("=", 1) for part in text.split(","))
    typed = {k: (v if k in ("sampling", "mutation", "dedupe", "refine_anchors") else float(v)) for k, v in pairs.items()}
    return OperatorConfig.from_dict({**OperatorConfig().to_dict(), **typed})


def budget_table(ws: Workspace, mo_folders: dict[int, Path], finder_gens: int, budgets: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per seed: one multi-objective run's best top-1 under each budget vs OFA's finder
    (population 100, `finder_gens` generations, parent ratio 0.25, mutation ratio 0.5,
    mutation probability 0.1) run with the same seed at that budget."""
    rows = []
    for seed, folder in mo_folders.items():
        front = RunFolder(folder).front()
        for b in budgets:
            finder, doc = finder_best(ws, seed, b, finder_gens)
            ours = best_under(front, b)
            rows.append(
                {
                    "seed": seed,
                    "budget_ms": b,
                    "multi_objective_top1": ours,
                    "finder_top1": finder,
                    "difference": None if ours is None else ours - finder,
                    "pass": ours is not None and ours >= finder - 0.05,
                    "finder_time_s": doc["timings"]["total_s"],
                }
            )
            log(f"seed {seed} budget {b} ms: one MO run {ours:.3f} %, finder {finder:.3f} % ({doc['timings']['total_s']:.1f} s)")
    return rows


def projections(ws: Workspace, algorithms: list[str], two_algorithm: str, pop: int, gens: int, seeds: list[int]) -> dict[str, Any]:
    """Per seed: a 4-objective search (top1, two devices, macs) with each of `algorithms`,
    its front projected onto (latency on one device, top-1) and compared by HV with a
    dedicated 2-objective search (`two_algorithm`, run once per seed and device) for that
    device, on the dedicated run's reference point. The first algorithm is the default."""
    devices = ("note10", "roofline")
    out: dict[str, Any] = {"algorithm": algorithms[0], "algorithms": algorithms, "two_objective_algorithm": two_algorithm, "seeds": {}, "dedicated": {}}
    for seed in seeds:
        dedicated = {}
        for dev in devices:
            r2, d2 = run(ws, f"two-{dev}-{two_algorithm}-{ours()[0]}-s{seed}", objectives=(f"latency:{dev}", "top1"), algorithm=two_algorithm,
                         operators=ours()[1], pop_size=pop, n_gen=gens, seed=seed)  # fmt: skip
            field = f"latency_ms:{dev}"
            F2 = np.array([[row[field], 100 - row["top1_pct"]] for row in r2.front()["rows"]])
            ref = np.asarray(r2.hypervolume()["reference_point_minimised"])  # the dedicated run's, (latency, error)
            dedicated[dev] = (ref, hypervolume(F2, ref), d2["timings"]["total_s"])
        out["dedicated"][seed] = {dev: hv for dev, (_, hv, _) in dedicated.items()}
        out["seeds"][seed] = {}
        for algorithm in algorithms:
            r4, d4 = run(
                ws,
                f"four-{algorithm}-{ours()[0]}-s{seed}",
                objectives=("top1", *(f"latency:{d}" for d in devices), "macs"),
                operators=ours()[1],
                algorithm=algorithm,
                pop_size=pop,
                n_gen=gens,
                seed=seed,
            )
            front4 = r4.front()
            rec: dict[str, Any] = {"four_objective_time_s": d4["timings"]["total_s"], "four_front_size": len(front4["rows"]), "devices": {}}
            for dev in devices:
                ref, hv2, t2 = dedicated[dev]
                field = f"latency_ms:{dev}"
                F4 = np.array([[row[field], 100 - row["top1_pct"]] for row in front4["rows"]])
                hv4 = hypervolume(F4[nondominated(F4)], ref)
                rec["devices"][dev] = {
                    "reference_point_minimised": ref.tolist(),
                    "hv_dedicated": hv2,
                    "hv_projection": hv4,
                    "relative_gap": (hv2 - hv4) / hv2,
                    "pass": hv4 >= 0.99 * hv2,
                    "dedicated_time_s": t2,
                }
                log(f"seed {seed} {algorithm} {dev}: dedicated 2-obj HV {hv2:.2f}, 4-obj projection {hv4:.2f} ({100 * (hv2 - hv4) / hv2:+.2f} % gap)")
            log(f"seed {seed} {algorithm}: 4-obj run {rec['four_objective_time_s']:.1f} s, front {rec['four_front_size']}")
            out["seeds"][seed][algorithm] = rec
    return out


FINALISTS = [("nsga2", OperatorConfig.ofa2()), ("nsga2", OperatorConfig(refine=0.0)), ("nsga2", OperatorConfig()), ("spea2", OperatorConfig())]


def study(ws: Workspace, seeds: list[int], pop: int, gens: int, which: str) -> list[dict[str, Any]]:
    """Algorithms x operators on the reference problem, HV of the final population."""
    broad = [
        ("nsga2", OperatorConfig.ofa2()),
        # operator ablations without the memetic step, then the step on top (the default)
        ("nsga2", OperatorConfig(sampling="uniform", mutation="choice", dedupe="canonical", refine=0.0)),
        ("nsga2", OperatorConfig(sampling="uniform", mutation="choice-different", dedupe="canonical", refine=0.0)),
        ("nsga2", OperatorConfig(refine=0.0)),
        ("nsga2", OperatorConfig(mutation_prob_var=2 / 46, refine=0.0)),
        ("nsga2", OperatorConfig()),
        ("sms-emoa", OperatorConfig()),
        ("spea2", OperatorConfig.ofa2()),
        ("spea2", OperatorConfig(sampling="uniform", mutation="choice", dedupe="canonical", refine=0.0)),
        ("spea2", OperatorConfig()),
        ("spea2", OperatorConfig(mutation_prob_var=2 / 46, refine=0.0)),
        ("age-moea", OperatorConfig()),
        ("nsga3", OperatorConfig()),
    ]
    variants = FINALISTS if which == "finalists" else broad
    rows = []
    for algorithm, ops in variants:
        hvs, times = [], []
        for seed in seeds:
            name = f"study-{algorithm}-{abs(hash(json.dumps(ops.to_dict(), sort_keys=True))) % 10**8}-s{seed}"
            _, doc = reference_run(ws, name, algorithm, ops, seed, pop, gens)
            hvs.append(doc["summary"]["hv_population"])
            times.append(doc["timings"]["total_s"])
        row = {"algorithm": algorithm, "operators": ops.to_dict(), "hv": hvs, "mean": float(np.mean(hvs)), "std": float(np.std(hvs, ddof=1)) if len(hvs) > 1 else 0.0, "mean_time_s": float(np.mean(times))}
        log(f"study {algorithm:9s} {ops.to_dict()}: HV {row['mean']:.2f} +- {row['std']:.2f} over {len(seeds)} seeds ({row['mean_time_s']:.1f} s/run)")
        rows.append(row)
    return rows


# --------------------------------------------------------------------- report
def markdown(report: dict[str, Any]) -> str:
    lines = ["# OFA² reference reproduction", "", f"Machine: {report['machine']}; load average at start {report['load_at_start']}. "
             "Timings on a shared machine are noisy; ratios are measured within one process.", ""]  # fmt: skip
    if report.get("reference"):
        lines += ["## Hypervolume (ref. point 100 ms, 25 %), population 100 x 1000 generations", "",
                  "| algorithm | operators | seed | HV final pop | HV all evaluated | HV @25k | HV @50k | time s | eval s | algo s | store s | hv s | floor s | x floor | rounds/gen (floor) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["reference"]:
            lines.append(
                f"| {r['algorithm']} | {r['operators']} | {r['seed']} | {r['hv_population']:.2f} | {r['hv_archive']:.2f} | "
                f"{r['hv_at_25k']:.1f} | {r['hv_at_50k']:.1f} | {r['time_s']:.1f} | {r['evaluation_s']:.2f} | {r['algorithm_s']:.1f} | "
                f"{r['store_s']:.2f} | {r['hypervolume_s']:.2f} | {r['floor_s']:.1f} | {r['ratio_to_floor']:.2f} | "
                f"{r['mating_rounds_per_gen']:.2f} ({r['floor_mating_rounds_per_gen']:.2f}) |"
            )
        lines += ["", f"Published OFA² HV {PUBLISHED_HV}; authors' code here (lead's measurement) {AUTHORS_HV}.", ""]
        for k, v in report["reference_means"].items():
            lines.append(
                f"- {k}: mean HV {v['hv']:.2f} (all evaluated {v['hv_archive']:.2f}); time: fastest run {v['min_time_s']:.1f} s vs "
                f"fastest floor {v['min_floor_s']:.1f} s = x{v['ratio_of_minimums']:.2f} (search without run store "
                f"x{v['search_only_ratio_of_minimums']:.2f}; mean of per-pair ratios x{v['ratio_mean_of_pairs']:.2f})"
            )
        lines.append("")
    if report.get("speed"):
        sp = report["speed"]
        m = sp["median_split_s"]
        lines += [f"## Speed: {sp['algorithm']}/{sp['operators']} seed {sp['seed']} vs pymoo's floor, {len(sp['pairs'])} alternating pairs", "",
                  "| pair | floor s | run s | x floor | eval s | algo s | store s | hv s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for i, (p, ratio) in enumerate(zip(sp["pairs"], sp["ratios"]), 1):
            lines.append(f"| {i} | {p['floor_s']:.2f} | {p['total_s']:.2f} | {ratio:.2f} | {p['evaluation_s']:.2f} | {p['algorithm_s']:.2f} | {p['store_s']:.2f} | {p['hypervolume_s']:.2f} |")
        lines += ["", f"- median of the per-pair ratios **x{sp['median_ratio']:.2f}**, ratio of the minimums x{sp['ratio_of_minimums']:.2f} "
                  f"(goal <= 1.5); median split: evaluation {m['evaluation_s']:.2f} s, pymoo + operators {m['algorithm_s']:.2f} s, "
                  f"run store {m['store_s']:.2f} s, hypervolume {m['hypervolume_s']:.2f} s; floor {m['floor_s']:.2f} s", ""]  # fmt: skip
    if report.get("budgets"):
        lines += ["## One multi-objective run vs OFA's finder (one run per budget), same seed", "",
                  "| seed | budget ms | one MO run top-1 % | finder top-1 % | difference | pass (>= -0.05) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for b in report["budgets"]:
            lines.append(f"| {b['seed']} | {b['budget_ms']} | {b['multi_objective_top1']:.3f} | {b['finder_top1']:.3f} | {b['difference']:+.3f} | {b['pass']} |")
        n_pass = sum(b["pass"] for b in report["budgets"])
        mean_diff = np.mean([b["difference"] for b in report["budgets"]])
        lines += ["", f"{n_pass} of {len(report['budgets'])} (seed, budget) pairs pass; mean difference {mean_diff:+.3f} points.", ""]
    if report.get("projections"):
        p = report["projections"]
        lines += [f"## Many devices: 4-objective search projected vs dedicated 2-objective searches ({p['two_objective_algorithm']})", "",
                  f"Objectives top1, latency:note10, latency:roofline, macs; our default for 3+ objectives is {p['algorithm']}. "
                  "`roofline` is an analytic stand-in device (see the script), not a measured one.", "",
                  "| algorithm | seed | device | HV dedicated | HV 4-obj projection | gap | pass (<= 1 %) | 4-obj run s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for algorithm in p["algorithms"]:
            for seed, per_algo in p["seeds"].items():
                rec = per_algo[algorithm]
                for dev, d in rec["devices"].items():
                    lines.append(f"| {algorithm} | {seed} | {dev} | {d['hv_dedicated']:.2f} | {d['hv_projection']:.2f} | {100 * d['relative_gap']:+.2f} % | {d['pass']} | {rec['four_objective_time_s']:.1f} |")
        lines.append("")
        lines += projection_summary(p)
        lines.append("")
    if report.get("study"):
        lines += ["## Algorithm / operator study (HV of the final population)", "", "| algorithm | operators | mean HV | sd | s/run |", "|---|---|---|---|---|"]
        for r in report["study"]:
            lines.append(f"| {r['algorithm']} | {json.dumps(r['operators'])} | {r['mean']:.2f} | {r['std']:.2f} | {r['mean_time_s']:.1f} |")
        lines.append("")
    lines += ["Reproduce: `" + report["command"] + "`", ""]
    return "\n".join(lines)


def projection_summary(p: dict[str, Any]) -> list[str]:
    """Per-seed pass counts, the same check between two dedicated runs (its noise floor),
    and the comparison of the means over seeds.

    A dedicated run's HV itself varies by about 1 % from seed to seed (mostly how far it
    gets at the high-accuracy end), so a per-seed 1 % test fails now and then even between
    two searches that are equally good: the dedicated run of seed s against that of the
    next seed shows how often. The mean over seeds is the comparison of the two searches."""
    seeds = list(p["seeds"])
    devices = list(next(iter(p["dedicated"].values())))
    lines = []
    floor = [
        p["dedicated"][b][dev] >= 0.99 * p["dedicated"][a][dev] for a, b in zip(seeds, seeds[1:] + seeds[:1]) for dev in devices
    ] if len(seeds) > 1 else []  # fmt: skip
    if floor:
        lines.append(f"- noise floor: a dedicated run within 1 % of the dedicated run of the previous seed (cyclic): {sum(floor)} of {len(floor)}")
    for algorithm in p["algorithms"]:
        recs = {seed: p["seeds"][seed][algorithm] for seed in seeds}
        gaps = [d["relative_gap"] for rec in recs.values() for d in rec["devices"].values()]
        first = [d["relative_gap"] for seed in seeds[:3] for d in recs[seed]["devices"].values()]
        means = []
        for dev in devices:
            hv2 = float(np.mean([p["dedicated"][seed][dev] for seed in seeds]))
            hv4 = float(np.mean([recs[seed]["devices"][dev]["hv_projection"] for seed in seeds]))
            means.append(f"{dev} {hv4:.2f} vs {hv2:.2f} ({100 * (hv2 - hv4) / hv2:+.2f} %)")
        times = [rec["four_objective_time_s"] for rec in recs.values()]
        lines.append(
            f"- {algorithm}: {sum(g <= 0.01 for g in gaps)} of {len(gaps)} projections within 1 % (seeds {seeds[0]}-{seeds[-1]}; "
            f"first three seeds {sum(g <= 0.01 for g in first)} of {len(first)}); mean gap {100 * np.mean(gaps):+.2f} %, "
            f"worst {100 * max(gaps):+.2f} %; mean over seeds, 4-obj projection vs dedicated: {'; '.join(means)}; "
            f"mean 4-obj run {np.mean(times):.1f} s"
        )
    return lines


def seeds_of(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run: 100 generations, seed 1, finder 50 generations, 3 budgets")
    ap.add_argument("--study", action="store_true", help="run only the algorithm/operator study")
    ap.add_argument("--study-seeds", default="1-5")
    ap.add_argument("--study-set", choices=("broad", "finalists"), default="broad", help="broad: 12 algorithm/operator variants; finalists: 3")
    ap.add_argument("--seeds", default="1-3")
    ap.add_argument("--projection-seeds", default="1-10", help="seeds of the many-devices part (a 1 %% test per seed needs many seeds)")
    ap.add_argument("--default-algo", default=default_algorithm(2), help="our default for two objectives")
    ap.add_argument("--many-algo", default=default_algorithm(4), help="comma list of algorithms for the 4-objective check; the first is reported as the default")
    ap.add_argument("--ops", default="", help="operator overrides KEY=VALUE,... (e.g. refine=0.1,refine_anchors=front): an extra "
                    "reference variant 'ops', also used by the budget and many-devices parts instead of the default")
    ap.add_argument("--ref-variants", default="", help="comma list ALGO/VARIANT (variants: ofa2, default, ops) for the reference part")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: reference,speed,budgets,projections")
    ap.add_argument("--speed-repeats", type=int, default=6, help="alternating (floor, run) pairs of the speed part")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--keep", type=Path, default=None, help="keep run folders here instead of a temporary folder")
    args = ap.parse_args()
    global OPS_CONFIG
    if args.ops:
        OPS_CONFIG = operator_overrides(args.ops)
    MatingRounds.install()
    assets = Path(os.environ.get("OFA2_EDGE_ASSETS", REPO.parent / "shared" / "ofa_assets"))
    gens, finder_gens, seeds = (100, 50, [1]) if args.quick else (1000, 500, seeds_of(args.seeds))
    budgets = (15, 35, 55) if args.quick else BUDGETS
    skip = {s for s in args.skip.split(",") if s}
    tmp = tempfile.TemporaryDirectory(prefix="ofa2-search-bench-")
    root = args.keep or Path(tmp.name)
    ws = make_workspace(root, assets)
    report: dict[str, Any] = {
        "schema": "ofa2-edge/benchmark-search-reference",
        "schema_version": 1,
        "command": "python " + " ".join(a.replace(f"{REPO}/", "") for a in [Path(sys.argv[0]).resolve().as_posix(), *sys.argv[1:]]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} x{os.cpu_count()}",
        "load_at_start": os.getloadavg(),
        "quick": args.quick,
        "generations": gens,
        "ops": None if OPS_CONFIG is None else OPS_CONFIG.to_dict(),
    }
    if args.study:
        report["study"] = study(ws, seeds_of(args.study_seeds), 100, gens, args.study_set)
    else:
        if "reference" not in skip:
            # OFA²'s own setting, our default, and the alternatives the study found strongest
            algos = [("nsga2", "ofa2"), (args.default_algo, DEFAULT), ("nsga2", DEFAULT), ("spea2", DEFAULT)]
            if OPS_CONFIG is not None:
                algos.append((args.default_algo, OPS))
            if args.ref_variants:
                algos = [tuple(v.split("/", 1)) for v in args.ref_variants.split(",")]  # type: ignore[misc]
            algos = list(dict.fromkeys(algos))
            report["reference"] = reference_runs(ws, algos, seeds, 100, gens)
            means = {}
            for algorithm, variant in algos:
                rows = [r for r in report["reference"] if (r["algorithm"], r["operators"]) == (algorithm, variant)]
                # Timings on a shared machine: each run is paired with a floor measured just before it;
                # the minimum over the pairs is the figure least disturbed by other processes.
                means[f"{algorithm}/{variant}"] = {
                    "hv": float(np.mean([r["hv_population"] for r in rows])),
                    "hv_archive": float(np.mean([r["hv_archive"] for r in rows])),
                    "ratio_mean_of_pairs": float(np.mean([r["ratio_to_floor"] for r in rows])),
                    "ratio_of_minimums": min(r["time_s"] for r in rows) / min(r["floor_s"] for r in rows),
                    "search_only_ratio_of_minimums": min(r["evaluation_s"] + r["algorithm_s"] for r in rows) / min(r["floor_s"] for r in rows),
                    "min_time_s": min(r["time_s"] for r in rows),
                    "min_floor_s": min(r["floor_s"] for r in rows),
                }
            report["reference_means"] = means
        if "speed" not in skip:
            report["speed"] = speed_pairs(ws, args.default_algo, ours()[0], seeds[0], 100, gens, 1 if args.quick else args.speed_repeats)
        if "budgets" not in skip:
            folders = {}
            for seed in seeds:
                mo = ws.runs_dir / f"ref-{args.default_algo}-{ours()[0]}-s{seed}"
                if not (mo / "front.json").is_file():
                    reference_run(ws, mo.name, args.default_algo, ours()[1], seed, 100, gens)
                folders[seed] = mo
            report["budgets"] = budget_table(ws, folders, finder_gens, budgets)
        if "projections" not in skip:
            projection_seeds = seeds if args.quick else seeds_of(args.projection_seeds)
            report["projections"] = projections(ws, args.many_algo.split(","), args.default_algo, 100, gens, projection_seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"search_study_{args.study_set}" if args.study else ("search_reference_quick" if args.quick else "search_reference")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
