"""What every command shares: the workspace, the stderr console, JSON output on stdout."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ofa2_edge.core.errors import InvalidInputError
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


def command_name() -> str:
    """How the user can call this CLI again, for the hints we print (`ofa2-edge ...`).

    `ofa2-edge` when that name on $PATH is the running executable; else the executable's
    path (relative to the current folder when inside it, e.g. `.venv/bin/ofa2-edge` after
    `make run`), or `PYTHON -m ofa2_edge` when run that way with no script beside Python.
    Embedded in another program (tests, a notebook), the plain name.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0:
        return "ofa2-edge"
    exe = Path(argv0)
    if exe.name == "__main__.py" and exe.parent.name == "ofa2_edge":  # python -m ofa2_edge
        exe = Path(sys.executable).parent / "ofa2-edge"
        if not exe.is_file():
            return f"{_short_path(Path(sys.executable))} -m ofa2_edge"
    elif exe.name != "ofa2-edge":
        return "ofa2-edge"
    found = shutil.which("ofa2-edge")
    if found and os.path.realpath(found) == os.path.realpath(exe):
        return "ofa2-edge"
    return _short_path(exe)


def _short_path(path: Path) -> str:
    full, cwd = Path(os.path.abspath(path)), Path.cwd()
    inside = full.is_relative_to(cwd) and cwd != Path(cwd.anchor)
    text = str(full.relative_to(cwd)) if inside else str(full)
    if os.sep not in text:  # a bare name would be looked up on $PATH, not here
        text = os.path.join(".", text)
    return shlex.quote(text)


def with_command_name(text: str) -> str:
    """`text` with every quoted hint "`ofa2-edge ..." naming a command that works here."""
    name = command_name()
    return text if name == "ofa2-edge" else text.replace("`ofa2-edge ", f"`{name} ")


def emit_json(doc: Any) -> None:
    """Write `doc` as JSON to stdout (the only thing --json writes there)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


TIMER_OPTION = typer.Option(
    "wall", "--timer",
    help="wall: the wall clock (real latency on a dedicated board); thread_cpu: the runtime thread's CPU "
    "time (1 thread only; immune to other processes on a shared host).",
)
ALLOW_EMULATED_OPTION = typer.Option(
    False,
    "--allow-emulated",
    help="Accept latency tables measured under emulation (qemu-user boards): their timings are not the board's.",
)
QUICK_OPTION = typer.Option(False, "--quick", help="A short protocol (3 blocks of 5 runs) for smoke tests.")
TOFU_OPTION = typer.Option(
    False, "--trust-on-first-use", help="Accept and record an unknown SSH host key (a changed key is always refused)."
)


def make_protocol(threads: int, timer: str = "wall", quick: bool = False) -> "Protocol":
    """The measurement protocol from CLI options."""
    from ofa2_edge.devices.pipeline import standard_protocol

    return standard_protocol(threads, timer, quick)


def step_progress(title: str, detail: str, as_json: bool) -> Progress:
    """A progress bar on stderr (bar, n/total, `detail` from task fields, elapsed, ETA); gone
    after the run with --json, silent when stderr is not a terminal."""
    return Progress(
        TextColumn(f"[bold]{title}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(detail),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=as_json,
        disable=not err_console.is_terminal,
    )


@overload
def parse_ints(text: str, option: str) -> tuple[int, ...]: ...
@overload
def parse_ints(text: None, option: str) -> None: ...
@overload
def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None: ...
def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """A comma-separated option (`--resolutions 32,40,48`) as integers; None when not given."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidInputError(f"{option}: expected comma-separated integers, e.g. 32,40,48; got {text!r}") from None
    if not values:
        raise InvalidInputError(f"{option}: give at least one value")
    return values
