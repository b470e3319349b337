"""STOPGAP data generator: measure OFA subnets on this machine's CPU with onnxruntime.

Why it exists: the surrogate work needs real, noisy, non-additive end-to-end latencies now,
before the project's own supernet/exporter/agent path lands. It builds subnets with the
installed `ofa` package (random weights: latency only), exports them with the legacy ONNX
exporter and times them with onnxruntime in-process. Replace it with `ofa2-edge calibrate
--device local` once that exists; nothing in `ofa2_edge/` imports this file.

Protocol (designed for a shared, noisy machine): 1 intra-op and 1 inter-op thread,
sequential execution, full graph optimisation. Models are measured in groups: every model
of a group is loaded, warmed up, then timed in interleaved rounds (each round visits the
group's models in a fresh random order and times one block of runs of each), so a burst
of interference from other processes is spread over all models instead of hitting one.
Every run is timed twice: wall clock, and the CPU time of the calling thread (with one
intra-op thread onnxruntime computes on the caller, so CPU time leaves out the time slices
the scheduler gave to other processes: under a load of 7 on 2 cores the *minimum* wall
time of 50 runs was still up to 1.7x the quiet latency, the CPU time was not). Per model we
keep every run, min / p10 / median of both clocks, the CPU/wall ratio of every block (below
1: we were preempted) and the load average; a fixed reference net is timed in every group
so that what preemption does not explain (a busy SMT sibling, cache pollution, clock
changes) can be seen, and normalised, group by group.

Results are appended (flushed) to `<out>/<session>.jsonl`, one record per arch; a rerun
skips archs already measured in that session, so the run can be killed and resumed.
Measured data never goes into the repository.

    python benchmarks/_collect_cpu_latency.py --session C --n 360 --seed 1
    python benchmarks/_collect_cpu_latency.py --session D --archs-from /work/data/cpu_latency/C.jsonl --n 200 --seed 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ofa2_edge.costs import macs_m
from ofa2_edge.latency.design import size_stratified_genomes
from ofa2_edge.persist import append_jsonl, iter_jsonl
from ofa2_edge.space import Arch, SearchSpace, archs_of

SCHEMA = "ofa2-edge/cpu-latency-stopgap"
SCHEMA_VERSION = 1


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """`ofa` imports torchvision's transforms at import time, and PyPI's torchvision does not
    import beside torch 2.13; the network code never uses them, so an empty stand-in is put
    in `sys.modules` for the import and removed after."""
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.datasets"]
    if any(name in sys.modules for name in names):
        raise RuntimeError("a real torchvision is already imported; the stand-in would shadow it")
    mods = {name: types.ModuleType(name) for name in names}
    mods["torchvision.transforms"].RandomResizedCrop = type("RandomResizedCrop", (), {})
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision"].datasets = mods["torchvision.datasets"]
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)


def build_supernet(w: float) -> Any:
    with _torchvision_stand_in():
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    net = OFAMobileNetV3(
        n_classes=1000,
        dropout_rate=0.0,
        width_mult=w,
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )
    return net.eval()


def export_onnx(supernet: Any, arch: Arch, path: Path) -> None:
    import torch

    supernet.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
    subnet = supernet.get_active_subnet(preserve_weight=True).eval()
    x = torch.zeros(1, 3, arch.r, arch.r)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is ~5x faster here
        torch.onnx.export(
            subnet, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"], opset_version=17
        )


def session_of(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_group(
    sessions: list[Any], inputs: list[np.ndarray], warmup: int, rounds: int, block: int, rng: np.random.Generator
) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """Interleaved timing: per model, the wall and thread-CPU time of every run in ms, and
    the CPU/wall ratio of every block. With one intra-op thread onnxruntime computes on the
    calling thread, so its CPU time excludes the time the scheduler gave to other processes."""
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    ratios: list[list[float]] = [[] for _ in sessions]
    for s, x in zip(sessions, inputs):
        for _ in range(warmup):
            s.run(None, {"input": x})
    for _ in range(rounds):
        for i in rng.permutation(len(sessions)):
            s, x = sessions[i], inputs[i]
            c_block, w_block = time.thread_time(), time.perf_counter()
            for _ in range(block):
                w0, c0 = time.perf_counter(), time.thread_time()
                s.run(None, {"input": x})
                c1, w1 = time.thread_time(), time.perf_counter()
                wall[i].append((w1 - w0) * 1e3)
                cpu[i].append((c1 - c0) * 1e3)
            ratios[i].append((time.thread_time() - c_block) / max(time.perf_counter() - w_block, 1e-9))
    return wall, cpu, ratios


def stats(values: list[float], prefix: str) -> dict[str, float]:
    v = np.asarray(values)
    return {
        f"{prefix}min_ms": float(v.min()),
        f"{prefix}p10_ms": float(np.percentile(v, 10)),
        f"{prefix}median_ms": float(np.median(v)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/work/data/cpu_latency"))
    ap.add_argument("--session", required=True, help="session name; results go to <out>/<session>.jsonl")
    ap.add_argument("--n", type=int, default=360, help="archs to measure")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--archs-from", type=Path, help="re-measure the archs of another session's file (test-retest)")
    ap.add_argument("--group", type=int, default=12, help="models loaded and interleaved together")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=5, help="runs per model per round")
    ap.add_argument("--w", type=float, default=1.2)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(args.seed)
    if args.archs_from:
        archs = [Arch.from_dict(rec["arch"]) for rec in iter_jsonl(args.archs_from) if rec.get("kind") == "measurement"]
        archs = [archs[i] for i in np.sort(rng.permutation(len(archs))[: args.n])]
        archs = [archs[i] for i in rng.permutation(len(archs))]  # a different order than the first session
    else:
        space = SearchSpace(w=args.w)
        archs = archs_of(size_stratified_genomes(args.n, rng, space), w=args.w)
        archs = [archs[i] for i in rng.permutation(len(archs))]
    archs = list({a.id: a for a in archs}.values())  # a design can draw the same net twice
    out = args.out / f"{args.session}.jsonl"
    done = {rec["arch_id"] for rec in iter_jsonl(out) if rec.get("kind") == "measurement"} if out.exists() else set()
    todo = [a for a in archs if a.id not in done]
    if not out.exists():
        append_jsonl(
            out,
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "kind": "header",
                "session": args.session,
                "protocol": {
                    "threads": 1,
                    "warmup": args.warmup,
                    "rounds": args.rounds,
                    "block": args.block,
                    "group": args.group,
                    "interleaved": True,
                    "graph_optimization": "all",
                    "exporter": "torch.onnx legacy, opset 17",
                    "clocks": "wall (perf_counter) and calling-thread CPU time (thread_time) per run",
                    "reference": "one fixed net (k5 e4 d3 @192) timed in every group",
                },
                "env": {
                    "onnxruntime": ort.__version__,
                    "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "note": "stopgap measurements (benchmarks/_collect_cpu_latency.py); random weights",
            },
        )
    print(f"{len(todo)} of {len(archs)} archs to measure -> {out}", file=sys.stderr)
    torch.manual_seed(args.seed)  # the ofa package initialises weights from torch's global RNG
    supernet = build_supernet(args.w)
    started = time.perf_counter()
    # Exported models live beside the data, not in the shared /tmp (other jobs clean it).
    # Exported models live beside the data, not in the shared /tmp (other jobs clean it).
    with tempfile.TemporaryDirectory(prefix=".export-", dir=args.out) as tmp:
        reference = Arch(ks=(5,) * 20, e=(4,) * 20, d=(3,) * 5, r=192, w=args.w)  # timed in every group
        ref_path = Path(tmp) / "reference.onnx"
        export_onnx(supernet, reference, ref_path)
        for start in range(0, len(todo), args.group):
            group = todo[start : start + args.group]
            paths = []
            for a in group:
                paths.append(Path(tmp) / f"{a.id}.onnx")
                export_onnx(supernet, a, paths[-1])
            sessions = [session_of(p) for p in [*paths, ref_path]]
            inputs = [np.asarray(rng.standard_normal((1, 3, a.r, a.r)), dtype=np.float32) for a in [*group, reference]]
            load_before = os.getloadavg()
            wall, cpu, ratios = time_group(sessions, inputs, args.warmup, args.rounds, args.block, rng)
            load_after = os.getloadavg()
            ref = {"ref_arch_id": reference.id, **stats(cpu[-1], "ref_cpu_"), **stats(wall[-1], "ref_")}
            macs = macs_m(np.stack([a.to_genome() for a in group]), args.w)
            for a, w_runs, c_runs, q, m in zip(group, wall, cpu, ratios, macs):
                blocks = np.asarray(w_runs).reshape(args.rounds, args.block)
                append_jsonl(
                    out,
                    {
                        "kind": "measurement",
                        "session": args.session,
                        "arch_id": a.id,
                        "arch": a.to_dict(),
                        "macs_m": float(m),
                        **stats(w_runs, ""),
                        "block_median_ms": float(np.median(np.median(blocks, axis=1))),
                        **stats(c_runs, "cpu_"),
                        **ref,
                        "runs_ms": [round(v, 5) for v in w_runs],
                        "cpu_runs_ms": [round(v, 5) for v in c_runs],
                        "cpu_wall_ratio": [round(v, 4) for v in q],
                        "loadavg_before": load_before,
                        "loadavg_after": load_after,
                        "group": start // args.group,
                        "time": time.time(),
                    },
                )
            for p in paths:
                p.unlink(missing_ok=True)
            done_n = start + len(group)
            eta = (time.perf_counter() - started) / done_n * (len(todo) - done_n)
            print(
                f"{done_n}/{len(todo)}  load {load_after[0]:.2f}  eta {eta / 60:.1f} min", file=sys.stderr, flush=True
            )


if __name__ == "__main__":
    main()
