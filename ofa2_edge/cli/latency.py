"""`ofa2-edge calibrate | fit | predict | tables`: a device's latency table and its predictor."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ofa2_edge.calibration.design import DEFAULT_BUDGET
from ofa2_edge.cli.common import (
    JSON_OPTION,
    QUICK_OPTION,
    TIMER_OPTION,
    TOFU_OPTION,
    emit_json,
    err_console,
    make_protocol,
    out_console,
    parse_ints,
    state,
)
from ofa2_edge.cli.devices import load_inventory, require_known_device
from ofa2_edge.core.errors import EXIT_MEASUREMENT, EXIT_UNREACHABLE, InvalidInputError
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS, SearchSpace
from ofa2_edge.space.archref import resolve_arch

tables_app = typer.Typer(help="List, show, export and import latency tables.", no_args_is_help=True)


def _prior(ctx: typer.Context, key: Optional[str]) -> Any:
    if key is None:
        return None
    from ofa2_edge.tables.device import DeviceTable

    return DeviceTable.of(state(ctx).workspace, key).predictor()


def _record_label(record: Any) -> str:
    """A record for the progress line: the arch id, or the layer's table key."""
    layer = (record.arch or {}).get("layer") if isinstance(record.arch, dict) else None
    name = layer if isinstance(layer, str) else record.arch_id
    name = name if len(name) <= 60 else name[:57] + "..."
    return f"{name} {record.estimate_ms:.3f} ms" if record.ok else f"{name} {record.error_kind.value}"


def calibrate(
    ctx: typer.Context,
    device_key: str = typer.Option("local", "--device", "-d", help="Device key (default: local, this machine)."),
    budget: Optional[int] = typer.Option(
        None,
        "--budget",
        "-n",
        min=0,
        help=f"How many subnets to measure end to end (default {DEFAULT_BUDGET}; with --blocks, 0).",
    ),
    blocks: bool = typer.Option(
        False,
        "--blocks",
        help="Block mode (OFA LatencyTable style; ONNX runtimes): time every distinct layer shape of the "
        "resolutions once, alone, and write OFA-format <r>_lookup_table.yaml files. Alone, the LUT sum becomes "
        "the predictor (or, if the table already holds end-to-end measurements, the predictor is refitted, now "
        "also trying the LUT hybrid); with --budget N, N subnets are then measured end to end and the hybrid "
        "learns what the sum misses (effects between layers, per-call costs). Both parts resume where a killed "
        "run stopped.",
    ),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="onnx, tflite or tflite-int8 (default: the runtime's)."
    ),
    resolutions: str = typer.Option(",".join(map(str, DEFAULT_RESOLUTIONS)), "--resolutions"),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the design (same seed and budget: same archs, so reruns resume)."
    ),
    adaptive_rounds: int = typer.Option(
        0, "--adaptive-rounds", min=0, help="Extra rounds on the most uncertain archs."
    ),
    prior: Optional[str] = typer.Option(
        None, "--prior", help="Another device's key: few-shot transfer from its predictor."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    timer: str = TIMER_OPTION,
    quick: bool = QUICK_OPTION,
    reuse_table: bool = typer.Option(False, "--reuse-table", help="Accept a table measured on another device."),
    group: Optional[str] = typer.Option(
        None, "--group", "-g",
        help="Calibrate a device group (devices.yaml `group:`): the design spread over its reachable replicas, "
        "anchors measured on each, into latency_tables/<group>/.",
    ),
    anchors: int = typer.Option(6, "--anchors", min=0, help="With --group: archs measured on every replica."),
    accept_env_change: bool = typer.Option(
        False, "--accept-env-change",
        help="Measure although the board's governor, power mode or CPUs online differ from the table's records.",
    ),
    trust_on_first_use: bool = TOFU_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure a space-filling set of subnets (and/or, with --blocks, every layer shape) on a device,
    resumably, then fit its latency predictor."""
    from ofa2_edge.calibration.run import CalibrationRequest, calibrate_device

    st = state(ctx)
    if group is not None:
        if blocks or prior or adaptive_rounds or reuse_table or device_key != "local":
            raise InvalidInputError("--group calibrates a group's replicas end to end: drop --device, --blocks, "
                                    "--prior, --adaptive-rounds and --reuse-table")  # fmt: skip
        _calibrate_group(ctx, group, budget, fmt, resolutions, seed, threads, timer, quick, anchors,
                         trust_on_first_use, as_json, accept_env_change)  # fmt: skip
        return
    device = load_inventory(ctx).get(device_key)
    protocol = make_protocol(threads or device.threads, timer, quick)
    request = CalibrationRequest(
        budget=budget, blocks=blocks, fmt=fmt, space=SearchSpace(resolutions=parse_ints(resolutions, "--resolutions")),
        seed=seed, adaptive_rounds=adaptive_rounds, prior=prior, reuse_table=reuse_table,
        trust_on_first_use=trust_on_first_use, accept_env_change=accept_env_change,
    )  # fmt: skip
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
        console=err_console,
    ) as bar:
        task = bar.add_task(f"calibrating {device.key}", total=None, last="")

        def on_event(event: str, info: dict[str, Any]) -> None:
            if event == "round":
                bar.update(task, description=f"{device.key}: {info['label']}", total=info["todo"], completed=0)
                if info["skipped"]:
                    err_console.print(f"{info['skipped']} of {info['total']} already measured (resuming)")
            elif event == "result":
                bar.update(task, advance=1, last=_record_label(info["record"]))
            elif event == "tables":
                for _r, path in sorted(info["written"].items()):
                    err_console.print(f"wrote {path}")
                for r, keys in sorted(info["incomplete"].items()):
                    err_console.print(f"[yellow]{r} px: {len(keys)} layer(s) without a measurement; no table written")
            elif event == "fit":
                bar.update(task, description=f"{device.key}: fitting the predictor", last="")

        outcome = calibrate_device(device, st.workspace, request, protocol, progress=on_event)
    if as_json:
        emit_json(outcome.summary)
    else:
        _print_calibration(outcome.summary)
    if outcome.unreached:  # the device could not be reached (again): 3, as for any unreachable device
        raise typer.Exit(EXIT_UNREACHABLE)
    if outcome.incomplete:
        raise typer.Exit(EXIT_MEASUREMENT)


def _calibrate_group(
    ctx: typer.Context, group: str, budget: Optional[int], fmt: Optional[str], resolutions: str, seed: int,
    threads: Optional[int], timer: str, quick: bool, anchors: int, trust_on_first_use: bool, as_json: bool,
    accept_env_change: bool = False,
) -> None:  # fmt: skip
    """`calibrate --group G`: one progress line per replica, then the spread and the fit."""
    from ofa2_edge.calibration.group import calibrate_group
    from ofa2_edge.surrogates.select import format_report

    replicas = load_inventory(ctx).group(group)
    protocol = make_protocol(threads or replicas[0].threads, timer, quick)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed} measured"),
        TimeElapsedColumn(), TextColumn("{task.fields[last]}"), console=err_console,
    ) as bar:  # fmt: skip
        tasks = {d.key: bar.add_task(f"{group}/{d.key}", total=None, last="connecting") for d in replicas}

        def on_event(event: str, info: dict[str, Any]) -> None:
            if event == "group":
                done = info["design"] - info["todo"] - info["anchors"]
                if done > 0:
                    err_console.print(f"{group}: {done} of {info['design']} already measured (resuming)")
            elif event == "replica":
                text = info["state"] if info["state"] != "dropped" else f"dropped ({info['handed_back']} handed back)"
                bar.update(tasks[info["key"]], last=text)
            elif event == "result":
                bar.update(tasks[info["key"]], advance=1, last=_record_label(info["record"]))

        summary = calibrate_group(
            group, replicas, state(ctx).workspace, budget or DEFAULT_BUDGET, protocol, fmt=fmt,
            space=SearchSpace(resolutions=parse_ints(resolutions, "--resolutions")), seed=seed, anchors=anchors,
            trust_on_first_use=trust_on_first_use, progress=on_event, accept_env_change=accept_env_change,
        )  # fmt: skip
    if as_json:
        emit_json(summary)
    else:
        for r in summary["replicas"]:
            off = "-" if r.get("offset") is None else f"{r['offset_pct']:+.1f} % ({r['anchors']} anchors, " \
                f"{100 * (r['interval'][0] - 1):+.1f}..{100 * (r['interval'][1] - 1):+.1f} %)"
            state_text = "unreachable" if not r["reached"] else ("dropped" if r["dropped"] else "ok")
            err_console.print(f"{group}/{r['key']}: {state_text}, {r['measured_now']} measured now, offset {off}",
                              highlight=False)  # fmt: skip
        for machine in summary.get("timed_one_at_a_time", []):
            err_console.print(f"{group}: {', '.join(machine)} share CPUs of one machine: timed one at a time", highlight=False)
        err_console.print(
            f"{group}: {summary['measured_now']} measured now, {summary['already_measured']} already in the table, "
            f"{len(summary['retried'])} retried on another replica, {len(summary['not_measured'])} not reached; "
            f"part-to-part spread {summary['spread_pct']:.1f} %",
            highlight=False,
        )
        if summary["fit"].get("held_out"):
            out_console.print(format_report(summary["fit"]), highlight=False, markup=False)
        out_console.print(f"table: {summary['table']}")
    if summary["not_measured"]:
        raise typer.Exit(EXIT_UNREACHABLE)
    if summary["failed_now"]:
        raise typer.Exit(EXIT_MEASUREMENT)


def _print_calibration(summary: dict[str, Any]) -> None:
    from ofa2_edge.surrogates.select import format_report

    device = summary["device"]
    b = summary["blocks"]
    if b is not None:
        err_console.print(
            f"{device} block tables: {b['measured_now']} layers measured now, {b['already_measured']} already in the "
            f"table, {len(b['failed'])} failed, {len(b['not_measured'])} not reached; "
            f"tables for {', '.join(b['tables']) or 'no resolution'}"
        )
        cmp = b.get("lut_vs_end_to_end")
        if cmp:
            out_console.print(
                f"LUT sum alone vs {cmp['n']} end-to-end measurements: within +-10% {cmp['share_within_10pct']:.1%}, "
                f"MAPE {cmp['mape_pct']:.1f}%, Spearman {cmp['spearman']:.3f}, "
                f"LUT/measured {cmp['mean_ratio_lut_to_measured']:.2f}x",
                highlight=False,
            )
    if "design" in summary:
        err_console.print(
            f"{device}: {summary['measured_now']} subnets measured now, {summary['already_measured']} already in "
            f"the table, {len(summary['failed'])} failed, {len(summary['not_measured'])} not reached"
        )
    report = summary["fit"]
    if summary.get("refitted") is False:
        err_console.print(
            f"{device}: nothing new measured; the saved predictor is kept (`ofa2-edge fit --device {device}` refits it "
            "on every record, bundle verifications included)",
            highlight=False,
        )
    if report.get("held_out"):
        out_console.print(format_report(report), highlight=False, markup=False)
    elif report:
        out_console.print(f"predictor: {report.get('name')} ({report.get('note', '')})", highlight=False, markup=False)
    else:
        out_console.print("no predictor: no complete block table and no end-to-end measurements", highlight=False)
    out_console.print(f"table: {summary['table']}")
    _print_quality(summary.get("quality"))


def _print_quality(quality: Optional[dict[str, Any]]) -> None:
    """The predictor's verdict: one line when good, problems, causes and fixes when not."""
    if not quality:
        return
    if quality["good"]:
        err_console.print(f"{quality['device']}: predictor quality ok", highlight=False)
        return
    err_console.print(f"[bold yellow]warning:[/] {quality['device']}: the predictor is NOT good enough to trust: "
                      + "; ".join(quality["problems"]), highlight=False)  # fmt: skip
    for cause in quality["causes"]:
        err_console.print(f"  cause: {cause}", highlight=False, markup=False)
    for fix in quality["fixes"]:
        err_console.print(f"  fix: {fix}", highlight=False, markup=False)


def fit(
    ctx: typer.Context,
    device_key: str = typer.Option(..., "--device", "-d"),
    prior: Optional[str] = typer.Option(
        None, "--prior", help="Another device's key: few-shot transfer from its predictor (latency only)."
    ),
    width: float = typer.Option(1.2, "--width", help="Width multiplier of the measured subnets."),
    quantity: str = typer.Option(
        "latency", "--quantity", "-q", help="What to fit a predictor of: latency, or energy / memory where the "
        "device's records report them (search objective <quantity>:<device>).",
    ),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit (again) a device's predictor from its table, choosing the kind by cross-validation."""
    from ofa2_edge.calibration.calibrate import fit_table
    from ofa2_edge.surrogates.select import format_report
    from ofa2_edge.tables.device import DeviceTable
    from ofa2_edge.tables.quality import assess
    from ofa2_edge.tables.quantities import quantity as known

    known(quantity)  # an unknown quantity is refused before the table is read
    table = DeviceTable.of(state(ctx).workspace, device_key)
    if not table.exists():
        require_known_device(ctx, device_key)  # a typo is named as one, with the closest known key
        raise InvalidInputError(f"no latency table for {device_key}; run `ofa2-edge calibrate --device {device_key}`")
    if prior and quantity != "latency":
        raise InvalidInputError(f"--prior transfers a latency predictor; it does not apply to --quantity {quantity}")
    with table.lock():
        model, report = fit_table(table, width, _prior(ctx, prior), prior or "", seed, quantity=quantity)
    quality = assess(table, model).to_dict() if quantity == "latency" else None
    if as_json:
        emit_json({**report, "quality": quality} if quality else report)
    else:
        out_console.print(format_report(report), highlight=False, markup=False)
        err_console.print(f"saved {table.predictor_path(quantity)}")
        _print_quality(quality)


def predict(
    ctx: typer.Context,
    archs: List[str] = typer.Argument(..., help="Archs: ids, JSON files, inline JSON, min, max, min@R, max@R."),
    device_key: str = typer.Option(..., "--device", "-d"),
    coverage: float = typer.Option(0.8, "--coverage", min=0.01, max=0.99, help="Coverage of the prediction interval."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Predicted latency of subnets on a device, with a prediction interval."""
    from ofa2_edge.workflows.predict import predict_latency

    st = state(ctx)
    require_known_device(ctx, device_key)
    resolved = [resolve_arch(a, st.workspace) for a in archs]
    prediction = predict_latency(st.workspace, device_key, resolved, coverage)
    for warning in prediction.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if as_json:
        emit_json(prediction.to_dict())
        return
    model, rows = prediction.model, prediction.rows
    table = Table(title=f"{device_key} ({model.kind})")
    table.add_column("arch id", no_wrap=True)
    for col in ("r", "latency ms", f"{coverage:.0%} interval"):
        table.add_column(col, justify="right")
    for a, row in zip(resolved, rows, strict=True):
        table.add_row(a.id, str(a.r), f"{row['latency_ms']:.3f}", f"{row['lower_ms']:.3f} - {row['upper_ms']:.3f}")
    out_console.print(table)


# ---------------------------------------------------------------------------- tables
def _existing_table(ctx: typer.Context, key: str) -> Any:
    """Device `key`'s table; unknown: the tables there are and the closest key."""
    from ofa2_edge.core.workspace import unknown_device
    from ofa2_edge.tables.device import DeviceTable

    ws = state(ctx).workspace
    tables = DeviceTable.all(ws.tables_dir)
    for table in tables:
        if table.key == key:
            return table
    raise InvalidInputError(unknown_device(key, [t.key for t in tables], f"no latency table in {ws.tables_dir}"))


@tables_app.command("list")
def tables_list(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Every device table in the workspace, with its predictor's held-out accuracy."""
    from ofa2_edge.tables.device import DeviceTable

    rows = [t.summary() for t in DeviceTable.all(state(ctx).workspace.tables_dir)]
    if as_json:
        emit_json(rows)
        return
    table = Table("device", "runtime", "measured", "failed", "predictor", "+-10% (held out)", "block tables")
    for r in rows:
        s = r["surrogate"] or {}
        within = s.get("within_10pct")
        table.add_row(
            r["key"],
            f"{r['runtime'] or '-'} {r['runtime_version'] or ''}",
            str(r["ok"]),
            str(r["failed"]),
            s.get("kind") or "-",
            "-" if within is None else f"{within:.1%}",
            ",".join(map(str, r["block_tables"])) or "-",
        )
    out_console.print(table)


@tables_app.command("show")
def tables_show(ctx: typer.Context, key: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """One table: the device it belongs to, its measurements and its predictor's report."""
    from ofa2_edge.cli.common import command_name
    from ofa2_edge.surrogates.select import format_report

    table = _existing_table(ctx, key)
    summary = table.summary()
    model = table.surrogate()
    report = model.report if model is not None else None
    if as_json:
        emit_json({**summary, "device": table.device_info(), "report": report})
        return
    s = summary["surrogate"] or {}
    lines = [
        f"table      {table.folder}",
        f"device     {summary['key']} (fingerprint {(summary['fingerprint'] or '-')[:16]})",
        f"runtime    {summary['runtime'] or '-'} {summary['runtime_version'] or ''}",
        f"records    {summary['ok']} measured ({summary['flagged']} flagged), {summary['failed']} failed",
        f"blocks     {summary['block_layers_measured']} layers measured; lookup tables for "
        f"{', '.join(map(str, summary['block_tables'])) or 'no resolution'}",
        f"predictor  {getattr(model, 'name', s.get('kind')) if model is not None else f'none (run `{command_name()} fit --device {key}`)'}",
    ]
    group, verified = (report or {}).get("group"), (report or {}).get("verified")
    if isinstance(group, dict) and isinstance(group.get("spread_log"), (int, float)):
        lines.append(f"replicas   {len(group.get('replicas') or [])}, part-to-part spread {100 * math.expm1(group['spread_log']):.1f} % "
                     "(in the intervals)")  # fmt: skip
    if isinstance(verified, dict):
        shifts = ", ".join(f"{v['shift_pct']:+.1f} %" for v in (verified.get("sessions") or {}).values())
        lines.append(f"verified   {verified.get('residuals')} residuals of front members from {len(verified.get('sessions') or {})} "
                     f"verify session(s) in the intervals (median shifts {shifts or '-'}"
                     + ("; the drift between sessions priced)" if verified.get("prices_drift") else ")"))  # fmt: skip
    out_console.print("\n".join(lines), highlight=False, markup=False)
    if report and report.get("held_out"):
        out_console.print(format_report(report), highlight=False, markup=False)


@tables_app.command("export")
def tables_export(
    ctx: typer.Context,
    key: str = typer.Argument(...),
    output: Path = typer.Option(
        ..., "-o", "--output", help="A .csv (flat, for analysis) or a .tar.gz of the whole table."
    ),
) -> None:
    """Write a table as CSV, or pack it (to bring it back from the field)."""
    from ofa2_edge.tables.transfer import export_table

    export_table(_existing_table(ctx, key), output)
    err_console.print(f"wrote {output}")


@tables_app.command("import")
def tables_import(
    ctx: typer.Context,
    source: Path = typer.Argument(
        ...,
        help="A table .tar.gz (from `tables export`), a folder of OFA <r>_lookup_table.yaml files, or a .csv of "
        "external measurements (columns arch = the arch's JSON, latency_ms).",
    ),
    key: Optional[str] = typer.Option(
        None, "--key", help="Device key to import as (required for OFA lookup tables and CSV measurements)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing table of that key."),
    prior: Optional[str] = typer.Option(
        None, "--prior", help="CSV only: another device's key, for few-shot transfer from its predictor."
    ),
    seed: int = typer.Option(0, "--seed", help="CSV only: seed of the predictor's cross-validation."),
) -> None:
    """Import a packed table, an OFA-format block lookup table (e.g. OFA's Samsung Note10
    tables), or external measurements (a CSV of arch, latency_ms for one device: it becomes
    the device's table and its predictor is fitted, ready for `search --objectives
    top1,latency:KEY`)."""
    from ofa2_edge.tables.transfer import import_lookup_tables, import_measurements_csv, import_table

    workspace = state(ctx).workspace
    if source.suffix.lower() == ".csv":
        if key is None:
            raise InvalidInputError("importing measurements from a CSV needs --key (the device's key, e.g. --key jetson-a)")
        info = import_measurements_csv(workspace, source, key, replace, _prior(ctx, prior), prior or "", seed)
        held = info["held_out"]
        within = held.get("share_within_10pct")
        err_console.print(
            f"imported {info['archs']} measured archs as latency_tables/{key}; predictor {info['kind']}"
            + ("" if within is None else f", {within:.0%} of held-out archs within 10 %")
            + f"; search with --objectives top1,latency:{key}",
            highlight=False,
            markup=False,
        )
        return
    if prior is not None:
        raise InvalidInputError("--prior applies to a CSV of measurements only")
    if source.is_dir():
        if key is None:
            raise InvalidInputError("importing OFA lookup tables needs --key (e.g. --key note10)")
        info = import_lookup_tables(workspace, source, key, replace)
        err_console.print(
            f"imported {info['tables']} lookup table(s) as {key} (LUT-sum predictor, w{info['width_mult']})"
        )
        return
    table = import_table(workspace, source, key, replace)
    count = sum(1 for _ in table.records())
    err_console.print(f"imported latency_tables/{table.key} ({count} records)")
