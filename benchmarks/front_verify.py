"""The front verified on the board (`local`): coverage, select-pick violations, HV measured vs predicted.

Calibrates `local` in a fresh workspace (`ofa2-edge calibrate --budget N`, the standard
protocol; `--timer thread_cpu` by default because this host is shared), searches
`top1,latency:local`, then verifies the front in `--sessions` sessions (default 4), as a
field team would: a part (`ofa2-edge verify RUN --device local --top K`), `ofa2-edge fit
--device local` (which folds the sessions' residuals and drift into the predictor), the next
part, ..., the rest (`verify --all`), with the same protocol; every member is measured on
the device and kept apart from the calibration data, and each is judged with the residuals
of the other sessions only (from two of them on, their spread prices the next one's drift). Reports the actual coverage of the 80 % and 90 % predicted intervals (goal: within 5
points of nominal; beside it the same figures with the predictor's own intervals, no
drift), the violation rate of `select --safe 0.9` picks (goal <= 10 %, none
beyond the test-retest difference), MAPE on the front, and the HV of the front on measured
latencies beside the predicted one.

    python benchmarks/front_verify.py [--budget 30] [--pop 30 --gens 20] [--sessions 4] [--timer thread_cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import drift_figures, drift_rows, load1, violation_figures, violation_rows, write_results

from ofa2_edge.cli.main import main as cli
from ofa2_edge.search.runstore import RunFolder
from ofa2_edge.workflows.verify_front import spread_indices

GOAL_COVERAGE_PTS = 5.0
GOAL_VIOLATION = 0.10


def run_cli(args: list[str]) -> tuple[int, str]:
    """One CLI call in-process; its stdout (the --json document) returned."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(args)
    return rc, out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--pop", type=int, default=30)
    ap.add_argument("--gens", type=int, default=20)
    ap.add_argument("--timer", default="thread_cpu")
    ap.add_argument("--quick", action="store_true", help="the smoke-test protocol (not figures to report)")
    ap.add_argument("--sessions", type=int, default=4, help="verification sessions the front is split over (>= 2)")
    ap.add_argument("--workspace", type=Path, default=None, help="keep the workspace here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    proto = ["--timer", args.timer, *(["--quick"] if args.quick else [])]
    with tempfile.TemporaryDirectory() as tmp:
        ws = args.workspace or Path(tmp)
        W = ["-W", str(ws)]
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        rc, _ = run_cli([*W, "calibrate", "--device", "local", "--budget", str(args.budget), *proto, "--json"])
        seconds["calibrate"] = time.perf_counter() - t0
        if rc != 0:
            print(f"calibrate failed: exit {rc}", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        rc, _ = run_cli([*W, "search", "--objectives", "top1,latency:local", "--pop", str(args.pop),
                         "--gens", str(args.gens), "--seed", "1", "-o", str(ws / "runs" / "bench")])  # fmt: skip
        seconds["search"] = time.perf_counter() - t0
        if rc != 0:
            print(f"search failed: exit {rc}", file=sys.stderr)
            return 1
        tops = session_tops(len(RunFolder(ws / "runs" / "bench").front()["rows"]), args.sessions)
        steps: list[tuple[str, list[str]]] = []
        for i, top in enumerate(tops, 1):  # session i verifies the next part of the front
            which = ["--all"] if i == len(tops) else ["--top", str(top)]
            steps.append((f"verify {i}", ["verify", "bench", "--device", "local", *which, *proto, "--json"]))
            if i < len(tops):
                steps.append((f"fit {i}", ["fit", "--device", "local", "--json"]))
        for name, cmd in steps:
            t0 = time.perf_counter()
            rc, out = run_cli([*W, *cmd])
            seconds[name] = time.perf_counter() - t0
            if rc != 0:
                print(f"{name} failed: exit {rc}", file=sys.stderr)
                return 1
        rep = json.loads(out)
    figures = summarise(rep, args, seconds)
    text = render(figures)
    write_results(args.json, {"figures": figures}, text)  # per member: the run's file
    return 0


def session_tops(size: int, sessions: int) -> list[int]:
    """`--top` of each session such that each measures about size / sessions members it has not
    seen yet (a `--top` call measures those of its spread not verified before; the spreads of
    two `--top` values overlap only in part)."""
    covered: set[int] = set()
    tops = []
    for s in range(1, sessions + 1):
        target = round(s * size / sessions)
        n = next((n for n in range(1, size + 1) if len(covered | set(spread_indices(size, n))) >= target), size)
        covered |= set(spread_indices(size, n))
        tops.append(n)
    return tops


def summarise(rep: dict[str, Any], args: argparse.Namespace, seconds: dict[str, float]) -> dict[str, Any]:
    cov = rep["coverage"]
    v = rep["violations"]
    return {
        "budget": args.budget,
        "timer": args.timer,
        "quick": args.quick,
        "front_size": rep["front_size"],
        "counts": rep["counts"],
        "predictor": rep["predictor"]["kind"],
        "coverage_80": cov["80"]["actual"],
        "coverage_90": cov["90"]["actual"],
        "above_80": cov["80"]["above_share"],
        "mape_pct": rep["error"]["mape_pct"],
        "within_10pct": rep["error"]["share_within_10pct"],
        "test_retest": rep["test_retest"],
        "limits_ms": rep["limits_ms"],
        "violations": violation_figures(v),
        "drift": drift_figures(rep),
        "pick_bias": pick_bias(rep),
        "hv": rep["hypervolume"],
        "seconds": {k: round(s, 1) for k, s in seconds.items()},
        "load1_at_end": load1(),
    }


def pick_bias(rep: dict[str, Any]) -> dict[str, Any]:
    """Mean signed error (predicted - measured, % of measured) of the `--safe 0.9` picks
    judged at their tightest limits beside that of every scored member: whether a pick
    leans to members the predictor underestimates."""
    err = {m["arch_id"]: m["error_pct"] for m in rep["members"] if m["error_pct"] is not None and not m["in_calibration"]}
    picks = [err[p["arch_id"]] for p in rep["violations"]["0.9"]["tightest"]["picks"] if p["arch_id"] in err]
    def mean(xs: list[float]) -> float | None:
        return float(sum(xs) / len(xs)) if xs else None

    return {"members_mean_error_pct": mean(list(err.values())), "picks_mean_error_pct": mean(picks), "picks": len(picks)}


def _p(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _pct(x: float | None) -> str:
    """A value already in percent."""
    return "-" if x is None else f"{x:.1f} %"


def render(f: dict[str, Any]) -> str:
    c = f["counts"]
    lines = [
        "# Front verified on `local`",
        "",
        f"Calibration budget {f['budget']} ({f['predictor']} predictor), timer {f['timer']}"
        + (" (quick protocol: smoke figures)" if f["quick"] else "")
        + f"; front of {f['front_size']} members, {c['measured']} measured, {c['scored']} scored "
        f"({c['in_calibration']} in the calibration data, not scored). Wall time: "
        + ", ".join(f"{k} {s:.0f} s" for k, s in f["seconds"].items())
        + ".",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| coverage of the 80 % interval | {_p(f['coverage_80'])} | 80 % +- {GOAL_COVERAGE_PTS:g} points |",
        f"| coverage of the 90 % interval | {_p(f['coverage_90'])} | 90 % +- {GOAL_COVERAGE_PTS:g} points |",
        f"| measured above the 80 % interval | {_p(f['above_80'])} | ~10 % |",
        f"| MAPE on the front | {_pct(f['mape_pct'])} | |",
        f"| share within +-10 % | {_p(f['within_10pct'])} | |",
        f"| test-retest difference | {f['test_retest']['pct']:.1f} % ({f['test_retest']['source']}, n={f['test_retest']['n']}) | |",
    ]
    lines += violation_rows(f["violations"], "0.9", f"<= {GOAL_VIOLATION:.0%}, 0 beyond retest")
    lines += drift_rows(f["drift"])
    b = f["pick_bias"]
    lines.append(f"| mean error (predicted - measured) of the `--safe 0.9` picks at their tightest limits / of every "
                 f"scored member | {_pct(b['picks_mean_error_pct'])} ({b['picks']} picks) / {_pct(b['members_mean_error_pct'])} | |")  # fmt: skip
    hv = f["hv"]
    if hv["predicted"] is not None:
        ratio = "-" if hv["ratio"] is None else f"{hv['ratio']:.3f}"
        lines.append(f"| HV of the front, predicted / measured | {hv['predicted']:.4g} / {hv['measured']:.4g} "
                     f"(ratio {ratio}) | ratio ~1 |")  # fmt: skip
    lines += ["", f"Limits judged (ms): {', '.join(f'{x:g}' for x in f['limits_ms'])}. Load at end: {f['load1_at_end']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
