"""A device's latency table on disk: `latency_tables/<device-key>/`.

- `device.json`: which device the table belongs to (key, fingerprint and the stable facts
  it hashes, runtime and version), written once by the first calibration;
- `measurements.jsonl`: the agent's records, verbatim and validated, one per line,
  appended and fsynced as each arrives (append-only JSON Lines rather than SQLite: one
  writer per device, a torn last line after a crash is detectable and skipped, and the
  file diffs, merges and travels back from the field as plain text). Every record was
  checked against its request before it was written (:meth:`DeviceSession.check_record`);
  reading checks each row again (schema, physics, sizes, arch against arch id, device
  fingerprint against `device.json`), and a row that fails is an error naming file and
  line, never skipped: a poisoned table is never fitted silently;
- `surrogate.json`: the fitted latency predictor the search uses (read through
  :meth:`DeviceTable.surrogate`, which validates it); `surrogate.<quantity>.json` the
  predictor of another measured quantity (:mod:`ofa2_edge.tables.quantities`: energy,
  memory) when the device reports it;
- `verification.jsonl`: records of `ofa2-edge verify` (front members measured to check the
  predictor), same rules as `measurements.jsonl` but kept apart from it: no predictor is
  fitted on them, so a model is never judged on points it was fitted on;
- `blocks.jsonl`: block mode's per-layer records (:mod:`ofa2_edge.calibration.blocks`), apart
  from the arch records above (same rules; each row's `arch` is `{"layer": <lookup-table key>}`
  and its `arch_id` `l-<sha256 of the key>`);
- `<r>_lookup_table.yaml`: OFA-format block tables (block mode or imported).

A table measured under user-mode emulation (an aarch64 board image under qemu-user; the
probe's `emulation`) says so in `device.json` (`emulation: {host_machine, emulator}`; its
fingerprint facts carry `emulated_on`). Its timings are not the board's: search and
`select` refuse it as a latency source unless the user passes `--allow-emulated`
(:meth:`DeviceTable.check_latency_source`).

Writers hold :meth:`DeviceTable.lock` (`latency_tables/.<key>.lock`, beside the folder so
that it outlives `tables import --replace` swapping the folder and never travels in an
exported table): a second writer of the same table is refused, another table's is not.
"""

from __future__ import annotations

import logging
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from device_agents.records import MAX_LINE_CHARS, MeasureResult, ProbeReport, Protocol, RecordError
from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.locks import exclusive
from ofa2_edge.core.persist import append_jsonl, iter_jsonl_numbered, read_json, write_json
from ofa2_edge.core.workspace import DEVICE_KEY_PATTERN, Workspace
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.netplan import key_id

if TYPE_CHECKING:
    from ofa2_edge.surrogates.base import LatencySurrogate

log = logging.getLogger(__name__)

DEVICE_SCHEMA = "ofa2-edge/device-table"
DEVICE_VERSION = 1
DEVICE = "device.json"
MEASUREMENTS = "measurements.jsonl"
BLOCKS = "blocks.jsonl"
VERIFICATION = "verification.jsonl"
IMPORTED = "imported.jsonl"  # vendor tool logs (ofa2_edge.tables.imported owns it)
SURROGATE = "surrogate.json"
ROW_FIX = "fix or remove that line (the table was not changed)"
LOOKUP_TABLE = re.compile(r"^\d{2,4}_lookup_table\.yaml$")


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

    @classmethod
    def of(cls, workspace: Workspace, key: str) -> "DeviceTable":
        """Device `key`'s table in `workspace` (`latency_tables/<key>/`)."""
        return cls(workspace.tables_dir, key)

    @property
    def device_path(self) -> Path:
        return self.folder / DEVICE

    @property
    def measurements_path(self) -> Path:
        return self.folder / MEASUREMENTS

    @property
    def verification_path(self) -> Path:
        """Records of `ofa2-edge verify`, apart from the ones predictors are fitted on."""
        return self.folder / VERIFICATION

    @property
    def blocks_path(self) -> Path:
        return self.folder / BLOCKS

    @property
    def surrogate_path(self) -> Path:
        """The latency predictor's file."""
        return self.folder / SURROGATE

    def predictor_path(self, quantity: str = "latency") -> Path:
        """The file of `quantity`'s predictor (`surrogate.json` for latency, as always)."""
        from ofa2_edge.tables.quantities import quantity as known

        name = known(quantity).name
        return self.surrogate_path if name == "latency" else self.folder / f"surrogate.{name}.json"

    def lookup_table_paths(self) -> dict[int, Path]:
        """The OFA-format block tables, by resolution."""
        found = {}
        for path in self.folder.glob("*_lookup_table.yaml"):
            if LOOKUP_TABLE.match(path.name):
                found[int(path.name.split("_")[0])] = path
        return dict(sorted(found.items()))

    def lookup_table_path(self, r: int) -> Path:
        return self.folder / f"{r}_lookup_table.yaml"

    def predictor_paths(self) -> dict[str, Path]:
        """Every predictor file the table holds, by quantity."""
        from ofa2_edge.tables.quantities import quantity_names

        paths = {q: self.predictor_path(q) for q in quantity_names()}
        return {q: p for q, p in paths.items() if p.is_file()}

    @property
    def lock_path(self) -> Path:
        return self.folder.parent / f".{self.key}.lock"

    @staticmethod
    def is_table_file(name: str) -> bool:
        """Whether `name` is one of the files a table holds (what `tables export` packs and
        `tables import` accepts)."""
        from ofa2_edge.tables.quantities import quantity_names

        predictors = {SURROGATE, *(f"surrogate.{q}.json" for q in quantity_names() if q != "latency")}
        return name in {DEVICE, MEASUREMENTS, BLOCKS, VERIFICATION, IMPORTED, *predictors} or LOOKUP_TABLE.match(name) is not None

    def exists(self) -> bool:
        return self.folder.is_dir()

    @classmethod
    def all(cls, tables_dir: str | Path) -> list["DeviceTable"]:
        """Every table folder under `tables_dir` whose name is a device key, sorted."""
        root = Path(tables_dir)
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        return [cls(root, n) for n in names if DEVICE_KEY_PATTERN.match(n)]

    def lock(self, wait_s: float = 0.0) -> AbstractContextManager[None]:
        """Hold this table's writer lock for a block: every command that writes the table
        (calibrate, fit, measure --record, tables import) holds it, so a second writer is
        refused with LockedError instead of measuring everything twice."""
        return exclusive(self.lock_path, f"latency table {self.key}", wait_s)

    # ------------------------------------------------------------------ identity
    def device_info(self) -> dict[str, Any] | None:
        """`device.json`, checked: key, fingerprint(s), runtime."""
        if not self.device_path.exists():
            return None
        info = read_json(self.device_path, DEVICE_SCHEMA, [DEVICE_VERSION])
        where = f"{self.device_path}"
        fix = "restore it from a copy, or remove the table folder and calibrate again"
        if not isinstance(info.get("fingerprint"), str) or not info["fingerprint"]:
            raise SchemaError(f"{where}: 'fingerprint' must be a non-empty string; {fix}")
        if not isinstance(info.get("runtime"), str):
            raise SchemaError(f"{where}: 'runtime' must be a string; {fix}")
        if not isinstance(info.get("facts", {}), dict):
            raise SchemaError(f"{where}: 'facts' must be an object; {fix}")
        reused = info.get("reused_by", [])
        if not isinstance(reused, list) or not all(
            isinstance(r, dict) and isinstance(r.get("fingerprint"), str) for r in reused
        ):
            raise SchemaError(f"{where}: 'reused_by' must be a list of {{fingerprint, at}} objects; {fix}")
        return info

    def emulation(self) -> dict[str, Any] | None:
        """`{host_machine, emulator}` when the table was measured under user-mode emulation."""
        info = self.device_info()
        if info is None:
            return None
        emu = info.get("emulation")
        if emu is None and isinstance(info.get("facts", {}).get("emulated_on"), str):
            emu = {"host_machine": info["facts"]["emulated_on"], "emulator": None}
        if emu is not None and not (isinstance(emu, dict) and isinstance(emu.get("host_machine"), str)):
            raise SchemaError(f"{self.device_path}: 'emulation' must be an object with a host_machine string; "
                              "restore the file from the table's export")
        return emu

    def check_latency_source(self, allow_emulated: bool = False, flag: str = "--allow-emulated") -> None:
        """Refuse a table measured under emulation as a latency source, unless explicitly allowed."""
        emu = self.emulation()
        if emu is None:
            return
        if allow_emulated:
            log.warning("%s: using latencies measured under emulation (%s on %s); they are not the board's",
                        self.key, emu.get("emulator") or "an emulator", emu["host_machine"])
            return
        raise InvalidInputError(
            f"latency_tables/{self.key} was measured under emulation ({emu.get('emulator') or 'an emulator'} on "
            f"{emu['host_machine']}): its timings are 100x or more off the real board's and are no latency source. "
            f"Calibrate the real board, or pass {flag} to use them anyway (tests, demos)"
        )

    def fingerprints(self) -> set[str] | None:
        """The device fingerprints this table accepts records of (None: not bound yet)."""
        info = self.device_info()
        if info is None:
            return None
        return {info["fingerprint"], *(r["fingerprint"] for r in info.get("reused_by", []))}

    def bind(self, probe: ProbeReport, runtime: str, reuse: bool = False) -> None:
        """Tie the table to the probed device; refuse a table made on another device.

        With `reuse`, a table of a different fingerprint is accepted and the new
        fingerprint recorded beside the old one (its old measurements keep their own).
        """
        info = self.device_info()
        runtime_version = probe.runtimes.get(runtime).version if runtime in probe.runtimes else None
        now = datetime.now(timezone.utc).isoformat()
        emulation = (
            {"host_machine": probe.emulation.host_machine, "emulator": probe.emulation.emulator}
            if probe.emulation is not None
            else None
        )
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
                    **({"emulation": emulation} if emulation else {}),
                },
            )
            return
        if info["fingerprint"] == probe.fingerprint:
            return
        if (self.emulation() is None) != (emulation is None):
            was, now_is = ("an emulated", "a real") if emulation is None else ("a real", "an emulated")
            raise InvalidInputError(
                f"latency_tables/{self.key} was measured on {was} device and this is {now_is} one: emulated and "
                "real timings never share a table (not even with --reuse-table); use another device key"
            )
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

    @staticmethod
    def _rows(path: Path) -> Iterator[tuple[str, MeasureResult]]:
        """(file:line, agent record) of every row of one of the table's JSON Lines files;
        a row that is not a valid agent record is an error naming file and line."""
        if not path.exists():
            return
        for lineno, doc in iter_jsonl_numbered(path, MAX_LINE_CHARS):
            where = f"{path}:{lineno}"
            try:
                yield where, MeasureResult.from_dict(doc, where=f"{where}: record")
            except RecordError as exc:
                raise SchemaError(f"{exc}; {ROW_FIX}") from exc

    def records(self) -> Iterator[MeasureResult]:
        """Every stored record, validated; a malformed one stops with its file and line.

        Each row must be a valid agent record (schema, physics, sizes) about an arch whose
        id is its `arch_id`, taken on a device this table is bound to.
        """
        yield from self._checked(self.measurements_path)

    def append_verification(self, result: MeasureResult) -> None:
        """Commit one verification record to `verification.jsonl` durably (flushed and fsynced)."""
        append_jsonl(self.verification_path, result.to_dict())

    def verification_records(self) -> Iterator[MeasureResult]:
        """Every record of `verification.jsonl`, checked like :meth:`records` (none if absent)."""
        yield from self._checked(self.verification_path)

    def _checked(self, path: Path) -> Iterator[MeasureResult]:
        """The arch records of `path`, each checked against its arch id and this table's device."""
        fingerprints = self.fingerprints() if path.exists() else None
        for where, record in self._rows(path):
            if record.arch is not None:
                try:
                    arch_id = Arch.from_dict(record.arch).id
                except (Ofa2EdgeError, TypeError, ValueError, OverflowError) as exc:
                    raise SchemaError(f"{where}: field arch is not a valid arch ({exc}); {ROW_FIX}") from exc
                if arch_id != record.arch_id:
                    raise SchemaError(
                        f"{where}: field arch is the arch {arch_id}, not {record.arch_id} (its arch_id); {ROW_FIX}"
                    )
            elif record.ok:
                raise SchemaError(f"{where}: a successful record without its arch; {ROW_FIX}")
            fingerprint = record.device_fingerprint
            if fingerprints is not None and fingerprint is not None and fingerprint not in fingerprints:
                raise SchemaError(
                    f"{where}: field device_fingerprint {fingerprint[:40]!r} is not this table's device "
                    f"({', '.join(sorted(fingerprints))}, {self.device_path}); {ROW_FIX}"
                )
            yield record

    # ------------------------------------------------------------------ block records
    def append_block(self, result: MeasureResult) -> None:
        """Commit one layer record to `blocks.jsonl` durably (flushed and fsynced)."""
        append_jsonl(self.blocks_path, result.to_dict())

    def block_records(self) -> Iterator[MeasureResult]:
        """Every stored layer record, validated; a malformed one stops with its line number.

        An unterminated last line left by a crash is skipped (its layer is measured again);
        any other unreadable line, or one that is not a layer record, is an error naming
        file and line, never skipped.
        """
        for where, record in self._rows(self.blocks_path):
            layer = (record.arch or {}).get("layer")
            if not isinstance(layer, str) or record.arch_id != key_id(layer):
                raise SchemaError(
                    f"{where}: not a layer record (arch_id {record.arch_id!r}, arch {record.arch!r}: expected "
                    f"arch {{'layer': <lookup-table key>, ...}} and arch_id l-<sha256 of the key>); {ROW_FIX}"
                )
            yield record

    def measured_blocks(self, key: MeasureKey) -> dict[str, MeasureResult]:
        """Successful layer records taken under `key`, by layer id (the latest one wins)."""
        return {r.arch_id: r for r in self.block_records() if r.ok and MeasureKey.of(r) == key}

    # ------------------------------------------------------------------ predictor
    def surrogate(self, quantity: str = "latency") -> LatencySurrogate | None:
        """The fitted predictor of `quantity`, validated (None if there is none)."""
        from ofa2_edge.surrogates.base import load_surrogate

        path = self.predictor_path(quantity)
        if not path.exists():
            return None
        return load_surrogate(path)

    def predictor(self, quantity: str = "latency") -> LatencySurrogate:
        """The fitted predictor of `quantity`; an error saying how to get one if there is none."""
        model = self.surrogate(quantity)
        if model is None:
            how = (
                f"run `ofa2-edge calibrate --device {self.key}` or `ofa2-edge fit --device {self.key}`, or import a "
                "table with `ofa2-edge tables import`"
                if quantity == "latency"
                else f"run `ofa2-edge fit --device {self.key} --quantity {quantity}` on a table whose records carry it"
            )
            raise InvalidInputError(
                f"device {self.key} has no fitted {quantity} predictor ({self.predictor_path(quantity)}); {how}"
            )
        return model

    def measured(self, key: MeasureKey) -> dict[str, MeasureResult]:
        """Successful records taken under `key`, by arch id (the latest one wins)."""
        return {r.arch_id: r for r in self.records() if r.ok and MeasureKey.of(r) == key}

    def dataset(
        self, include_flagged: bool = True, quantity: str = "latency"
    ) -> tuple[list[Arch], np.ndarray, list[MeasureResult]]:
        """(archs, values of `quantity` in its unit, records) of every successful measurement
        that reports it (latency: the estimate in ms).

        An arch measured several times contributes its latest such record. Flagged records
        (unstable, throttled) are kept unless `include_flagged` is false.
        """
        from ofa2_edge.tables.quantities import quantity as known

        value = known(quantity).value
        latest: dict[str, MeasureResult] = {}
        for r in self.records():
            if r.ok and r.arch is not None and (include_flagged or not r.flags) and value(r) is not None:
                latest[r.arch_id] = r
        records = list(latest.values())
        archs = [Arch.from_dict(r.arch) for r in records]
        return archs, np.array([value(r) for r in records], dtype=np.float64), records

    # ------------------------------------------------------------------ overview
    def resolutions(self) -> set[int]:
        """The resolutions this table holds end-to-end measurements or block tables of."""
        found = set(self.lookup_table_paths())
        for record in self.records():
            r = (record.arch or {}).get("r") if record.ok else None
            if isinstance(r, int) and not isinstance(r, bool):
                found.add(r)
        return found

    def summary(self) -> dict[str, Any]:
        """What `tables list/show` print: the device, record counts, the predictor's held-out figures."""
        info = self.device_info() or {}
        ok = failed = flagged = 0
        for r in self.records():
            ok += r.ok
            failed += not r.ok
            flagged += bool(r.ok and r.flags)
        predictor = None
        model = self.surrogate()
        if model is not None:
            held = model.report.get("held_out") or {}
            predictor = {
                "kind": model.kind,
                "within_10pct": held.get("share_within_10pct"),
                "mape_pct": held.get("mape_pct"),
            }
        luts = list(self.lookup_table_paths())
        return {
            "key": self.key,
            "fingerprint": info.get("fingerprint"),
            "runtime": info.get("runtime"),
            "runtime_version": info.get("runtime_version"),
            "ok": ok,
            "failed": failed,
            "flagged": flagged,
            "surrogate": predictor,
            "block_tables": luts,
            "block_layers_measured": len({r.arch_id for r in self.block_records() if r.ok}),
        }
