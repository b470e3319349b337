"""A bundle holding an ensemble: one model file, a manifest listing the members.

`bundle build ENSEMBLE_RUN --pick e-...` exports the chosen ensemble as one ONNX model with
the trained supernet's weights, each member's BatchNorm recalibrated exactly as its accuracy
table row was (so the file computes the probabilities the table stored, up to the in-graph
resize of smaller members), and writes a normal bundle (`deploy.bundle.build_bundle`):
`manifest.json`'s `arch` has the ensemble id, the combination rule and every member (arch id,
ks/e/d/r/w, MACs, params); `accuracy` the soft vote's val (chosen on) and test (reported)
top-1 from the table; `latency.predicted` the run's predicted latency and mode, and
`latency.measured` the agent's figure when `ofa2-edge ensemble --measure` measured it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters import ExportCache
from ofa2_edge.accuracy.evaluate import EvaluateSettings
from ofa2_edge.accuracy.table import AccuracyTable
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.ensemble.export import export_ensemble
from ofa2_edge.ensemble.measure import MEASURED_FILE, RUNTIMES, read_measured
from ofa2_edge.ensemble.pool import RULE, RULE_TEXT, table_dataset
from ofa2_edge.ensemble.search import EnsembleRunFolder
from ofa2_edge.space.arch import Arch


def build_ensemble_bundle(
    run: EnsembleRunFolder,
    pick: str,
    workspace: Workspace,
    out_root: Path,
    supernet: str | Path,
    data: str | Path | None = None,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """Build the bundle of ensemble `pick` of `run`; returns its manifest (and folder)."""
    from ofa2_edge.accuracy.source import open_supernet
    from ofa2_edge.data import open_dataset
    from ofa2_edge.deploy.bundle import BundleFacts, build_bundle, read_manifest, record_measurement
    from ofa2_edge.tables.device import DeviceTable

    config = run.config()
    settings = run.settings()
    rows, _ = run.rows()
    row = next((r for r in rows if r["ensemble_id"] == pick), None)
    if row is None:
        front = run.front()["rows"] if run.file("front.json").is_file() else []
        shown = ", ".join(r["ensemble_id"] for r in front[:5]) or "none yet"
        raise InvalidInputError(f"{run.path}: no ensemble {pick!r} was evaluated in this run (front: {shown})")
    front_rows = {r["ensemble_id"]: r for r in run.front()["rows"] + run.front()["front_2d"]} if run.file("front.json").is_file() else {}
    report = front_rows.get(pick, {})
    cands = {c["arch_id"]: Arch.from_dict(c["arch"]) for c in config["candidates"]}
    members = [cands[m] for m in row["members"]]
    table = AccuracyTable.of(workspace, settings.table).require()
    trained = open_supernet(supernet)
    binding = table.binding()
    if trained.sha256 != binding.supernet_sha256:
        raise InvalidInputError(
            f"{supernet} is not the supernet accuracy table {table.name} was evaluated with "
            f"(sha256 {trained.sha256[:12]}..., the table's {binding.supernet_sha256[:12]}...); give that one"
        )
    ds = open_dataset(table_dataset(table, data))
    bound = EvaluateSettings.bound_to(table)
    model = export_ensemble(
        members, trained.net, ExportCache(workspace.exports_dir), dataset=ds,
        bn_seed=bound.bn_seed, bn_images=bound.bn_images, batch_size=bound.batch_size,
    )  # fmt: skip
    info = DeviceTable.of(workspace, settings.device).device_info() or {}
    runtime = RUNTIMES[settings.mode]
    facts = BundleFacts(
        device={"key": settings.device, "fingerprint": info.get("fingerprint"), "runtime": runtime,
                "runtime_version": info.get("runtime_version"), "threads": None if settings.mode == "sequential" else config["pool"].get("cores"),
                "execution_mode": settings.mode},  # fmt: skip
        accuracy={
            "top1_pct": report.get("test_top1_pct"),
            "val_top1_pct": row["val_top1_pct"],
            "test_top1_pct": report.get("test_top1_pct"),
            "source": f"accuracy table {table.name}: {RULE} ({RULE_TEXT}) of the members' stored probabilities; "
            "chosen on val, top1_pct is test (reported only)",
        },
        predicted_latency={
            "latency_ms": row["latency_ms"],
            "mode": settings.mode,
            "rule": "sum of the members' predictions" if settings.mode == "sequential" else "max(slowest member, sum / cores)",
            "member_latency_ms": report.get("member_latency_ms"),
            "surrogate": config["pool"].get("latency_predictor"),
        },
        run={"id": run.run_id, "path": _relative(run.path, workspace), "source_run": settings.source_run},
    )
    folder = build_bundle(out_root, model, facts, labels=labels if labels is not None else list(binding.classes))
    measured = [r for r in read_measured(run.file(MEASURED_FILE)) if r["ensemble_id"] == pick and r["mode"] == settings.mode and r["ok"]]
    if measured:
        m = measured[-1]
        record_measurement(folder, {"latency_ms": m["estimate_ms"], "cv": m["cv"], "threads": m["threads"], "runtime": m["runtime"],
                                    "device_fingerprint": m["device_fingerprint"], "model_sha256": m["model_sha256"],
                                    "note": "measured by `ofa2-edge ensemble --measure`: the same graph and execution mode (its weights may differ, which does not change latency)"})  # fmt: skip
    return {"folder": str(folder), "manifest": read_manifest(folder)}


def _relative(path: Path, workspace: Workspace) -> str:
    try:
        return str(path.resolve().relative_to(workspace.root.resolve()))
    except ValueError:
        return path.name
