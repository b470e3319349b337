"""How long loading a supernet and extracting subnets takes (min and max net).

Usage: python benchmarks/supernet_extract.py [--reps 15] [--threads 1]

Prints median and minimum wall time per step. Machines here are shared and noisy: compare
ratios within one run, and prefer the minimum as the figure least disturbed by others.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ofa2_edge.space.arch import Arch
from ofa2_edge.supernet import Supernet, load_supernet, noise_batches, recalibrate_bn


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, reps {args.reps}"
    )
    rows: list[tuple[str, float, float]] = []
    for w in (1.0, 1.2):
        rows.append((f"Supernet.random(w{w})", *timed(lambda: Supernet.random(w, 0), max(3, args.reps // 5))))
        net = Supernet.random(w, 0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ckpt.pth"
            torch.save({"state_dict": net.state_dict()}, path)
            mb = path.stat().st_size / 1e6
            rows.append(
                (
                    f"load_supernet(w{w}, {mb:.0f} MB file)",
                    *timed(lambda: load_supernet(path, w), max(3, args.reps // 5)),
                )
            )
        for name, arch in (("min@160", Arch.smallest(160, w)), ("max@224", Arch.largest(224, w))):
            rows.append((f"extract w{w} {name}", *timed(lambda: net.extract(arch), args.reps)))
            subnet = net.extract(arch)
            x = torch.randn(1, 3, arch.r, arch.r)
            with torch.no_grad():
                rows.append((f"  forward w{w} {name} (batch 1)", *timed(lambda: subnet(x), args.reps)))
            rows.append(
                (
                    f"  recalibrate_bn on noise w{w} {name} (4 images)",
                    *timed(
                        lambda: recalibrate_bn(subnet, noise_batches(arch.r, 0, batch_size=4)), max(3, args.reps // 5)
                    ),
                )
            )
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  median ms     min ms")
    for name, med, best in rows:
        print(f"{name:<{width}}  {med:9.1f}  {best:9.1f}")


if __name__ == "__main__":
    main()
