"""Entry point: the root Typer app, global options, and error-to-exit-code mapping."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.logging import RichHandler
from rich.text import Text

from ofa2_edge import __version__
from ofa2_edge.cli import arch, assets, deploy, devices, export, import_log, latency, measure, run, runs, verify
from ofa2_edge.cli import dashboard as dashboard_cli
from ofa2_edge.cli import ensemble as ensemble_cli
from ofa2_edge.cli import evaluate as evaluate_cli
from ofa2_edge.cli import search as search_cli
from ofa2_edge.cli import train as train_cli
from ofa2_edge.cli.common import CliState, err_console, with_command_name
from ofa2_edge.core.errors import EXIT_FAILURE, Ofa2EdgeError
from ofa2_edge.core.workspace import Workspace

app = typer.Typer(
    name="ofa2-edge",
    help="Put the best Once-for-All subnet on your device: measure, fit, search, ship.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.add_typer(arch.app, name="arch")
app.add_typer(assets.app, name="assets")
app.add_typer(devices.app, name="devices")
app.command(name="export")(export.export)
app.command(name="measure")(measure.measure)
app.command(name="calibrate")(latency.calibrate)
app.command(name="fit")(latency.fit)
app.command(name="predict")(latency.predict)
latency.tables_app.command("import-log")(import_log.import_log)
app.add_typer(latency.tables_app, name="tables")
app.command("search")(search_cli.search)
app.command("fit-accuracy")(search_cli.fit_accuracy)
app.command("evaluate")(evaluate_cli.evaluate)
app.command("ensemble")(ensemble_cli.ensemble)
app.add_typer(runs.app, name="runs")
app.command("select")(deploy.select)
app.command("run")(run.run)
app.command("demo", help="Alias of `run`: the main job.")(run.run)
app.add_typer(deploy.bundle_app, name="bundle")
app.command("dashboard")(dashboard_cli.dashboard)
app.command("train")(train_cli.train)
app.command("verify")(verify.verify)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ofa2-edge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: Optional[Path] = typer.Option(
        None, "--workspace", "-W", help="Workspace folder (default: $OFA2_EDGE_HOME or the current directory)."
    ),
    assets: Optional[Path] = typer.Option(
        None, "--assets", help="Folder with the official OFA assets (else $OFA2_EDGE_ASSETS, else the user cache)."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output on stderr (-vv for debug)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)], force=True
    )
    ctx.obj = CliState(workspace=Workspace.resolve(workspace), assets_dir=assets)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map toolkit errors to stable exit codes instead of tracebacks.

    Usage errors are reported by Typer itself (exit 2); anything else that escapes is a bug
    and keeps its traceback.
    """
    command = typer.main.get_command(app)
    try:
        command(args=argv, prog_name="ofa2-edge")
    except Ofa2EdgeError as exc:
        message = with_command_name(str(exc))  # its hints name a command that works here
        err_console.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILURE)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
