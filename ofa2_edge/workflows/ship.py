"""Pick, bundle, verify: the deployment use case, once for `select`, `bundle` and `run`.

A run's front is priced on one device (its fitted predictor and its measured records), a
candidate is picked (an arch id, the best one within limits, or a caller's rule such as
the main job's knee), bundled for the device, and optionally measured there.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agents.records import Protocol
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.build import BuiltBundle, make_bundle
from ofa2_edge.deploy.select import Candidate, Limits, nearest_tradeoffs, price_front, select
from ofa2_edge.deploy.verify import ClassificationCheck, Verification, verify_bundle, verify_predictions
from ofa2_edge.devices.inventory import Device
from ofa2_edge.search.runstore import RunFolder
from ofa2_edge.tables.device import DeviceTable
from ofa2_edge.tables.quality import assess


def open_run(workspace: Workspace, run: str | Path) -> RunFolder:
    """A run folder by path, or by id under the workspace's runs/; it must have a front."""
    path = Path(run)
    return RunFolder(path if path.is_dir() else workspace.runs_dir / str(run)).require()


def priced_front(
    workspace: Workspace, run: str | Path, device_key: str, safe: float | None = None, allow_emulated: bool = False
) -> tuple[RunFolder, list[Candidate]]:
    """The run's feasible front with `device_key`'s predicted (and measured) latencies (a table
    measured under emulation only with `allow_emulated`)."""
    folder = open_run(workspace, run)
    table = DeviceTable.of(workspace, device_key)
    table.check_latency_source(allow_emulated)
    return folder, price_front(folder, table.predictor(), table, safe)


def choose(
    cands: list[Candidate], run: RunFolder, device_key: str, pick: str | None, limits: Limits, safe: float | None
) -> Candidate:
    """The candidate with id `pick`, else the most accurate one within `limits`."""
    if pick:
        for c in cands:
            if c.arch.id == pick:
                return c
        raise InvalidInputError(
            f"{pick} is not on the front of {run.run_id}; see `ofa2-edge select {run.run_id} --device {device_key}`"
        )
    passing = select(cands, limits)
    if not passing:
        raise InvalidInputError(nearest_tradeoffs(cands, limits, safe))
    return passing[0]


@dataclass(frozen=True)
class Shipped:
    """A bundle built for one pick, and its measurement on the device when verified."""

    chosen: Candidate
    bundle: BuiltBundle
    verification: Verification | None
    check: ClassificationCheck | None = None  # held-out images classified on the device (trained weights)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bundle": str(self.bundle.folder),
            "archive": f"{self.bundle.folder}.tar.gz",
            "arch_id": self.chosen.arch.id,
            "status": self.bundle.manifest["status"],
            "top1_pct": self.chosen.top1_pct,
            "predicted_latency_ms": self.chosen.latency_ms,
        }
        quality = (self.bundle.manifest["latency"].get("predicted") or {}).get("predictor_quality")
        if quality is not None:
            out["predictor_quality_ok"] = quality["good"]
        if self.verification is not None:
            out["measured_latency_ms"] = self.verification.result.estimate_ms
            out["within_predicted_interval"] = self.verification.within_interval
            out["measurement_flags"] = [f.value for f in self.verification.result.flags]
        if self.check is not None:
            out["on_device"] = self.check.on_device
        return out


def ship(
    chosen: Candidate,
    run: RunFolder,
    device: Device,
    workspace: Workspace,
    out_root: Path,
    *,
    verify_protocol: Protocol | None = None,
    trust_on_first_use: bool = False,
    host_cpu: AbstractContextManager[Any] | None = None,
    **build_options: Any,
) -> Shipped:
    """Bundle `chosen` for `device` (`build_options` go to `make_bundle`) and, with a
    `verify_protocol`, measure the bundle there. `host_cpu` is held around the export and the
    measurement, so a local device is never timed while this machine exports. A bundle with
    trained weights built with `verify_images` also has those held-out images classified on
    the device (`check`: agreement with torch, recorded in the manifest; the caller decides
    what a failed check means)."""
    cpu = host_cpu or nullcontext()
    if "quality" not in build_options:  # the verdict on the predictor that priced the pick goes into the manifest
        verdict = assess(DeviceTable.of(workspace, device.key))
        build_options["quality"] = {**verdict.to_dict(), "accepted_unstable": not verdict.good}
    with cpu:
        built = make_bundle(chosen, run, device, workspace, out_root, **build_options)
    checked = classified = None
    if verify_protocol is not None:
        with cpu:
            checked = verify_bundle(built.folder, device, workspace, verify_protocol, trust_on_first_use)
            if built.verification is not None:
                classified = verify_predictions(built.folder, device, workspace, built.verification, trust_on_first_use)
    return Shipped(chosen, built, checked, classified)
