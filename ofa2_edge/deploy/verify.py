"""`bundle --verify`: measure the bundle's own model file on its device, and keep the result.

The exact file that ships is sent through the agent (which checks its sha256 on arrival),
measured under the device's protocol, written into the manifest (statistics, protocol,
device fingerprint and runtime version), and appended to the device's latency table, so
every deployment also sharpens that device's predictor. A measurement outside the
predicted interval is reported: the predictor may need more calibration.

The device's runtime also runs the file on the export's fixed parity input (``agent.pyz
infer``): its outputs are compared with the host runtime's on the same file, and with the
export's own torch-vs-host figure that bounds the device's difference from torch
(triangle inequality, same input). The figures go into the manifest (`device_parity`); a
bound above the export's tolerance fails the verification (a board whose runtime build
computes differently never gets a verified bundle).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.records import MeasureResult, Protocol, TensorRTBuild, TensorSpec
from device_agents.runtimes.base import ModelLoadFailed, RuntimeUnavailable
from ofa2_edge.core.errors import MeasurementError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.bundle import (
    check_bundle,
    model_file,
    read_tensorrt_build,
    record_measurement,
    record_on_device_accuracy,
)
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.runtimes import runtime_for_file
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.space.arch import Arch
from ofa2_edge.tables.device import DeviceTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    result: MeasureResult
    manifest: dict[str, Any]
    within_interval: bool | None  # None when the bundle had no predicted interval


def _shippable(folder: Any, manifest: dict[str, Any]) -> ShippableModel:
    arch = Arch.from_dict({k: manifest["arch"][k] for k in ("ks", "e", "d", "r", "w")})
    path = model_file(folder, manifest)
    sha = next(e["sha256"] for e in manifest["files"] if e["name"] == path.name)
    spec = read_tensorrt_build(folder)
    trt = None if spec is None else TensorRTBuild(precision=spec.precision, workspace_mib=spec.workspace_mib)
    runtime = runtime_for_file(manifest["format"], engine_build=trt is not None)

    def tensor(doc: dict[str, Any]) -> tuple[TensorSpec, ...]:
        return (TensorSpec(doc["name"], tuple(doc["shape"]), doc.get("dtype", "float32")),)

    return ShippableModel(arch, path, sha, runtime, tensor(manifest["input"]), tensor(manifest["output"]), trt)


def host_outputs(model: ShippableModel, inputs: np.ndarray) -> list[np.ndarray]:
    """This host's runtime's first output of `model` per sample, run by the agent's own code."""
    from device_agents.infer import infer

    with tempfile.TemporaryDirectory(prefix="ofa2-edge-parity-") as tmp:
        path = Path(tmp) / "inputs.npy"
        np.save(path, inputs, allow_pickle=False)
        doc = infer(model.runtime, str(model.path), str(path))
    return [np.asarray(s[0]["values"], dtype=np.float64).reshape(s[0]["shape"]) for s in doc["outputs"]]


def device_parity(session: DeviceSession, model: ShippableModel, manifest: dict[str, Any]) -> dict[str, Any]:
    """Device-side output difference on the export's parity input; MeasurementError beyond tolerance."""
    from exporters.parity import PARITY_SEED, parity_tensors

    export = (manifest.get("export") or {}).get("parity") or {}
    seed = int(export.get("input_seed", PARITY_SEED))
    inputs = parity_tensors(tuple(model.inputs[0].shape[1:]), 1, seed)
    device_out = session.outputs(model, inputs)[0][0]
    try:
        host_out = host_outputs(model, inputs)[0]
    except (RuntimeUnavailable, ModelLoadFailed) as exc:  # the host lacks that runtime: no comparison
        log.warning("%s: device-side parity not checked: %s", session.device.key, exc)
        return {"input_seed": seed, "n_inputs": 1, "runtime": model.runtime, "checked": False,
                "note": f"the host cannot run {model.runtime}: {exc}"}
    if device_out.shape != host_out.shape:
        raise MeasurementError(f"{session.device.key}: the device's output shape {device_out.shape} differs from "
                               f"the host's {host_out.shape}")
    if not np.all(np.isfinite(device_out)):
        raise MeasurementError(f"{session.device.key}: the device's runtime produced NaN or infinite outputs")
    vs_host = float(np.max(np.abs(device_out - host_out)))
    torch_host = export.get("max_abs_diff")
    bound = vs_host + float(torch_host) if torch_host is not None else None
    tolerance = export.get("tolerance")
    figures = {
        "checked": True,
        "input_seed": seed,
        "n_inputs": 1,
        "runtime": model.runtime,
        "device_runtime_version": session.runtime_version(model.runtime),
        "host_runtime": export.get("runtime"),
        "max_abs_diff_vs_host": vs_host,
        "max_abs_diff_vs_torch_bound": bound,
        "tolerance": tolerance,
        "reference_max_abs": export.get("reference_max_abs"),
    }
    if bound is not None and tolerance is not None and not bound <= float(tolerance):
        raise MeasurementError(
            f"{session.device.key}: the device's runtime differs from torch by up to {bound:.3e} on the parity input "
            f"(device vs host {vs_host:.3e} + host vs torch {torch_host:.3e}), above the export's tolerance "
            f"{float(tolerance):.1e}; the bundle was not verified"
        )
    return figures


def verify_bundle(
    folder: Any, device: Device, workspace: Workspace, protocol: Protocol, trust_on_first_use: bool = False
) -> Verification:
    """Measure the bundle in `folder` on `device`; update its manifest and the device's table."""
    manifest = check_bundle(folder)
    if manifest["device"]["key"] != device.key:
        raise MeasurementError(f"{folder} was built for device {manifest['device']['key']}, not {device.key}")
    model = _shippable(folder, manifest)
    table = DeviceTable.of(workspace, device.key)
    with DeviceSession(device, workspace.cache_dir, trust_on_first_use=trust_on_first_use) as session:
        assert session.probe is not None
        table.bind(session.probe, model.runtime)
        report = session.measure([model], protocol)
        measured_ok = bool(report.results) and report.results[0].ok
        # TensorRT builds its own engine from the ONNX file: its parity is the engine builder's concern
        parity = device_parity(session, model, manifest) if measured_ok and model.runtime != "tensorrt" else None
    if not report.results:
        raise MeasurementError(f"{device.key}: the link dropped before the bundle was measured; run --verify again")
    (result,) = report.results
    if not result.ok:
        raise MeasurementError(
            f"{device.key}: the bundle failed on the device: {result.error_kind.value}: {result.error_msg}"
        )
    table.append(result)
    predicted = manifest["latency"].get("predicted") or {}
    within = None
    if predicted.get("lower_ms") is not None:
        within = predicted["lower_ms"] <= result.estimate_ms <= predicted["upper_ms"]
    measured = {
        "latency_ms": result.estimate_ms,
        "statistic": result.protocol.estimator,
        "stats": dataclasses.asdict(result.stats) if result.stats else None,
        "protocol": result.protocol.to_dict(),
        "flags": [f.value for f in result.flags],
        "energy_mj_per_inference": result.energy.energy_mj_per_inference if result.energy else None,
        "device_key": device.key,
        "device_fingerprint": result.device_fingerprint,
        "runtime": result.runtime,
        "runtime_version": result.runtime_version,
        "measured_at": result.finished_at,
        "within_predicted_interval": within,
        "device_parity": parity,
    }
    manifest = record_measurement(folder, json.loads(json.dumps(measured)))
    if within is False:
        log.warning(
            "%s: measured %.2f ms is outside the predicted %.2f-%.2f ms; consider calibrating %s further",
            device.key,
            result.estimate_ms,
            predicted["lower_ms"],
            predicted["upper_ms"],
            device.key,
        )
    return Verification(result, manifest, within)


#: The least share of held-out images on which the device's top-1 must equal torch's.
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class ClassificationCheck:
    """The device's top-1 on held-out test images, compared with torch's and the truth."""

    on_device: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.on_device["passed"])


def verify_predictions(
    folder: Any, device: Device, workspace: Workspace, batch: Any, trust_on_first_use: bool = False
) -> ClassificationCheck:
    """Run `batch` (a :class:`ofa2_edge.deploy.build.VerificationBatch`) through the bundle's own
    model file on `device` via the agent; record agreement with torch and on-device top-1 in
    the manifest (`accuracy.on_device`). Agreement below 99 % is recorded, and reported by
    `passed`; the caller decides the exit."""
    import tempfile

    import numpy as np

    manifest = check_bundle(folder)
    if manifest["device"]["key"] != device.key:
        raise MeasurementError(f"{folder} was built for device {manifest['device']['key']}, not {device.key}")
    model = _shippable(folder, manifest)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npy"
        np.save(path, np.ascontiguousarray(batch.images, dtype=np.float32), allow_pickle=False)
        with DeviceSession(device, workspace.cache_dir, trust_on_first_use=trust_on_first_use) as session:
            got = np.asarray(session.classify(model, path, threads=device.threads), dtype=np.int64)
    n = int(got.size)
    agree = float((got == batch.torch_top1).mean())
    on_device = {
        "part": batch.part,
        "n_images": n,
        "image_indices_sha256": hashlib.sha256(np.asarray(batch.indices, dtype=np.int64).tobytes()).hexdigest(),
        "top1_pct": 100.0 * float((got == batch.labels).mean()),
        "torch_top1_pct": 100.0 * float((batch.torch_top1 == batch.labels).mean()),
        "agreement_pct": 100.0 * agree,
        "min_agreement_pct": 100.0 * MIN_AGREEMENT,
        "passed": agree >= MIN_AGREEMENT,
        "device_key": device.key,
        "runtime": model.runtime,
    }
    record_on_device_accuracy(folder, on_device)
    if not on_device["passed"]:
        log.warning("%s: the device agrees with torch on %.1f %% of %d images only", device.key, 100 * agree, n)
    return ClassificationCheck(on_device)
