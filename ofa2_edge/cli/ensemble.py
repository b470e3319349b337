"""`ofa2-edge ensemble`: ensembles of a search run's front subnets (OFA³), searched, measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ofa2_edge.cli.common import JSON_OPTION, emit_json, out_console, state, step_progress
from ofa2_edge.core.errors import InvalidInputError


def ensemble(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="The subnet search run whose front gives the candidates (folder or run id)."),
    table: str = typer.Option(..., "--table", help="Accuracy table with the candidates' stored probabilities (missing ones are evaluated into it)."),
    device: str = typer.Option(..., "--device", help="Device whose latency predictor prices the ensembles."),
    max_members: int = typer.Option(3, "--max-members", help="Most members per ensemble."),
    mode: str = typer.Option("sequential", "--mode", help="sequential (latency = sum of members) or parallel (max, bounded by the device's cores)."),
    algo: str = typer.Option("nsga2", "--algo", help="Search algorithm (nsga2)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Run folder (default runs/<RUN>-ens)."),
    pop: int = typer.Option(100, "--pop", help="Population size."),
    gens: int = typer.Option(100, "--gens", help="Generations."),
    seed: int = typer.Option(1, "--seed", min=0, help="Seed."),
    cores: Optional[int] = typer.Option(None, "--cores", help="The device's cores for parallel mode (default: its probed count)."),
    supernet: Optional[Path] = typer.Option(None, "--supernet", help="The table's supernet (supernets/NAME): needed when front subnets are missing from the table."),
    data: Optional[Path] = typer.Option(None, "--data", help="The table's dataset (default: the folder its table.json records)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted ensemble run in -o."),
    measure: int = typer.Option(0, "--measure", min=0, help="Then export N ensembles of the (top-1, latency) front as one ONNX model each and measure them on the device, sequential and parallel."),
    quick: bool = typer.Option(False, "--quick", help="Short measurement protocol (smoke tests only)."),
    allow_emulated: bool = typer.Option(False, "--allow-emulated", help="Accept a latency table measured under emulation."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Search ensembles of a run's front subnets: soft-vote top-1 on val vs latency vs MACs; resumable."""
    from ofa2_edge.accuracy.table import AccuracyTable
    from ofa2_edge.cli.runs import resolve_run
    from ofa2_edge.ensemble.pool import ensure_evaluated, front_archs, load_pool
    from ofa2_edge.ensemble.search import EnsembleConfig, EnsembleRunFolder, run_ensemble_search

    ws = state(ctx).workspace
    source = resolve_run(run, ws)
    config = EnsembleConfig(
        source_run=source.run_id, table=table, device=device, mode=mode, max_members=max_members,
        algorithm=algo, pop_size=pop, n_gen=gens, seed=seed, cores=cores,
    )  # fmt: skip
    folder = output if output is not None else ws.runs_dir / f"{source.run_id}-ens"
    if not resume and (folder / "ensemble.json").exists():
        raise InvalidInputError(f"{folder} already holds an ensemble run; resume it with --resume or choose another -o")
    acc = AccuracyTable.of(ws, table).require()
    archs = front_archs(source.path)
    evaluated = ensure_evaluated(acc, archs, supernet, data)
    pool = load_pool(ws, archs, acc, device, data=data, cores=cores, allow_emulated=allow_emulated)
    progress = step_progress("ensemble search", "{task.fields[last]}", as_json)
    with progress:
        task = progress.add_task("ensemble", total=gens, last="")

        def on_gen(row: dict[str, Any]) -> None:
            progress.update(task, completed=row["gen"], last=f"HV {row['hv']:.4g}, front {row['front_size']}")

        status = run_ensemble_search(pool, config, folder, resume=resume, progress=on_gen)
    run_folder = EnsembleRunFolder(folder)
    measured: list[dict[str, Any]] = []
    if measure:
        measured = _measure(ctx, run_folder, pool, measure, quick, _weights(acc, supernet))
    doc = {"run": str(folder), "source_run": str(source.path), "evaluated_into_table": evaluated, "pool": pool.describe(),
           "status": status, "measured": measured}  # fmt: skip
    if as_json:
        emit_json(doc)
        return
    s = status.get("summary") or {}
    out = Table(title=f"ensembles of {source.run_id}", show_header=False)
    out.add_row("folder", str(folder))
    out.add_row("candidates", f"{pool.size} front subnets ({len(evaluated)} evaluated into table {table} now)")
    out.add_row("mode", f"{mode}" + (f" ({pool.cores} cores)" if mode == "parallel" else ""))
    out.add_row("front", f"{s.get('front_size')} ensembles (2-D top-1/latency: {s.get('front_2d_size')}), up to {s.get('max_members_on_front')} members")
    for row in measured:
        out.add_row(f"measured {row['ensemble_id']}", f"{row['mode']}: {row['estimate_ms']} ms (predicted {row.get('predicted_ms', float('nan')):.3f})")
    out_console.print(out)


def _weights(acc: Any, supernet: Optional[Path]) -> Any:
    """The weights the measured ensembles are exported with: the trained supernet given with
    --supernet, else random weights with the TABLE's classifier (its classes, not OFA's 1000:
    the head is part of the latency of a deployed model)."""
    from ofa2_edge.accuracy.source import open_supernet
    from ofa2_edge.supernet import Supernet

    if supernet is not None:
        return open_supernet(supernet).net
    b = acc.binding()
    return Supernet.random(b.width_mult, seed=0, n_classes=len(b.classes))


def _measure(ctx: typer.Context, run: Any, pool: Any, n: int, quick: bool, weights: Any) -> list[dict[str, Any]]:
    """Export and measure `n` ensembles spread along the 2-D front, in both modes."""
    import numpy as np

    from exporters import ExportCache
    from ofa2_edge.cli.devices import load_inventory
    from ofa2_edge.devices.session import DeviceSession
    from ofa2_edge.ensemble.measure import MEASURED_FILE, measure_ensembles
    from ofa2_edge.ensemble.pool import predicted_latency_ms

    st = state(ctx)
    front = run.front()["front_2d"]
    pick = [front[int(i)] for i in sorted(set(np.linspace(0, len(front) - 1, min(n, len(front))).round().astype(int)))]
    arch_of = dict(zip(pool.ids, pool.archs))
    members = [[arch_of[m] for m in r["members"]] for r in pick]
    device = load_inventory(ctx).get(pool.device)
    cores = pool.cores or 1

    def extra(subject: Any) -> dict[str, Any]:
        mask = pool.masks_of([[a.id for a in subject.members]])
        return {
            "predicted_sum_ms": float(predicted_latency_ms(pool.latency_ms, mask, "sequential", cores)[0]),
            "predicted_parallel_ms": float(predicted_latency_ms(pool.latency_ms, mask, "parallel", cores)[0]),
            "predicted_max_ms": float(pool.latency_ms[mask[0]].max()),
        }

    rows = []
    with DeviceSession(device, st.workspace.cache_dir) as session:
        for mode in ("sequential", "parallel"):
            got = measure_ensembles(session, members, mode, ExportCache(st.workspace.exports_dir), cores=cores, quick=quick,
                                    supernet=weights, record_to=run.file(MEASURED_FILE), extra=extra)  # fmt: skip
            for r in got:
                r["predicted_ms"] = r["predicted_sum_ms"] if mode == "sequential" else r["predicted_parallel_ms"]
            rows += got
    return rows
