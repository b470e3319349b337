"""Export speed (ONNX, TFLite) per subnet, and whether the exported files run as fast as torch.

Usage: python benchmarks/export_speed.py [--archs 10] [--seed 0] [--reps 30] [--tflite-archs 10]

For `--archs` seeded random subnets it prints:
- the wall time of a full verified export (`export_subnet` into an empty cache: extract,
  BN recalibration, export, checker, parity) and of the bare exporter call inside it;
- the int8 .tflite made from it, with its top-1 agreement and cosine vs the fp32 file;
- 1-thread latency of the torch eager module, the ONNX file in onnxruntime and the fp32
  and int8 .tflite files in the LiteRT interpreter, measured in interleaved blocks
  (torch, ORT, LiteRT, ..., torch, ...) so drift hits all alike; min and median per
  model, and the ratio exported / torch per arch (below 1: faster than torch).
With `onnxscript` importable it also times the dynamo exporter on the first three archs.

These machines are shared and noisy: compare ratios within one run; the minimum is the
figure least disturbed by other processes. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from exporters import ExportCache, export_subnet, random_supernet
from exporters.onnx_export import OPSET, ort_session
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.supernet import noise_batches, recalibrate_bn


def _subnet(arch: Arch) -> torch.nn.Module:
    sub = random_supernet(arch.w).extract(arch)
    recalibrate_bn(sub, noise_batches(arch.r, 0))
    return sub


def _bare_onnx(arch: Arch, dynamo: bool = False) -> float:
    sub, x = _subnet(arch), torch.zeros(1, 3, arch.r, arch.r)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        if dynamo:
            torch.onnx.export(
                sub, (x,), str(Path(tmp) / "m.onnx"), dynamo=True, opset_version=18, external_data=False, verbose=False
            )
        else:
            torch.onnx.export(sub, (x,), io.BytesIO(), dynamo=False, opset_version=OPSET)
        return time.perf_counter() - start


def _timer(fn: Callable[[], object]) -> Callable[[], float]:
    def once() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return once


def _interleaved(runners: dict[str, Callable[[], float]], reps: int, block: int = 5) -> dict[str, list[float]]:
    for run in runners.values():  # warm-up: first calls pay for allocations and kernel selection
        for _ in range(5):
            run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    while len(next(iter(times.values()))) < reps:
        for name, run in runners.items():
            times[name] += [run() for _ in range(block)]
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=30, help="timed runs per model and runtime")
    ap.add_argument("--tflite-archs", type=int, default=10, help="how many of the archs to convert to TFLite (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with_tflite = args.tflite_archs > 0 and importlib.util.find_spec("litert_torch") is not None
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    archs = SearchSpace().sample(args.archs, np.random.default_rng(args.seed))
    random_supernet(1.2)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = ExportCache(tmp)
        for i, arch in enumerate(archs):
            row: dict[str, float | str] = {"arch": f"{arch.id}@{arch.r}"}
            start = time.perf_counter()
            onnx_model = export_subnet(arch, "onnx", cache=cache)
            row["onnx_export_s"] = time.perf_counter() - start
            row["onnx_bare_s"] = _bare_onnx(arch)
            if i < 3 and importlib.util.find_spec("onnxscript") is not None:
                row["dynamo_bare_s"] = _bare_onnx(arch, dynamo=True)
            sub = _subnet(arch)
            x = torch.randn(1, 3, arch.r, arch.r, generator=torch.Generator().manual_seed(1))
            session = ort_session(onnx_model.path, threads=1)
            feed = {"input": x.numpy()}
            runners = {
                "torch": _timer(lambda sub=sub, x=x: sub(x)),
                "onnxruntime": _timer(lambda session=session, feed=feed: session.run(None, feed)),
            }
            if with_tflite and i < args.tflite_archs:
                from ai_edge_litert.interpreter import Interpreter

                start = time.perf_counter()
                tfl = export_subnet(arch, "tflite", cache=cache)
                row["tflite_export_s"] = time.perf_counter() - start
                runner = Interpreter(model_path=str(tfl.path), num_threads=1).get_signature_runner("serving_default")
                runners["litert"] = _timer(lambda runner=runner, feed=feed: runner(**feed))
                start = time.perf_counter()
                q = export_subnet(arch, "tflite-int8", cache=cache)
                row["int8_export_s"] = time.perf_counter() - start
                row["int8_top1_agreement"], row["int8_mean_cosine"] = (
                    q.parity["top1_agreement"],
                    q.parity["mean_cosine"],
                )
                q_runner = Interpreter(model_path=str(q.path), num_threads=1).get_signature_runner("serving_default")
                runners["litert_int8"] = _timer(lambda runner=q_runner, feed=feed: runner(**feed))
            with torch.no_grad():
                times = _interleaved(runners, args.reps)
            for name, ts in times.items():
                row[f"{name}_min_ms"], row[f"{name}_med_ms"] = min(ts), statistics.median(ts)
            rows.append(row)
            print(
                f"{row['arch']:20s} onnx export {row['onnx_export_s']:5.2f} s (bare {row['onnx_bare_s']:.2f} s)"
                + (f", dynamo bare {row['dynamo_bare_s']:.2f} s" if "dynamo_bare_s" in row else "")
                + (f", tflite export {row['tflite_export_s']:5.1f} s" if "tflite_export_s" in row else "")
                + (
                    f", int8 +{row['int8_export_s']:.1f} s (top-1 agreement {row['int8_top1_agreement']:.0%}, "
                    f"cosine {row['int8_mean_cosine']:.3f})"
                    if "int8_export_s" in row
                    else ""
                )
                + " | min ms: "
                + ", ".join(f"{n} {row[f'{n}_min_ms']:.2f}" for n in times),
                flush=True,
            )

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in rows if key in r)

    print("\nmedians over the archs")
    print(
        f"  verified ONNX export: {med('onnx_export_s'):.2f} s per subnet (bare torch.onnx.export {med('onnx_bare_s'):.2f} s)"
    )
    if any("dynamo_bare_s" in r for r in rows):
        print(f"  dynamo exporter (bare, first 3 archs): {med('dynamo_bare_s'):.2f} s")
    if any("tflite_export_s" in r for r in rows):
        print(f"  verified TFLite fp32 export: {med('tflite_export_s'):.1f} s per subnet")
        print(
            f"  int8 from the cached fp32 file: {med('int8_export_s'):.1f} s; top-1 agreement with fp32 on 32 noise "
            f"inputs: median {med('int8_top1_agreement'):.0%} (range "
            f"{min(float(r['int8_top1_agreement']) for r in rows if 'int8_export_s' in r):.0%}-"
            f"{max(float(r['int8_top1_agreement']) for r in rows if 'int8_export_s' in r):.0%}), "
            f"mean cosine {med('int8_mean_cosine'):.3f}"
        )
    for name in ("onnxruntime", "litert", "litert_int8"):
        ratios_min = [float(r[f"{name}_min_ms"]) / float(r["torch_min_ms"]) for r in rows if f"{name}_min_ms" in r]
        ratios_med = [float(r[f"{name}_med_ms"]) / float(r["torch_med_ms"]) for r in rows if f"{name}_med_ms" in r]
        if ratios_min:
            print(
                f"  {name} / torch eager latency (1 thread): median ratio of minima {statistics.median(ratios_min):.2f} "
                f"(range {min(ratios_min):.2f}-{max(ratios_min):.2f}), of medians {statistics.median(ratios_med):.2f}"
            )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
