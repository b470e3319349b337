"""`ofa2-edge measure` and `ofa2-edge devices probe`: the real agent on a real device."""

from __future__ import annotations

from contextlib import nullcontext
from typing import List, Optional

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
from ofa2_edge.cli.devices import app as devices_app
from ofa2_edge.cli.devices import load_inventory
from ofa2_edge.core.errors import EXIT_MEASUREMENT, EXIT_UNREACHABLE, InvalidInputError
from ofa2_edge.space.archref import resolve_arch


@devices_app.command()
def probe(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="Device key (`local` is this machine)."),
    trust_on_first_use: bool = TOFU_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Ship the agent and report OS, CPU, Python, runtimes, free disk and the device fingerprint."""
    from ofa2_edge.devices.session import DeviceSession

    device = load_inventory(ctx).get(key)
    session = DeviceSession(
        device, state(ctx).workspace.cache_dir, trust_on_first_use=trust_on_first_use, check_runtime=False
    )
    with session:  # a probe reports missing runtimes instead of refusing them
        report = session.probe
    assert report is not None
    if as_json:
        emit_json(report.to_dict())
        return
    table = Table(show_header=False, title=f"{key}: fingerprint {report.fingerprint[:16]}")
    rows = [
        ("OS", f"{report.os_pretty_name or report.os_name} ({report.os_release}, {report.machine})"),
        ("CPU", f"{report.cpu_model or '?'} x {report.cpu_cores}"),
        ("board", report.board_model or "-"),
        ("memory", f"{report.mem_total_mib} MiB ({report.mem_available_mib} MiB available)"),
        ("Python", f"{report.python_version} ({report.python_executable})"),
        ("free disk", f"{report.disk_free_mib} MiB in {report.work_dir}"),
    ]
    rows += [
        (f"runtime {name}", info.version if info.available else f"missing ({info.detail or 'not installed'})")
        for name, info in sorted(report.runtimes.items())
    ]
    if report.emulation is not None:
        emu = report.emulation
        rows.append(("EMULATED", f"{emu.emulator or 'an emulator'} on {emu.host_machine}: timings are not the "
                     f"board's ({'; '.join(emu.evidence)})"))
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


def measure(
    ctx: typer.Context,
    archs: List[str] = typer.Argument(..., help="Archs: ids, JSON files, inline JSON, min, max, min@R, max@R."),
    device_key: str = typer.Option("local", "--device", "-d", help="Device key from devices.yaml (default: local)."),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="onnx, tflite or tflite-int8 (default: the device runtime's)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Runtime threads (default: the device's)."),
    timer: str = TIMER_OPTION,
    quick: bool = QUICK_OPTION,
    record: bool = typer.Option(False, "--record", help="Also append the records to the device's latency table."),
    trust_on_first_use: bool = TOFU_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Export (cached), ship and measure subnets on a device; print the agent's records."""
    from exporters import ExportCache
    from ofa2_edge.devices.pipeline import MeasurePlan, measure_archs
    from ofa2_edge.devices.session import DeviceSession
    from ofa2_edge.tables.device import DeviceTable

    st = state(ctx)
    device = load_inventory(ctx).get(device_key)
    resolved = [resolve_arch(a, st.workspace) for a in archs]
    if len({a.id for a in resolved}) != len(resolved):
        raise InvalidInputError("the same arch is listed twice")
    plan = MeasurePlan.for_device(device, fmt)
    protocol = make_protocol(threads or device.threads, timer, quick)
    table = DeviceTable.of(st.workspace, device.key) if record else None
    already: list[str] = []
    with table.lock() if table is not None else nullcontext():
        if table is not None:
            for _ in table.records():  # refuse a damaged table before the device is touched
                pass
        with DeviceSession(device, st.workspace.cache_dir, trust_on_first_use=trust_on_first_use) as session:
            todo = resolved
            if table is not None:
                from ofa2_edge.tables.device import MeasureKey

                probe = session.probe
                assert probe is not None
                table.bind(probe, plan.runtime)
                runtime = probe.runtimes.get(plan.runtime)
                key = MeasureKey(probe.fingerprint, plan.runtime, runtime.version if runtime else None, protocol)
                done = table.measured(key)  # like calibration: never the same arch twice under one key
                already = [a.id for a in resolved if a.id in done]
                todo = [a for a in resolved if a.id not in done]
                for arch_id in already:
                    err_console.print(f"{arch_id}: already in latency_tables/{device.key} (not measured again)")

            def on_result(result) -> None:  # noqa: ANN001 - a MeasureResult
                if table is not None:
                    table.append(result)
                state_text = f"{result.estimate_ms:.3f} ms" if result.ok else f"{result.error_kind.value}"
                err_console.print(f"{result.arch_id}: {state_text}", highlight=False)

            report = measure_archs(session, todo, plan, protocol, ExportCache(st.workspace.exports_dir), on_result)
    unreached = [a.id for a in report.not_measured]
    if as_json:
        emit_json(
            {
                "device": device.key,
                "results": [r.to_dict() for r in report.results],
                "not_measured": unreached,
                "already_recorded": already,
            }
        )
    else:
        out = Table("arch id", "r", "estimate ms", "median ms", "min ms", "CV", "flags / error")
        for r in report.results:
            arch_r = str(r.arch["r"]) if r.arch else "?"
            if r.ok:
                s = r.stats
                out.add_row(
                    r.arch_id,
                    arch_r,
                    f"{s.estimate_ms:.3f}",
                    f"{s.median_ms:.3f}",
                    f"{s.min_ms:.3f}",
                    f"{s.cv:.1%}",
                    ", ".join(f.value for f in r.flags),
                )
            else:
                out.add_row(r.arch_id, arch_r, "-", "-", "-", "-", f"{r.error_kind.value}: {r.error_msg}")
        out_console.print(out)
        if unreached:
            err_console.print(
                f"not measured (the link to {device.key} was lost): {', '.join(unreached)}; run the command again "
                "when the device is reachable",
                highlight=False,
            )
    if unreached:  # the device could not be reached (again): 3, as for any unreachable device
        raise typer.Exit(EXIT_UNREACHABLE)
    if report.failed:
        raise typer.Exit(EXIT_MEASUREMENT)
