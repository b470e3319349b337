"""Arch -> export (cached) -> ship -> measure: the path every latency on a device takes.

Exports happen chunk by chunk between measurements, never during them, so on the `local`
device the exporter does not steal CPU from the model being timed. An arch whose export
fails becomes an `export_error` record like any other failure, and the batch goes on.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from device_agents.records import FailureKind, MeasureResult, Protocol, TensorRTBuild, TensorSpec
from exporters import ExportCache, export_subnet
from exporters.onnx_compat import onnx_target
from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.runtimes import host_runtime
from ofa2_edge.devices.session import BatchReport, DeviceSession, ShippableModel, Subject
from ofa2_edge.space.arch import Arch
from ofa2_edge.supernet import Supernet

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Subject)


@dataclass(frozen=True)
class MeasurePlan:
    """How to turn archs into measurable files for one device."""

    fmt: str
    runtime: str
    tensorrt: TensorRTBuild | None = None

    @classmethod
    def for_device(cls, device: Device, fmt: str | None = None, precision: str = "fp16") -> "MeasurePlan":
        """The device's runtime, and `fmt` (default: the runtime's first format) checked against it."""
        runtime = host_runtime(device.runtime)
        fmt = fmt or runtime.formats[0]
        if fmt not in runtime.formats:
            raise InvalidInputError(
                f"device {device.key} measures with {device.runtime}, which reads {', '.join(runtime.formats)}, not {fmt}"
            )
        trt = TensorRTBuild(precision=precision) if runtime.builds_engine else None
        return cls(fmt, device.runtime, trt)


def _expected_io(arch: Arch) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    return (TensorSpec("input", (1, 3, arch.r, arch.r), "float32"),), (TensorSpec("logits", (1, 1000), "float32"),)


def export_failure(
    session: DeviceSession, arch: Arch, plan: MeasurePlan, protocol: Protocol, msg: str
) -> MeasureResult:
    """An `export_error` record: the arch never reached the device."""
    inputs, outputs = _expected_io(arch)
    placeholder = ShippableModel(
        arch, session.cache_dir / f"{arch.id}.failed", "0" * 64, plan.runtime, inputs, outputs, plan.tensorrt
    )
    return session.failure_record(placeholder, protocol, FailureKind.EXPORT_ERROR, msg)


def measure_archs(
    session: DeviceSession,
    archs: Sequence[Arch],
    plan: MeasurePlan,
    protocol: Protocol,
    cache: ExportCache,
    on_result: Callable[[MeasureResult], None] | None = None,
    supernet: Supernet | None = None,
    chunk: int = 8,
    export_lock: AbstractContextManager[Any] | None = None,
    measure_lock: AbstractContextManager[Any] | None = None,
) -> BatchReport:
    """Export and measure `archs` chunk by chunk; every record reaches `on_result` as it lands.

    `export_lock` is held while an export is built (a cache hit needs no CPU, so no lock) and
    `measure_lock` while measuring: give both the same lock for the `local` device, so no
    export (of this or another device's worker) competes for the CPU with a model timed here.
    """

    building = cache.building_under(export_lock)
    # the device's onnxruntime decides the file's IR version and opset (TensorRT parses ONNX itself)
    target = onnx_target(session.runtime_version(plan.runtime)) if plan.runtime == "onnxruntime" else None

    def ship(arch: Arch) -> ShippableModel:
        model = export_subnet(arch, plan.fmt, supernet=supernet, cache=building, onnx_target=target)
        return ShippableModel.from_export(model, arch, plan.tensorrt)

    def failed(arch: Arch, msg: str) -> MeasureResult:
        return export_failure(session, arch, plan, protocol, msg)

    return measure_models(session, archs, ship, failed, protocol, on_result, chunk, measure_lock)


def measure_models(
    session: DeviceSession,
    items: Sequence[S],
    ship: Callable[[S], ShippableModel],
    export_failed: Callable[[S, str], MeasureResult],
    protocol: Protocol,
    on_result: Callable[[MeasureResult], None] | None = None,
    chunk: int = 8,
    measure_lock: AbstractContextManager[Any] | None = None,
) -> BatchReport:
    """Export (`ship`) and measure `items` chunk by chunk; an export that raises becomes the
    record `export_failed` makes. Every record reaches `on_result` as it lands; `measure_lock`
    is held while measuring."""
    total = BatchReport()

    def deliver(result: MeasureResult) -> None:
        total.results.append(result)
        if on_result:
            on_result(result)

    pending = list(items)
    while pending:
        part, pending = pending[:chunk], pending[chunk:]
        ready: list[ShippableModel] = []
        for item in part:
            try:
                ready.append(ship(item))
            except Ofa2EdgeError as exc:
                log.warning("%s: export failed: %s", item.id, exc)
                deliver(export_failed(item, str(exc)))
        if not ready:
            continue
        with measure_lock or nullcontext():
            report = session.measure(ready, protocol, deliver)
        total.reconnects += report.reconnects
        if report.not_measured:  # the link is gone for good: leave the rest for a rerun
            total.not_measured = report.not_measured + list(pending)
            break
    return total


def standard_protocol(threads: int, timer: str = "wall", quick: bool = False) -> Protocol:
    """The default measurement protocol (benchmark_model/trtexec-like), or a short one for smoke
    tests (its quiet gate looks and records, but does not wait)."""
    if quick:
        return Protocol(
            threads=threads, timer=timer, warmup_runs=3, warmup_min_s=0.1, blocks=3, runs_per_block=5,
            block_min_s=0.05, cooldown_s=0.0, remeasure=0, quiet_wait_s=0.0,
        )
    return Protocol(threads=threads, timer=timer)
