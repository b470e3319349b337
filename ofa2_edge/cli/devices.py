"""`ofa2-edge devices`: the inventory of boards a team measures on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ofa2_edge.cli.common import JSON_OPTION, emit_json, err_console, out_console, state
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import unknown_device
from ofa2_edge.devices.inventory import LOCAL_KEY, Device, Inventory

app = typer.Typer(help="Add, list, remove and probe devices.", no_args_is_help=True)


def load_inventory(ctx: typer.Context) -> Inventory:
    return Inventory.load(state(ctx).workspace.inventory_path)


def require_known_device(ctx: typer.Context, key: str) -> None:
    """Refuse a device key with neither a latency table nor an entry in devices.yaml (a typo,
    most often), naming the known ones and the closest before suggesting a new board."""
    from ofa2_edge.tables.device import DeviceTable

    ws = state(ctx).workspace
    tables = {t.key for t in DeviceTable.all(ws.tables_dir)}
    if key in tables:
        return
    devices = {d.key for d in load_inventory(ctx).all()}
    if key not in devices:
        raise InvalidInputError(unknown_device(key, tables | devices, "not in devices.yaml, no latency table"))


@app.command()
def add(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="A short name, e.g. rpi4-livingroom."),
    host: Optional[str] = typer.Option(None, "--host", help="Hostname or IP (makes it an SSH device)."),
    port: int = typer.Option(22, "--port"),
    user: Optional[str] = typer.Option(None, "--user"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="Private key for SSH authentication."),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."),
    runtime: str = typer.Option("onnxruntime", "--runtime", help="onnxruntime, litert or tensorrt."),
    threads: int = typer.Option(1, "--threads", min=1),
    work_dir: Optional[str] = typer.Option(None, "--work-dir", help="Device-side folder for the agent and models."),
    python: str = typer.Option("python3", "--python", help="The device's Python 3.8+ interpreter."),
    group: Optional[str] = typer.Option(
        None, "--group", help="A group of identical boards (replicas): `calibrate --group G` spreads over them."
    ),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing entry."),
) -> None:
    """Add a device to devices.yaml (an SSH device when --host is given)."""
    if key == LOCAL_KEY and host:
        raise InvalidInputError("'local' is this machine; give an SSH device another key")
    inv = load_inventory(ctx)
    device = Device(
        key=key, transport="ssh" if host else "local", host=host, port=port, user=user,
        key_file=str(key_file) if key_file else None, known_hosts=str(known_hosts) if known_hosts else None,
        runtime=runtime, threads=threads, work_dir=work_dir, python=python, group=group,
    )
    inv.add(device, replace_existing=replace)
    inv.save()
    err_console.print(f"added {key} to {inv.path}")


@app.command("list")
def list_devices(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List devices (the embedded `local` device is always there)."""
    devices = load_inventory(ctx).all()
    if as_json:
        emit_json([d.to_dict() | {"transport": d.transport, "runtime": d.runtime} for d in devices])
        return
    table = Table("key", "group", "transport", "address", "runtime", "threads")
    for d in devices:
        address = f"{d.user + '@' if d.user else ''}{d.host}:{d.port}" if d.transport == "ssh" else "this machine"
        table.add_row(d.key, d.group or "-", d.transport, address, d.runtime, str(d.threads))
    out_console.print(table)


@app.command()
def remove(ctx: typer.Context, key: str = typer.Argument(...)) -> None:
    """Remove a device from devices.yaml (its latency tables stay)."""
    inv = load_inventory(ctx)
    inv.remove(key)
    inv.save()
    err_console.print(f"removed {key} from {inv.path}")
