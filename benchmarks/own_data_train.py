"""Training throughput (images/s) and peak memory of `ofa2-edge train` on Fashion-MNIST.

Usage: python benchmarks/own_data_train.py [--width 1.0] [--batch-size 64] [--steps-epochs 0.05]
       [--threads 2] [--out /tmp/own_data_train]

Runs a short real training (every phase, a fraction of an epoch each) in a child process and
reports its images/s from the training log's timing, its peak RSS (ru_maxrss of the child)
and the final val top-1 of the largest and smallest subnet. Results go to
benchmarks/results/own_data_train.{json,md}. Shared machine: compare ratios in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import machine_info  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/own_data_train"))
    args = ap.parse_args()
    if not FASHION.is_dir():
        sys.exit("install Fashion-MNIST first: apt-get install dataset-fashion-mnist")
    out = args.out / f"w{args.width}-b{args.batch_size}-{int(time.time())}"
    cmd = [
        sys.executable,
        "-m",
        "ofa2_edge.train",
        "--data",
        str(FASHION),
        "-o",
        str(out),
        "--width",
        str(args.width),
        "--resolutions",
        "32,40,48",
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--eval-images",
        "1000",
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    summary = json.loads(proc.stdout)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "command": " ".join(cmd),
        "threads": args.threads,
        "steps": summary["steps"],
        "images_per_s": summary["images_per_s"],
        "wall_s": wall,
        "peak_rss_mb": peak_mb,
        "largest_val_top1": summary["largest_val_top1"],
        "smallest_val_top1": summary["smallest_val_top1"],
        "machine": machine_info(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "own_data_train.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# Training throughput on Fashion-MNIST\n\n`{result['command']}` ({args.threads} threads)\n\n"
        f"| steps | images/s | wall s | peak RSS MB | val top-1 largest | smallest |\n|---|---|---|---|---|---|\n"
        f"| {result['steps']} | {result['images_per_s']:.1f} | {wall:.0f} | {peak_mb:.0f} | "
        f"{result['largest_val_top1']:.2f} | {result['smallest_val_top1']:.2f} |\n"
    )
    (RESULTS / "own_data_train.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
