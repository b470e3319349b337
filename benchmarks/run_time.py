"""End-to-end time of the main job: `ofa2-edge run` with no argument, as a new user types it.

Runs the console script in a fresh workspace with an empty export cache (nothing measured,
nothing exported before), and prints the wall time of the whole command beside the job's own
split per step (probe, calibration per device, fits, reference tables, search, dashboard,
bundle, verify) taken from `--json`. Goal (issue 8): under 10 minutes on this 2-core machine.
Then it runs `dashboard_page.py` on that run's page (size, build time, first chart and slider
update times in headless Chromium). Timings on a shared machine move with its load, printed
before and after.

    OFA2_EDGE_ASSETS=../shared/ofa_assets python benchmarks/run_time.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import load1, machine_info

GOAL_S = 600


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    exe = shutil.which("ofa2-edge")
    if exe is None:
        raise SystemExit("ofa2-edge is not on PATH: run this from the project's venv")
    doc: dict = {"machine": machine_info(), "command": "ofa2-edge run --json"}
    with tempfile.TemporaryDirectory(prefix="ofa2-edge-run-time-") as tmp:
        env = {**os.environ, "OFA2_EDGE_CACHE": str(Path(tmp) / "cache")}
        t0 = time.perf_counter()
        done = subprocess.run(
            [exe, "--workspace", str(Path(tmp) / "ws"), "run", "--json"], env=env, capture_output=True, text=True
        )
        doc["wall_s"] = round(time.perf_counter() - t0, 1)
        doc["load1_after"] = load1()
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"ofa2-edge run failed with exit code {done.returncode}")
        summary = json.loads(done.stdout)
        page_bench = str(Path(__file__).with_name("dashboard_page.py"))
        page = subprocess.run(
            [sys.executable, page_bench, summary["run"], "-W", str(Path(tmp) / "ws")],
            capture_output=True,
            text=True,
        )
        doc["dashboard_page"] = page.stdout.strip() if page.returncode == 0 else f"failed: {page.stderr[-2000:]}"
    doc["seconds"] = summary["seconds"]
    doc["front_size"] = summary["front_size"]
    doc["hypervolume"] = summary["hypervolume"]
    doc["devices"] = summary["devices"]
    print(f"ofa2-edge run (fresh workspace, empty export cache): {doc['wall_s']:.0f} s "
          f"(goal < {GOAL_S} s: {'met' if doc['wall_s'] < GOAL_S else 'NOT met'})")
    print(f"load average {doc['machine']['load1_at_start']} -> {doc['load1_after']} on {os.cpu_count()} cores")
    print(f"{'step':<28}{'seconds':>10}{'share':>8}")
    for step, s in doc["seconds"].items():
        print(f"{step:<28}{s:>10.1f}{s / doc['wall_s']:>8.0%}")
    rest = doc["wall_s"] - sum(doc["seconds"].values())
    print(f"{'(startup, imports, summary)':<28}{rest:>10.1f}{rest / doc['wall_s']:>8.0%}")
    for key, fit in doc["devices"].items():
        print(f"surrogate on {key}: {fit['surrogate']} from {fit['n_train']} samples, held-out within +-10% "
              f"{fit['within_10pct']}, MAPE {fit['mape_pct']}, Spearman {fit['spearman']}")
    print(f"front size {doc['front_size']}, HV {doc['hypervolume']}")
    print(f"\ndashboard of this run:\n{doc['dashboard_page']}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
