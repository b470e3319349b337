"""Ensembles measured on a device as one model, by the same agent and protocol as subnets.

`sequential`: the device's onnxruntime with its sequential executor (members one after
another, `threads` intra-op threads). `parallel`: the agent runtime `onnxruntime-parallel`
(ORT_PARALLEL; one inter-op thread per member, up to the device's cores; one intra-op
thread each). Both are timed on the wall clock with the thread-CPU fallback off, so the two
modes (and a 1-member "ensemble", i.e. a single subnet plus a softmax) are timed alike.

Records go to the ensemble run folder's `measured.jsonl` (schema
`ofa2-edge/ensemble-measurement`, one line per ensemble and mode, appended and fsynced as
each lands; a rerun skips what is there under the same device fingerprint, mode, threads
and protocol). They never enter the device's latency table: that table holds subnets.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from device_agents.records import MeasureResult, Protocol
from exporters import ExportCache
from exporters.onnx_compat import onnx_target
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.persist import append_jsonl, iter_jsonl_numbered
from ofa2_edge.devices.pipeline import measure_models, standard_protocol
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.ensemble.export import EnsembleSubject, export_ensemble, ordered
from ofa2_edge.ensemble.pool import MODES
from ofa2_edge.space.arch import Arch
from ofa2_edge.supernet import Supernet

log = logging.getLogger(__name__)

MEASURED_FILE = "measured.jsonl"
SCHEMA = "ofa2-edge/ensemble-measurement"
VERSION = 1
RUNTIMES = {"sequential": "onnxruntime", "parallel": "onnxruntime-parallel"}


def ensemble_protocol(threads: int, quick: bool = False) -> Protocol:
    """The standard protocol, wall clock, no thread-CPU fallback (see the module docstring)."""
    return dataclasses.replace(standard_protocol(threads, "wall", quick), cpu_fallback=False)


def threads_for(mode: str, n_members: int, cores: int, seq_threads: int = 1) -> int:
    """Sequential: the device's thread setting; parallel: one inter-op thread per member, at most `cores`."""
    if mode not in MODES:
        raise InvalidInputError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return seq_threads if mode == "sequential" else max(1, min(n_members, cores))


def read_measured(path: Path) -> list[dict[str, Any]]:
    """The measurement rows of `path` (none when it does not exist)."""
    if not path.is_file():
        return []
    out = []
    for lineno, doc in iter_jsonl_numbered(path):
        if doc.get("schema") != SCHEMA or doc.get("schema_version") != VERSION or not isinstance(doc.get("ensemble_id"), str):
            raise InvalidInputError(f"{path}:{lineno}: not an ensemble measurement row; fix or remove that line")
        out.append(doc)
    return out


def measure_ensembles(
    session: DeviceSession,
    ensembles: Sequence[Sequence[Arch]],
    mode: str,
    cache: ExportCache,
    *,
    cores: int,
    supernet: Supernet | None = None,
    quick: bool = False,
    seq_threads: int = 1,
    record_to: Path | None = None,
    extra: Callable[[EnsembleSubject], dict[str, Any]] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Export each ensemble as one ONNX file and measure it in `mode`; one row per ensemble.
    `extra(subject)` adds fields (e.g. the predicted latencies) to its row."""
    runtime = RUNTIMES[mode]
    session.runtime_version(runtime)  # refuses a device without it, naming what to install
    target = onnx_target(session.runtime_version("onnxruntime"))
    probe = session.probe
    assert probe is not None
    subjects = [EnsembleSubject(ordered(m)) for m in ensembles]
    done = {}
    if record_to is not None:
        for row in read_measured(record_to):
            done[(row["ensemble_id"], row["mode"], row["threads"], row["device_fingerprint"], str(row["protocol"]))] = row
    rows: list[dict[str, Any]] = []
    groups: dict[int, list[EnsembleSubject]] = {}
    for s in subjects:
        groups.setdefault(threads_for(mode, len(s.members), cores, seq_threads), []).append(s)
    for threads, group in sorted(groups.items()):
        protocol = ensemble_protocol(threads, quick)
        todo = []
        for s in group:
            key = (s.id, mode, threads, probe.fingerprint, str(protocol.to_dict()))
            if key in done:
                rows.append(done[key])
            else:
                todo.append(s)
        todo = list({s.id: s for s in todo}.values())
        if not todo:
            continue

        def ship(s: EnsembleSubject) -> ShippableModel:
            model = export_ensemble(s.members, supernet, cache, onnx_target=target)
            base = ShippableModel.from_export(model, s)
            return dataclasses.replace(base, runtime=runtime)

        def failed(s: EnsembleSubject, msg: str, protocol: Protocol = protocol) -> MeasureResult:
            from device_agents.records import FailureKind, TensorSpec

            r = max(a.r for a in s.members)
            placeholder = ShippableModel(
                s, session.cache_dir / f"{s.id}.failed", "0" * 64, runtime,
                (TensorSpec("input", (1, 3, r, r), "float32"),), (TensorSpec("probs", (1, 1000), "float32"),),
            )  # fmt: skip
            return session.failure_record(placeholder, protocol, FailureKind.EXPORT_ERROR, msg)

        by_id = {s.id: s for s in todo}

        def deliver(
            result: MeasureResult, protocol: Protocol = protocol, threads: int = threads, by_id: dict = by_id
        ) -> None:
            s = by_id[result.arch_id]
            row = {
                "schema": SCHEMA,
                "schema_version": VERSION,
                "ensemble_id": s.id,
                "members": [a.id for a in s.members],
                "n_members": len(s.members),
                "mode": mode,
                "runtime": runtime,
                "threads": threads,
                "device_key": session.device.key,
                "device_fingerprint": probe.fingerprint,
                "ok": result.ok,
                "estimate_ms": result.stats.estimate_ms if result.ok and result.stats else None,
                "cv": result.stats.cv if result.ok and result.stats else None,
                "flags": [str(getattr(f, "value", f)) for f in (result.flags or ())],
                "error": None if result.ok else f"{getattr(result.error_kind, 'value', result.error_kind)}: {result.error_msg}",
                "model_sha256": result.model_sha256,
                "protocol": protocol.to_dict(),
                **(extra(s) if extra is not None else {}),
            }
            if record_to is not None:
                append_jsonl(record_to, row)
            rows.append(row)
            if on_row is not None:
                on_row(row)

        measure_models(session, todo, ship, failed, protocol, deliver)
    return rows
