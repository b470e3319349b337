"""`ofa2-edge calibrate | fit | predict | tables`: a device's latency table and its predictor."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ofa2_edge.cli.common import (
    JSON_OPTION,
    QUICK_OPTION,
    TIMER_OPTION,
    TOFU_OPTION,
    emit_json,
    err_console,
    make_protocol,
    out_console,
    state,
)
from ofa2_edge.cli.devices import load_inventory
from ofa2_edge.core.errors import EXIT_MEASUREMENT, EXIT_UNREACHABLE, InvalidInputError
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS, SearchSpace
from ofa2_edge.space.archref import resolve_arch

tables_app = typer.Typer(help="List, show, export and import latency tables.", no_args_is_help=True)


def parse_resolutions(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise InvalidInputError(f"--resolutions: expected comma-separated integers, got {text!r}") from exc


def _prior(ctx: typer.Context, key: Optional[str]) -> Any:
    if key is None:
        return None
    from ofa2_edge.calibration.calibrate import load_device_surrogate

    return load_device_surrogate(state(ctx).workspace, key)


DEFAULT_BUDGET = 60


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
    trust_on_first_use: bool = TOFU_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure a space-filling set of subnets (and/or, with --blocks, every layer shape) on a device,
    resumably, then fit its latency predictor."""
    from ofa2_edge.calibration.calibrate import calibrate as run_calibration

    st = state(ctx)
    device = load_inventory(ctx).get(device_key)
    protocol = make_protocol(threads or device.threads, timer, quick)
    space = SearchSpace(resolutions=parse_resolutions(resolutions))
    budget = budget if budget is not None else (0 if blocks else DEFAULT_BUDGET)
    if budget == 0 and not blocks:
        raise InvalidInputError("--budget 0 measures nothing; give a budget, or --blocks for the block tables")
    block_summary: Optional[dict[str, Any]] = None
    e2e_summary: Optional[dict[str, Any]] = None
    report: dict[str, Any] = {}
    incomplete = False
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

        if blocks:
            block_summary, incomplete = _run_blocks(
                ctx, device, protocol, fmt, space, reuse_table, trust_on_first_use, on_event
            )
        if budget > 0:
            result = run_calibration(
                device,
                st.workspace,
                budget,
                protocol,
                fmt=fmt,
                space=space,
                seed=seed,
                adaptive_rounds=adaptive_rounds,
                reuse_table=reuse_table,
                trust_on_first_use=trust_on_first_use,
                prior=_prior(ctx, prior),
                prior_label=prior or "",
                progress=on_event,
            )
            report = result.report
            incomplete = incomplete or bool(result.not_measured)
            e2e_summary = {
                "design": len(result.design),
                "measured_now": len(result.measured) - len(result.failed),
                "failed": [
                    {"arch_id": r.arch_id, "error": r.error_kind.value, "message": r.error_msg} for r in result.failed
                ],
                "already_measured": result.skipped,
                "not_measured": [a.id for a in result.not_measured],
                "seconds": result.seconds,
            }
            fingerprint = result.fingerprint
        else:
            from ofa2_edge.calibration.blocks import fit_after_blocks
            from ofa2_edge.tables.device import DeviceTable

            on_event("fit", {})
            table = DeviceTable(st.workspace.tables_dir, device.key)
            with table.lock():
                _, report = fit_after_blocks(table, space.w, _prior(ctx, prior), prior or "", seed)
            fingerprint = block_summary["fingerprint"] if block_summary else None
    if block_summary is not None:
        block_summary["lut_vs_end_to_end"] = _lut_comparison(st, device.key)
    summary = {
        "device": device.key,
        "fingerprint": fingerprint,
        **(e2e_summary or {}),  # the end-to-end figures stay at the top level, as without --blocks
        "table": str(st.workspace.tables_dir / device.key),
        "blocks": block_summary,
        "fit": report,
    }
    if as_json:
        emit_json(summary)
    else:
        _print_calibration(summary)
    unreached = bool((e2e_summary or {}).get("not_measured")) or bool((block_summary or {}).get("not_measured"))
    if unreached:  # the device could not be reached (again): 3, as for any unreachable device
        raise typer.Exit(EXIT_UNREACHABLE)
    if incomplete:
        raise typer.Exit(EXIT_MEASUREMENT)


def _run_blocks(
    ctx: typer.Context,
    device: Any,
    protocol: Any,
    fmt: Optional[str],
    space: SearchSpace,
    reuse_table: bool,
    trust_on_first_use: bool,
    on_event: Any,
) -> tuple[dict[str, Any], bool]:
    from ofa2_edge.calibration.blocks import calibrate_blocks

    res = calibrate_blocks(
        device,
        state(ctx).workspace,
        protocol,
        fmt=fmt,
        space=space,
        reuse_table=reuse_table,
        trust_on_first_use=trust_on_first_use,
        progress=on_event,
    )
    summary = {
        "fingerprint": res.fingerprint,
        "layers": res.layers,
        "measured_now": len(res.measured) - len(res.failed),
        "failed": [
            {"layer": (r.arch or {}).get("layer"), "error": r.error_kind.value, "message": r.error_msg}
            for r in res.failed
        ],
        "already_measured": res.skipped,
        "not_measured": res.not_measured,
        "tables": {str(r): str(p) for r, p in sorted(res.tables.items())},
        "incomplete": {str(r): len(keys) for r, keys in sorted(res.incomplete.items())},
        "seconds": res.seconds,
    }
    return summary, bool(res.incomplete)


def _lut_comparison(st: Any, key: str) -> Optional[dict[str, Any]]:
    from ofa2_edge.calibration.blocks import lut_vs_measured
    from ofa2_edge.calibration.calibrate import device_lut
    from ofa2_edge.tables.device import DeviceTable

    table = DeviceTable(st.workspace.tables_dir, key)
    lut = device_lut(table)
    return lut_vs_measured(table, lut) if lut is not None else None


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
    if report.get("held_out"):
        out_console.print(format_report(report), highlight=False, markup=False)
    elif report:
        out_console.print(f"predictor: {report.get('name')} ({report.get('note', '')})", highlight=False, markup=False)
    else:
        out_console.print("no predictor: no complete block table and no end-to-end measurements", highlight=False)
    out_console.print(f"table: {summary['table']}")


def fit(
    ctx: typer.Context,
    device_key: str = typer.Option(..., "--device", "-d"),
    prior: Optional[str] = typer.Option(
        None, "--prior", help="Another device's key: few-shot transfer from its predictor."
    ),
    width: float = typer.Option(1.2, "--width", help="Width multiplier of the measured subnets."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit (again) a device's latency predictor from its table, choosing the kind by cross-validation."""
    from ofa2_edge.calibration.calibrate import fit_table
    from ofa2_edge.surrogates.select import format_report
    from ofa2_edge.tables.device import DeviceTable

    table = DeviceTable(state(ctx).workspace.tables_dir, device_key)
    if not table.exists():
        raise InvalidInputError(f"no latency table for {device_key}; run `ofa2-edge calibrate --device {device_key}`")
    with table.lock():
        _, report = fit_table(table, width, _prior(ctx, prior), prior or "", seed)
    if as_json:
        emit_json(report)
    else:
        out_console.print(format_report(report), highlight=False, markup=False)
        err_console.print(f"saved {table.surrogate_path}")


def _calibrated_resolutions(workspace: Any, key: str, model: Any) -> set[int]:
    """The resolutions `key`'s table holds measurements or block tables of."""
    from ofa2_edge.core.errors import Ofa2EdgeError
    from ofa2_edge.tables.device import DeviceTable

    table = DeviceTable(workspace.tables_dir, key)
    found = {int(r) for r in getattr(model, "resolutions", ())}
    found |= {int(p.name.split("_")[0]) for p in table.folder.glob("*_lookup_table.yaml") if p.name.split("_")[0].isdigit()}
    try:
        for record in table.records():
            r = (record.arch or {}).get("r") if record.ok else None
            if isinstance(r, int) and not isinstance(r, bool):
                found.add(r)
    except Ofa2EdgeError:  # a damaged table is reported by the commands that read it; predict needs the predictor
        pass
    return found


def _check_resolutions(workspace: Any, key: str, model: Any, archs: list[Any]) -> None:
    """Refuse a resolution outside the space (OFA's trained resolutions and the table's);
    warn on stderr about one the table was not calibrated on (the prediction extrapolates)."""
    from ofa2_edge.core.errors import InvalidArchError
    from ofa2_edge.space.arch import OFA_RESOLUTIONS

    calibrated = _calibrated_resolutions(workspace, key, model)
    known = set(OFA_RESOLUTIONS) | calibrated
    low, high = min(known), max(known)
    listed = ", ".join(map(str, sorted(calibrated))) or "none"
    for r in sorted({a.r for a in archs}):
        if not low <= r <= high:
            raise InvalidArchError(
                f"r: resolution {r} px is outside the space a latency can be predicted for ({low}..{high} px: OFA's "
                f"trained resolutions {OFA_RESOLUTIONS[0]}..{OFA_RESOLUTIONS[-1]} and those latency_tables/{key} was "
                f"calibrated on: {listed}); calibrate at {r} px first (`ofa2-edge calibrate --resolutions {r}`)"
            )
        if r not in calibrated:
            inside = bool(calibrated) and min(calibrated) < r < max(calibrated)
            err_console.print(
                f"[yellow]warning:[/] {r} px is not among the resolutions latency_tables/{key} was calibrated on "
                f"({listed}); the prediction {'interpolates between' if inside else 'extrapolates beyond'} them",
                highlight=False,
            )


def predict(
    ctx: typer.Context,
    archs: List[str] = typer.Argument(..., help="Archs: ids, JSON files, inline JSON, min, max, min@R, max@R."),
    device_key: str = typer.Option(..., "--device", "-d"),
    coverage: float = typer.Option(0.8, "--coverage", min=0.01, max=0.99, help="Coverage of the prediction interval."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Predicted latency of subnets on a device, with a prediction interval."""
    from ofa2_edge.calibration.calibrate import load_device_surrogate

    st = state(ctx)
    model = load_device_surrogate(st.workspace, device_key)
    resolved = [resolve_arch(a, st.workspace) for a in archs]
    _check_resolutions(st.workspace, device_key, model, resolved)
    mean = model.predict(resolved)
    lo, hi = model.predict_interval(resolved, coverage)
    rows = [
        {"arch_id": a.id, "arch": a.to_dict(), "latency_ms": float(m), "lower_ms": float(lo_), "upper_ms": float(hi_)}
        for a, m, lo_, hi_ in zip(resolved, mean, lo, hi, strict=True)
    ]
    if as_json:
        emit_json({"device": device_key, "surrogate": model.kind, "coverage": coverage, "predictions": rows})
        return
    table = Table(title=f"{device_key} ({model.kind})")
    table.add_column("arch id", no_wrap=True)
    for col in ("r", "latency ms", f"{coverage:.0%} interval"):
        table.add_column(col, justify="right")
    for a, row in zip(resolved, rows, strict=True):
        table.add_row(a.id, str(a.r), f"{row['latency_ms']:.3f}", f"{row['lower_ms']:.3f} - {row['upper_ms']:.3f}")
    out_console.print(table)


# ---------------------------------------------------------------------------- tables
def _table_summary(folder: Path) -> dict[str, Any]:
    from ofa2_edge.tables.device import DeviceTable

    table = DeviceTable(folder.parent, folder.name)
    info = table.device_info() or {}
    ok = failed = flagged = 0
    for r in table.records():
        ok += r.ok
        failed += not r.ok
        flagged += bool(r.ok and r.flags)
    surrogate = None
    model = table.surrogate()  # validated by the table, its owner
    if model is not None:
        held = model.report.get("held_out") or {}
        surrogate = {
            "kind": model.kind,
            "within_10pct": held.get("share_within_10pct"),
            "mape_pct": held.get("mape_pct"),
        }
    luts = sorted(int(p.name.split("_")[0]) for p in folder.glob("*_lookup_table.yaml"))
    block_layers = len({r.arch_id for r in table.block_records() if r.ok})
    return {
        "key": folder.name,
        "fingerprint": info.get("fingerprint"),
        "runtime": info.get("runtime"),
        "runtime_version": info.get("runtime_version"),
        "ok": ok,
        "failed": failed,
        "flagged": flagged,
        "surrogate": surrogate,
        "block_tables": luts,
        "block_layers_measured": block_layers,
    }


@tables_app.command("list")
def tables_list(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Every device table in the workspace, with its predictor's held-out accuracy."""
    root = state(ctx).workspace.tables_dir
    rows = [_table_summary(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
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
    from ofa2_edge.surrogates.select import format_report
    from ofa2_edge.tables.device import DeviceTable

    table = DeviceTable(state(ctx).workspace.tables_dir, key)
    if not table.exists():
        raise InvalidInputError(f"no latency table for {key}")
    summary = _table_summary(table.folder)
    model = table.surrogate()
    report = model.report if model is not None else None
    if as_json:
        emit_json({**summary, "device": table.device_info(), "report": report})
        return
    out_console.print(summary)
    if report and report.get("held_out"):
        out_console.print(format_report(report), highlight=False, markup=False)


MEASUREMENT_COLUMNS = (
    "arch_id",
    "arch",
    "r",
    "runtime",
    "runtime_version",
    "estimate_ms",
    "median_ms",
    "min_ms",
    "p90_ms",
    "cv",
    "flags",
    "error",
    "device_fingerprint",
    "finished_at",
)


#: The files a latency table holds (`tables export` packs exactly these; `tables import`
#: refuses an archive with anything else before a byte is written).
TABLE_FILE = r"^(device\.json|measurements\.jsonl|surrogate\.json|blocks\.jsonl|\d{2,4}_lookup_table\.yaml)$"


def _is_table_file(name: str) -> bool:
    import re

    return re.match(TABLE_FILE, name) is not None


def _table_file_names(where: str, names: list[str], read: Any = None) -> None:
    """The archive check of a table: only the table's known files, no folders."""
    from ofa2_edge.core.errors import SchemaError

    extra = sorted(n for n in names if not _is_table_file(n))
    if extra:
        raise SchemaError(
            f"{where}: {', '.join(repr(n) for n in extra[:5])} is not a latency table file "
            "(device.json, measurements.jsonl, surrogate.json, blocks.jsonl, <r>_lookup_table.yaml); refusing it"
        )


def _validate_table_folder(folder: Path) -> None:
    """Read back everything a table holds, as its owners do; raise on the first bad file."""
    from ofa2_edge.surrogates.base import load_surrogate
    from ofa2_edge.surrogates.lut import read_ofa_tables
    from ofa2_edge.tables.device import DeviceTable

    incoming = DeviceTable(folder.parent, folder.name)
    incoming.device_info()
    sum(1 for _ in incoming.records())
    sum(1 for _ in incoming.block_records())
    if any(folder.glob("*_lookup_table.yaml")):
        read_ofa_tables(folder)
    if incoming.surrogate_path.exists():
        load_surrogate(incoming.surrogate_path)


@tables_app.command("export")
def tables_export(
    ctx: typer.Context,
    key: str = typer.Argument(...),
    output: Path = typer.Option(
        ..., "-o", "--output", help="A .csv (flat, for analysis) or a .tar.gz of the whole table."
    ),
) -> None:
    """Write a table as CSV, or pack it (to bring it back from the field)."""
    from ofa2_edge.core.persist import atomic_write_text
    from ofa2_edge.core.tarsafe import pack_folder
    from ofa2_edge.tables.device import DeviceTable

    table = DeviceTable(state(ctx).workspace.tables_dir, key)
    if not table.exists():
        raise InvalidInputError(f"no latency table for {key}")
    if output.name.endswith(".tar.gz"):
        # Pack exactly the table's files, as plain files (a linked device.json would arrive as a
        # link the receiver refuses), after the checks the receiver runs: what leaves imports.
        names = sorted(p.name for p in table.folder.iterdir() if _is_table_file(p.name) and p.is_file())
        _validate_table_folder(table.folder)
        pack_folder(table.folder, output, arcname=key, names=names)
    elif output.suffix == ".csv":
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(MEASUREMENT_COLUMNS)
        for r in table.records():
            s = r.stats
            writer.writerow(
                [
                    r.arch_id,
                    json.dumps(r.arch, separators=(",", ":")),
                    (r.arch or {}).get("r"),
                    r.runtime,
                    r.runtime_version,
                    s and s.estimate_ms,
                    s and s.median_ms,
                    s and s.min_ms,
                    s and s.p90_ms,
                    s and s.cv,
                    ";".join(f.value for f in r.flags),
                    r.error_kind.value if r.error_kind else "",
                    r.device_fingerprint,
                    r.finished_at,
                ]
            )
        atomic_write_text(output, buf.getvalue())
    else:
        raise InvalidInputError(f"--output {output}: use a .csv or a .tar.gz name")
    err_console.print(f"wrote {output}")


def _archive_top(source: Path) -> str:
    """The table key a packed table unpacks to (its single top-level folder)."""
    import tarfile

    from ofa2_edge.core.errors import SchemaError
    from ofa2_edge.core.tarsafe import check_members

    try:
        with tarfile.open(source, "r:gz") as tar:
            return check_members(tar, str(source))
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise SchemaError(f"{source}: not a readable .tar.gz ({type(exc).__name__}: {exc})") from exc


@tables_app.command("import")
def tables_import(
    ctx: typer.Context,
    source: Path = typer.Argument(
        ..., help="A table .tar.gz (from `tables export`), or a folder of OFA <r>_lookup_table.yaml files."
    ),
    key: Optional[str] = typer.Option(None, "--key", help="Device key to import as (required for OFA lookup tables)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing table of that key."),
) -> None:
    """Import a packed table, or an OFA-format block lookup table (e.g. OFA's Samsung Note10 tables)."""
    from ofa2_edge.core.tarsafe import unpack_folder
    from ofa2_edge.surrogates.lut import LutSurrogate, read_ofa_tables, write_ofa_table
    from ofa2_edge.tables.device import DeviceTable

    root = state(ctx).workspace.tables_dir
    if source.is_dir():
        if key is None:
            raise InvalidInputError("importing OFA lookup tables needs --key (e.g. --key note10)")
        tables = read_ofa_tables(source)  # validates every file before anything is written
        lut = LutSurrogate(tables)
        table = DeviceTable(root, key)
        with table.lock():
            if table.exists() and not replace:
                raise InvalidInputError(f"latency_tables/{key} exists; pass --replace to overwrite it")
            for r, entries in tables.items():
                write_ofa_table(table.folder / f"{r}_lookup_table.yaml", entries)
            lut.report = {"source": f"OFA lookup tables imported from {source}", "resolutions": list(tables)}
            lut.save(table.surrogate_path, device=key)
        err_console.print(f"imported {len(tables)} lookup table(s) as {key} (LUT-sum predictor, w{lut.width_mult})")
        return
    if not source.name.endswith(".tar.gz") or not source.is_file():
        raise InvalidInputError(f"{source}: expected a table .tar.gz or a folder of OFA lookup tables")
    # Every name is checked against the table's known files and every size against the
    # archive limits before a byte is written; every record and table must read back
    # before the table lands, under the table's writer lock.
    with DeviceTable(root, key or _archive_top(source)).lock():
        imported = unpack_folder(
            source, root, rename_to=key, replace=replace, validate=_validate_table_folder, check_names=_table_file_names
        )
    count = sum(1 for _ in DeviceTable(root, imported).records())
    err_console.print(f"imported latency_tables/{imported} ({count} records)")
