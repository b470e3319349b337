"""`ofa2-edge runs list|show|compare`: look at search run folders (and, in list and show,
the ensemble runs beside them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from ofa2_edge.cli.common import JSON_OPTION, command_name, emit_json, out_console, state
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.ensemble.search import CONFIG_FILE as ENSEMBLE_CONFIG_FILE
from ofa2_edge.ensemble.search import EnsembleRunFolder, find_ensemble_run, list_ensemble_runs
from ofa2_edge.search.compare import compare_runs
from ofa2_edge.search.indicators import EXACT_HV_MAX_OBJ
from ofa2_edge.search.runstore import CONFIG_FILE, FRONT_FILE, RunFolder, list_runs

app = typer.Typer(help="List, inspect and compare search runs (list and show include ensemble runs).", no_args_is_help=True)


def resolve_run(text: str, workspace: Workspace) -> RunFolder:
    """A run folder path (from the current folder or the workspace), or a run id under the workspace's runs/."""
    for candidate in dict.fromkeys((Path(text), workspace.root / text, workspace.runs_dir / text)):
        run = RunFolder(candidate)
        if run.exists():
            return run
    known = ", ".join(r.run_id for r in list_runs(workspace.runs_dir)) or "none"
    raise InvalidInputError(f"no run {text!r} (not a run folder, nor a run id under {workspace.runs_dir}; runs there: {known})")


def _brief(run: RunFolder) -> dict[str, Any]:
    cfg, status = run.config(), run.status()
    summary = status.get("summary") or {}
    return {
        "run_id": run.run_id,
        "kind": "search",
        "path": str(run.path),
        "state": status.get("state"),
        "algorithm": cfg["algorithm"],
        "objectives": cfg["objectives"],
        "constraints": cfg["constraints"],
        "seed": cfg["seed"],
        "gen": status.get("gen"),
        "n_gen": status.get("n_gen"),
        "front_size": summary.get("front_size"),
        "hv": summary.get("hv_archive"),
        "created_at": cfg.get("created_at"),
    }


def _ensemble_brief(run: EnsembleRunFolder) -> dict[str, Any]:
    cfg, status = run.config(), run.status()
    settings, summary = cfg["settings"], status.get("summary") or {}
    return {
        "run_id": run.run_id,
        "kind": "ensemble",
        "path": str(run.path),
        "state": status.get("state"),
        "algorithm": f"{settings['algorithm']} ensembles of {settings['source_run']} ({settings['mode']})",
        "objectives": [o["name"] for o in cfg.get("objectives") or []],
        "constraints": cfg.get("constraints") or [],
        "seed": settings["seed"],
        "gen": status.get("gen"),
        "n_gen": status.get("n_gen"),
        "front_size": summary.get("front_size"),
        "hv": summary.get("hv"),
        "created_at": cfg.get("created_at"),
    }


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Runs under the workspace's runs/ folder: searches and ensemble searches, oldest first."""
    runs_dir = state(ctx).workspace.runs_dir
    # both kinds in one order, their config files' time (the order each lister keeps)
    dated = [(r.file(CONFIG_FILE), _brief(r)) for r in list_runs(runs_dir)]
    dated += [(r.file(ENSEMBLE_CONFIG_FILE), _ensemble_brief(r)) for r in list_ensemble_runs(runs_dir)]
    runs = [brief for _, brief in sorted(dated, key=lambda e: (e[0].stat().st_mtime, e[1]["run_id"]))]
    if as_json:
        emit_json(runs)
        return
    # Nothing is cut, run ids least of all (every other command takes them): the short
    # columns keep their full width, the search settings wrap onto more lines.
    rows = [
        (
            r["run_id"], r["state"] or "", f"{r['gen']}/{r['n_gen']}", str(r["front_size"] or ""),
            "" if r["hv"] is None else f"{r['hv']:.2f}",
            f"{r['algorithm']}: {', '.join(r['objectives'])}"
            + (f"; {', '.join(r['constraints'])}" if r["constraints"] else ""),
        )
        for r in runs
    ]  # fmt: skip
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, name in enumerate(("run", "state", "gens", "front", "HV")):
        width = max(len(name), *(len(row[i]) for row in rows)) if rows else len(name)
        table.add_column(name, no_wrap=True, min_width=width, justify="right" if i > 1 else "left")
    table.add_column("search", overflow="fold", ratio=1, min_width=12)
    for row in rows:
        table.add_row(*row)
    out_console.print(table if runs else f"no runs yet: start one with `{command_name()} search`")


@app.command()
def show(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="Run folder or run id."),
    top: int = typer.Option(15, "--top", help="How many front rows to print."),
    as_json: bool = JSON_OPTION,
) -> None:
    """A run's settings, state, timings and front (a search run or an ensemble run)."""
    ensemble = find_ensemble_run(run, state(ctx).workspace)
    if ensemble is not None:
        _show_ensemble(ensemble, top, as_json)
        return
    folder = resolve_run(run, state(ctx).workspace)
    brief, status = _brief(folder), folder.status()
    front = folder.front() if folder.file(FRONT_FILE).is_file() else None  # the run store validates every file it reads
    if as_json:
        emit_json({**brief, "status": status, "config": folder.config(), "front": front})
        return
    cfg = folder.config()
    head = Table(title=f"run {folder.run_id}", show_header=False)
    head.add_row("state", f"{status.get('state')}  gen {status.get('gen')}/{status.get('n_gen')}, {status.get('n_evals')} evaluations")
    head.add_row("search", f"{cfg['algorithm']} pop {cfg['pop_size']} seed {cfg['seed']}; space {cfg['space']}")
    head.add_row("objectives", ", ".join(cfg["objectives"]) + (f"; constraints {', '.join(cfg['constraints'])}" if cfg["constraints"] else ""))
    summary, timings = status.get("summary") or {}, status.get("timings") or {}
    if summary:
        pairs = summary.get("hv_archive_pairs")
        many = pairs is not None and len(cfg["objectives"]) > EXACT_HV_MAX_OBJ
        what = "mean per-device 2-D HV" if many else "HV"
        head.add_row("front", f"{summary['front_size']} archs; {what} {summary['hv_archive']:.2f} (final population {summary['hv_population']:.2f})")
        if pairs is not None:
            costs = cfg["objectives"][1:]
            head.add_row(
                f"2-D HV ({cfg['objectives'][0]}, cost)", ", ".join(f"{c} {v:.2f}" for c, v in zip(costs, pairs))
            )
    if timings:
        head.add_row("time", f"{timings['total_s']:.1f} s (objective evaluation {timings['evaluation_s']:.1f} s, pymoo {timings['algorithm_s']:.1f} s)")
    if status.get("message"):
        head.add_row("message", status["message"])
    out_console.print(head)
    if front and front["rows"]:
        fields = front["fields"]
        table = Table("arch id", *fields, "r", "depths")
        for row in front["rows"][:top]:
            table.add_row(row["arch_id"], *(f"{row[f]:.3f}" for f in fields), str(row["arch"]["r"]), "-".join(map(str, row["arch"]["d"])))
        out_console.print(table)
        if len(front["rows"]) > top:
            out_console.print(f"... {len(front['rows']) - top} more rows in {folder.path / 'front.csv'}")


def _show_ensemble(run: EnsembleRunFolder, top: int, as_json: bool) -> None:
    brief, status, cfg = _ensemble_brief(run), run.status(), run.config()
    front = run.front() if status.get("state") == "completed" else None
    if as_json:
        emit_json({**brief, "status": status, "config": cfg, "front": front})
        return
    settings, summary = cfg["settings"], status.get("summary") or {}
    head = Table(title=f"ensemble run {run.run_id}", show_header=False)
    head.add_row("state", f"{status.get('state')}  gen {status.get('gen')}/{status.get('n_gen')}, {status.get('n_ensembles')} ensembles scored")
    head.add_row("search", f"{settings['algorithm']} pop {settings['pop_size']} seed {settings['seed']}; {settings['mode']}, "
                 f"at most {settings['max_members']} members of the {len(cfg['candidates'])} front subnets of {settings['source_run']}")  # fmt: skip
    head.add_row("objectives", ", ".join(brief["objectives"]) + f" (table {settings['table']}, device {settings['device']})")
    if summary:
        head.add_row("front", f"{summary['front_size']} ensembles ({summary['front_2d_size']} on the top-1 vs latency front); HV {summary['hv']:.2f}")
    out_console.print(head)
    if front and front["front_2d"]:
        table = Table("ensemble id", "members", "val top-1 %", "latency ms", "MMACs", title="top-1 vs latency front")
        for row in front["front_2d"][:top]:
            table.add_row(row["ensemble_id"], " + ".join(row["members"]), f"{row['val_top1_pct']:.2f}", f"{row['latency_ms']:.3f}", f"{row['macs_m']:.1f}")
        out_console.print(table)
        if len(front["front_2d"]) > top:
            out_console.print(f"... {len(front['front_2d']) - top} more rows in {run.path / 'front.json'}")


@app.command()
def compare(
    ctx: typer.Context,
    run_a: str = typer.Argument(..., help="First run (folder or id)."),
    run_b: str = typer.Argument(..., help="Second run (folder or id)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Hypervolume, front sizes and mutual coverage of two runs' fronts (common reference point)."""
    ws = state(ctx).workspace
    a, b = resolve_run(run_a, ws), resolve_run(run_b, ws)
    doc = compare_runs(a, b)
    if as_json:
        emit_json(doc)
        return
    ref = ", ".join(f"{k}={v:g}" for k, v in doc["reference_point"].items())
    estimated = doc.get("indicator", "hypervolume") != "hypervolume"
    hv_head = "HV (estimate +- s.e.)" if estimated else "HV"
    table = Table("run", "front size", hv_head, "covers other", title=f"on {', '.join(doc['objectives'])} (reference {ref})")
    for rid, r in doc["runs"].items():
        hv = f"{r['hv']:.3f}" + (f" +- {r['hv_std_error']:.3f}" if estimated else "")
        table.add_row(rid, str(r["front_size"]), hv, f"{100 * r['coverage_of_other']:.1f} %")
    out_console.print(table)
    if doc.get("pairs"):
        ids = list(doc["runs"])
        per = Table(f"2-D HV ({doc['pairs'][0][0]}, cost)", *ids, title="per device: the 2-D front each run offers")
        for _, cost in doc["pairs"]:
            per.add_row(cost, *(f"{doc['runs'][i]['hv_pairs'][cost]:.3f}" for i in ids))
        out_console.print(per)
    if doc["projected"]:
        out_console.print("the runs have different objectives: fronts were projected onto the shared ones")
