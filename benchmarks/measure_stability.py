"""How repeatable are the agent's latencies on this machine? Protocol vs a naive one.

Exports real OFA subnets (random weights: latency only; the min net, size-stratified ones,
the max net), ships them to the real agent (the built zipapp, run as a separate
process per session, exactly as a device runs it) and reports, with onnxruntime, one thread:

* the CV of 50 timed runs for a small, a middle and a large model (raw, and after the
  agent's one-sided outlier rejection);
* the median relative difference between two separate measurement sessions of the same
  models (goal <= 3%), and the share of models within +-3% and +-10%, for the agent's
  protocol (blocks, interleaving, median of block minima, re-measure when unstable) and a
  naive one (5 warm-ups, 30 runs, median, one model at a time);
* the same session-to-session agreement for other estimators computed from the protocol's
  own samples (overall min, p10, median), to show why the primary estimate is what it is;
* the overhead of the whole measure command vs the pure timed inference loop.

Sessions alternate (protocol, naive, protocol, naive) so load changes on a shared machine
hit both. Timings depend on what else runs: compare the ratios printed by one run.

    python benchmarks/measure_stability.py [--models 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from benchlib import machine_info

from device_agents.build import build_pyz
from device_agents.records import (
    MeasureRequest,
    MeasureResult,
    ModelSpec,
    Protocol,
    parse_agent_line,
)
from device_agents.stats import percentile
from exporters import ExportCache, export_subnet
from ofa2_edge.calibration.design import size_stratified_genomes
from ofa2_edge.devices.session import ShippableModel
from ofa2_edge.space.arch import Arch, SearchSpace, archs_of, genomes_of
from ofa2_edge.space.costs import macs_m

PROTOCOL = Protocol(keep_samples=True)
NAIVE = Protocol(warmup_runs=5, warmup_min_s=0.0, blocks=1, runs_per_block=30, block_min_s=0.0, block_warmup_runs=0,
                 estimator="median", interleave=1, cooldown_s=0.0, remeasure=0, keep_samples=True)
CV50 = Protocol(warmup_runs=10, warmup_min_s=0.5, blocks=5, runs_per_block=10, block_min_s=0.0, interleave=1,
                cooldown_s=0.0, remeasure=0, keep_samples=True)  # exactly 50 timed runs


def ofa_subnets(n: int) -> list[Arch]:
    """The min net, n - 2 size-stratified subnets (one seed) and the max net of the default space,
    ordered by MACs, so that picks at 0, n // 2 and -1 are the min, a middle and the max subnet."""
    space = SearchSpace()
    archs = archs_of(size_stratified_genomes(n, np.random.default_rng(0), space, False), w=space.w)[: n - 2]
    archs = list({a.id: a for a in [space.smallest(), *archs, space.largest()]}.values())
    order = np.argsort(macs_m(genomes_of(archs), space.w), kind="stable")
    return [archs[i] for i in order]


def write_models(work: Path, archs: list[Arch]) -> list[ModelSpec]:
    """Export each subnet (seeded random weights: latency only; verified, cached) next to the agent."""
    cache = ExportCache(work / "exports")
    specs = []
    for arch in archs:
        model = ShippableModel.from_export(export_subnet(arch, "onnx", cache=cache), arch)
        shutil.copyfile(model.path, work / model.remote_name)
        specs.append(model.spec())
    return specs


def session(pyz: Path, work: Path, specs: list[ModelSpec], protocol: Protocol, name: str) -> dict[str, object]:
    """One agent process measures `specs`: its records by arch id, its wall time and (kept samples) its timed time."""
    req = MeasureRequest(batch_id=name, device_key="local", work_dir=str(work), protocol=protocol, models=tuple(specs))
    req_path = work / f"{name}.json"
    req_path.write_text(json.dumps(req.to_dict()))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(pyz), "measure", "--request", str(req_path)], capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - t0
    results = [r for r in map(parse_agent_line, done.stdout.splitlines()) if isinstance(r, MeasureResult)]
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} model(s) failed: {failed[0].error_kind}: {failed[0].error_msg}")
    kept = [r.stats.samples_ms for r in results if r.stats.samples_ms is not None]  # with keep_samples only
    timed_s = sum(sum(sum(b) for b in s) for s in kept) / 1e3 if len(kept) == len(results) else None
    return {"results": {r.arch_id: r for r in results}, "wall_s": wall, "timed_s": timed_s}


def estimators(r: MeasureResult) -> dict[str, float]:
    flat = sorted(v for b in r.stats.samples_ms for v in b)
    values = {"p10": percentile(flat, 10), "block_min_median": r.stats.block_min_median_ms, "min": flat[0],
              "median": percentile(flat, 50)}
    return {(f"{k} (primary)" if k == PROTOCOL.estimator else k): v for k, v in values.items()}


def agreement(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    diffs = [abs(a[k] - b[k]) / ((a[k] + b[k]) / 2) for k in a]
    return {"median_rel_diff": statistics.median(diffs), "within_3pct": sum(d <= 0.03 for d in diffs) / len(diffs),
            "within_10pct": sum(d <= 0.10 for d in diffs) / len(diffs), "max_rel_diff": max(diffs)}


def raw_cv(r: MeasureResult) -> float:
    flat = [v for b in r.stats.samples_ms for v in b]
    return statistics.stdev(flat) / statistics.mean(flat)


def study(pyz: Path, work: Path, specs: list[ModelSpec], timer: str) -> dict[str, object]:
    """CV of 50 runs, session-to-session agreement and overhead, all with one timer."""
    proto, naive, cv50 = (replace(p, timer=timer) for p in (PROTOCOL, NAIVE, CV50))
    picks = [specs[0], specs[len(specs) // 2], specs[-1]]
    report: dict[str, object] = {}
    print(f"\n# timer: {timer}")
    cv = session(pyz, work, picks, cv50, f"cv50_{timer}")["results"]
    print("\n## CV of 50 timed runs (5 blocks x 10)")
    print(f"{'model':8} {'subnet':24} {'median ms':>10} {'CV raw':>8} {'CV inliers':>11} {'outliers':>9}")
    report["cv50"] = {}
    for s, label in zip(picks, ("small", "middle", "large")):
        r = cv[s.arch_id]
        cfg = f"{s.arch_id} r{s.arch['r']}"
        print(f"{label:8} {cfg:24} {r.stats.median_ms:10.3f} {raw_cv(r):8.1%} {r.stats.cv:11.1%} "
              f"{r.stats.n_outliers:>5}/{r.stats.n_total}")
        report["cv50"][label] = {"arch_id": s.arch_id, "median_ms": r.stats.median_ms, "cv_raw": raw_cv(r), "cv_inliers": r.stats.cv}

    runs = {}
    for name, p in (("protocol-1", proto), ("naive-1", naive), ("protocol-2", proto), ("naive-2", naive)):
        runs[name] = session(pyz, work, specs, p, f"{name.replace('-', '_')}_{timer}")
        print(f"  session {name}: {runs[name]['wall_s']:.1f} s", file=sys.stderr, flush=True)

    print(f"\n## Two separate sessions of the same {len(specs)} models (goal: median difference <= 3%)")
    print(f"{'protocol / estimator':34} {'median diff':>12} {'within 3%':>10} {'within 10%':>11} {'max diff':>9}")
    report["sessions"] = {}
    rows = [("agent protocol", "protocol", lambda r: r.stats.estimate_ms),
            ("naive (5 warm-up, 30 runs, median)", "naive", lambda r: r.stats.estimate_ms)]
    for label, kind, get in rows:
        a = {k: get(v) for k, v in runs[f"{kind}-1"]["results"].items()}
        b = {k: get(v) for k, v in runs[f"{kind}-2"]["results"].items()}
        g = agreement(a, b)
        report["sessions"][label] = g
        print(f"{label:34} {g['median_rel_diff']:12.2%} {g['within_3pct']:10.0%} {g['within_10pct']:11.0%} "
              f"{g['max_rel_diff']:9.1%}")
    print("  estimators on the agent protocol's own samples:")
    for est in estimators(next(iter(runs["protocol-1"]["results"].values()))):
        a = {k: estimators(v)[est] for k, v in runs["protocol-1"]["results"].items()}
        b = {k: estimators(v)[est] for k, v in runs["protocol-2"]["results"].items()}
        g = agreement(a, b)
        report["sessions"][f"protocol samples: {est}"] = g
        print(f"  {est:32} {g['median_rel_diff']:12.2%} {g['within_3pct']:10.0%} {g['within_10pct']:11.0%} "
              f"{g['max_rel_diff']:9.1%}")
    report["per_model"] = {k: {m: {"estimate_ms": r.stats.estimate_ms, "cv": r.stats.cv,
                                   "block_min_spread": r.stats.block_min_spread, "attempts": r.attempts,
                                   "flags": [f.value for f in r.flags]}
                               for m, r in runs[k]["results"].items()} for k in runs}
    flagged = {k: sum(1 for r in runs[k]["results"].values() if r.flags) for k in ("protocol-1", "protocol-2")}
    attempts = {k: sum(r.attempts for r in runs[k]["results"].values()) for k in ("protocol-1", "protocol-2")}
    print(f"  flagged results (unstable after re-measure): {flagged}; attempts used: {attempts} "
          f"for {len(specs)} models per session")

    print("\n## Overhead: whole measure command vs the timed inference loop")
    report["overhead"] = {}
    for k in ("protocol-1", "naive-1"):
        w, t = runs[k]["wall_s"], runs[k]["timed_s"]
        report["overhead"][k] = {"wall_s": w, "timed_s": t, "ratio": w / t}
        print(f"  {k:12} wall {w:6.1f} s, timed runs {t:6.2f} s, ratio {w / t:5.1f}x")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20, help="OFA subnets per session (>= 3)")
    parser.add_argument("--timers", default="wall,thread_cpu",
                        help="timers to study, one after the other: wall (a dedicated board's figure) and thread_cpu "
                             "(the runtime thread's CPU time: leaves out what other processes take on a shared host)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    report: dict[str, object] = {"machine": machine_info(), "load_avg_start": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pyz = work / "agent.pyz"
        build_pyz(str(pyz))
        specs = write_models(work, ofa_subnets(max(args.models, 3)))
        print(f"# agent measure stability: onnxruntime, 1 thread, {len(specs)} OFA subnets (random weights), "
              f"load average at start {report['load_avg_start'][0]:.2f} on {report['cpus']} CPUs", flush=True)

        for timer in args.timers.split(","):
            report[timer] = study(pyz, work, specs, timer)
    report["load_avg_end"] = os.getloadavg()
    print(f"\nload average at end {report['load_avg_end'][0]:.2f} (this machine is shared: numbers move with it)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
