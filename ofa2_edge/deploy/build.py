"""From a chosen candidate to a bundle: weights, optional BN recalibration, export, manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters import ExportCache, export_module, export_subnet
from exporters.onnx_compat import onnx_target
from exporters.representative import folder_digest
from exporters.tensorrt import build_spec
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.persist import sha256_file
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.data.imagefolder import image_batches
from ofa2_edge.deploy.bundle import BundleFacts, build_bundle, read_labels, read_manifest
from ofa2_edge.deploy.select import INTERVAL_COVERAGE, Candidate
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.pipeline import MeasurePlan
from ofa2_edge.search.runstore import RunFolder
from ofa2_edge.space.netplan import N_CLASSES
from ofa2_edge.supernet import load_supernet, recalibrate_bn
from ofa2_edge.tables.device import DeviceTable

#: Seed of the random subset of images used for BN recalibration (recorded in the manifest).
CALIB_SEED = 0


@dataclass(frozen=True)
class BuiltBundle:
    folder: Path
    manifest: dict[str, Any]


def _accuracy(run: RunFolder, chosen: Candidate, real_weights: bool) -> dict[str, Any]:
    sources = {o["name"]: o.get("source") for o in run.config().get("resolved", {}).get("objectives", [])}
    source = sources.get("top1") or {}
    note = (
        None
        if real_weights
        else (
            "predicted for the official OFA weights; this latency-only bundle has random weights, so its outputs are meaningless"
        )
    )
    return {
        "top1_pct": chosen.top1_pct,
        "source": f"predictor:{source.get('name', 'unknown')}",
        "predictor_sha256": source.get("sha256"),
        "note": note,
    }


def _device_facts(device: Device, workspace: Workspace, runtime: str) -> dict[str, Any]:
    info = DeviceTable.of(workspace, device.key).device_info() or {}
    return {
        "key": device.key,
        "fingerprint": info.get("fingerprint"),
        "runtime": runtime,
        "runtime_version": info.get("runtime_version") if info.get("runtime") == runtime else None,
        "threads": device.threads,
    }


def _run_ref(run: RunFolder, workspace: Workspace) -> dict[str, str]:
    """The run that chose the pick: its id, and its folder relative to the workspace (a
    manifest travels to devices and other teams, so it holds no path of this host)."""
    ref = {"id": run.run_id}
    try:
        ref["path"] = run.path.resolve().relative_to(workspace.root).as_posix()
    except ValueError:  # a run outside the workspace: the id alone
        pass
    return ref


def make_bundle(
    chosen: Candidate,
    run: RunFolder,
    device: Device,
    workspace: Workspace,
    out_root: Path,
    fmt: str | None = None,
    precision: str = "fp16",
    supernet: Path | None = None,
    calib_images: Path | None = None,
    calib_max: int = 2000,
    labels: Path | None = None,
    quality: dict[str, Any] | None = None,
) -> BuiltBundle:
    """Export `chosen` for `device` (real weights from `supernet`, else random) and bundle it.

    `quality` (the predictor's verdict, :mod:`ofa2_edge.tables.quality`) is recorded beside the
    predicted latency, so a bundle shipped with an untrusted predictor says so."""
    plan = MeasurePlan.for_device(device, fmt, precision)
    label_lines = read_labels(labels, N_CLASSES) if labels is not None else None  # fail before the export
    cache = ExportCache(workspace.exports_dir)
    arch = chosen.arch
    if calib_images is not None and supernet is None:
        raise InvalidInputError("--calib-images recalibrates real weights: give the checkpoint with --supernet")
    # the IR version and opset the device's onnxruntime loads (its version as the table recorded it)
    info = DeviceTable.of(workspace, device.key).device_info() or {}
    target = onnx_target(info.get("runtime_version")) if plan.runtime == "onnxruntime" else None
    if supernet is None:
        model = export_subnet(arch, plan.fmt, cache=cache, onnx_target=target)
    else:
        net = load_supernet(supernet, width_mult=arch.w)
        if calib_images is None:
            model = export_subnet(arch, plan.fmt, supernet=net, cache=cache, onnx_target=target)
        else:
            subnet = net.extract(arch)
            batches = image_batches(
                calib_images, subnet.preprocessing, max_images=calib_max, rng=np.random.default_rng(CALIB_SEED)
            )
            seen = recalibrate_bn(subnet, batches, source=f"images:{folder_digest(calib_images)[:16]}")
            if seen == 0:
                raise InvalidInputError(f"{calib_images}: no images found to recalibrate BatchNorm statistics")
            model = export_module(subnet, plan.fmt, cache=cache, onnx_target=target)
    tensorrt = build_spec(model, precision=precision) if plan.runtime == "tensorrt" else None
    surrogate_path = DeviceTable.of(workspace, device.key).surrogate_path
    surrogate_doc = json.loads(surrogate_path.read_text())
    facts = BundleFacts(
        device=_device_facts(device, workspace, plan.runtime),
        accuracy=_accuracy(run, chosen, real_weights=supernet is not None),
        predicted_latency={
            "latency_ms": chosen.latency_ms,
            "lower_ms": chosen.latency_lower_ms,
            "upper_ms": chosen.latency_upper_ms,
            "coverage": INTERVAL_COVERAGE,
            "surrogate": {
                "kind": surrogate_doc.get("kind"),
                "device": device.key,
                "sha256": sha256_file(surrogate_path),
            },
            **({"predictor_quality": quality} if quality is not None else {}),
        },
        run=_run_ref(run, workspace),
    )
    folder = build_bundle(out_root, model, facts, tensorrt=tensorrt, labels=label_lines)
    return BuiltBundle(folder, read_manifest(folder))
