"""Your own data, the issue-17 figures in one place: the real trade-off, the front vs random
subnets at equal MEASURED latency, OFA's claim (the largest subnet vs the same network trained
alone), and the accuracy-table and training figures measured by the two smaller scripts.

Usage:
    python benchmarks/own_data.py --supernet supernets/NAME --source-table WS/accuracy_tables/bench \\
        --ensembles-workspace /tmp/ensembles-bench [--alone supernets/NAME-alone] [--random 30] [--quick]

Inputs, each made by a command of its own (all resumable):
- the trained supernet and its accuracy table (`benchmarks/own_data_accuracy.py`: a size-stratified
  random design of subnets, val and test top-1 of each, the noise floor and the predictor);
- a `benchmarks/ensembles.py` workspace (`--pool run-front`): `local` calibrated with the trained
  weights, a top-1 vs latency:local search with the table's predictor, its front thinned evenly
  along latency, evaluated (val and test) and measured one by one on `local` by the agent;
- `--alone`: the largest network trained by itself for the supernet's epochs
  (`ofa2-edge train --phases full --epochs E`), evaluated here at every resolution.
Here, `--random` of the table's design subnets (none of them on the front) are measured on `local`
with the same protocol, so both sets have measured latency and test top-1 (no choice saw test):
HV of each on one reference, the share of random subnets the front dominates, and at 5 latency
budgets the best front member vs the best random subnet (chosen on val, reported on test).
Results: benchmarks/results/own_data.{json,md} and the "Your own data" section of REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).parent))
from benchlib import machine_info, report_section  # noqa: E402

from exporters import ExportCache  # noqa: E402
from ofa2_edge.accuracy.evaluate import EvaluateSettings, evaluate_table  # noqa: E402
from ofa2_edge.accuracy.source import open_supernet  # noqa: E402
from ofa2_edge.accuracy.table import AccuracyTable  # noqa: E402
from ofa2_edge.core.workspace import Workspace  # noqa: E402
from ofa2_edge.data import open_dataset  # noqa: E402
from ofa2_edge.devices.inventory import Inventory  # noqa: E402
from ofa2_edge.devices.session import DeviceSession  # noqa: E402
from ofa2_edge.ensemble.measure import measure_ensembles, read_measured  # noqa: E402
from ofa2_edge.ensemble.pool import device_cores, front_archs, table_dataset  # noqa: E402
from ofa2_edge.search.indicators import hypervolume, nondominated  # noqa: E402
from ofa2_edge.space.arch import SearchSpace  # noqa: E402
from ofa2_edge.space.costs import arch_costs  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def points(rows: list[dict[str, Any]]) -> np.ndarray:
    """(100 - test top-1, measured ms) of `rows`: both objectives minimised."""
    return np.array([[100.0 - r["test_top1_pct"], r["measured_ms"]] for r in rows]).reshape(-1, 2)


def dominated_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the points of `b` that some point of `a` dominates (<= in both, < in one)."""
    if not len(b):
        return float("nan")
    hit = [bool(np.any(np.all(a <= p, axis=1) & np.any(a < p, axis=1))) for p in b]
    return float(np.mean(hit))


def best_under(rows: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The row with the best VAL top-1 whose measured latency fits `budget` (the choice a user makes)."""
    ok = [r for r in rows if r["measured_ms"] <= budget]
    return max(ok, key=lambda r: r["val_top1_pct"]) if ok else None


def train_facts(folder: Path) -> dict[str, Any]:
    """Steps, images and phases of a trained supernet folder (its manifest's recipe)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    recipe = manifest["recipe"]
    steps = sum(p["steps"] for p in recipe["phases"])
    return {"folder": str(folder), "init": manifest.get("init"), "phases": [(p["name"], p["steps"]) for p in recipe["phases"]],
            "steps": steps, "images": steps * recipe["batch_size"], "train_images": manifest["dataset"]["sizes"]["train"]}  # fmt: skip


def _train_summary(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    return {k: doc.get(k) for k in ("steps", "elapsed_s", "images_per_s", "world_size", "largest_val_top1", "smallest_val_top1", "phases")}


def main() -> None:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--source-table", type=Path, required=True, help="accuracy_tables/NAME of the design (read only)")
    ap.add_argument("--ensembles-workspace", type=Path, required=True)
    ap.add_argument("--alone", type=Path, default=None, help="the largest net trained alone (train --phases full)")
    ap.add_argument("--init-of", type=Path, action="append", default=[],
                    help="a supernet folder the supernet's training started from (--init), counted in its epochs")
    ap.add_argument("--train-summary", type=Path, default=None, help="the supernet's `train --json` output (its wall time and images/s)")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--random", type=int, default=30)
    ap.add_argument("--budgets", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="short measurement protocol (smoke runs, not figures)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t_start = time.perf_counter()
    machine = machine_info()  # at the START: its load is what the figures ran under
    root = args.ensembles_workspace.resolve()
    ws = Workspace(root, root / "cache")
    source = AccuracyTable(args.source_table.parent, args.source_table.name).require()
    table = AccuracyTable.of(ws, source.name).require()  # the ensembles workspace's copy: design + front rows
    trained = open_supernet(args.supernet)
    rows0 = table.measured(0)

    # the front (measured one by one by ensembles.py) and random design subnets (measured here)
    front_ids = [a.id for a in front_archs(root / "runs" / "single")]
    rng = np.random.default_rng(args.seed)
    design = sorted(i for i, r in source.measured(0).items() if r.test and i not in set(front_ids))  # reported on test
    picked = [design[i] for i in sorted(rng.choice(len(design), min(args.random, len(design)), replace=False))]
    device = Inventory.load(ws.inventory_path).get("local")
    cores = device_cores(ws, "local") or 1
    step(f"measure {len(picked)} random design subnets on local (the front's members come from {root / 'measured.jsonl'})")
    with DeviceSession(device, ws.cache_dir) as session:
        measured = measure_ensembles(session, [[rows0[i].arch] for i in picked], "sequential", ExportCache(ws.exports_dir),
                                     cores=cores, supernet=trained.net, quick=args.quick, record_to=root / "measured.jsonl")  # fmt: skip
    ms = {r["members"][0]: r["estimate_ms"] for r in read_measured(root / "measured.jsonl")
          if r["ok"] and r["mode"] == "sequential" and len(r["members"]) == 1}  # fmt: skip
    assert all(r["ok"] for r in measured), "a random subnet failed to measure"

    def row(i: str) -> dict[str, Any]:
        r = rows0[i]
        return {"arch_id": i, "r": r.arch.r, "val_top1_pct": r.val.top1_pct, "test_top1_pct": r.test.top1_pct, "measured_ms": ms[i],
                "macs_m": arch_costs([r.arch])[0]["macs_m"]}  # fmt: skip

    front = [row(i) for i in front_ids if i in ms and i in rows0 and rows0[i].test]
    random_rows = [row(i) for i in picked]
    Pf, Pr = points(front), points(random_rows)
    ref = np.array([100.0, 1.1 * float(max(Pf[:, 1].max(), Pr[:, 1].max()))])
    hv_f, hv_r = hypervolume(Pf[nondominated(Pf)], ref), hypervolume(Pr[nondominated(Pr)], ref)
    # the same count as the front: a larger set of points holds more HV by its size alone
    draws = [Pr[np.sort(rng.choice(len(Pr), len(Pf), replace=False))] for _ in range(500)] if len(Pr) > len(Pf) else [Pr]
    hv_eq = np.array([hypervolume(d[nondominated(d)], ref) for d in draws])
    lo = float(min(Pf[:, 1].min(), Pr[:, 1].min()))
    hi = float(max(Pf[:, 1].max(), Pr[:, 1].max()))
    budgets = []
    for b in (lo + (hi - lo) * q for q in np.linspace(0.1, 0.9, args.budgets)):
        f, r = best_under(front, b), best_under(random_rows, b)
        budgets.append({"budget_ms": b, "front": f, "random": r,
                        "front_minus_random_test_pts": (f["test_top1_pct"] - r["test_top1_pct"]) if f and r else None})  # fmt: skip

    # OFA's claim: the supernet's largest subnet vs the same network trained alone
    claim: dict[str, Any] | None = None
    if args.alone is not None:
        alone = open_supernet(args.alone)
        data = table_dataset(source, args.data)
        ds = open_dataset(data)
        space = SearchSpace(resolutions=source.resolutions(), w=trained.width_mult)
        largest = [space.largest(r) for r in space.resolutions]
        alone_table = AccuracyTable.of(ws, "alone-largest")
        settings = EvaluateSettings.bound_to(source, budget=len(largest))
        step(f"evaluate the largest net trained alone ({args.alone}) at {space.resolutions} px")
        evaluate_table(alone_table, alone, ds, settings, archs=largest)
        done = alone_table.measured(0)
        per_r = []
        for a in largest:
            s, t = rows0.get(a.id), done.get(a.id)
            per_r.append({"r": a.r, "arch_id": a.id, "macs_m": arch_costs([a])[0]["macs_m"],
                          "supernet": {"val": s.val.top1_pct, "test": s.test.top1_pct} if s and s.test else None,
                          "alone": {"val": t.val.top1_pct, "test": t.test.top1_pct} if t and t.test else None})  # fmt: skip
        sup = train_facts(args.supernet)
        legs = [train_facts(p) for p in args.init_of] + [sup]
        claim = {"per_resolution": per_r, "supernet_training": legs, "alone_training": train_facts(args.alone),
                 "supernet_images": sum(leg["images"] for leg in legs)}  # fmt: skip

    acc = RESULTS / "own_data_accuracy.json"
    trn = RESULTS / "own_data_train.json"
    doc = {
        "command": "python benchmarks/own_data.py " + " ".join(sys.argv[1:]),
        "machine": {**machine, "load1_at_end": os.getloadavg()[0]},
        "supernet": trained.describe(),
        "front_vs_random": {
            "front_size_measured": len(front), "random_measured": len(random_rows), "reference": ref.tolist(),
            "hv_front": hv_f, "hv_random": hv_r, "share_of_random_dominated_by_front": dominated_share(Pf, Pr),
            "hv_random_equal_count": {"draws": len(hv_eq), "mean": float(hv_eq.mean()), "min": float(hv_eq.min()),
                                      "max": float(hv_eq.max()), "share_below_front": float(np.mean(hv_eq < hv_f))},
            "share_of_front_dominated_by_random": dominated_share(Pr, Pf), "budgets": budgets,
            "front": front, "random": random_rows,
        },  # fmt: skip
        "largest_vs_alone": claim,
        "accuracy_tables": json.loads(acc.read_text()) if acc.exists() else None,
        "training": json.loads(trn.read_text()) if trn.exists() else None,
        "supernet_training": _train_summary(args.train_summary) if args.train_summary else None,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "own_data.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc)
    (RESULTS / "own_data.md").write_text(md + "\n")
    report_section(RESULTS / "REPORT.md", "own-data", "Your own data: Fashion-MNIST supernet, accuracy tables, front vs random (issue 17)",
                   md.split("\n", 1)[1])  # fmt: skip
    print(md)


def markdown(doc: dict[str, Any]) -> str:
    m, fr = doc["machine"], doc["front_vs_random"]
    lines = ["# Your own data (issue 17)", "",
             f"`{doc['command']}` — {m['date']}, {m['cpu']}, {m['cores']} cores, load {m['load1_at_start']} at start, {m['load1_at_end']:.2f} at the end.", ""]  # fmt: skip
    a = doc.get("accuracy_tables")
    if a:
        p, e, t, f = a["predictor"], a["evaluate"], a["tradeoff"], a.get("noise_floor") or {}
        lines += ["## Accuracy tables and the predictor", "",
                  f"From `{a['command']}` ({a['machine']['date']}, load {a['machine']['load1_at_start']} at start, "
                  f"{a['machine'].get('load1_at_end', float('nan')):.2f} at the end):", "",
                  f"- noise floor: Spearman **{f.get('spearman', float('nan')):.3f}** between two evaluations of the same "
                  f"{f.get('n_repeated')} subnets (BN recalibrated on another 2000 train images), mean |delta val top-1| "
                  f"{f.get('mean_abs_delta_top1_pct', float('nan')):.2f} pts, max {f.get('max_abs_delta_top1_pct', float('nan')):.2f}",
                  f"- predictor ({p['model']}) fitted on K={p['fitted_on']} subnets, scored on {p['held_out']} held out: Spearman "
                  f"**{p['held_out_spearman']:.3f}**, Kendall tau {p['held_out_kendall_tau']:.3f}; share of the noise floor "
                  f"**{100 * (p['share_of_noise_floor'] or float('nan')):.1f} %** (goal >= 90 %)",
                  *([f"- the same fit on {o['n_splits']} other random partitions of the table (K={p['fitted_on']}, the rest held out): "
                     f"Spearman {o['spearman_mean']:.3f} +- {o['spearman_sd']:.3f} (range {o['spearman_min']:.3f}-{o['spearman_max']:.3f}), "
                     f"**{100 * o.get('share_of_noise_floor_mean', float('nan')):.1f} %** of the floor on average, >= 90 % in "
                     f"{100 * o.get('share_of_noise_floor_at_least_90pct', float('nan')):.0f} % of the partitions"]
                    if (o := p.get("other_splits")) else []),
                  *([f"- ranking the held-out subnets' test top-1 ({tr['n']}): measured val top-1 Spearman {tr['val_vs_test_spearman']:.3f}, "
                     f"the predictor {tr['predictor_vs_test_spearman']:.3f} ({100 * tr.get('share', float('nan')):.0f} % of it)"]
                    if (tr := p.get("test_ranking")) else []),
                  f"- the trade-off: smallest subnet ({t['smallest']['r']} px, {t['smallest']['macs_m']:.1f} MMACs) test top-1 "
                  f"**{t['smallest']['test_top1_pct']:.2f} %**, largest ({t['largest']['r']} px, {t['largest']['macs_m']:.1f} MMACs) "
                  f"**{t['largest']['test_top1_pct']:.2f} %**",
                  f"- evaluate throughput: {e['subnets_per_minute']} subnets/min ({e['subnets_this_run']} subnets in {e['seconds']} s, "
                  f"mixed: BN recalibration + val, + test for {a['settings'].get('test_subnets') or 'all'} of them), peak RSS "
                  f"{e['peak_rss_mib']} MiB; mean seconds per subnet: {json.dumps(e.get('mean_s_per_subnet'))}", ""]  # fmt: skip
    tr = doc.get("training")
    if tr:
        lines += ["## Training throughput", "",
                  f"`{tr['command']}` ({tr['threads']} threads; {tr['machine']['date']}, load {tr['machine']['load1_at_start']} at start): "
                  f"{tr['steps']} steps (every phase), **{tr['images_per_s']:.1f} images/s** (a batch image per second; an elastic "
                  f"step runs 3 subnets on it), {tr['wall_s']:.0f} s, peak RSS **{tr['peak_rss_mb']:.0f} MB**", ""]  # fmt: skip
    st = doc.get("supernet_training")
    if st:
        phases = ", ".join(f"{p['name']} {p['steps']}" for p in st["phases"])
        lines += [f"The supernet itself: {st['steps']} steps of batch 64 ({phases}) in **{st['elapsed_s'] / 60:.1f} min**, "
                  f"{st['images_per_s']:.1f} images/s over the whole run ({st['world_size']} process, 2 threads); its end-of-training check (1000 val images, 48 px): largest {st['largest_val_top1']} %, "
                  f"smallest {st['smallest_val_top1']} %.", ""]  # fmt: skip
    lines += ["## The search front vs random subnets at equal measured latency (`local`)", "",
              f"Front: {fr['front_size_measured']} members of the top-1 (table predictor) vs latency:local front, evenly along latency; "
              f"random: {fr['random_measured']} subnets of the table's size-stratified random design. Every point is (test top-1, "
              "latency measured by the agent on `local`, trained weights, the same protocol).", "",
              f"- HV (ref. 0 % / {fr['reference'][1]:.3f} ms): front **{fr['hv_front']:.3f}** vs random **{fr['hv_random']:.3f}**",
              *([f"- random sets of the front's size ({eq['draws']} draws of {fr['front_size_measured']} of the "
                 f"{fr['random_measured']}): HV mean {eq['mean']:.3f} (range {eq['min']:.3f}-{eq['max']:.3f}); the front's HV is "
                 f"above {100 * eq['share_below_front']:.0f} % of them"] if (eq := fr.get("hv_random_equal_count")) and eq["draws"] > 1 else []),
              f"- the front dominates {100 * fr['share_of_random_dominated_by_front']:.0f} % of the random subnets; random subnets "
              f"dominate {100 * fr['share_of_front_dominated_by_random']:.0f} % of the front's members", "",
              "| budget ms | best front member (chosen on val): test % (ms) | best random subnet: test % (ms) | front − random, pts |",
              "|---|---|---|---|"]  # fmt: skip
    for b in fr["budgets"]:
        f, r = b["front"], b["random"]
        cell = lambda x: f"{x['test_top1_pct']:.2f} ({x['measured_ms']:.3f})" if x else "none fits"  # noqa: E731
        d = b["front_minus_random_test_pts"]
        lines.append(f"| {b['budget_ms']:.3f} | {cell(f)} | {cell(r)} | {'' if d is None else f'{d:+.2f}'} |")
    c = doc.get("largest_vs_alone")
    if c:
        legs = " + ".join(f"{leg['steps']} steps ({', '.join(f'{n} {s}' for n, s in leg['phases'])})" for leg in c["supernet_training"])
        al = c["alone_training"]
        lines += ["", "## OFA's claim: the supernet's largest subnet vs the same network trained alone", "",
                  f"Supernet: {legs} = {c['supernet_images']} images; alone: {al['steps']} steps of the full network "
                  f"= {al['images']} images (train part {al['train_images']} images). Test top-1:", "",
                  "| px | MMACs | largest subnet of the supernet | trained alone | supernet − alone, pts |", "|---|---|---|---|---|"]  # fmt: skip
        for r in c["per_resolution"]:
            s, t = r["supernet"], r["alone"]
            d = f"{s['test'] - t['test']:+.2f}" if s and t else ""
            lines.append(f"| {r['r']} | {r['macs_m']:.1f} | {s['test']:.2f} | {t['test']:.2f} | {d} |" if s and t else f"| {r['r']} | {r['macs_m']:.1f} | {s} | {t} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
