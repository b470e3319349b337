"""`ofa2-edge run` (alias `demo`): the main job, with progress on stderr and a summary."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from device_agents.records import TIMERS
from ofa2_edge.cli.common import (
    JSON_OPTION,
    QUICK_OPTION,
    TOFU_OPTION,
    command_name,
    emit_json,
    err_console,
    out_console,
    state,
)
from ofa2_edge.core.errors import EXIT_FAILURE, EXIT_MEASUREMENT, InvalidInputError


def run(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Job config (default: ofa2-edge.yaml in the workspace, else the embedded default)."
    ),
    budget: Optional[int] = typer.Option(None, "--budget", "-n", min=10, help="Calibration budget of every device."),
    gens: Optional[int] = typer.Option(None, "--gens", min=1, help="Search generations."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Name of the run folder under runs/."),
    verify: Optional[bool] = typer.Option(
        None, "--verify/--no-verify", help="Measure the bundle on its device (default: the config's `verify`, else yes)."
    ),
    timer: Optional[str] = typer.Option(
        None, "--timer", help="wall or thread_cpu for every device (default: each device's in ofa2-edge.yaml, else "
        "wall); thread_cpu times the runtime thread's CPU (1 thread; immune to other processes on a shared host).",
    ),
    accept_unstable: bool = typer.Option(
        False, "--accept-unstable", help="Ship a bundle even when the device's predictor fails its quality check "
        "(too many flagged measurements, poor held-out accuracy, wide intervals); the manifest records it.",
    ),
    quick: bool = QUICK_OPTION,
    trust_on_first_use: bool = TOFU_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The main job: calibrate this machine (and any configured boards), search, dashboard, bundle."""
    from ofa2_edge.workflows.job import CONFIG_FILE, RUN_ID_PATTERN, JobConfig, run_job

    if run_id is not None and not RUN_ID_PATTERN.match(run_id):
        raise InvalidInputError(f"--run-id {run_id!r}: a plain folder name (letters, digits, '.', '_', '-'; at most 64)")

    st = state(ctx)
    path = config or (st.workspace.root / CONFIG_FILE)
    if config is not None and not config.exists():
        raise InvalidInputError(f"--config {config}: no such file")
    job = JobConfig.load(path) if path.exists() else JobConfig()
    if timer is not None and timer not in TIMERS:
        raise InvalidInputError(f"--timer {timer!r}: choose wall or thread_cpu")
    devices = tuple(
        replace(d, budget=budget or d.budget, quick=quick or d.quick, timer=timer or d.timer) for d in job.devices
    )
    job = replace(
        job, devices=devices, gens=gens or job.gens, run_id=run_id or job.run_id,
        verify=job.verify if verify is None else verify, accept_unstable=accept_unstable,
    )  # fmt: skip

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=err_console,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def task(name: str, total: int | None) -> Any:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total, last="")
            else:
                bar.update(tasks[name], total=total, completed=0)
            return tasks[name]

        def on_event(event: str, info: dict[str, Any]) -> None:
            if event == "train.start":
                t = task("train", info["total_steps"])
                bar.update(t, completed=info["resumed_from_step"], last="resuming" if info["resumed_from_step"] else "")
            elif event == "train.step":
                bar.update(tasks["train"], completed=info["step"], last=f"{info['phase']} loss {info['loss']:.3f}")
            elif event == "train.eval":
                bar.update(tasks["train"], last=f"{info['phase']}: largest {info['largest_top1']:.1f} %, "
                           f"smallest {info['smallest_top1']:.1f} %")  # fmt: skip
            elif event == "train.reused":
                err_console.print(f"supernet {info['folder']}: trained already (same data and settings), reused",
                                  highlight=False, markup=False)  # fmt: skip
            elif event == "evaluate.row":
                t = task("evaluate", info["total"]) if info["done"] == 1 else tasks["evaluate"]
                bar.update(t, completed=info["done"], last=f"{info['arch_id']} {info['top1_pct']:.2f} %")
            elif event == "calibrate.round":
                t = task(f"calibrate {info['device']}", info["todo"])
                if info["skipped"]:
                    bar.update(t, last=f"{info['skipped']} already measured")
            elif event == "calibrate.result":
                r = info["record"]
                last = f"{r.arch_id} {r.estimate_ms:.2f} ms" if r.ok else f"{r.arch_id} {r.error_kind.value}"
                bar.update(tasks[f"calibrate {info['device']}"], advance=1, last=last)
            elif event == "calibrate.fit":
                bar.update(tasks[f"calibrate {info['device']}"], last="fitting the predictor")
            elif event == "device_failed":
                err_console.print(f"[red]{info['device']} failed:[/] {info['error']}", highlight=False)
            elif event == "search.start":
                task("search", info["gens"])
            elif event == "bundle.refused":
                err_console.print(f"[bold red]{info['reason']}[/]", highlight=False)
            elif event == "search.progress":
                bar.update(tasks["search"], completed=info["gen"], last=f"HV {info['hv']:.4g}")

        result = run_job(st.workspace, job, st.assets_dir, trust_on_first_use, on_event)

    summary = _summary(result, st.workspace.root)
    if as_json:
        emit_json(summary)
    else:
        _print_summary(summary)
    if result.failed_devices:
        raise typer.Exit(EXIT_MEASUREMENT)
    if result.refused:
        raise typer.Exit(EXIT_FAILURE)
    if (result.bundle.get("on_device") or {}).get("passed") is False:
        raise typer.Exit(EXIT_MEASUREMENT)  # the summary says why (agreement with torch below 99 %)


def _summary(result: Any, root: Path) -> dict[str, Any]:
    front = result.search_status.get("summary", {})
    reference = json.loads((result.run_folder / "hypervolume.json").read_text()).get("reference_point")
    fits = {}
    for key, cal in result.calibrations.items():
        held = cal.report.get("held_out", {})
        fits[key] = {
            "surrogate": cal.report.get("name"),
            "n_train": cal.report.get("n_train"),
            "within_10pct": held.get("share_within_10pct"),
            "mape_pct": held.get("mape_pct"),
            "spearman": held.get("spearman"),
            "measured_now": len(cal.measured),
            "already_measured": cal.skipped,
            "refitted": cal.refitted,
            "quality": result.quality.get(key),
        }
    run = result.run_folder
    device = result.bundle.get("device") or next(iter(result.calibrations), "local")
    cli = command_name()
    return {
        "run": str(run),
        "front_size": front.get("front_size"),
        "hypervolume": {"value": front.get("hv_archive"), "reference_point": reference},
        "devices": fits,
        "failed_devices": result.failed_devices,
        "files": {
            "front": str(run / "front.csv"),
            "pareto_plot": str(run / "pareto.png"),
            "dashboard": str(result.dashboard),
            "bundle": result.bundle.get("archive"),
        },
        "accuracy": result.accuracy,
        **({"own_data": result.own_data} if result.own_data else {}),
        "bundle": result.bundle,
        "bundle_refused": result.refused,
        "pick_change": result.pick_change,
        "seconds": result.seconds,
        "next": [
            f"{cli} select {run.name} --device {device} --max-latency MS --min-top1 PCT",
            *([f"{cli} bundle check {result.bundle['archive']}"] if result.bundle.get("archive") else []),
            *(
                [f"{cli} calibrate --device {device} --budget N   # more measurements, then run again"]
                if result.refused
                else []
            ),
            f"{cli} devices add rpi4 --host HOST --user pi --key-file ~/.ssh/id_ed25519   # then add it to ofa2-edge.yaml",
        ],
    }


def _print_summary(s: dict[str, Any]) -> None:
    hv = s["hypervolume"]
    lines = [
        f"front: {s['front_size']} subnets; hypervolume {hv['value']:.6g} (reference point {hv['reference_point']})"
    ]
    acc = s["accuracy"]
    own = s.get("own_data") or {}
    if acc.get("source") == "accuracy-table":
        sn, table, fit = own["supernet"], own["table"], own["predictor"]
        done = {"trained": "trained now", "resumed": "training resumed and finished", "reused": "reused (already "
                "trained on this data with these settings)", "given": "given in the config"}[sn["status"]]  # fmt: skip
        lines.append(f"supernet: {sn['folder']} ({done})")
        lines.append(
            f"accuracy: YOUR TABLE {table['name']} ({table['n_evaluated']} subnets on the val part; "
            f"{table['evaluated_now']} evaluated now, {table['already_in_table']} already in the table); predictor "
            f"{fit['model']} on {fit['n_pairs']} subnets, held-out Spearman {fit['held_out_spearman']:.3f}"
            + ("" if fit["refitted"] else " (kept: the table did not change)")
        )
    else:
        lines.append("accuracy: OFA's ImageNet predictor (official asset; top-1 predicted for OFA's released weights)")
    for key, f in s["devices"].items():
        within = "n/a" if f["within_10pct"] is None else f"{f['within_10pct']:.0%}"
        lines.append(
            f"{key}: {f['surrogate']} predictor on {f['n_train']} measurements; held out: {within} within +-10%, "
            f"MAPE {f['mape_pct']:.1f}%, Spearman {f['spearman']:.3f}"
        )
    for key, f in s["devices"].items():
        q = f.get("quality") or {}
        if f.get("refitted") is False:
            lines.append(f"{key}: nothing new measured; the saved predictor was kept (same search, same pick)")
        if q and not q["good"]:
            lines.append(f"{key}: WARNING: the predictor is not good enough to trust: " + "; ".join(q["problems"]))
            lines += [f"  cause: {c}" for c in q["causes"]] + [f"  fix: {x}" for x in q["fixes"]]
    b = s["bundle"]
    if s.get("bundle_refused"):
        lines.append(s["bundle_refused"])
    else:
        pick = b.get("pick", {})
        lines.append(
            f"bundle for {b.get('device')}: {pick.get('arch_id')} ({pick.get('top1_pct', 0):.2f}% top-1, "
            f"{pick.get('latency_ms', 0):.2f} ms predicted"
            + (f", {b['measured_ms']:.2f} ms measured" if b.get("measured_ms") is not None else "")
            + ")"
            + (", reused from the previous run" if b.get("reused") else "")
            + (
                f", LATENCY-ONLY (random weights; pass --supernet to `{command_name()} bundle build` for real ones)"
                if b.get("status") == "latency-only"
                else ""
            )
            + (", DEPLOYABLE (trained weights, labels.txt)" if b.get("status") == "deployable" else "")
        )
        od = b.get("on_device")
        if od:
            lines.append(
                f"on {od['device_key']}: top-1 {od['top1_pct']:.2f} % on {od['n_images']} held-out {od['part']} images, "
                f"{od['agreement_pct']:.1f} % agreement with torch "
                + ("(passed)" if od["passed"] else f"(FAILED: at least {od['min_agreement_pct']:.0f} % needed; "
                   "check the device's runtime version and the export format)")  # fmt: skip
            )
    if s.get("pick_change"):
        lines.append(s["pick_change"])
    lines += [f"{name}: {path}" for name, path in s["files"].items()]
    lines.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items()))
    lines.append("next:")
    lines += [f"  {cmd}" for cmd in s["next"]]
    for line in lines:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)
