"""The device inventory: which boards a team measures on, and how to reach each one.

Kept in `devices.yaml` in the workspace, so a field team can commit it beside their
latency tables. The embedded default device `local` (this machine, through the same agent
code path as any remote board) is always available and needs no entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import atomic_write_text
from ofa2_edge.core.workspace import DEVICE_KEY_PATTERN
from ofa2_edge.devices.runtimes import runtime_names

INVENTORY_SCHEMA = "ofa2-edge/devices"
INVENTORY_VERSION = 1
KEY_PATTERN = DEVICE_KEY_PATTERN
TRANSPORTS = ("local", "ssh")
LOCAL_KEY = "local"


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

    def __post_init__(self) -> None:
        if not KEY_PATTERN.match(self.key or ""):
            raise InvalidInputError(
                f"device key {self.key!r} must be lowercase letters, digits, '.', '_' or '-' (e.g. rpi4-livingroom)"
            )
        if self.transport not in TRANSPORTS:
            raise InvalidInputError(
                f"device {self.key}: transport {self.transport!r} unknown; choose from {', '.join(TRANSPORTS)}"
            )
        if self.runtime not in runtime_names():
            raise InvalidInputError(
                f"device {self.key}: runtime {self.runtime!r} unknown; choose from {', '.join(runtime_names())}"
            )
        if self.transport == "ssh" and not self.host:
            raise InvalidInputError(f"device {self.key}: an ssh device needs a host")
        if not 1 <= int(self.port) <= 65535:
            raise InvalidInputError(f"device {self.key}: port {self.port} is not a TCP port")
        if int(self.threads) < 1:
            raise InvalidInputError(f"device {self.key}: threads must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The non-default fields, so the YAML stays short and readable."""
        defaults = Device(key=self.key)
        return {k: v for k, v in asdict(self).items() if k == "key" or v != getattr(defaults, k)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Device":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"device {data.get('key')!r}: unknown field(s) {', '.join(unknown)}")
        return cls(**dict(data))


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
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise SchemaError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("schema_version") != INVENTORY_VERSION:
            raise SchemaError(
                f"{path}: expected an ofa2-edge device inventory with schema_version {INVENTORY_VERSION}, "
                f"found {doc.get('schema_version') if isinstance(doc, dict) else type(doc).__name__!r}"
            )
        entries = doc.get("devices") or []
        if not isinstance(entries, list):
            raise SchemaError(f"{path}: 'devices' must be a list")
        devices: dict[str, Device] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                raise SchemaError(f"{path}: each device must be a mapping, got {entry!r}")
            device = Device.from_dict(entry)
            if device.key in devices:
                raise SchemaError(f"{path}: device {device.key} is listed twice")
            devices[device.key] = device
        return cls(path, devices)

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
        known = ", ".join(sorted({LOCAL_KEY, *self.devices}))
        raise InvalidInputError(f"unknown device {key!r}; known: {known} (add one with `ofa2-edge devices add`)")

    def all(self) -> list[Device]:
        return [self.get(LOCAL_KEY), *(d for k, d in sorted(self.devices.items()) if k != LOCAL_KEY)]

    def add(self, device: Device, replace_existing: bool = False) -> None:
        if device.key in self.devices and not replace_existing:
            raise InvalidInputError(f"device {device.key} already exists; use --replace to overwrite it")
        self.devices[device.key] = device

    def remove(self, key: str) -> Device:
        if key not in self.devices:
            raise InvalidInputError(f"device {key!r} is not in {self.path}")
        return self.devices.pop(key)
