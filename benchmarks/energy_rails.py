"""Energy predictor error at K=20 on a live, emulated INA3221 rail (the issue-20 figure).

Static fixture rails cannot give this figure: their power never moves, so the energy above
idle of every model is zero. Here a child process keeps one rail file in the Jetson INA3221
sysfs layout (`bus/iio/devices/iio:device0`, `rail_name_0` = VDD_IN, `in_power0_input`)
current every 10 ms from this host's CPU use: power = IDLE_MW + BUSY_MW x the busy share of
all cores (/proc/stat). The real agent (BatchRunner, the standard protocol) measures `--n`
subnets, exported to ONNX, with its TelemetryReader rooted at that folder: it samples the
rail in its timed windows, subtracts the idle baseline it measured at rest and records the
energy above idle per inference. The energy predictor (`fit_best`, as `fit --quantity energy`
chooses it) is fitted on K of them and scored on the others (held out, never fitted on);
the latency predictor the same way, for comparison.

What this measures is the pipeline: sampling, idle subtraction, the fit. The power model
is an emulation, not a board's: a real board's rails add DRAM and accelerator power that
does not follow CPU use. Results: benchmarks/results/energy_rails.{json,md}.

    OFA2_EDGE_ASSETS=../shared/ofa_assets python benchmarks/energy_rails.py [--n 40] [--k 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

IDLE_MW = 1500.0
BUSY_MW = 2500.0
PERIOD_S = 0.01


def rail_folder(root: Path) -> Path:
    return root / "bus" / "iio" / "devices" / "iio:device0"


def busy_share(before: list[int], after: list[int]) -> float:
    """Busy share of all cores between two /proc/stat `cpu` lines (idle + iowait are idle)."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    return 0.0 if total <= 0 else max(0.0, min(1.0, 1.0 - idle / total))


def cpu_line() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def keep_rail(root: Path) -> None:
    """The child: rewrite the rail every PERIOD_S from the busy share (atomic replace), until killed."""
    folder = rail_folder(root)
    target = folder / "in_power0_input"
    tmp = folder / ".in_power0_input.tmp"
    before = cpu_line()
    while True:
        time.sleep(PERIOD_S)
        after = cpu_line()
        mw = IDLE_MW + BUSY_MW * busy_share(before, after)
        before = after
        tmp.write_text(f"{mw:.0f}\n")
        os.replace(tmp, target)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="subnets measured (a size-stratified design)")
    ap.add_argument("--k", type=int, default=20, help="subnets the predictors are fitted on (the rest held out)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the smoke-test protocol (not figures to report)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rail", type=Path, default=None, help=argparse.SUPPRESS)  # the child's mode
    args = ap.parse_args()
    if args.rail is not None:
        keep_rail(args.rail)
        return 0
    if not 2 <= args.k < args.n:
        sys.exit(f"--k {args.k} must be at least 2 and below --n {args.n}")

    from benchlib import load1, write_results

    from device_agents.records import MeasureRequest, MeasureResult
    from device_agents.runner import BatchRunner
    from device_agents.telemetry import TelemetryReader
    from exporters import ExportCache, export_subnet
    from ofa2_edge.calibration.design import size_stratified_genomes
    from ofa2_edge.devices.pipeline import standard_protocol
    from ofa2_edge.devices.session import ShippableModel
    from ofa2_edge.space.arch import SearchSpace, archs_of
    from ofa2_edge.surrogates.metrics import latency_metrics
    from ofa2_edge.surrogates.select import fit_best
    from ofa2_edge.tables.quantities import quantity

    t_start = time.perf_counter()
    space = SearchSpace()
    archs = list({a.id: a for a in archs_of(size_stratified_genomes(args.n, np.random.default_rng(args.seed), space), w=space.w)}.values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sys_root, work = root / "sys", root / "work"
        rail_folder(sys_root).mkdir(parents=True)
        (rail_folder(sys_root) / "rail_name_0").write_text("VDD_IN\n")
        (rail_folder(sys_root) / "in_power0_input").write_text(f"{IDLE_MW:.0f}\n")
        work.mkdir()
        cache = ExportCache(root / "exports")
        t0 = time.perf_counter()
        models = []
        for a in archs:
            shippable = ShippableModel.from_export(export_subnet(a, "onnx", cache=cache), a)
            os.link(shippable.path, work / shippable.remote_name)
            models.append(shippable.spec())
        export_s = time.perf_counter() - t0
        protocol = standard_protocol(args.threads, quick=args.quick)
        request = MeasureRequest("b-energy", "local", str(work), protocol, tuple(models))
        child = subprocess.Popen([sys.executable, __file__, "--rail", str(sys_root)])
        try:
            time.sleep(0.5)
            records: list[MeasureResult] = []
            t0 = time.perf_counter()
            BatchRunner(request, records.append, reader=TelemetryReader(sys_root=str(sys_root))).run()
            measure_s = time.perf_counter() - t0
        finally:
            child.kill()
            child.wait()
    ok = [r for r in records if r.ok and r.energy is not None]
    energy, latency = quantity("energy").value, quantity("latency").value
    ok = [r for r in ok if energy(r) is not None and energy(r) > 0]
    by_id = {a.id: a for a in archs}
    order = np.random.default_rng(args.seed).permutation(len(ok))
    fit_i, test_i = order[: args.k], order[args.k :]
    figures: dict[str, Any] = {"n": len(archs), "measured_with_energy": len(ok), "k": args.k, "held_out": len(test_i),
                               "protocol": "quick" if args.quick else "standard", "rail": {"idle_mw": IDLE_MW, "busy_mw": BUSY_MW,
                               "period_s": PERIOD_S, "sample_s": protocol.power_sample_s}}  # fmt: skip
    if len(test_i) == 0:
        print("too few models measured with energy to hold any out", file=sys.stderr)
        return 1
    for name, value in (("energy", energy), ("latency", latency)):
        y = np.array([value(r) for r in ok], dtype=np.float64)
        a = [by_id[r.arch_id] for r in ok]
        model, report = fit_best([a[i] for i in fit_i], y[fit_i], rng=np.random.default_rng(args.seed), width_mult=space.w)
        m = latency_metrics(y[test_i], model.predict([a[i] for i in test_i]))
        figures[name] = {"chosen": report["selection"]["chosen"], "mape_pct": m["mape_pct"],
                         "share_within_10pct": m["share_within_10pct"], "spearman": m["spearman"],
                         "range": [float(y.min()), float(y.max())]}  # fmt: skip
    figures["records"] = [{"arch_id": r.arch_id, "latency_ms": r.estimate_ms, "power_mw": r.energy.power_mw,
                           "idle_power_mw": r.energy.idle_power_mw, "energy_mj": r.energy.energy_mj_per_inference,
                           "net_energy_mj": r.energy.net_energy_mj_per_inference, "samples": r.energy.n_samples} for r in ok]  # fmt: skip
    idle = sorted({r.energy.idle_power_mw for r in ok if r.energy.idle_power_mw is not None})
    figures["idle_power_mw_measured"] = [round(x, 1) for x in idle]
    figures["seconds"] = {"export": round(export_s, 1), "measure": round(measure_s, 1), "total": round(time.perf_counter() - t_start, 1)}
    figures["load1_at_end"] = load1()
    e, lat = figures["energy"], figures["latency"]
    text = "\n".join([
        "# Energy predictor on a live emulated rail",
        "",
        f"{len(archs)} subnets (w{space.w}, size-stratified design, seed {args.seed}) exported to ONNX and measured by "
        f"the agent ({figures['protocol']} protocol, {args.threads} threads) with an INA3221-layout rail rewritten every "
        f"{PERIOD_S * 1000:.0f} ms as {IDLE_MW / 1000:g} W + {BUSY_MW / 1000:g} W x this host's busy CPU share, sampled "
        f"every {protocol.power_sample_s * 1000:.0f} ms; the agent's idle baseline: {', '.join(f'{x:.0f}' for x in idle)} mW. "
        f"Predictors fitted on K={args.k}, scored on {len(test_i)} held out. Wall time: export {export_s:.0f} s, "
        f"measure {measure_s:.0f} s.",
        "",
        "| quantity | predictor | MAPE (held out) | within +-10 % | Spearman | range |",
        "|---|---|---|---|---|---|",
        f"| energy above idle (mJ / inference) | {e['chosen']} | {e['mape_pct']:.1f} % | {100 * e['share_within_10pct']:.0f} % | "
        f"{e['spearman']:.3f} | {e['range'][0]:.3g}-{e['range'][1]:.3g} |",
        f"| latency (ms) | {lat['chosen']} | {lat['mape_pct']:.1f} % | {100 * lat['share_within_10pct']:.0f} % | "
        f"{lat['spearman']:.3f} | {lat['range'][0]:.3g}-{lat['range'][1]:.3g} |",
        "",
        "The rail is an emulation driven by CPU use (what the pipeline can be checked against here); a real board's "
        f"rails also carry memory and accelerator power. Load at end: {figures['load1_at_end']}.",
    ])  # fmt: skip
    write_results(args.json, figures, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
