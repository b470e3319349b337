"""Agent records for host-side tests that need many of them without measuring each.

The probe is the agent's real one, run on this machine; another device is the same report
with different stable facts (and so a different fingerprint). Results are built with the
agent's own dataclasses, so they validate exactly as records from a device do.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from device_agents.probe import probe
from device_agents.records import (
    FailureKind,
    MeasureResult,
    ModelSpec,
    ProbeReport,
    Protocol,
    Stats,
    TensorSpec,
    fingerprint_of,
)
from ofa2_edge.space.arch import Arch


def probe_report(**facts: object) -> ProbeReport:
    """This machine's real probe, with stable facts overridden (another board)."""
    real = probe("/tmp")
    merged = {**real.fingerprint_facts, **facts}
    return dataclasses.replace(real, fingerprint_facts=merged, fingerprint=fingerprint_of(merged))


def record_for(
    arch: Arch,
    estimate_ms: float | None,
    protocol: Protocol,
    error: FailureKind | None = None,
    fingerprint: str = "f" * 64,
    runtime_version: str = "1.0",
    batch_id: str = "b-test",
) -> MeasureResult:
    spec = ModelSpec(
        arch.id,
        arch.to_dict(),
        f"{arch.id}.onnx",
        "0" * 64,
        "onnxruntime",
        (TensorSpec("input", (1, 3, arch.r, arch.r), "float32"),),
        (TensorSpec("output", (1, 1000), "float32"),),
    )
    now = datetime.now(timezone.utc).isoformat()
    if error is not None:
        return MeasureResult.failure(
            error,
            "test failure",
            spec,
            protocol,
            batch_id=batch_id,
            started_at=now,
            finished_at=now,
            device_fingerprint=fingerprint,
            runtime_version=runtime_version,
        )
    assert estimate_ms is not None
    e = estimate_ms
    stats = Stats(
        estimate_ms=e,
        n=10,
        n_total=10,
        n_outliers=0,
        min_ms=e,
        p10_ms=e,
        median_ms=e,
        mean_ms=e,
        p90_ms=e,
        p99_ms=e,
        max_ms=e,
        std_ms=0.0,
        cv=0.0,
        block_min_ms=(e,),
        block_median_ms=(e,),
        block_min_median_ms=e,
        block_min_spread=0.0,
        samples_ms=None,
    )
    failed = MeasureResult.failure(
        FailureKind.RUN_ERROR,
        "x",
        spec,
        protocol,
        batch_id=batch_id,
        started_at=now,
        finished_at=now,
        device_fingerprint=fingerprint,
        runtime_version=runtime_version,
    )
    return dataclasses.replace(failed, error_kind=None, error_msg=None, stats=stats, attempts=1)
