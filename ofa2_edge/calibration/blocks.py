"""Block-mode calibration: measure every distinct layer shape once, write OFA lookup tables.

OFA's `LatencyTable` prices a subnet by summing the latencies of its layers, each measured
alone. A resolution's table holds every layer an arch can run there: the stem conv, the
first (expand 1) block, per stage the first block (it changes channels and stride) and the
later blocks, each for every kernel and expand ratio, and the tail (`Conv_1`, `AvgPool2D`,
`Conv_2`, `Logits`): 96 keys per resolution for the default space, exactly the keys of
OFA's own Note10 tables. The 1x1 tail layers (`Conv_2`, `Logits`) have the same shape at
every resolution, so they are one model, measured once and entered in every table.

Each layer is exported alone (:func:`exporters.export_layer`: the static module the subnet
uses, with the supernet's seeded random weights) and timed through the same agent,
protocol and session as end-to-end calibration. Its record (the agent's `MeasureResult`,
``arch_id`` ``l-<12 hex>``, ``arch`` ``{"layer": key, "w": w}``) is committed to
``latency_tables/<device>/blocks.jsonl`` the moment it arrives, apart from the end-to-end
``measurements.jsonl`` (whose records are archs). A rerun skips layers already measured
under the same device fingerprint, runtime and protocol. Once every layer of a resolution
has a record under that key, ``<r>_lookup_table.yaml`` is written atomically in OFA's
format: count = timed runs, mean = the protocol's estimate (ms), std = their spread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from device_agents.records import FailureKind, MeasureResult, Protocol, TensorSpec
from exporters import LAYER_FORMATS, ExportCache, export_layer
from ofa2_edge.calibration.calibrate import bind_table, device_lut, fit_table
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.pipeline import MeasurePlan, measure_models
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.space.arch import MAX_DEPTH, N_BLOCKS, SearchSpace
from ofa2_edge.space.netplan import Layer, key_id, slot_layer, stem_layers, tail_layers
from ofa2_edge.surrogates.base import LatencySurrogate
from ofa2_edge.surrogates.lut import LayerStat, LutSurrogate, write_ofa_table
from ofa2_edge.surrogates.metrics import latency_metrics
from ofa2_edge.tables.device import DeviceTable

log = logging.getLogger(__name__)

Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class TableLayer:
    """One distinct layer shape of a block table: measured once, priced by its key."""

    layer: Layer
    w: float

    @cached_property
    def key(self) -> str:
        return self.layer.lut_key()

    @cached_property
    def id(self) -> str:
        return key_id(self.key)

    def to_dict(self) -> dict[str, Any]:
        """What the agent's record carries as `arch`."""
        return {"layer": self.key, "w": self.w}


def resolution_layers(r: int, space: SearchSpace) -> list[TableLayer]:
    """Every distinct layer an arch of `space` at `r` px runs, in plan order (OFA's table keys)."""
    w = space.w
    plan = list(stem_layers(r, w))
    for slot in range(N_BLOCKS):
        if slot % MAX_DEPTH < max(space.d):
            plan += [slot_layer(r, w, slot, k, e) for k in space.ks for e in space.e]
    plan += tail_layers(r, w)
    distinct: dict[str, TableLayer] = {}
    for layer in plan:
        distinct.setdefault(layer.lut_key(), TableLayer(layer, w))
    return list(distinct.values())


def table_layers(space: SearchSpace) -> dict[int, list[TableLayer]]:
    """The layers of every resolution's table."""
    return {r: resolution_layers(r, space) for r in space.resolutions}


def distinct_layers(by_resolution: dict[int, list[TableLayer]]) -> list[TableLayer]:
    """Each layer model once, although the 1x1 tail layers appear in every resolution's table."""
    seen: dict[str, TableLayer] = {}
    for layers in by_resolution.values():
        for t in layers:
            seen.setdefault(t.id, t)
    return list(seen.values())


def layer_stat(record: MeasureResult) -> LayerStat:
    """A record as an OFA table entry: count = timed runs, mean = the estimate, std (ms)."""
    stats = record.stats
    assert stats is not None
    return LayerStat(mean=stats.estimate_ms, std=stats.std_ms, count=stats.n_total)


def write_complete_tables(
    table: DeviceTable, by_resolution: dict[int, list[TableLayer]], done: dict[str, MeasureResult]
) -> tuple[dict[int, Path], dict[int, list[str]]]:
    """Write the YAML of every resolution whose layers all have a record in `done`.

    Returns (written paths, missing layer keys of each incomplete resolution).
    """
    written: dict[int, Path] = {}
    missing: dict[int, list[str]] = {}
    for r, layers in by_resolution.items():
        lacking = [t.key for t in layers if t.id not in done]
        if lacking:
            missing[r] = lacking
            continue
        written[r] = write_ofa_table(table.lookup_table_path(r), {t.key: layer_stat(done[t.id]) for t in layers})
    return written, missing


@dataclass
class BlockCalibrationResult:
    device: str
    fingerprint: str
    layers: int  # distinct layer models the tables need
    skipped: int = 0  # already in blocks.jsonl under the same device, runtime and protocol
    measured: list[MeasureResult] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)  # layer ids never reached (link lost)
    tables: dict[int, Path] = field(default_factory=dict)
    incomplete: dict[int, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[MeasureResult]:
        return [r for r in self.measured if not r.ok]


def _layer_io(t: TableLayer) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    size_in, size_out = t.layer.in_size, t.layer.out_size
    out = (1, t.layer.out_ch) if t.layer.kind == "Logits" else (1, t.layer.out_ch, size_out, size_out)
    return (TensorSpec("input", (1, t.layer.in_ch, size_in, size_in), "float32"),), (
        TensorSpec("output", out, "float32"),
    )


def measure_layers(
    session: DeviceSession,
    layers: Sequence[TableLayer],
    plan: MeasurePlan,
    protocol: Protocol,
    cache: ExportCache,
    on_result: Callable[[MeasureResult], None],
    chunk: int = 16,
) -> list[str]:
    """Export and measure `layers` chunk by chunk (records reach `on_result` as they land);
    returns the ids of the layers never reached."""

    def ship(t: TableLayer) -> ShippableModel:
        return ShippableModel.from_export(export_layer(t.layer, t.w, plan.fmt, cache=cache), t, plan.tensorrt)

    def failed(t: TableLayer, msg: str) -> MeasureResult:
        inputs, outputs = _layer_io(t)
        placeholder = ShippableModel(
            t, session.cache_dir / f"{t.id}.failed", "0" * 64, plan.runtime, inputs, outputs, plan.tensorrt
        )
        return session.failure_record(placeholder, protocol, FailureKind.EXPORT_ERROR, msg)

    report = measure_models(session, layers, ship, failed, protocol, on_result, chunk)
    return [t.id for t in report.not_measured]


def calibrate_blocks(
    device: Device,
    workspace: Workspace,
    protocol: Protocol,
    fmt: str | None = None,
    space: SearchSpace | None = None,
    reuse_table: bool = False,
    trust_on_first_use: bool = False,
    progress: Progress | None = None,
) -> BlockCalibrationResult:
    """Measure every layer the tables of `space` need (resuming), then write the complete tables.

    Both stored record files are read and validated before the device is touched, so a
    damaged table is refused with nothing changed. The table's writer lock is held
    throughout (a second writer of the same table is refused with LockedError).
    """
    plan = MeasurePlan.for_device(device, fmt)
    if plan.fmt not in LAYER_FORMATS:
        raise InvalidInputError(
            f"block tables are measured from single-layer {'/'.join(LAYER_FORMATS)} exports; device {device.key} "
            f"measures {plan.fmt} with {plan.runtime}. Calibrate it end to end (without --blocks) instead"
        )
    table = DeviceTable.of(workspace, device.key)
    with table.lock():
        return _calibrate_blocks_locked(
            device, workspace, table, plan, protocol, space or SearchSpace(), reuse_table, trust_on_first_use, progress
        )


def _calibrate_blocks_locked(
    device: Device,
    workspace: Workspace,
    table: DeviceTable,
    plan: MeasurePlan,
    protocol: Protocol,
    space: SearchSpace,
    reuse_table: bool,
    trust_on_first_use: bool,
    progress: Progress | None,
) -> BlockCalibrationResult:
    emit = progress or (lambda event, info: None)
    for _ in (*table.block_records(), *table.records()):  # refuse a damaged table before anything changes
        pass
    by_resolution = table_layers(space)
    distinct = distinct_layers(by_resolution)
    cache = ExportCache(workspace.exports_dir)
    t0 = time.perf_counter()
    with DeviceSession(device, workspace.cache_dir, trust_on_first_use=trust_on_first_use) as session:
        key = bind_table(session, table, device, plan, protocol, reuse_table)
        result = BlockCalibrationResult(device.key, key.fingerprint, len(distinct))
        done = table.measured_blocks(key)
        todo = [t for t in distinct if t.id not in done]
        result.skipped = len(distinct) - len(todo)
        emit("round", {"label": "block table", "total": len(distinct), "todo": len(todo), "skipped": result.skipped})

        def commit(record: MeasureResult) -> None:
            table.append_block(record)  # durable before anything else happens
            result.measured.append(record)
            emit("result", {"record": record})

        result.not_measured = measure_layers(session, todo, plan, protocol, cache, commit)
        result.tables, result.incomplete = write_complete_tables(table, by_resolution, table.measured_blocks(key))
    emit("tables", {"written": result.tables, "incomplete": result.incomplete})
    result.seconds["measure"] = time.perf_counter() - t0
    return result


def lut_vs_measured(table: DeviceTable, lut: LutSurrogate) -> dict[str, Any] | None:
    """How the LUT sum alone compares with the end-to-end measurements it can price."""
    archs, y, _ = table.dataset()
    keep = [i for i, a in enumerate(archs) if a.w == lut.width_mult and lut.covers(a.r)]
    if not keep:
        return None
    pred = lut.predict([archs[i] for i in keep])
    y = y[keep]
    return {**latency_metrics(y, pred), "mean_ratio_lut_to_measured": float(np.mean(pred / y))}


def fit_after_blocks(
    table: DeviceTable,
    width_mult: float,
    prior: LatencySurrogate | None = None,
    prior_label: str = "",
    seed: int = 0,
) -> tuple[LatencySurrogate | None, dict[str, Any]]:
    """The device's predictor once its block tables exist.

    With end-to-end measurements, the usual fit (which now also tries the LUT hybrid); with
    none, the uncorrected LUT sum becomes the predictor, like an imported OFA table, until
    `calibrate --budget N` measures subnets to learn the correction from.
    """
    archs, _, _ = table.dataset()
    if any(a.w == width_mult for a in archs):
        return fit_table(table, width_mult, prior, prior_label, seed)
    lut = device_lut(table)
    if lut is None:
        return None, {}
    lut.report = {
        "name": "lut",
        "source": f"block-mode calibration of {table.key}",
        "resolutions": list(lut.resolutions),
        "note": "uncorrected LUT sum: no end-to-end measurements yet; run calibrate --budget N to fit the hybrid",
    }
    lut.save(table.surrogate_path, device=table.key)
    return lut, lut.report
