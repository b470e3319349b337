"""Pick the transport a device's inventory entry asks for."""

from __future__ import annotations

from pathlib import Path

from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.transport import LocalTransport, Transport


def transport_for(device: Device, trust_on_first_use: bool = False, local_dir: Path | None = None) -> Transport:
    """A closed transport for `device`; use it as a context manager."""
    if device.transport == "local":
        return LocalTransport(device, base_dir=local_dir)
    from ofa2_edge.devices.ssh import SSHTransport  # paramiko is only imported for SSH devices

    return SSHTransport(device, trust_on_first_use=trust_on_first_use)
