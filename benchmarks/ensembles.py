"""Ensembles of front subnets vs single subnets, at equal MEASURED latency on `local` (issue 18).

Usage:
    python benchmarks/ensembles.py --supernet supernets/NAME --source-table WS/accuracy_tables/bench \\
        [--data /usr/share/datasets/fashion-mnist] [--workspace /tmp/ensembles-bench] [--quick]

Everything is chosen on the table's `val` split and every accuracy reported is on `test`.
Steps (each resumable: rerun with the same --workspace and it continues):
1. the source accuracy table is copied into the workspace (the source is never written);
2. `local` is calibrated there (`ofa2-edge calibrate --device local`, the table's resolutions),
   a top-1 predictor is fitted on the table, and a single-subnet search (top-1 vs latency:local)
   gives the front; its members (thinned to --max-candidates, evenly along latency) are the
   candidate pool, evaluated into the table copy where it lacks them;
3. the ensemble search runs in both modes (sequential: sum; parallel: the core-bounded max);
4. every candidate (as a 1-member model) and up to --measure multi-member ensembles of each
   mode's (top-1, latency) front are exported as ONE ONNX model each (trained weights) and
   measured on `local` by the agent, each ensemble in BOTH modes;
5. figures: per mode, the ensemble front vs the single-subnet front at equal measured latency
   (test top-1 hypervolume, common reference), best ensemble vs best single at 5 measured
   latency budgets (paired bootstrap CI over test images and exact McNemar p), the chosen
   ensemble vs random ensembles of the same size from the same pool within its predicted
   latency, and predicted (sum / max / core-bounded) vs measured ensemble latency.
Results: benchmarks/results/ensembles.{json,md} and the "Ensembles" section of REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).parent))
from benchlib import machine_info, report_section  # noqa: E402

from ofa2_edge.accuracy.source import open_supernet  # noqa: E402
from ofa2_edge.accuracy.table import AccuracyTable  # noqa: E402
from ofa2_edge.cli.main import main as cli  # noqa: E402
from ofa2_edge.core.workspace import Workspace  # noqa: E402
from ofa2_edge.ensemble.pool import ensure_evaluated, front_archs, load_pool  # noqa: E402
from ofa2_edge.ensemble.search import EnsembleConfig, EnsembleRunFolder, run_ensemble_search  # noqa: E402
from ofa2_edge.search.indicators import hypervolume, nondominated  # noqa: E402
from ofa2_edge.search.runstore import RunFolder  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).parent / "results"
MODES = ("sequential", "parallel")


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_cli(ws: Path, *args: str) -> None:
    code = cli(["-W", str(ws), *args])
    if code != 0:
        raise SystemExit(f"ofa2-edge {' '.join(args)} failed with exit {code}")


def calibrate_local(ws: Workspace, trained: Any, resolutions: tuple[int, ...], budget: int, quick: bool, seed: int) -> None:
    """`local`'s latency table from the calibration design over the table's space, exported
    with the TRAINED supernet (its classifier has the dataset's classes, as deployed; the
    `calibrate` command measures OFA's 1000-class random-weight w1.2 nets), resumable."""
    from exporters import ExportCache
    from ofa2_edge.accuracy.evaluate import design
    from ofa2_edge.calibration.calibrate import bind_table
    from ofa2_edge.devices.inventory import Inventory
    from ofa2_edge.devices.pipeline import MeasurePlan, measure_archs, standard_protocol
    from ofa2_edge.devices.session import DeviceSession
    from ofa2_edge.space.arch import SearchSpace
    from ofa2_edge.tables.device import DeviceTable

    archs = design(SearchSpace(resolutions=resolutions, w=trained.width_mult), budget, seed)
    device = Inventory.load(ws.inventory_path).get("local")
    table = DeviceTable.of(ws, "local")
    plan = MeasurePlan.for_device(device)
    protocol = standard_protocol(device.threads, "wall", quick)
    with DeviceSession(device, ws.cache_dir) as session:
        key = bind_table(session, table, device, plan, protocol)
        todo = [a for a in archs if a.id not in table.measured(key)]
        step(f"calibrate local: {len(todo)} of {len(archs)} subnets (trained weights) at {resolutions} px")
        measure_archs(session, todo, plan, protocol, ExportCache(ws.exports_dir), table.append, supernet=trained.net)


def thin(archs: list, latency: np.ndarray, k: int) -> list:
    """`k` of the front's archs, evenly spaced along predicted latency (both ends kept)."""
    if len(archs) <= k:
        return list(archs)
    order = np.argsort(latency)
    pick = sorted(set(np.linspace(0, len(archs) - 1, k).round().astype(int)))
    return [archs[order[i]] for i in pick]


def paired(correct_a: np.ndarray, correct_b: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """Test top-1 difference a - b (points) with a paired bootstrap 95 % CI over test images and
    the exact McNemar p-value on the discordant images."""
    from scipy.stats import binomtest

    diff = correct_a.astype(np.float64) - correct_b.astype(np.float64)
    n = diff.size
    boots = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(n_boot)]) * 100.0
    b, c = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    p = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"delta_pts": float(diff.mean() * 100.0), "ci95_pts": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "mcnemar_p": p, "a_only_right": b, "b_only_right": c}  # fmt: skip


def front_of(val: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Indices of the (max val top-1, min latency) non-dominated points."""
    F = np.column_stack([100.0 - val, lat])
    return nondominated(F) if len(F) else np.zeros(0, dtype=int)


def main() -> None:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--source-table", type=Path, required=True, help="accuracy_tables/NAME folder to copy (read only)")
    ap.add_argument("--data", type=Path, default=None, help="the table's dataset (default: what its table.json records)")
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/ensembles-bench"))
    ap.add_argument("--calibrate-budget", type=int, default=30)
    ap.add_argument("--pop", type=int, default=100)
    ap.add_argument("--gens", type=int, default=200)
    ap.add_argument("--ens-pop", type=int, default=100)
    ap.add_argument("--ens-gens", type=int, default=100)
    ap.add_argument("--max-candidates", type=int, default=24)
    ap.add_argument("--pool", choices=("run-front", "table-front", "table"), default="run-front",
                    help="candidates: the front of a top-1 vs latency:local search (the issue's setting; its members the "
                    "table lacks are evaluated), or the table's own evaluated subnets non-dominated on (val top-1, "
                    "predicted latency), or all of them (nothing to evaluate)")
    ap.add_argument("--max-members", type=int, default=3)
    ap.add_argument("--measure", type=int, default=10, help="multi-member front ensembles measured per mode")
    ap.add_argument("--budgets", type=int, default=5)
    ap.add_argument("--random", type=int, default=200)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="short measurement protocol (smoke runs, not figures)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--note", default="", help="a line for the report (e.g. which table this is)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    machine = machine_info()  # at the START: its load is what the figures ran under
    root = args.workspace.resolve()
    ws = Workspace(root, root / "cache")
    name = args.source_table.name
    dest = root / "accuracy_tables" / name
    if not dest.exists():
        step(f"copy {args.source_table} -> {dest}")
        shutil.copytree(args.source_table, dest)
    table = AccuracyTable.of(ws, name).require()
    trained = open_supernet(args.supernet)

    # 2. local latency, accuracy predictor, single-subnet search
    if not (root / "latency_tables" / "local" / "surrogate.json").is_file():
        calibrate_local(ws, trained, table.resolutions(), args.calibrate_budget, args.quick, args.seed)
        run_cli(root, "fit", "--device", "local", "--width", str(trained.width_mult), "--json")
    from ofa2_edge.search.objectives import MetricContext, resolve_metric
    from ofa2_edge.space.arch import SearchSpace, genomes_of

    metric = resolve_metric("latency:local", MetricContext(ws, SearchSpace(resolutions=table.resolutions(), w=trained.width_mult)))
    if args.pool == "run-front":
        if not table.predictor_path.is_file():
            run_cli(root, "fit-accuracy", "--table", name, "--json")
        single_run = root / "runs" / "single"
        if RunFolder(single_run).status().get("state") != "completed":
            step("single-subnet search")
            if single_run.exists():
                shutil.rmtree(single_run)
            run_cli(root, "search", "--objectives", "top1,latency:local", "--accuracy", name, "--pop", str(args.pop),
                    "--gens", str(args.gens), "--seed", str(args.seed), "-o", str(single_run), "--json")  # fmt: skip
        front = front_archs(single_run)
    else:  # the table's own evaluated subnets (all, or those non-dominated on val top-1 and predicted latency)
        rows = list(table.measured(0).values())
        archs = [r.arch for r in rows]
        lat = np.asarray(metric.evaluate(genomes_of(archs)))
        keep = front_of(np.array([r.val.top1_pct for r in rows]), lat) if args.pool == "table-front" else np.arange(len(rows))
        front = [archs[i] for i in keep]
    cands = thin(front, np.asarray(metric.evaluate(genomes_of(front))), args.max_candidates)
    step(f"front {len(front)} subnets, pool {len(cands)}; evaluating the missing ones into the table copy")
    t0 = time.perf_counter()
    evaluated = ensure_evaluated(table, cands, args.supernet, args.data)
    eval_s = time.perf_counter() - t0
    pool = load_pool(ws, cands, table, "local", data=args.data)
    assert pool.test is not None, "the table keeps no test probabilities: nothing to report on"

    # 3. ensemble searches
    status = {}
    for mode in MODES:
        folder = root / "runs" / f"ens-{mode}"
        cfg = EnsembleConfig("single", name, "local", mode=mode, max_members=args.max_members, pop_size=args.ens_pop,
                             n_gen=args.ens_gens, seed=args.seed)  # fmt: skip
        step(f"ensemble search, {mode}")
        status[mode] = run_ensemble_search(pool, cfg, folder, resume=EnsembleRunFolder(folder).exists())

    # 4. measure: every candidate alone, and the picked front ensembles in both modes
    from exporters import ExportCache
    from ofa2_edge.devices.inventory import Inventory
    from ofa2_edge.devices.session import DeviceSession
    from ofa2_edge.ensemble.measure import measure_ensembles

    arch_of = dict(zip(pool.ids, pool.archs))
    picks: dict[str, list[list[str]]] = {}
    for mode in MODES:
        multi = [r for r in EnsembleRunFolder(root / "runs" / f"ens-{mode}").front()["front_2d"] if r["n_members"] > 1]
        idx = sorted(set(np.linspace(0, len(multi) - 1, min(args.measure, len(multi))).round().astype(int))) if multi else []
        picks[mode] = [multi[i]["members"] for i in idx]
    to_measure = list({tuple(sorted(m)): m for ms in picks.values() for m in ms}.values())
    cache = ExportCache(ws.exports_dir)
    record = root / "measured.jsonl"
    cores = pool.cores or 1
    step(f"measure {pool.size} singles and {len(to_measure)} ensembles x 2 modes on local ({cores} cores)")
    device = Inventory.load(ws.inventory_path).get("local")
    t0 = time.perf_counter()
    with DeviceSession(device, ws.cache_dir) as session:
        singles = measure_ensembles(session, [[a] for a in pool.archs], "sequential", cache, cores=cores,
                                    supernet=trained.net, quick=args.quick, record_to=record)  # fmt: skip
        measured = {mode: measure_ensembles(session, [[arch_of[i] for i in m] for m in to_measure], mode, cache, cores=cores,
                                            supernet=trained.net, quick=args.quick, record_to=record) for mode in MODES}  # fmt: skip
    measure_s = time.perf_counter() - t0
    single_ms = {r["members"][0]: r["estimate_ms"] for r in singles if r["ok"]}
    ens_ms = {mode: {r["ensemble_id"]: r for r in rows if r["ok"]} for mode, rows in measured.items()}

    # 5. figures
    rng = np.random.default_rng(args.seed)
    from ofa2_edge.ensemble.pool import ensemble_id

    single_ids = [i for i in pool.ids if i in single_ms]
    s_masks = pool.masks_of([[i] for i in single_ids])
    s_val = pool.val.top1_pct(s_masks)
    s_test_c = pool.test.correct(s_masks)
    s_lat = np.array([single_ms[i] for i in single_ids])
    out: dict[str, Any] = {"modes": {}}
    for mode in MODES:
        # every measured ensemble (picked from either mode's front) is an option in both modes
        members = [m for m in to_measure if ensemble_id(m) in ens_ms[mode]]
        e_masks = pool.masks_of(members) if members else np.zeros((0, pool.size), dtype=bool)
        # the ensemble side may pick a single subnet too: its options are singles + ensembles
        all_masks = np.vstack([s_masks, e_masks])
        all_val = pool.val.top1_pct(all_masks)
        all_test_c = pool.test.correct(all_masks)
        all_lat = np.concatenate([s_lat, [ens_ms[mode][ensemble_id(m)]["estimate_ms"] for m in members]])
        all_pred = pool.predicted_latency_ms(all_masks, mode)
        s_front = front_of(s_val, s_lat)
        e_front = front_of(all_val, all_lat)
        ref_lat = 1.1 * float(all_lat.max())
        hv_s = hypervolume(np.column_stack([100.0 - s_test_c[s_front].mean(1) * 100, s_lat[s_front]]), np.array([100.0, ref_lat]))
        hv_e = hypervolume(np.column_stack([100.0 - all_test_c[e_front].mean(1) * 100, all_lat[e_front]]), np.array([100.0, ref_lat]))
        lo, hi = float(s_lat.min()), float(all_lat.max())
        budgets = [lo + (hi - lo) * q for q in np.linspace(0.1, 0.9, args.budgets)]
        rows = []
        for b in budgets:
            s_ok = np.flatnonzero(s_lat <= b)
            e_ok = np.flatnonzero(all_lat <= b)
            if not s_ok.size:
                continue
            bs = s_ok[np.argmax(s_val[s_ok])]
            be = e_ok[np.argmax(all_val[e_ok])]
            k = int(all_masks[be].sum())
            row = {
                "budget_ms": b,
                "single": {"members": pool.members_of(s_masks[bs]), "val": float(s_val[bs]), "test": float(s_test_c[bs].mean() * 100), "measured_ms": float(s_lat[bs])},
                "ensemble": {"members": pool.members_of(all_masks[be]), "val": float(all_val[be]), "test": float(all_test_c[be].mean() * 100),
                             "measured_ms": float(all_lat[be]), "predicted_ms": float(all_pred[be])},
                "ensemble_minus_single": paired(all_test_c[be], s_test_c[bs], rng, args.bootstrap),
            }  # fmt: skip
            # random ensembles of the same size from the same pool within the chosen one's predicted latency
            # (size 1: random single subnets; the paper's claim concerns 2+ members)
            kk = k
            draws = []
            for _ in range(args.random * 20):
                m = np.zeros(pool.size, dtype=bool)
                m[rng.choice(pool.size, size=min(kk, pool.size), replace=False)] = True
                if pool.predicted_latency_ms(m[None], mode)[0] <= all_pred[be] + 1e-9:
                    draws.append(m)
                if len(draws) >= args.random:
                    break
            if draws:
                r_test = pool.test.top1_pct(np.array(draws))
                row["random"] = {"size": kk, "n": len(draws), "test_mean": float(r_test.mean()), "test_max": float(r_test.max()),
                                 "share_chosen_beats": float((row["ensemble"]["test"] > r_test).mean()),
                                 "share_chosen_ties_or_beats": float((row["ensemble"]["test"] >= r_test).mean())}  # fmt: skip
            else:
                row["random"] = {"size": kk, "n": 0, "note": f"no random {kk}-member draw fits the predicted latency"}
            rows.append(row)
        # predicted vs measured latency (multi-member ensembles measured in this mode)
        lat_rows = []
        for m in members:
            r = ens_ms[mode][ensemble_id(m)]
            mm = [single_ms[i] for i in m if i in single_ms]
            mask = pool.masks_of([m])
            lat_rows.append({
                "ensemble_id": ensemble_id(m), "n_members": len(m), "measured_ms": r["estimate_ms"], "threads": r["threads"],
                "pred_sum_ms": float(pool.predicted_latency_ms(mask, "sequential")[0]),
                "pred_max_ms": float(pool.latency_ms[mask[0]].max()),
                "pred_bound_ms": float(pool.predicted_latency_ms(mask, "parallel")[0]) if pool.cores else None,
                "members_measured_sum_ms": float(sum(mm)) if len(mm) == len(m) else None,
                "members_measured_max_ms": float(max(mm)) if len(mm) == len(m) else None,
            })  # fmt: skip

        def err(key: str, rows: list = lat_rows) -> dict[str, float] | None:
            pairs = [(r["measured_ms"], r[key]) for r in rows if r.get(key)]
            if not pairs:
                return None
            ratio = np.array([m / p for m, p in pairs])
            return {"median_measured_over_predicted": float(np.median(ratio)), "median_abs_err_pct": float(np.median(np.abs(ratio - 1)) * 100)}

        out["modes"][mode] = {
            "search": status[mode].get("summary"),
            "hv_test_measured": {"single_front": hv_s, "ensemble_front": hv_e, "reference": [0.0, ref_lat],
                                 "single_front_size": int(len(s_front)), "ensemble_front_size": int(len(e_front)),
                                 "ensemble_front_multi_member": int(sum(all_masks[i].sum() > 1 for i in e_front))},
            "budgets": rows,
            "latency": {"rows": lat_rows, "vs_pred_sum": err("pred_sum_ms"), "vs_pred_max": err("pred_max_ms"),
                        "vs_pred_bound": err("pred_bound_ms"), "vs_members_measured_sum": err("members_measured_sum_ms"),
                        "vs_members_measured_max": err("members_measured_max_ms")},
        }  # fmt: skip
    doc = {
        "command": "python benchmarks/ensembles.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "machine": {**machine, "load1_at_end": os.getloadavg()[0]},
        "table": {"name": name, "summary": {k: v for k, v in table.summary().items() if k != "predictor"}},
        "pool": {**pool.describe(), "pool": args.pool, "front_size": len(front), "evaluated_now": len(evaluated), "evaluate_s": round(eval_s, 1)},
        "measure_s": round(measure_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        **out,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ensembles.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc)
    (RESULTS / "ensembles.md").write_text(md + "\n")
    report_section(RESULTS / "REPORT.md", "ensembles", "Ensembles of front subnets vs single subnets (issue 18)", md.split("\n", 1)[1])
    print(md)


def markdown(doc: dict[str, Any]) -> str:
    p = doc["pool"]
    m = doc["machine"]
    lines = [
        "# Ensembles of front subnets vs single subnets (issue 18)",
        "",
        f"`{doc['command']}` — {m['date']}, {m['cpu']}, {m['cores']} cores, load {m['load1_at_start']} at start, {m.get('load1_at_end', float('nan')):.2f} at the end; {doc['total_s']:.0f} s in all "
        f"(measuring {doc['measure_s']:.0f} s, evaluating {p['evaluated_now']} missing members {p['evaluate_s']:.0f} s).",
        "",
    ]
    if doc.get("note"):
        lines += [f"**{doc['note']}**", ""]
    lines += [
        f"Table `{p['table']}` (val {p['n_val']} / test {p['n_test']} images); pool: {p['candidates']} of the {p['front_size']} subnets of "
        + {"run-front": "a top-1 vs latency:local search front", "table-front": "the table's (val top-1, predicted latency) front",
           "table": "the table's evaluated subnets"}.get(p.get("pool"), "?")
        + f" (evenly along latency); rule {p['rule']} ({p['rule_text']}); local has {p['cores']} cores. "
        "Every choice is made on val (top-1) with the MEASURED latency; every top-1 below is on test. Each candidate and each "
        "ensemble is one ONNX model (trained weights), measured by the agent (wall clock, no thread-CPU fallback).",
        "",
    ]
    for mode, d in doc["modes"].items():
        hv = d["hv_test_measured"]
        lines += [f"## {mode}", "",
                  f"Front HV (test top-1 vs measured latency, ref. 0 % / {hv['reference'][1]:.3f} ms): single subnets **{hv['single_front']:.3f}** "
                  f"({hv['single_front_size']} points) vs ensembles **{hv['ensemble_front']:.3f}** ({hv['ensemble_front_size']} points, "
                  f"{hv['ensemble_front_multi_member']} with 2+ members).", "",
                  "| budget ms | best single: test % (ms) | best ensemble: members, test % (ms) | ensemble − single, pts [95 % CI], McNemar p | random draws of the chosen size within its predicted latency: mean / max test %, chosen beats |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in d["budgets"]:
            s, e, c, rnd = r["single"], r["ensemble"], r["ensemble_minus_single"], r["random"]
            rtxt = (f"{rnd['test_mean']:.2f} / {rnd['test_max']:.2f} (k={rnd['size']}, n={rnd['n']}), {100 * rnd['share_chosen_beats']:.0f} %"
                    if rnd.get("n") else rnd.get("note", ""))  # fmt: skip
            lines.append(f"| {r['budget_ms']:.3f} | {s['test']:.2f} ({s['measured_ms']:.3f}) | {len(e['members'])}, {e['test']:.2f} ({e['measured_ms']:.3f}) | "
                         f"{c['delta_pts']:+.2f} [{c['ci95_pts'][0]:+.2f}, {c['ci95_pts'][1]:+.2f}], p={c['mcnemar_p']:.3g} | {rtxt} |")  # fmt: skip
        lat = d["latency"]
        lines += ["", f"Predicted vs measured latency of the {len(lat['rows'])} multi-member ensembles measured {mode} (median measured/predicted, median |error|):", ""]
        for key, label in (("vs_pred_sum", "sum of predicted members"), ("vs_pred_max", "max of predicted members"),
                           ("vs_pred_bound", "core-bounded max(slowest, sum/cores), predicted"),
                           ("vs_members_measured_sum", "sum of the members' measured latencies"),
                           ("vs_members_measured_max", "max of the members' measured latencies")):  # fmt: skip
            v = lat.get(key)
            if v:
                lines.append(f"- {label}: {v['median_measured_over_predicted']:.3f}x, {v['median_abs_err_pct']:.1f} %")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
