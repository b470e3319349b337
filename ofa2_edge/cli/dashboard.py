"""`ofa2-edge dashboard RUN -o report.html`: the offline page to choose a trade-off."""

from __future__ import annotations

from pathlib import Path

import typer

from ofa2_edge.cli.common import JSON_OPTION, emit_json, err_console, state
from ofa2_edge.cli.runs import resolve_run


def dashboard(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="Run folder or run id under the workspace's runs/."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="HTML file to write (default: RUN/dashboard.html)."
    ),
    devices: list[str] | None = typer.Option(
        None,
        "--device",
        "-d",
        help="Device to show (repeatable; default: every device of the run). A device the run did not search is "
        "priced now by its fitted predictor.",
    ),
    coverage: float = typer.Option(
        0.8, "--coverage", min=0.01, max=0.99, help="Coverage of the predicted-latency interval."
    ),
    ensemble: Path | None = typer.Option(
        None, "--ensemble", help="An ensemble run (`ofa2-edge ensemble`) to show beside the front (default: RUN-ens when it exists)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """One self-contained HTML page (works offline): the Pareto front per device, latency and
    accuracy sliders that filter the candidates, measured vs predicted latency, hypervolume."""
    from ofa2_edge.deploy.dashboard import write_dashboard

    ws = state(ctx).workspace
    folder = resolve_run(run, ws)
    summary = write_dashboard(folder, output or folder.path / "dashboard.html", ws, devices or (), coverage, ensemble)
    if as_json:
        emit_json(summary)
        return
    for note in summary["notes"]:
        err_console.print(f"note: {note}", highlight=False, markup=False)
    devs = ", ".join(f"{d['key']} ({d['measured_candidates']} measured)" for d in summary["devices"])
    err_console.print(
        f"wrote {summary['output']} ({summary['bytes'] / 1e6:.1f} MB): {summary['candidates']} candidates, devices {devs}",
        highlight=False,
        markup=False,
    )
