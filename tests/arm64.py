"""Emulated aarch64 boards for tests: a Debian arm64 userland run by qemu-user, behind sshd.

`scripts/build-arm64-sysroot` builds the images (Debian 12 / Python 3.11 and Debian 11 /
Python 3.9, with the aarch64 wheels of onnxruntime and ai-edge-litert) into
$OFA2_EDGE_ARM64_SYSROOTS or the user cache; `.ci/run` builds them before the tests. A board
is then a real OpenSSH server on 127.0.0.1 (:mod:`sshd`) whose device `python:` is the image's
launcher, so the host's SSH transport, the agent, its worker subprocesses and the runtime
wheels all run for real, only on an emulated CPU (timings are meaningless: never assert them).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import REPO, skip_or_fail
from sshd import Sshd, ssh_device

from ofa2_edge.devices.inventory import Device

BUILD_SCRIPT = REPO / "scripts" / "build-arm64-sysroot"
IMAGES = ("debian12", "debian11")


def sysroots_dir() -> Path:
    """Where the script puts the images (the same rule as the script's)."""
    env = os.environ.get("OFA2_EDGE_ARM64_SYSROOTS")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ofa2-edge" / "arm64"


@dataclass(frozen=True)
class Board:
    """One built image: its launcher (the board's Python) and what the script installed."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python3")

    @property
    def onnxruntime(self) -> str:
        return self.meta["runtimes"]["onnxruntime"]

    @property
    def litert(self) -> str:
        return self.meta["runtimes"]["ai-edge-litert"]


def board(name: str) -> Board:
    """The built image `name`, or a skip (a failure when CI requires `arm64`) saying how to build it."""
    if shutil.which("qemu-aarch64") is None:
        skip_or_fail("arm64", "qemu-aarch64 not installed (apt-get install qemu-user)")
    path = sysroots_dir() / name
    record = path / "sysroot.json"
    if not record.is_file():
        skip_or_fail("arm64", f"no emulated board image {name} at {path}: run scripts/build-arm64-sysroot --image all")
    return Board(name, path, json.loads(record.read_text()))


def board_device(server: Sshd, image: Board, work_dir: Path, key: str = "pi-emu") -> Device:
    """The emulated board as an inventory entry: SSH to the private sshd, the image's Python."""
    return ssh_device(server, work_dir, key=key, work_dir=str(work_dir), python=image.python, connect_timeout_s=10)


def add_args(server: Sshd, image: Board, work_dir: Path, key: str = "pi-emu") -> list[str]:
    """`ofa2-edge devices add` arguments for the same board."""
    return [
        "devices", "add", key, "--host", "127.0.0.1", "--port", str(server.port), "--user", server.user,
        "--key-file", str(server.client_key), "--known-hosts", str(server.known_hosts),
        "--python", image.python, "--work-dir", str(work_dir),
    ]


def torch_reference(arch: Any, inputs: Any) -> Any:
    """Torch's outputs of the random-weight subnet `export_subnet(arch)` exports (same seeded
    weights, same noise-recalibrated BatchNorm statistics), for `inputs` (n, 3, r, r)."""
    from exporters.api import BN_NOISE_IMAGES, BN_NOISE_SEED, random_supernet
    from exporters.parity import torch_outputs
    from ofa2_edge.supernet import noise_batches, recalibrate_bn

    subnet = random_supernet(arch.w).extract(arch)
    recalibrate_bn(subnet, noise_batches(arch.r, BN_NOISE_SEED, batch_size=BN_NOISE_IMAGES),
                   source=f"noise:{BN_NOISE_SEED}")
    subnet.eval()
    return torch_outputs(subnet, inputs)
