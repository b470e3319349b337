"""What every command shares: the workspace, the stderr console, JSON output on stdout."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from ofa2_edge.core.workspace import Workspace

if TYPE_CHECKING:
    from device_agents.records import Protocol

#: Human-facing progress and messages; stdout stays clean for tables and --json.
err_console = Console(stderr=True)
out_console = Console()

JSON_OPTION = typer.Option(False, "--json", help="Print one machine-readable JSON document on stdout.")


@dataclass
class CliState:
    workspace: Workspace
    assets_dir: Path | None = None


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):  # a sub-app invoked on its own, e.g. in tests
        obj = CliState(workspace=Workspace.resolve())
        ctx.find_root().obj = obj
    return obj


def emit_json(doc: Any) -> None:
    """Write `doc` as JSON to stdout (the only thing --json writes there)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


TIMER_OPTION = typer.Option(
    "wall", "--timer",
    help="wall: the wall clock (real latency on a dedicated board); thread_cpu: the runtime thread's CPU "
    "time (1 thread only; immune to other processes on a shared host).",
)
QUICK_OPTION = typer.Option(False, "--quick", help="A short protocol (3 blocks of 5 runs) for smoke tests.")
TOFU_OPTION = typer.Option(
    False, "--trust-on-first-use", help="Accept and record an unknown SSH host key (a changed key is always refused)."
)


def make_protocol(threads: int, timer: str = "wall", quick: bool = False) -> "Protocol":
    """The measurement protocol from CLI options."""
    from ofa2_edge.devices.pipeline import standard_protocol

    return standard_protocol(threads, timer, quick)
