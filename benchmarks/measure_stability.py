"""How repeatable are the agent's latencies on this machine? Protocol vs a naive one.

Builds conv nets of graded size with onnx.helper (the real OFA subnets come from the
exporters later), ships them to the real agent (the built zipapp, run as a separate
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
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from device_agents.build import build_pyz
from device_agents.records import (
    MeasureRequest,
    MeasureResult,
    ModelSpec,
    Protocol,
    TensorSpec,
    parse_agent_line,
)
from device_agents.stats import percentile

PROTOCOL = Protocol(keep_samples=True)
NAIVE = Protocol(warmup_runs=5, warmup_min_s=0.0, blocks=1, runs_per_block=30, block_min_s=0.0, block_warmup_runs=0,
                 estimator="median", interleave=1, cooldown_s=0.0, remeasure=0, keep_samples=True)
CV50 = Protocol(warmup_runs=10, warmup_min_s=0.5, blocks=5, runs_per_block=10, block_min_s=0.0, interleave=1,
                cooldown_s=0.0, remeasure=0, keep_samples=True)  # exactly 50 timed runs


def conv_net(channels: int, depth: int, size: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, prev, c_in = [], [], "x", 3
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((channels, c_in, 3, 3)) * 0.1).astype(np.float32),
                                             f"w{i}"))
        stride = 2 if i in (0, depth // 2) else 1
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, c_in = f"r{i}", channels
    inits.append(numpy_helper.from_array((rng.standard_normal((channels, 1000)) * 0.1).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("MatMul", ["flat", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def model_grid(n: int) -> list[dict[str, int]]:
    """n nets from small to large: width 16..64, depth 4..12, resolution 96..224."""
    out = []
    for i in range(n):
        t = i / max(n - 1, 1)
        out.append({"channels": round(16 + 48 * t), "depth": round(4 + 8 * t),
                    "size": round((96 + 128 * t) / 16) * 16})
    return out


def write_models(work: Path, n: int) -> list[ModelSpec]:
    specs = []
    for i, cfg in enumerate(model_grid(n)):
        path = work / f"net{i:02d}.onnx"
        path.write_bytes(conv_net(seed=i, **cfg).SerializeToString())
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        specs.append(ModelSpec(arch_id=f"net{i:02d}", arch=cfg, model_file=path.name, sha256=sha, runtime="onnxruntime",
                               inputs=(TensorSpec(None, (1, 3, cfg["size"], cfg["size"]), "float32"),),
                               outputs=(TensorSpec(None, (1, 1000), "float32"),)))
    return specs


def session(pyz: Path, work: Path, specs: list[ModelSpec], protocol: Protocol, name: str) -> dict[str, object]:
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
    timed_s = sum(sum(sum(b) for b in r.stats.samples_ms) for r in results) / 1e3
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=12, help="models per session (>= 3)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    report: dict[str, object] = {"load_avg_start": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pyz = work / "agent.pyz"
        build_pyz(str(pyz))
        specs = write_models(work, max(args.models, 3))
        picks = [specs[0], specs[len(specs) // 2], specs[-1]]
        print(f"# agent measure stability: onnxruntime, 1 thread, {len(specs)} conv nets, "
              f"load average at start {report['load_avg_start'][0]:.2f} on {report['cpus']} CPUs", flush=True)

        cv = session(pyz, work, picks, CV50, "cv50")["results"]
        print("\n## CV of 50 timed runs (5 blocks x 10)")
        print(f"{'model':8} {'cfg':24} {'median ms':>10} {'CV raw':>8} {'CV inliers':>11} {'outliers':>9}")
        report["cv50"] = {}
        for s, label in zip(picks, ("small", "middle", "large")):
            r = cv[s.arch_id]
            cfg = f"w{s.arch['channels']} d{s.arch['depth']} r{s.arch['size']}"
            print(f"{label:8} {cfg:24} {r.stats.median_ms:10.3f} {raw_cv(r):8.1%} {r.stats.cv:11.1%} "
                  f"{r.stats.n_outliers:>5}/{r.stats.n_total}")
            report["cv50"][label] = {"median_ms": r.stats.median_ms, "cv_raw": raw_cv(r), "cv_inliers": r.stats.cv}

        runs = {}
        for name, proto in (("protocol-1", PROTOCOL), ("naive-1", NAIVE), ("protocol-2", PROTOCOL),
                            ("naive-2", NAIVE)):
            runs[name] = session(pyz, work, specs, proto, name.replace("-", "_"))
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
    report["load_avg_end"] = os.getloadavg()
    print(f"\nload average at end {report['load_avg_end'][0]:.2f} (this machine is shared: numbers move with it)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
