"""`ofa2-edge tables import-log`: a vendor tool's log (trtexec, benchmark_model,
onnxruntime_perf_test) into a table, apart from the agent's records."""

from __future__ import annotations

from pathlib import Path

import typer

from ofa2_edge.cli.common import JSON_OPTION, emit_json, err_console, out_console, state
from ofa2_edge.space.archref import resolve_arch


def import_log(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="The tool's output, as saved or pasted (log prefixes are ignored)."),
    device_key: str = typer.Option(..., "--device", "-d", help="The table (device key) the log belongs to."),
    arch: str = typer.Option(..., "--arch", help="The subnet the tool measured: an id, JSON file, inline JSON, min@R, max@R."),
    tool: str = typer.Option("auto", "--tool", help="auto, trtexec, benchmark_model or onnxruntime_perf_test."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Parse a trtexec / benchmark_model / onnxruntime_perf_test log and keep its latency in
    latency_tables/<device>/imported.jsonl with the tool, version and settings (never fitted on)."""
    from ofa2_edge.tables.device import DeviceTable
    from ofa2_edge.tables.imported import import_log as do_import

    ws = state(ctx).workspace
    table = DeviceTable.of(ws, device_key)
    resolved = resolve_arch(arch, ws)
    row, added = do_import(table, resolved, file, tool)
    predicted = None
    model = table.surrogate() if table.exists() else None
    if model is not None and model.width_mult == resolved.w:
        predicted = float(model.predict([resolved])[0])
    if as_json:
        emit_json({**row, "added": added, "predicted_ms": predicted})
        return
    what = "imported" if added else "already imported (not added again)"
    err_console.print(f"{file.name}: {what} into latency_tables/{device_key}/imported.jsonl", highlight=False)
    version = f" {row['tool_version']}" if row.get("tool_version") else ""
    line = f"{row['arch_id']}: {row['tool']}{version} {row['statistic']} {row['latency_ms']:.3f} ms"
    if predicted is not None:
        line += f"; the predictor says {predicted:.3f} ms ({100 * (predicted / row['latency_ms'] - 1):+.1f} %)"
    out_console.print(line, highlight=False)
