"""From a chosen candidate to a bundle: weights, optional BN recalibration, export, manifest.

With a trained supernet (`supernets/NAME` from `ofa2-edge train`, its manifest binding it to
a dataset), the pick is extracted with the trained weights, its BatchNorm statistics are
recalibrated on the dataset's train part exactly as `evaluate` does, the dataset's
preprocessing and class names go into the bundle (`labels.txt`), and the bundle is
`deployable`. For `--verify`, held-out *test* images are preprocessed here with the recorded
preprocessing and classified by torch, so the device's answers can be compared to them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters import ExportCache, export_module, export_subnet
from exporters.onnx_compat import onnx_target
from exporters.representative import folder_digest
from exporters.tensorrt import build_spec
from ofa2_edge.accuracy.source import open_supernet
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

if TYPE_CHECKING:
    from ofa2_edge.data import DataSpec

#: Seed of the random subset of images used for BN recalibration (recorded in the manifest).
CALIB_SEED = 0


@dataclass(frozen=True)
class VerificationBatch:
    """Held-out test images for an on-device check: preprocessed (N, 3, r, r) float32, their
    true labels, torch's top-1 for them, and which test images they are."""

    images: np.ndarray
    labels: np.ndarray
    torch_top1: np.ndarray
    indices: np.ndarray
    part: str = "test"


@dataclass(frozen=True)
class BuiltBundle:
    folder: Path
    manifest: dict[str, Any]
    verification: VerificationBatch | None = None


def _trained_subnet(trained: Any, arch: Any, data: Any) -> tuple[Any, Any]:
    """The pick with trained weights and BN statistics recalibrated on the train part (as
    `evaluate` does), and the opened dataset (`data`: a folder, default the manifest's, split
    as the supernet was trained; or a `DataSpec` taken as it is, e.g. the main job's `data:`)."""
    from ofa2_edge.accuracy.evaluate import DEFAULT_BATCH, EvaluateSettings, bn_subset, check_pair
    from ofa2_edge.data import batches, open_dataset

    ds = open_dataset(trained.data_spec(data))  # the split it was trained with
    check_pair(trained, ds)
    subnet = trained.net.extract(arch)
    settings = EvaluateSettings()
    idx = bn_subset(ds, settings.bn_images, settings.bn_seed)
    recalibrate_bn(
        subnet,
        (x for x, _ in batches(ds, "train", arch.r, DEFAULT_BATCH, indices=idx)),
        source=f"train subset seed {settings.bn_seed} of dataset {ds.fingerprint[:16]}",
    )
    return subnet, ds


def verification_batch(subnet: Any, ds: Any, n_images: int, seed: int = 0) -> VerificationBatch:
    """`n_images` test images (a seeded choice), preprocessed with the subnet's recorded
    preprocessing, with torch's top-1 answers."""
    import torch

    r = subnet.arch.r
    if ds.preprocessing(r) != subnet.preprocessing:
        raise InvalidInputError(
            f"the dataset's preprocessing at {r} px differs from the one the supernet was trained with; "
            "verify with the dataset it was trained on"
        )
    n_test = ds.size("test")
    if n_test < 1:
        raise InvalidInputError("the dataset's test part is empty: no held-out images to verify the bundle with")
    idx = np.sort(np.random.default_rng([seed, 17]).permutation(n_test)[: min(n_images, n_test)])
    x = ds.preprocessed("test", idx, r)
    with torch.no_grad():
        top1 = subnet(x).argmax(dim=1).numpy()
    return VerificationBatch(
        np.ascontiguousarray(x.numpy(), dtype=np.float32), ds.labels("test")[idx], top1.astype(np.int64), idx
    )


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


def measured_accuracy(subnet: Any, ds: Any) -> dict[str, Any]:
    """The pick's own top-1 with the bundle's weights and BN statistics: on the val part (the
    selection split) and the test part (held out from every choice)."""
    from ofa2_edge.accuracy.evaluate import DEFAULT_BATCH, score
    from ofa2_edge.data import batches

    out: dict[str, Any] = {"dataset_fingerprint": ds.fingerprint}
    for part in ("val", "test"):
        if ds.size(part) > 0:
            scores, _ = score(subnet, list(batches(ds, part, subnet.arch.r, DEFAULT_BATCH)), len(ds.classes))
            out[f"{part}_top1_pct"] = scores.top1_pct
            out[f"{part}_top5_pct"] = scores.top5_pct
            out[f"{part}_n_images"] = scores.n_images
    return out


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
    data: Path | DataSpec | None = None,
    verify_images: int = 0,
) -> BuiltBundle:
    """Export `chosen` for `device` (real weights from `supernet`, else random) and bundle it.

    `quality` (the predictor's verdict, :mod:`ofa2_edge.tables.quality`) is recorded beside the
    predicted latency, so a bundle shipped with an untrusted predictor says so."""
    plan = MeasurePlan.for_device(device, fmt, precision)
    trained = open_supernet(supernet) if supernet is not None else None
    n_classes = trained.n_classes if trained is not None else N_CLASSES
    label_lines = read_labels(labels, n_classes) if labels is not None else None  # fail before the export
    cache = ExportCache(workspace.exports_dir)
    arch = chosen.arch
    check: VerificationBatch | None = None
    measured: dict[str, Any] | None = None
    if calib_images is not None and supernet is None:
        raise InvalidInputError("--calib-images recalibrates real weights: give the checkpoint with --supernet")
    # the IR version and opset the device's onnxruntime loads (its version as the table recorded it)
    info = DeviceTable.of(workspace, device.key).device_info() or {}
    target = onnx_target(info.get("runtime_version")) if plan.runtime == "onnxruntime" else None
    if trained is not None and trained.manifest is not None:
        if calib_images is not None:
            raise InvalidInputError(
                "a trained supernet's BN statistics come from its dataset's train part (--data); drop --calib-images"
            )
        subnet, ds = _trained_subnet(trained, arch, data)
        if label_lines is None:
            label_lines = list(trained.classes or ds.classes)
        measured = measured_accuracy(subnet, ds)
        if verify_images > 0:
            check = verification_batch(subnet, ds, verify_images)
        model = export_module(subnet, plan.fmt, cache=cache, onnx_target=target)
    elif supernet is None:
        model = export_subnet(arch, plan.fmt, cache=cache, onnx_target=target)
    else:
        net = trained.net if trained is not None else load_supernet(supernet, width_mult=arch.w)
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
        accuracy={**_accuracy(run, chosen, real_weights=supernet is not None), **({"measured": measured} if measured else {})},
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
    return BuiltBundle(folder, read_manifest(folder), check)
