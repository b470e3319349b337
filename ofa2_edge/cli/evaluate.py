"""`ofa2-edge evaluate`: measure subnets' accuracy on your data into an accuracy table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ofa2_edge.cli.common import JSON_OPTION, command_name, emit_json, out_console, parse_ints, state, step_progress


def evaluate(
    ctx: typer.Context,
    supernet: Path = typer.Option(..., "--supernet", help="A trained supernet: supernets/NAME (from `ofa2-edge train`)."),
    data: Path = typer.Option(..., "--data", help="The dataset it was trained on (image folder or IDX files)."),
    data_format: Optional[str] = typer.Option(None, "--data-format", help="imagefolder or idx (default: detected)."),
    table: Optional[str] = typer.Option(None, "--table", help="Accuracy table name (default: the supernet folder's name)."),
    budget: int = typer.Option(60, "--budget", min=1, help="Subnets in the design (min and max nets at every resolution included)."),
    resolutions: Optional[str] = typer.Option(None, "--resolutions", help="Input sizes (default: the supernet's trained ones)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the design."),
    bn_seed: int = typer.Option(0, "--bn-seed", min=0, help="Seed of the train subset BN statistics are estimated on."),
    bn_images: int = typer.Option(2000, "--bn-images", min=1, help="Train images for BN recalibration."),
    batch_size: int = typer.Option(250, "--batch-size", min=1, help="Images per forward pass."),
    repeat_fraction: float = typer.Option(
        0.0, "--repeat-fraction", help="Share of the design evaluated again with another BN batch (the noise floor), 0..1."
    ),
    test: bool = typer.Option(
        True, "--test/--no-test", help="Also score the test part (only reported); --no-test halves the time for predictor-only tables."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluate a design of subnets (top-1, top-5, loss, probabilities) on the val part; resumable."""
    from ofa2_edge.accuracy.evaluate import EvaluateSettings, evaluate_table
    from ofa2_edge.accuracy.source import open_supernet
    from ofa2_edge.accuracy.table import AccuracyTable
    from ofa2_edge.data import open_dataset

    ws = state(ctx).workspace
    settings = EvaluateSettings(
        budget=budget,
        resolutions=parse_ints(resolutions, "--resolutions"),
        seed=seed,
        bn_seed=bn_seed,
        bn_images=bn_images,
        batch_size=batch_size,
        repeat_fraction=repeat_fraction,
        test=test,
    )
    trained = open_supernet(supernet)
    name = table or trained.folder.name.lower()
    acc = AccuracyTable.of(ws, name)
    spec = trained.data_spec(data)  # the split the supernet was trained with
    ds = open_dataset(dataclasses.replace(spec, format=data_format) if data_format else spec)
    progress = step_progress("evaluate", "{task.fields[last]}", as_json)
    with progress:
        task = progress.add_task("evaluate", total=None, last="")

        def on_row(row, done: int, total: int) -> None:  # type: ignore[no-untyped-def]
            tag = " (repeat)" if row.repeat else ""
            progress.update(task, completed=done, total=total, last=f"{row.arch_id} r={row.arch.r}: {row.val.top1_pct:.2f} %{tag}")

        report = evaluate_table(acc, trained, ds, settings, on_row)
    doc = report.to_dict(acc)
    if as_json:
        emit_json(doc)
        return
    s = doc["summary"]
    out = Table(title=f"accuracy table {name}", show_header=False)
    out.add_row("folder", doc["folder"])
    out.add_row("this run", f"{doc['evaluated']} evaluated, {doc['repeated']} repeated, {doc['skipped_already_in_table']} already in the table, {doc['seconds']:.1f} s")
    out.add_row("table", f"{s['n_evaluated']} subnets at {', '.join(map(str, s['resolutions']))} px")
    if s["val_top1_pct_range"]:
        out.add_row("val top-1", f"{s['val_top1_pct_range'][0]:.2f} .. {s['val_top1_pct_range'][1]:.2f} %")
    floor = s["noise_floor"]
    out.add_row("noise floor", f"Spearman {floor['spearman']:.3f}, mean |Δ top-1| {floor['mean_abs_delta_top1_pct']:.2f} pt over {floor['n_repeated']} subnets" if floor else "not measured (--repeat-fraction)")
    out.add_row("next", f"{command_name()} fit-accuracy --table {name}")
    out_console.print(out)
