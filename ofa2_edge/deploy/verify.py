"""`bundle --verify`: measure the bundle's own model file on its device, and keep the result.

The exact file that ships is sent through the agent (which checks its sha256 on arrival),
measured under the device's protocol, written into the manifest (statistics, protocol,
device fingerprint and runtime version), and appended to the device's latency table, so
every deployment also sharpens that device's predictor. A measurement outside the
predicted interval is reported: the predictor may need more calibration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agents.records import MeasureResult, Protocol, TensorRTBuild, TensorSpec
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
