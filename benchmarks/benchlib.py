"""What several benchmarks share: the machine they ran on, the load they saw, and measuring
subnets end to end on `local` through the same session/agent path as calibration."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.records import MeasureResult, Protocol
from exporters import ExportCache
from ofa2_edge.calibration.calibrate import bind_table
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.pipeline import MeasurePlan, measure_archs
from ofa2_edge.devices.session import DeviceSession
from ofa2_edge.space.arch import Arch
from ofa2_edge.tables.device import DeviceTable

PACKAGES = (
    "ofa2-edge", "torch", "onnx", "onnxruntime", "pymoo", "scikit-learn", "numpy", "ai-edge-litert", "litert-torch",
)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def machine_info() -> dict[str, Any]:
    """The machine and package versions a figure was measured on (figures from different
    machines are not comparable)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load1_at_start": load1(),
        "versions": versions,
    }


def record_load(records: list[MeasureResult]) -> dict[str, Any]:
    """Median 1-minute load the agent saw before each model, and the per-record CV."""
    loads = [r.telemetry_before.load_avg[0] for r in records if r.telemetry_before and r.telemetry_before.load_avg]
    cvs = [r.stats.cv for r in records if r.stats]
    return {
        "load1_median": float(np.median(loads)) if loads else None,
        "load1_max": float(np.max(loads)) if loads else None,
        "cv_median": float(np.median(cvs)) if cvs else None,
        "cv_p90": float(np.percentile(cvs, 90)) if cvs else None,
        "flagged": sum(1 for r in records if r.flags),
    }


def measure_end_to_end(
    ws: Workspace, device: Device, protocol: Protocol, archs: list[Arch], order_seed: int
) -> tuple[dict[str, MeasureResult], dict[str, Any]]:
    """Measure `archs` (resuming: archs already in the device's table are skipped) through
    the same session/agent path as calibration, in a seeded random order so that drift in the
    machine's state hits every group of archs alike. Returns arch id -> record, and timings."""
    archs = [archs[i] for i in np.random.default_rng(order_seed).permutation(len(archs))]
    table = DeviceTable.of(ws, device.key)
    plan = MeasurePlan.for_device(device)
    cache = ExportCache(ws.exports_dir)
    info: dict[str, Any] = {"load1_before": load1()}
    t0 = time.perf_counter()
    with DeviceSession(device, ws.cache_dir) as session:
        key = bind_table(session, table, device, plan, protocol)
        todo = [a for a in archs if a.id not in table.measured(key)]
        print(f"{device.key}: {len(todo)} of {len(archs)} subnets to measure", file=sys.stderr, flush=True)
        report = measure_archs(session, todo, plan, protocol, cache, table.append)
        done = table.measured(key)
    info["seconds"] = time.perf_counter() - t0
    info["measured_now"] = len(report.results)
    if report.results:
        info["seconds_per_subnet"] = info["seconds"] / len(report.results)
    info["load1_after"] = load1()
    info["records"] = record_load([done[a.id] for a in archs if a.id in done])
    return {a.id: done[a.id] for a in archs if a.id in done}, info


def report_section(report: Path, key: str, title: str, body: str) -> None:
    """Put `body` under `## title` between `<!-- key:start/end -->` markers in `report`
    (replacing that section, or appending it): the figures of benchmarks that run outside
    run_all.py (they need a trained supernet), which run_all.py keeps when it rebuilds."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = report.read_text() if report.exists() else "# ofa2-edge benchmark report\n"
    section = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text.split(start)[0] + section + text.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    report.write_text(text)


def kept_sections(report: Path) -> list[str]:
    """The marker sections of `report` (see `report_section`), in order."""
    if not report.exists():
        return []
    pattern = re.compile(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", flags=re.S)
    return [m.group(0) for m in pattern.finditer(report.read_text())]



_VIOLATION_FIELDS = ("judged", "violation_rate", "violation_ci95", "beyond_retest_rate", "max_excess_pct")


def violation_figures(violations: dict[str, Any]) -> dict[str, Any]:
    """The figures of a verify report's `violations` a benchmark keeps: per safe level, the
    picks at the judged limits and every pick at its tightest limit (no per-pick rows)."""
    return {
        level: {**{x: v.get(x) for x in _VIOLATION_FIELDS}, "tightest": {x: v["tightest"].get(x) for x in _VIOLATION_FIELDS}}
        for level, v in violations.items()
    }


def violation_rows(violations: dict[str, Any], goal_level: str, goal: str) -> list[str]:
    """Markdown table rows (figure | value | goal) for `violation_figures`."""

    def p(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    def cell(v: dict[str, Any]) -> str:
        ci = v.get("violation_ci95")
        excess = v.get("max_excess_pct")
        return (f"{p(v['violation_rate'])}" + ("" if ci is None else f" (95 % interval {p(ci[0])}-{p(ci[1])})")
                + f"; beyond retest {p(v['beyond_retest_rate'])}" + ("" if excess is None else f", max excess {excess:+.1f} %"))  # fmt: skip

    rows = []
    for level, v in violations.items():
        name = "point prediction" if level == "point" else f"`select --safe {level}`"
        target = goal if level == goal_level else ""
        rows.append(f"| violation rate, {name}, judged limits ({v['judged']} picks) | {cell(v)} | {target} |")
        t = v["tightest"]
        rows.append(f"| violation rate, {name}, every pick at its tightest limit ({t['judged']} picks) | {cell(t)} | {target} |")
    return rows


def drift_figures(report: dict[str, Any]) -> dict[str, Any]:
    """A verify report's sessions and its judging with the predictor's own intervals."""
    def part(doc: dict[str, Any]) -> dict[str, Any]:
        return {"coverage": doc["coverage"], "safe_0.9_tightest": {x: doc["safe_0.9_tightest"].get(x) for x in _VIOLATION_FIELDS}}

    pooled = report.get("pooled_residuals")
    return {"sessions": report["sessions"], "own": part(report["own_intervals"]), "pooled": part(pooled) if pooled else None}


def drift_rows(figures: dict[str, Any]) -> list[str]:
    """Markdown rows (figure | value | goal) for `drift_figures`: each verification session's
    median shift from the predictor, and the figures its own intervals gave (no verified
    residuals folded in)."""

    def p(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    s = figures["sessions"]
    shifts = ", ".join(f"{v['shift_pct']:+.1f} % (n={v['n']})" for v in s["shifts"].values()) or "-"
    rows = [f"| verification sessions: median shift from the predictor | {shifts} | |"]
    for key, name in (("pooled", "the other sessions' residuals pooled (no drift priced)"),
                      ("own", "the predictor's own intervals (no verified residuals)")):  # fmt: skip
        doc = figures.get(key)
        if doc:
            t = doc["safe_0.9_tightest"]
            rows += [f"| {name}: coverage 80 % / 90 % | {p(doc['coverage']['80'])} / {p(doc['coverage']['90'])} | |",
                     f"| {name}: `select --safe 0.9`, every pick at its tightest limit ({t['judged']} picks) | "
                     f"{p(t['violation_rate'])}; beyond retest {p(t['beyond_retest_rate'])} | |"]  # fmt: skip
    return rows


def write_results(json_path: Path | None, doc: dict[str, Any], text: str) -> None:
    """Print a benchmark's markdown `text`; with `json_path`, write `doc` there and the text
    beside it as `.md` (numpy numbers as floats)."""
    print(text)
    if json_path is not None:
        json_path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        json_path.with_suffix(".md").write_text(text + "\n")
