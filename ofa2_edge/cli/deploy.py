"""`ofa2-edge select` and `ofa2-edge bundle [check]`: pick a trade-off and ship it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from typer.core import TyperGroup

from ofa2_edge.cli.common import (
    ALLOW_EMULATED_OPTION,
    JSON_OPTION,
    QUICK_OPTION,
    TIMER_OPTION,
    TOFU_OPTION,
    command_name,
    emit_json,
    err_console,
    make_protocol,
    out_console,
    state,
)
from ofa2_edge.cli.devices import load_inventory, require_known_device
from ofa2_edge.cli.runs import resolve_run
from ofa2_edge.core.errors import InvalidInputError, MeasurementError


class _BuildByDefault(TyperGroup):
    """`ofa2-edge bundle RUN ...` means `bundle build RUN ...`; `bundle check PATH` stays a subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


bundle_app = typer.Typer(cls=_BuildByDefault, help="Build per-device bundles, or check one.", no_args_is_help=True)

RUN_ARG = typer.Argument(..., help="A run folder, or a run id under the workspace's runs/.")
DEVICE_OPT = typer.Option(
    ..., "--device", "-d", help="The device to deploy on (its fitted predictor prices the front)."
)
MAX_LAT = typer.Option(None, "--max-latency", help="Maximum latency on the device, ms.")
MIN_TOP1 = typer.Option(None, "--min-top1", help="Minimum predicted top-1, %.")
MAX_MACS = typer.Option(None, "--max-macs", help="Maximum MACs, millions.")
SAFE = typer.Option(None, "--safe", help="Apply the latency limit to this upper quantile of the prediction (e.g. 0.9).")


def select(
    ctx: typer.Context,
    run: str = RUN_ARG,
    device: str = DEVICE_OPT,
    max_latency: Optional[float] = MAX_LAT,
    min_top1: Optional[float] = MIN_TOP1,
    max_macs: Optional[float] = MAX_MACS,
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Show at most K candidates."),
    safe: Optional[float] = SAFE,
    allow_emulated: bool = ALLOW_EMULATED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Non-dominated candidates of a run that meet the limits on a device, best accuracy first."""
    from ofa2_edge.deploy.select import Limits, nearest_tradeoffs
    from ofa2_edge.deploy.select import select as choose
    from ofa2_edge.workflows.ship import priced_front

    ws = state(ctx).workspace
    require_known_device(ctx, device)
    folder, cands = priced_front(ws, resolve_run(run, ws).path, device, safe, allow_emulated)
    limits = Limits(max_latency, min_top1, max_macs)
    chosen = choose(cands, limits, top)
    reason = None if chosen else nearest_tradeoffs(cands, limits, safe)
    if as_json:  # a document even when nothing passes: scripts read `candidates` and `reason`
        emit_json(
            {
                "run": folder.run_id,
                "device": device,
                "limits": limits.__dict__,
                "safe": safe,
                "candidates": [c.to_dict() for c in chosen],
                "reason": reason,
            }
        )
    if reason is not None:
        raise InvalidInputError(reason)
    if as_json:
        return
    table = Table(title=f"{folder.run_id} on {device}: {limits.describe(safe)}")
    table.add_column("arch id", no_wrap=True)
    for col in ("top-1 %", "latency ms", "80% interval", *(["q bound"] if safe else []), "measured ms", "MMACs", "r"):
        table.add_column(col, justify="right")
    for c in chosen:
        table.add_row(
            c.arch.id,
            f"{c.top1_pct:.2f}",
            f"{c.latency_ms:.2f}",
            f"{c.latency_lower_ms:.2f}-{c.latency_upper_ms:.2f}",
            *([f"{c.limit_latency_ms:.2f}"] if safe else []),
            "-" if c.measured_ms is None else f"{c.measured_ms:.2f}",
            f"{c.macs_m:.0f}",
            str(c.arch.r),
        )
    out_console.print(table)


@bundle_app.command("build")
def build(
    ctx: typer.Context,
    run: str = RUN_ARG,
    device_key: str = DEVICE_OPT,
    pick: Optional[str] = typer.Option(None, "--pick", help="An arch id from the run's front."),
    max_latency: Optional[float] = MAX_LAT,
    min_top1: Optional[float] = MIN_TOP1,
    max_macs: Optional[float] = MAX_MACS,
    safe: Optional[float] = SAFE,
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="onnx, tflite or tflite-int8 (default: the device's)."
    ),
    precision: str = typer.Option("fp16", "--precision", help="TensorRT devices: fp32, fp16 or int8."),
    supernet: Optional[Path] = typer.Option(
        None,
        "--supernet",
        help="Real weights: a trained supernet folder (supernets/NAME from `ofa2-edge train`: deployable, with its "
        "classes and preprocessing), an OFA checkpoint path, or ofa_mbv3_d234_e346_k357_w1.2 after `assets fetch --supernet`.",
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="The trained supernet's dataset (default: the path its manifest records)."
    ),
    verify_images: int = typer.Option(
        200, "--verify-images", min=0, help="With --verify and a trained supernet: held-out test images classified on the device (0: none)."
    ),
    calib_images: Optional[Path] = typer.Option(
        None, "--calib-images", help="Image folder to recalibrate BN statistics."
    ),
    calib_max: int = typer.Option(2000, "--calib-max", min=1, help="At most this many images for BN recalibration."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Class names, one per line (copied as labels.txt)."),
    verify: bool = typer.Option(False, "--verify", help="Measure the bundle on the device and record it."),
    timer: str = TIMER_OPTION,
    quick: bool = QUICK_OPTION,
    trust_on_first_use: bool = TOFU_OPTION,
    allow_emulated: bool = ALLOW_EMULATED_OPTION,
    output: Path = typer.Option(Path("bundles"), "-o", "--output", help="Folder for bundles (default: bundles/)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Build a bundle (model, manifest.json, SHA256SUMS, .tar.gz) for one pick of a run."""
    from ofa2_edge.deploy.select import Limits
    from ofa2_edge.supernet.checkpoint import find_checkpoint
    from ofa2_edge.workflows.ship import choose, priced_front, ship

    st = state(ctx)
    from ofa2_edge.ensemble.search import find_ensemble_run

    ens = find_ensemble_run(run, st.workspace)
    if ens is not None:  # an ensemble run (`ofa2-edge ensemble`): one model file holding its members
        if verify:  # not silently ignored: the ensemble's latency is measured by `ensemble --measure`
            raise InvalidInputError(
                f"--verify is not implemented for ensemble bundles ({ens.path}): measure the run's ensembles on the device "
                f"with `{command_name()} ensemble ... -o {ens.path} --resume --measure N` (the bundle records that "
                "measurement), then build the bundle without --verify"
            )
        _build_ensemble(ens, pick, device_key, supernet, data, labels, output, as_json, st)
        return
    require_known_device(ctx, device_key)
    inventory = load_inventory(ctx)
    if device_key in inventory.groups():  # a device group: its table prices; its first replica verifies
        device = dataclasses.replace(inventory.group(device_key)[0], key=device_key, group=None)
    else:
        device = inventory.get(device_key)
    folder, cands = priced_front(st.workspace, resolve_run(run, st.workspace).path, device.key, safe, allow_emulated)
    chosen = choose(cands, folder, device.key, pick, Limits(max_latency, min_top1, max_macs), safe)
    out_root = output if output.is_absolute() else st.workspace.root / output
    shipped = ship(
        chosen,
        folder,
        device,
        st.workspace,
        out_root,
        verify_protocol=make_protocol(device.threads, timer, quick) if verify else None,
        trust_on_first_use=trust_on_first_use,
        fmt=fmt,
        precision=precision,
        supernet=find_checkpoint(supernet, st.assets_dir) if supernet is not None else None,
        calib_images=calib_images,
        calib_max=calib_max,
        labels=labels,
        data=data,
        verify_images=verify_images if verify else 0,
    )
    check = shipped.check
    summary = shipped.summary()
    if summary["status"] == "latency-only":
        err_console.print(
            "[bold yellow]LATENCY-ONLY bundle[/]: random weights (no --supernet). Its latency is real; its outputs are not."
        )
    quality = shipped.bundle.manifest["latency"]["predicted"].get("predictor_quality") or {}
    if quality and not quality["good"]:
        err_console.print(
            f"[yellow]warning:[/] the {device.key} predictor that priced this pick is not good enough to trust ("
            + "; ".join(quality["problems"]) + "); the manifest records it. Fix: " + " ".join(quality["fixes"][:1]),
            highlight=False,
        )
    if summary.get("within_predicted_interval") is False:
        err_console.print(
            f"[yellow]warning:[/] measured {summary['measured_latency_ms']:.2f} ms is outside the predicted interval; "
            f"calibrate {device.key} further",
            highlight=False,
        )
    if summary.get("measurement_flags"):
        err_console.print(
            f"[yellow]warning:[/] the verification measurement is flagged {', '.join(summary['measurement_flags'])}: "
            f"the device was busy or throttling while measuring; measure again on a quiet {device.key}",
            highlight=False,
        )
    if as_json:
        emit_json(summary)
    else:
        for key, value in summary.items():
            out_console.print(f"{key:>26}: {value}", highlight=False, markup=False)
    if check is not None and not check.passed:
        raise MeasurementError(
            f"{device.key}: the bundle's top-1 agrees with torch's on {check.on_device['agreement_pct']:.1f} % of "
            f"{check.on_device['n_images']} test images (at least {check.on_device['min_agreement_pct']:.0f} % needed); "
            "the manifest records it. Check the device's runtime version and the export format"
        )


def _build_ensemble(ens, pick, device_key, supernet, data, labels, output, as_json, st) -> None:  # noqa: ANN001
    """`bundle build ENSEMBLE_RUN --pick e-...`: see `ofa2_edge.ensemble.bundle`."""
    from ofa2_edge.ensemble.bundle import build_ensemble_bundle

    settings = ens.settings()
    if device_key != settings.device:
        raise InvalidInputError(f"{ens.path} prices ensembles on {settings.device}, not {device_key}; give --device {settings.device}")
    if pick is None or supernet is None:
        raise InvalidInputError("an ensemble bundle needs --pick e-... (an ensemble id of the run) and --supernet supernets/NAME")
    out_root = output if output.is_absolute() else st.workspace.root / output
    built = build_ensemble_bundle(ens, pick, st.workspace, out_root, supernet, data,
                                  labels=Path(labels).read_text(encoding="utf-8").splitlines() if labels else None)  # fmt: skip
    if as_json:
        emit_json(built)
        return
    m = built["manifest"]
    out_console.print(f"ensemble bundle {built['folder']}: {len(m['arch']['ensemble']['members'])} members, "
                      f"test top-1 {m['accuracy']['test_top1_pct']}, predicted {m['latency']['predicted']['latency_ms']:.3f} ms "
                      f"({m['latency']['predicted']['mode']})")  # fmt: skip


@bundle_app.command("check")
def check(path: Path = typer.Argument(..., help="A bundle folder or .tar.gz."), as_json: bool = JSON_OPTION) -> None:
    """Verify a bundle's schema and every checksum (exit 1 on any mismatch)."""
    from ofa2_edge.deploy.bundle import check_bundle

    manifest = check_bundle(path)
    if as_json:
        emit_json({"ok": True, "manifest": manifest})
        return
    measured = manifest["latency"]["measured"]
    err_console.print(
        f"ok: {path} ({manifest['arch']['id']} for {manifest['device']['key']}, {manifest['status']}, "
        f"{len(manifest['files'])} file(s) verified"
        + (f", measured {measured['latency_ms']:.2f} ms" if measured else ", not verified on the device")
        + ")",
        highlight=False,
    )
