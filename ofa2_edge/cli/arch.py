"""`ofa2-edge arch`: sample, inspect and import subnets of the OFA-MobileNetV3 space."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from ofa2_edge.cli.common import JSON_OPTION, emit_json, out_console, state
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS, Arch, SearchSpace
from ofa2_edge.space.archref import resolve_arch
from ofa2_edge.space.costs import arch_costs, plan_costs
from ofa2_edge.space.ofa_config import load_net_config

app = typer.Typer(help="Sample, inspect and import subnets.", no_args_is_help=True)


def _arch_record(arch: Arch) -> dict:
    return {"arch_id": arch.id, "arch": arch.to_dict(), **arch_costs([arch])[0]}


@app.command()
def sample(
    n: int = typer.Option(5, "--n", min=1, help="How many archs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler (same seed, same archs)."),
    resolutions: str = typer.Option(
        ",".join(map(str, DEFAULT_RESOLUTIONS)), "--resolutions", help="Comma-separated resolutions to draw from."
    ),
    width: float = typer.Option(1.2, "--width", help="Width multiplier of the supernet (1.0 or 1.2)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Draw N archs uniformly from the search space (OFA's sampler)."""
    res = tuple(int(x) for x in resolutions.split(",") if x.strip())
    space = SearchSpace(resolutions=res, w=width)
    archs = space.sample(n, np.random.default_rng(seed))
    records = [_arch_record(a) for a in archs]
    if as_json:
        emit_json(records)
        return
    table = Table("arch id", "r", "depths", "MMACs", "params (M)", "peak mem (MB)")
    for a, rec in zip(archs, records):
        table.add_row(a.id, str(a.r), "-".join(map(str, a.d)), f"{rec['macs_m']:.1f}", f"{rec['params_m']:.2f}", f"{rec['peak_mem_mb']:.2f}")
    out_console.print(table)


def _show(arch: Arch, as_json: bool) -> None:
    record = _arch_record(arch)
    if as_json:
        record["layers"] = [
            {"kind": layer.kind, "slot": layer.slot, "key": layer.lut_key(), "macs": macs, "params": params}
            for layer, macs, params in plan_costs(arch)
        ]
        emit_json(record)
        return
    table = Table(title=f"{arch.id}  r={arch.r}  w={arch.w}  depths={'-'.join(map(str, arch.d))}")
    for col in ("layer", "in", "out", "k", "mid", "stride", "se", "act", "MMACs", "params (K)"):
        table.add_column(col, justify="right" if col not in ("layer", "in", "out") else "left")
    for layer, macs, params in plan_costs(arch):
        name = layer.kind if layer.slot is None else f"block {layer.slot:2d}"
        table.add_row(
            name,
            f"{layer.in_size}x{layer.in_size}x{layer.in_ch}",
            f"{layer.out_size}x{layer.out_size}x{layer.out_ch}",
            str(layer.kernel) if layer.kind in ("Conv", "expanded_conv") else "",
            str(layer.mid_ch) if layer.mid_ch else "",
            str(layer.stride),
            "yes" if layer.se else "",
            "hswish" if layer.hswish else ("relu" if layer.kind in ("expanded_conv",) else ""),
            f"{macs / 1e6:.2f}",
            f"{params / 1e3:.1f}",
        )
    out_console.print(table)
    out_console.print(
        f"total: [bold]{record['macs_m']:.1f} MMACs[/], {record['params_m']:.2f} M params, "
        f"~{record['peak_mem_mb']:.2f} MB peak activations (float32, batch 1)"
    )
    out_console.print(arch.canonical_json(), highlight=False, soft_wrap=True)


@app.command()
def show(
    ctx: typer.Context,
    arch: str = typer.Argument(..., help="An arch id, a JSON file, inline JSON, or min / max / min@R / max@R."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print a subnet's blocks, MACs and parameters."""
    _show(resolve_arch(arch, state(ctx).workspace), as_json)


@app.command("from-config")
def from_config(
    path: Path = typer.Argument(..., help="An OFA net.config (or its folder; run.config beside it gives the size)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r", help="Image size, if there is no run.config."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Read an OFA net.config (e.g. a released specialized net) into an arch."""
    _show(load_net_config(path, resolution), as_json)
