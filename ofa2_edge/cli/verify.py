"""`ofa2-edge verify RUN --device KEY`: measure a run's front on the device and score the predictor."""

from __future__ import annotations

from typing import Any, Optional

import typer
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
from ofa2_edge.cli.runs import resolve_run
from ofa2_edge.core.errors import EXIT_MEASUREMENT, EXIT_UNREACHABLE, DeviceUnreachableError


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" (95 % interval {100 * ci[0]:.0f}-{100 * ci[1]:.0f} %)"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.0%}"


def verify(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="A run folder, or a run id under the workspace's runs/."),
    device_key: str = typer.Option(..., "--device", "-d", help="The device whose front is verified (from devices.yaml)."),
    top: Optional[int] = typer.Option(
        None, "--top", min=1, help="Measure N members spread evenly over the front's latency range (default 10)."
    ),
    budgets: Optional[str] = typer.Option(
        None, "--budgets", help="Measure the picks of `select --max-latency B` (plain and --safe) for each B, ms: 10,20,40."
    ),
    all_members: bool = typer.Option(False, "--all", help="Measure every member of the front."),
    safe: float = typer.Option(0.9, "--safe", help="The quantile of the --safe picks for --budgets (judged: 0.8, 0.9, 0.95)."),
    limits: Optional[str] = typer.Option(
        None, "--limits", help="Latency limits (ms) the select picks are judged at (default: the budgets, or 9 spread over the front)."
    ),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="onnx, tflite or tflite-int8 (default: the device's)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    timer: str = TIMER_OPTION,
    quick: bool = QUICK_OPTION,
    trust_on_first_use: bool = TOFU_OPTION,
    accept_env_change: bool = typer.Option(
        False, "--accept-env-change",
        help="Measure although the board's governor, power mode or CPUs online differ from the table's records.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure front members on the device (resumable), keep them apart from calibration data,
    and report measured vs predicted, interval coverage, select-pick violations and HV; writes
    runs/<id>/verification.<device>.json."""
    from ofa2_edge.workflows.verify_front import VerifyRequest, parse_ms_list, verify_front

    ws = state(ctx).workspace
    inventory = load_inventory(ctx)
    groups = inventory.groups()
    # a device group: verified on its first replica that answers, into the group's table
    candidates = groups[device_key] if device_key in groups else [inventory.get(device_key)]
    table_key = device_key if device_key in groups else None
    folder = resolve_run(run, ws)
    if top is None and budgets is None and not all_members:
        top = 10
    request = VerifyRequest(
        top=top,
        budgets=parse_ms_list(budgets, "--budgets") if budgets is not None else (),
        all=all_members,
        safe=safe,
        limits=parse_ms_list(limits, "--limits") if limits is not None else (),
    )
    protocol = make_protocol(threads or candidates[0].threads, timer, quick)

    def on_event(event: str, info: dict[str, Any]) -> None:
        if event == "members":
            err_console.print(
                f"{device_key}: verifying {info['total']} front member(s), {info['skipped']} already verified (resuming)",
                highlight=False,
            )
        elif event == "result":
            r = info["record"]
            text = f"{r.estimate_ms:.3f} ms" if r.ok else f"{r.error_kind.value}: {r.error_msg}"
            err_console.print(f"{r.device_key}: {r.arch_id} {text}", highlight=False)

    outcome = None
    for i, device in enumerate(candidates):
        try:
            outcome = verify_front(
                device, ws, folder, request, protocol, fmt, trust_on_first_use, on_event, accept_env_change, table_key
            )
            break
        except DeviceUnreachableError as exc:
            if i + 1 == len(candidates):
                raise
            err_console.print(f"{device.key}: unreachable ({exc}); trying the next replica of {device_key}")
    assert outcome is not None
    rep = outcome.report
    if as_json:
        emit_json({**rep, "file": str(outcome.path), "not_measured": outcome.not_measured})
    else:
        _print(rep)
        err_console.print(f"wrote {outcome.path}", highlight=False)
    if outcome.not_measured:
        err_console.print(
            f"not measured (the link to {device_key} was lost): {', '.join(outcome.not_measured)}; run the command "
            "again to resume",
            highlight=False,
        )
        raise typer.Exit(EXIT_UNREACHABLE)
    if outcome.failed:
        raise typer.Exit(EXIT_MEASUREMENT)


def _print(rep: dict[str, Any]) -> None:
    table = Table(title=f"{rep['run']} on {rep['device']}: front verified on the device")
    for col in ("arch id", "r", "top-1 %", "predicted ms", "80% interval", "measured ms", "error", "note"):
        table.add_column(col, justify="left" if col in ("arch id", "note") else "right")
    for m in rep["members"]:
        lo, hi = m["interval_80_ms"]
        note = "in calibration (not scored)" if m["in_calibration"] else ", ".join(m["flags"])
        table.add_row(
            m["arch_id"], str(m["r"]), f"{m['top1_pct']:.2f}", f"{m['predicted_ms']:.2f}", f"{lo:.2f}-{hi:.2f}",
            "-" if m["measured_ms"] is None else f"{m['measured_ms']:.2f}",
            "-" if m["error_pct"] is None else f"{m['error_pct']:+.1f}%", note,
        )  # fmt: skip
    out_console.print(table)
    cov = rep["coverage"]
    out_console.print(
        "coverage of the predicted intervals on "
        f"{rep['counts']['scored']} scored member(s): 80 % -> {_pct(cov['80']['actual'])}, "
        f"90 % -> {_pct(cov['90']['actual'])}; MAPE "
        + ("-" if rep["error"]["mape_pct"] is None else f"{rep['error']['mape_pct']:.1f} %"),
        highlight=False,
    )
    sessions = rep["sessions"]
    if sessions["count"]:
        shifts = ", ".join(f"{v['shift_pct']:+.1f} % (n={v['n']})" for v in sessions["shifts"].values())
        unfolded = sessions["residuals"] != sessions["in_predictor"]
        own = rep["own_intervals"]["coverage"]
        out_console.print(
            f"{sessions['count']} verification session(s), median shift from the predictor: {shifts}. Each member "
            "is judged with the other sessions' residuals folded into its intervals; with the predictor's own "
            f"intervals alone the coverage would be 80 % -> {_pct(own['80'])}, 90 % -> {_pct(own['90'])}"
            + (f". `ofa2-edge fit --device {rep['device']}` folds the {sessions['residuals']} verified residuals "
               "into the predictor" if unfolded else "") + ".",
            highlight=False,
        )  # fmt: skip
    retest = rep["test_retest"]
    for level, v in rep["violations"].items():
        name = "point prediction" if level == "point" else f"select --safe {level}"
        t = v["tightest"]
        out_console.print(
            f"{name}: {v['judged']} pick(s) judged, violation rate {_pct(v['violation_rate'])}, beyond the "
            f"{retest['pct']:.1f} % test-retest difference {_pct(v['beyond_retest_rate'])}; every pick at its "
            f"tightest limit: {t['judged']} judged, {_pct(t['violation_rate'])}{_ci(t['violation_ci95'])}, beyond "
            f"retest {_pct(t['beyond_retest_rate'])}",
            highlight=False,
        )
    hv = rep["hypervolume"]
    if hv["predicted"] is not None:
        ratio = "-" if hv["ratio"] is None else f"{hv['ratio']:.3f}"
        out_console.print(
            f"hypervolume of the verified members: predicted {hv['predicted']:.4g}, measured {hv['measured']:.4g} "
            f"(measured/predicted {ratio})",
            highlight=False,
        )
