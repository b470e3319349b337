"""The calibrate use case: block tables and/or end-to-end measurements, then the predictor.

`calibrate_device` is what `ofa2-edge calibrate` runs; the CLI parses, shows progress and
prints the summary this returns. Both parts resume where a killed run stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from device_agents.records import Protocol
from ofa2_edge.calibration.blocks import calibrate_blocks, fit_after_blocks, lut_vs_measured
from ofa2_edge.calibration.calibrate import Progress, calibrate, device_lut
from ofa2_edge.calibration.design import DEFAULT_BUDGET
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.devices.inventory import Device
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.tables.device import DeviceTable
from ofa2_edge.tables.quality import assess


@dataclass(frozen=True)
class CalibrationRequest:
    """What to calibrate: `budget` subnets end to end (None: the default), and with
    `blocks` every layer shape of the space's resolutions first."""

    budget: int | None = None
    blocks: bool = False
    fmt: str | None = None
    space: SearchSpace = SearchSpace()
    seed: int = 0
    adaptive_rounds: int = 0
    prior: str | None = None  # another device's key: few-shot transfer from its predictor
    reuse_table: bool = False
    trust_on_first_use: bool = False
    accept_env_change: bool = False  # measure although governor / power mode / CPUs online changed

    def __post_init__(self) -> None:
        if self.subnets == 0 and not self.blocks:
            raise InvalidInputError("--budget 0 measures nothing; give a budget, or --blocks for the block tables")

    @property
    def subnets(self) -> int:
        """Subnets measured end to end."""
        return self.budget if self.budget is not None else (0 if self.blocks else DEFAULT_BUDGET)


@dataclass
class CalibrationSummary:
    """The JSON `calibrate --json` prints, and whether every model was reached and measured."""

    summary: dict[str, Any]
    unreached: bool  # the device could not be reached (again) for some models
    incomplete: bool  # a block table lacks a layer, or a model was not measured


def calibrate_device(
    device: Device,
    workspace: Workspace,
    request: CalibrationRequest,
    protocol: Protocol,
    progress: Progress | None = None,
) -> CalibrationSummary:
    """Calibrate `device` as `request` says; the table and its predictor are written as it goes."""
    budget = request.subnets
    emit = progress or (lambda event, info: None)
    table = DeviceTable.of(workspace, device.key)
    prior = DeviceTable.of(workspace, request.prior).predictor() if request.prior else None
    prior_label = request.prior or ""
    blocks: dict[str, Any] | None = None
    e2e: dict[str, Any] = {}
    incomplete = False
    fingerprint = None
    if request.blocks:
        res = calibrate_blocks(
            device, workspace, protocol, fmt=request.fmt, space=request.space, reuse_table=request.reuse_table,
            trust_on_first_use=request.trust_on_first_use, progress=emit,
        )  # fmt: skip
        fingerprint = res.fingerprint
        incomplete = bool(res.incomplete)
        blocks = {
            "fingerprint": res.fingerprint,
            "layers": res.layers,
            "measured_now": len(res.measured) - len(res.failed),
            "failed": [
                {"layer": (r.arch or {}).get("layer"), "error": r.error_kind.value, "message": r.error_msg}
                for r in res.failed
            ],
            "already_measured": res.skipped,
            "not_measured": res.not_measured,
            "tables": {str(r): str(p) for r, p in sorted(res.tables.items())},
            "incomplete": {str(r): len(keys) for r, keys in sorted(res.incomplete.items())},
            "seconds": res.seconds,
        }
    if budget > 0:
        result = calibrate(
            device, workspace, budget, protocol, fmt=request.fmt, space=request.space, seed=request.seed,
            adaptive_rounds=request.adaptive_rounds, reuse_table=request.reuse_table,
            trust_on_first_use=request.trust_on_first_use, prior=prior, prior_label=prior_label, progress=emit,
            accept_env_change=request.accept_env_change,
        )  # fmt: skip
        report = result.report
        fingerprint = result.fingerprint
        incomplete = incomplete or bool(result.not_measured)
        e2e = {
            "design": len(result.design),
            "measured_now": len(result.measured) - len(result.failed),
            "failed": [
                {"arch_id": r.arch_id, "error": r.error_kind.value, "message": r.error_msg} for r in result.failed
            ],
            "already_measured": result.skipped,
            "not_measured": [a.id for a in result.not_measured],
            "seconds": result.seconds,
            "refitted": result.refitted,
        }
    else:
        emit("fit", {})
        with table.lock():
            _, report = fit_after_blocks(table, request.space.w, prior, prior_label, request.seed)
    if blocks is not None:
        lut = device_lut(table)
        blocks["lut_vs_end_to_end"] = lut_vs_measured(table, lut) if lut is not None else None
    model = table.surrogate()
    summary = {
        "device": device.key,
        "fingerprint": fingerprint,
        **e2e,  # the end-to-end figures stay at the top level, as without --blocks
        "table": str(table.folder),
        "blocks": blocks,
        "fit": report,
        "quality": assess(table, model).to_dict() if model is not None else None,
    }
    unreached = bool(e2e.get("not_measured")) or bool((blocks or {}).get("not_measured"))
    return CalibrationSummary(summary, unreached, incomplete)
