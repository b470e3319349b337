"""The device inventory: which boards a team measures on, and how to reach each one.

Kept in `devices.yaml` in the workspace, so a field team can commit it beside their
latency tables. The embedded default device `local` (this machine, through the same agent
code path as any remote board) is always available and needs no entry.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import atomic_write_text
from ofa2_edge.core.workspace import DEVICE_KEY_PATTERN, unknown_device
from ofa2_edge.devices.runtimes import runtime_names

INVENTORY_SCHEMA = "ofa2-edge/devices"
INVENTORY_VERSION = 1
KEY_PATTERN = DEVICE_KEY_PATTERN
TRANSPORTS = ("local", "ssh")
LOCAL_KEY = "local"
MAX_THREADS = 1024
MAX_CONNECT_TIMEOUT_S = 3600.0

#: The type of every field but `key`: "int", "number" (finite), "text" (non-empty, no
#: control characters), "text?" (the same or null), "notes" (any text), "mapping".
_FIELD_KINDS = {
    "transport": "text", "host": "text?", "port": "int", "user": "text?", "key_file": "text?",
    "known_hosts": "text?", "runtime": "text", "threads": "int", "work_dir": "text?", "python": "text",
    "connect_timeout_s": "number", "notes": "notes", "extra": "mapping", "group": "text?",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXPECTED = {
    "int": "an integer", "number": "a number", "text": "a non-empty text", "text?": "a non-empty text or nothing",
    "notes": "a text", "mapping": "a mapping",
}


def _check_field(key: str, name: str, kind: str, value: Any) -> None:
    """Refuse a field of the wrong type, naming the device and the field (YAML gives any type)."""
    if kind == "text?" and value is None:
        return
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind in ("text", "text?"):
        ok = isinstance(value, str) and bool(value.strip()) and not _CONTROL.search(value)
    elif kind == "notes":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, dict)
    if not ok:
        hint = " (quote it in devices.yaml)" if kind.startswith("text") and isinstance(value, (int, float)) else ""
        _refuse(key, name, f"expected {_EXPECTED[kind]}, got {value!r}{hint}")


def _refuse(key: str, name: str, problem: str) -> None:
    """Raise naming the device and the field (the field also goes on the error, for the
    line number `Inventory.load` puts in front)."""
    exc = InvalidInputError(f"device {key}: {problem if problem.startswith(name) else f'{name}: {problem}'}")
    exc.field = name  # type: ignore[attr-defined]
    raise exc


@dataclass(frozen=True)
class Device:
    """How to reach one device and what to measure with there."""

    key: str
    transport: str = "local"
    host: str | None = None
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts
    runtime: str = "onnxruntime"
    threads: int = 1
    work_dir: str | None = None  # remote folder for the agent and models (default: a temp dir)
    python: str = "python3"  # the device's own interpreter
    connect_timeout_s: float = 15.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    group: str | None = None  # identical boards share a group: replicas calibrated as one (latency_tables/<group>/)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not KEY_PATTERN.match(self.key):
            exc = InvalidInputError(
                f"device key {self.key!r} must be lowercase letters, digits, '.', '_' or '-' (e.g. rpi4-livingroom)"
            )
            exc.field = "key"  # type: ignore[attr-defined]
            raise exc
        for name, kind in _FIELD_KINDS.items():
            _check_field(self.key, name, kind, getattr(self, name))
        if self.transport not in TRANSPORTS:
            _refuse(self.key, "transport", f"transport {self.transport!r} unknown; choose from {', '.join(TRANSPORTS)}")
        if self.runtime not in runtime_names():
            _refuse(
                self.key, "runtime", f"runtime {self.runtime!r} unknown; choose from {', '.join(runtime_names())}"
            )
        if self.transport == "ssh" and not self.host:
            _refuse(self.key, "host", "an ssh device needs a host")
        if not 1 <= self.port <= 65535:
            _refuse(self.key, "port", f"{self.port} is not a TCP port (1-65535)")
        if not 1 <= self.threads <= MAX_THREADS:
            _refuse(self.key, "threads", f"threads must be between 1 and {MAX_THREADS}, got {self.threads}")
        if not 0 < self.connect_timeout_s <= MAX_CONNECT_TIMEOUT_S:
            _refuse(
                self.key,
                "connect_timeout_s",
                f"must be > 0 and <= {MAX_CONNECT_TIMEOUT_S:g} seconds, got {self.connect_timeout_s}",
            )
        if self.group is not None and not KEY_PATTERN.match(self.group):
            _refuse(self.key, "group", f"group {self.group!r} must be lowercase letters, digits, '.', '_' or '-'")
        if self.group is not None and self.group == self.key:
            _refuse(self.key, "group", "a group needs a name of its own (not the device's key)")
        if not all(isinstance(k, str) for k in self.extra):
            _refuse(self.key, "extra", "every key must be a text")

    def to_dict(self) -> dict[str, Any]:
        """The non-default fields, so the YAML stays short and readable."""
        defaults = Device(key=self.key)
        return {k: v for k, v in asdict(self).items() if k == "key" or v != getattr(defaults, k)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Device":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise InvalidInputError(f"device {data.get('key')!r}: unknown field(s) {', '.join(unknown)}")
        if "key" not in data:
            raise InvalidInputError("a device needs a key (e.g. key: rpi4-livingroom)")
        return cls(**{str(k): v for k, v in data.items()})


def _entry_lines(text: str) -> list[dict[str, int]]:
    """Per entry of `devices:`, the line (1-based) of the entry ("") and of each field, for
    error messages; [] if not found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for k, v in root.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "devices" and isinstance(v, yaml.SequenceNode):
            lines = []
            for item in v.value:
                at = {"": item.start_mark.line + 1}
                if isinstance(item, yaml.MappingNode):
                    at.update({str(fk.value): fk.start_mark.line + 1 for fk, _ in item.value})
                lines.append(at)
            return lines
    return []


LOCAL_DEVICE = Device(key=LOCAL_KEY, transport="local", notes="this machine, measured through the agent")


@dataclass
class Inventory:
    """All devices of a workspace, read from and written to `devices.yaml`."""

    path: Path
    devices: dict[str, Device]

    @classmethod
    def load(cls, path: str | Path) -> "Inventory":
        path = Path(path)
        if not path.exists():
            return cls(path, {})
        try:
            text = path.read_text(encoding="utf-8")
            doc = yaml.safe_load(text) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
            raise SchemaError(f"{path}: not readable YAML ({str(exc)[:300] or type(exc).__name__})") from exc
        if not isinstance(doc, dict) or doc.get("schema_version") != INVENTORY_VERSION:
            raise SchemaError(
                f"{path}: expected an ofa2-edge device inventory with schema_version {INVENTORY_VERSION}, "
                f"found {doc.get('schema_version') if isinstance(doc, dict) else type(doc).__name__!r}"
            )
        entries = doc.get("devices") or []
        if not isinstance(entries, list):
            raise SchemaError(f"{path}: 'devices' must be a list")
        lines = _entry_lines(text)
        devices: dict[str, Device] = {}
        for i, entry in enumerate(entries):
            at = lines[i] if i < len(lines) else {}
            where = f"{path}:{at['']}" if at else f"{path}: device #{i + 1}"
            if not isinstance(entry, dict):
                raise SchemaError(f"{where}: each device must be a mapping, got {entry!r}")
            try:
                device = Device.from_dict(entry)
            except InvalidInputError as exc:
                line = at.get(getattr(exc, "field", ""))
                where = f"{path}:{line}" if line else where
                raise SchemaError(f"{where}: {exc}; fix that entry (or remove it and use `ofa2-edge devices add`)") from exc
            if device.key in devices:
                raise SchemaError(f"{where}: device {device.key} is listed twice")
            devices[device.key] = device
        inv = cls(path, devices)
        for device in devices.values():
            clash = device.group in devices or device.group == LOCAL_KEY
            if device.group is not None and clash:
                raise SchemaError(
                    f"{path}: group {device.group!r} of device {device.key} is also a device key; a group's table is "
                    f"latency_tables/<group>/, so give the group another name"
                )
        return inv

    def save(self) -> None:
        doc = {
            "schema": INVENTORY_SCHEMA,
            "schema_version": INVENTORY_VERSION,
            "devices": [d.to_dict() for d in sorted(self.devices.values(), key=lambda d: d.key)],
        }
        atomic_write_text(self.path, yaml.safe_dump(doc, sort_keys=False))

    def get(self, key: str) -> Device:
        """The device `key`; `local` falls back to the embedded default."""
        if key in self.devices:
            return self.devices[key]
        if key == LOCAL_KEY:
            return LOCAL_DEVICE
        raise InvalidInputError(unknown_device(key, {LOCAL_KEY, *self.devices}, f"not in {self.path.name}"))

    def all(self) -> list[Device]:
        return [self.get(LOCAL_KEY), *(d for k, d in sorted(self.devices.items()) if k != LOCAL_KEY)]

    def groups(self) -> dict[str, list[Device]]:
        """Every group and its replicas, by name (replicas sorted by key)."""
        found: dict[str, list[Device]] = {}
        for d in sorted(self.devices.values(), key=lambda d: d.key):
            if d.group is not None:
                found.setdefault(d.group, []).append(d)
        return found

    def group(self, name: str) -> list[Device]:
        """The replicas of group `name`; an error naming the known groups otherwise."""
        groups = self.groups()
        if name not in groups:
            known = ", ".join(groups) or "none"
            raise InvalidInputError(
                f"no device group {name!r} in {self.path} (groups: {known}); add its boards with "
                f"`ofa2-edge devices add KEY --host HOST ... --group {name}`"
            )
        return groups[name]

    def add(self, device: Device, replace_existing: bool = False) -> None:
        if device.key in self.devices and not replace_existing:
            raise InvalidInputError(f"device {device.key} already exists; use --replace to overwrite it")
        if device.key in self.groups() or device.key == LOCAL_KEY and device.group:
            raise InvalidInputError(f"{device.key} is the name of a device group; give the device another key")
        if device.group is not None and (device.group in self.devices or device.group == LOCAL_KEY):
            raise InvalidInputError(f"group {device.group!r} is also a device key; give the group another name")
        self.devices[device.key] = device

    def remove(self, key: str) -> Device:
        if key not in self.devices:
            raise InvalidInputError(f"device {key!r} is not in {self.path}")
        return self.devices.pop(key)
