"""Run every benchmark and write one report (markdown and JSON) with the figures it produced.

    OFA2_EDGE_ASSETS=../shared/ofa_assets python benchmarks/run_all.py            # all, ~2 h here
    python benchmarks/run_all.py --only measure_stability,run_time                 # some of them
    python benchmarks/run_all.py --quick --out /tmp/bench                          # smoke run
    python benchmarks/run_all.py --report-only                                     # rebuild the report

Each benchmark runs as its own process (so one crash or one process's state cannot bleed into
the next) and one after the other (they time things: running two at once would measure each
other). Its printed figures go to `<out>/<name>.txt`, its JSON (where it writes one) to
`<out>/<name>.json`, and the command, exit code, duration, machine and package versions to
`<out>/<name>.meta.json`. The report `<out>/REPORT.md` (and `REPORT.json`) gathers the latest
result of every benchmark, each under the machine and date it ran on: a benchmark not rerun
keeps its earlier figures and says when they were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import kept_sections, machine_info

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    json_flag: bool = True  # the script takes --json OUT


BENCHES = (
    Bench("measure_stability", "Measurement stability (agent protocol vs naive, real OFA subnets)", (), ("--models", "5")),
    Bench("export_speed", "Export speed and exported-model latency", (), ("--archs", "2", "--tflite-archs", "1", "--reps", "5"),
          json_flag=False),
    Bench("supernet_extract", "Supernet load and subnet extraction", (), ("--reps", "3"), json_flag=False),
    Bench("surrogate_accuracy", "Surrogate accuracy vs calibration samples (Note10 and this CPU), noise floor, transfer",
          (), ("--pool", "30", "--test", "10", "--repeats", "1", "--workspace", "{out}/cpu-latency")),
    Bench("block_table", "Block (LUT) tables measured on this CPU and the LUT hybrid", ("--retest",), ("--quick",)),
    Bench("run_time", "End-to-end `ofa2-edge run` time", (), ()),
    Bench("busy_host", "Busy host: estimates and calibration with CPU-bound competitors", (),
          ("--models", "5", "--budget", "12")),
    Bench("search_reference", "OFA² reference reproduction, 9-budget comparison, 4-objective check",
          ("--many-algo", "nsga2,spea2"), ("--quick",),
          json_flag=False),
    Bench("arm64_parity", "Cross-architecture parity on emulated aarch64 boards (qemu-user)",
          ("--markdown", "{out}/arm64_parity.md"), ("--images", "debian12", "--inputs", "1", "--markdown",
                                                    "{out}/arm64_parity.md")),
    Bench("many_devices", "Many devices in one search: per-device fronts, time, memory (issue 21)",
          ("--gens", "1000", "--seeds", "1,2,3,4,5"), ("--devices", "2,4", "--gens", "20", "--seeds", "1"),
          json_flag=False),
    Bench("front_verify", "The front verified on the board (`local`): interval coverage, select-pick violations, HV",
          (), ("--quick", "--budget", "12", "--pop", "16", "--gens", "5")),
    Bench("fleet_scale", "Device group calibration: 8 loopback SSH boards vs 1, same budget", (), ("--budget", "8")),
    Bench("fleet_verify", "The front verified on a loopback fleet (device group of SSH boards): coverage, select-pick violations",
          (), ("--boards", "2", "--budget", "8", "--top", "4", "--pop", "12", "--gens", "3")),
    Bench("energy_rails", "Energy predictor at K=20 on a live emulated INA3221 rail (the agent's sampling and idle subtraction)",
          (), ("--quick", "--n", "10", "--k", "5")),
)


def run_one(bench: Bench, out: Path, quick: bool) -> dict:
    args = [a.replace("{out}", str(out)) for a in (bench.quick_args if quick else bench.args)]
    if bench.json_flag:
        args += ["--json", str(out / f"{bench.name}.json")]
    if bench.name in ("search_reference", "many_devices"):
        args += ["--out", str(out)]
    cmd = [sys.executable, str(HERE / f"{bench.name}.py"), *args]
    shown = [a.replace(f"{REPO}/", "") for a in args]
    meta = {"command": " ".join(["python", f"benchmarks/{bench.name}.py", *shown]), "machine": machine_info()}
    print(f"== {bench.name}: {meta['command']}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(out / f"{bench.name}.txt", "w") as text:
        # this checkout's code, even where another checkout is installed in the environment
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
        rc = subprocess.run(cmd, cwd=REPO, stdout=text, env=env).returncode
    meta.update(returncode=rc, seconds=round(time.perf_counter() - t0, 1))
    (out / f"{bench.name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"== {bench.name}: exit {rc} after {meta['seconds']:.0f} s", file=sys.stderr, flush=True)
    return meta


def write_report(out: Path) -> tuple[Path, Path]:
    """REPORT.md / REPORT.json from the latest result files of every benchmark in `out`."""
    lines = ["# ofa2-edge benchmark report", "",
             "Regenerate with `python benchmarks/run_all.py` (see its docstring). Every section names the machine, "
             "the date and the command it ran with; these machines are shared and noisy, so compare figures within "
             "one section, not across machines.", ""]
    doc = {}
    for bench in BENCHES:
        meta_path = out / f"{bench.name}.meta.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        m = meta["machine"]
        v = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
        lines += [f"## {bench.title}", "",
                  f"`{meta['command']}` — exit {meta['returncode']}, {meta['seconds']:.0f} s, {m['date']}", "",
                  f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, load {m['load1_at_start']} "
                  f"at start. Versions: {v}.", ""]
        if meta.get("note"):
            lines += [f"Note: {meta['note']}.", ""]
        text = (out / f"{bench.name}.txt").read_text() if (out / f"{bench.name}.txt").exists() else ""
        markdown = out / f"{bench.name}.md"
        if markdown.exists():  # the benchmark writes its own markdown tables
            body = markdown.read_text().split("\n", 1)[1].strip()
            lines += [body.replace("\n## ", "\n### "), ""]
        elif text.strip():
            lines += ["```", text.rstrip(), "```", ""]
        entry = {"meta": meta}
        if (out / f"{bench.name}.json").exists():
            entry["figures"] = json.loads((out / f"{bench.name}.json").read_text())
        doc[bench.name] = entry
    md, js = out / "REPORT.md", out / "REPORT.json"
    lines += [*kept_sections(md), ""]  # the sections of benchmarks run outside this script (benchlib.report_section)
    md.write_text("\n".join(lines))
    js.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return md, js


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma list of benchmarks to run: " + ",".join(b.name for b in BENCHES))
    ap.add_argument("--skip", default="", help="comma list of benchmarks not to run")
    ap.add_argument("--quick", action="store_true", help="small settings: a smoke run, not figures to report")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from existing results")
    args = ap.parse_args()
    names = {b.name for b in BENCHES}
    only = {n for n in args.only.split(",") if n} or names
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - names
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
    if args.quick and args.out == HERE / "results":
        raise SystemExit("--quick figures are not for the committed report: pass --out DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.report_only:
        for bench in BENCHES:
            if bench.name in only - skip and run_one(bench, args.out, args.quick)["returncode"] != 0:
                failed.append(bench.name)
    md, js = write_report(args.out)
    print(f"report: {md} and {js}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)} (see their .txt files)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
