"""`bundle --verify`: measure the bundle's own model file on its device, and keep the result.

The exact file that ships is sent through the agent (which checks its sha256 on arrival),
measured under the device's protocol, written into the manifest (statistics, protocol,
device fingerprint and runtime version), and appended to the device's latency table, so
every deployment also sharpens that device's predictor. A measurement outside the
predicted interval is reported: the predictor may need more calibration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from device_agents.records import MeasureResult, Protocol, TensorRTBuild, TensorSpec
from ofa2_edge.core.errors import MeasurementError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.bundle import check_bundle, model_file, read_tensorrt_build, record_measurement
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
