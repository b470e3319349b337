"""Operator variants judged on the 9-budget comparison with OFA's finder and on HV.

Per variant (operator overrides, as `search_reference.py --ops`) and seed: one NSGA-II run
(100 x 1000, Note10 latency vs top-1), its final population's HV (ref. point 100 ms, 25 %),
its run time, and its best top-1 under each budget vs OFA's finder at that budget (pop 100,
500 generations, same seed). The finder does not depend on our operators, so its results
are cached in a JSON file keyed by (seed, budget) and reused across invocations.

    python benchmarks/budget_study.py --seeds 1-6 --variants "default;crossover=block;crossover=stage" \\
        --cache /tmp/finder-cache.json --out /tmp/budget-study
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_reference as ref  # noqa: E402

from ofa2_edge.search.algorithms import OperatorConfig  # noqa: E402


def config_of(variant: str) -> OperatorConfig:
    return OperatorConfig() if variant == "default" else ref.operator_overrides(variant)


def finder_top1(ws, cache: Path, seed: int, budget: int, gens: int) -> float:
    data = json.loads(cache.read_text()) if cache.is_file() else {}
    key = f"{seed}:{budget}:{gens}"
    if key not in data:
        data[key], _ = ref.finder_best(ws, seed, budget, gens)
        cache.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return float(data[key])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-6")
    ap.add_argument("--variants", default="default", help="';'-separated operator overrides KEY=VALUE,... ('default': OperatorConfig())")
    ap.add_argument("--cache", type=Path, required=True, help="finder results cache (JSON), created if missing")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gens", type=int, default=1000)
    ap.add_argument("--finder-gens", type=int, default=500)
    args = ap.parse_args()

    assets = Path(os.environ.get("OFA2_EDGE_ASSETS", ref.REPO.parent / "shared" / "ofa_assets"))
    seeds = ref.seeds_of(args.seeds)
    variants = args.variants.split(";")
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="budget-study-") as tmp:
        ws = ref.make_workspace(Path(tmp), assets)
        for variant in variants:
            ops = config_of(variant)
            for seed in seeds:
                t0 = time.perf_counter()
                r, doc = ref.reference_run(ws, f"mo-{len(results)}", "nsga2", ops, seed, 100, args.gens)
                wall = time.perf_counter() - t0
                front = r.front()
                diffs = {}
                for b in ref.BUDGETS:
                    ours = ref.best_under(front, b)
                    diffs[b] = (ours if ours is not None else float("nan")) - finder_top1(ws, args.cache, seed, b, args.finder_gens)
                rec = {"variant": variant, "seed": seed, "hv": doc["summary"]["hv_population"], "time_s": doc["timings"]["total_s"],
                       "wall_s": wall, "diffs": diffs, "passed": sum(d >= -0.05 for d in diffs.values())}  # fmt: skip
                results.append(rec)
                worst = min(diffs, key=diffs.get)
                ref.log(f"{variant:40s} seed {seed}: HV {rec['hv']:.2f}  {rec['time_s']:.1f} s  budgets {rec['passed']}/9 "
                        f"(worst {worst} ms {diffs[worst]:+.3f})")  # fmt: skip
    lines = ["| variant | seed | HV | time s | passed | " + " | ".join(f"{b} ms" for b in ref.BUDGETS) + " |",
             "|---|---|---|---|---|" + "---|" * len(ref.BUDGETS)]  # fmt: skip
    for r in results:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['hv']:.2f} | {r['time_s']:.1f} | {r['passed']}/9 | "
                     + " | ".join(f"{r['diffs'][b]:+.3f}" for b in ref.BUDGETS) + " |")  # fmt: skip
    lines += ["", "| variant | mean HV | budgets passed | seeds 1-3 passed | mean diff | mean time s |", "|---|---|---|---|---|---|"]
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        lines.append(
            f"| {variant} | {np.mean([r['hv'] for r in rows]):.2f} | {sum(r['passed'] for r in rows)}/{9 * len(rows)} | "
            f"{sum(r['passed'] for r in rows if r['seed'] <= 3)}/{9 * sum(r['seed'] <= 3 for r in rows)} | "
            f"{np.mean([d for r in rows for d in r['diffs'].values()]):+.3f} | {np.mean([r['time_s'] for r in rows]):.1f} |"
        )
    command = "python benchmarks/budget_study.py " + " ".join(sys.argv[1:])
    lines += ["", f"Load average at the end {os.getloadavg()}: times are from a shared machine.", "", f"Reproduce: `{command}`"]
    text = "\n".join(lines) + "\n"
    (args.out / "budget_study.md").write_text(text)
    (args.out / "budget_study.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
