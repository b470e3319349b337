"""A device's latency table on disk: `latency_tables/<device-key>/`.

- `device.json`: which device the table belongs to (key, fingerprint and the stable facts
  it hashes, runtime and version), written once by the first calibration;
- `measurements.jsonl`: the agent's records, verbatim and validated, one per line,
  appended and fsynced as each arrives (append-only JSON Lines rather than SQLite: one
  writer per device, a torn last line after a crash is detectable and skipped, and the
  file diffs, merges and travels back from the field as plain text);
- `surrogate.json`: the fitted latency predictor the search uses;
- `blocks.jsonl`: block mode's per-layer records (:mod:`ofa2_edge.calibration.blocks`), apart
  from the arch records above;
- `<r>_lookup_table.yaml`: OFA-format block tables (block mode or imported).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from device_agents.records import MeasureResult, ProbeReport, Protocol, RecordError
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import append_jsonl, iter_jsonl, read_json, write_json
from ofa2_edge.core.workspace import DEVICE_KEY_PATTERN
from ofa2_edge.space.arch import Arch

log = logging.getLogger(__name__)

DEVICE_SCHEMA = "ofa2-edge/device-table"
DEVICE_VERSION = 1
MEASUREMENTS = "measurements.jsonl"
SURROGATE = "surrogate.json"


@dataclass(frozen=True)
class MeasureKey:
    """Measurements are comparable only under the same device, runtime and protocol."""

    fingerprint: str
    runtime: str
    runtime_version: str | None
    protocol: Protocol

    @classmethod
    def of(cls, result: MeasureResult) -> "MeasureKey":
        return cls(result.device_fingerprint or "", result.runtime, result.runtime_version, result.protocol)


class DeviceTable:
    """The folder of one device's measurements, block tables and fitted predictor."""

    def __init__(self, tables_dir: str | Path, key: str) -> None:
        if not DEVICE_KEY_PATTERN.match(key or ""):
            raise InvalidInputError(f"device key {key!r} is not a valid table name")
        self.key = key
        self.folder = Path(tables_dir) / key

    @property
    def device_path(self) -> Path:
        return self.folder / "device.json"

    @property
    def measurements_path(self) -> Path:
        return self.folder / MEASUREMENTS

    @property
    def surrogate_path(self) -> Path:
        return self.folder / SURROGATE

    def exists(self) -> bool:
        return self.folder.is_dir()

    @classmethod
    def all(cls, tables_dir: str | Path) -> list["DeviceTable"]:
        """Every table folder under `tables_dir` whose name is a device key, sorted."""
        root = Path(tables_dir)
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        return [cls(root, n) for n in names if DEVICE_KEY_PATTERN.match(n)]

    # ------------------------------------------------------------------ identity
    def device_info(self) -> dict[str, Any] | None:
        if not self.device_path.exists():
            return None
        return read_json(self.device_path, DEVICE_SCHEMA, [DEVICE_VERSION])

    def bind(self, probe: ProbeReport, runtime: str, reuse: bool = False) -> None:
        """Tie the table to the probed device; refuse a table made on another device.

        With `reuse`, a table of a different fingerprint is accepted and the new
        fingerprint recorded beside the old one (its old measurements keep their own).
        """
        info = self.device_info()
        runtime_version = probe.runtimes.get(runtime).version if runtime in probe.runtimes else None
        now = datetime.now(timezone.utc).isoformat()
        if info is None:
            write_json(
                self.device_path,
                DEVICE_SCHEMA,
                DEVICE_VERSION,
                {
                    "key": self.key,
                    "fingerprint": probe.fingerprint,
                    "facts": probe.fingerprint_facts,
                    "runtime": runtime,
                    "runtime_version": runtime_version,
                    "created_at": now,
                    "reused_by": [],
                },
            )
            return
        if info["fingerprint"] == probe.fingerprint:
            return
        if not reuse:
            raise InvalidInputError(
                f"latency_tables/{self.key} was measured on another device (fingerprint {info['fingerprint'][:12]}, "
                f"this one is {probe.fingerprint[:12]}; facts then: {info.get('facts')}). Use another device key, "
                "or pass --reuse-table to add this device's measurements to it."
            )
        info["reused_by"] = [*info.get("reused_by", []), {"fingerprint": probe.fingerprint, "at": now}]
        payload = {k: v for k, v in info.items() if k not in ("schema", "schema_version")}
        write_json(self.device_path, DEVICE_SCHEMA, DEVICE_VERSION, payload)

    # ------------------------------------------------------------------ measurements
    def append(self, result: MeasureResult) -> None:
        """Commit one record durably (flushed and fsynced) before returning."""
        append_jsonl(self.measurements_path, result.to_dict())

    def records(self) -> Iterator[MeasureResult]:
        """Every stored record, validated; a malformed one stops with its line number."""
        if not self.measurements_path.exists():
            return
        for i, doc in enumerate(iter_jsonl(self.measurements_path), start=1):
            try:
                yield MeasureResult.from_dict(doc, where=f"{self.measurements_path} record {i}")
            except RecordError as exc:
                raise SchemaError(f"{exc}; fix or remove that line (the table was not changed)") from exc

    def measured(self, key: MeasureKey) -> dict[str, MeasureResult]:
        """Successful records taken under `key`, by arch id (the latest one wins)."""
        return {r.arch_id: r for r in self.records() if r.ok and MeasureKey.of(r) == key}

    def dataset(self, include_flagged: bool = True) -> tuple[list[Arch], np.ndarray, list[MeasureResult]]:
        """(archs, latency estimates in ms, records) of every successful measurement.

        An arch measured several times contributes its latest record. Flagged records
        (unstable, throttled) are kept unless `include_flagged` is false.
        """
        latest: dict[str, MeasureResult] = {}
        for r in self.records():
            if r.ok and r.arch is not None and (include_flagged or not r.flags):
                latest[r.arch_id] = r
        records = list(latest.values())
        archs = [Arch.from_dict(r.arch) for r in records]
        return archs, np.array([r.estimate_ms for r in records], dtype=np.float64), records
