"""How the host reaches a device: run a fixed command, upload a file, clean up.

A transport never interprets what the device sends back beyond the agent's JSON records,
and only runs argv lists the host builds itself (the agent and a fixed hashing snippet).
`local` is just another device behind the same interface, so every test and the demo
exercise the real agent path (TVM's "local runner reuses the remote code path").
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ofa2_edge.devices.inventory import Device
from ofa2_edge.errors import DeviceUnreachableError, MeasurementError
from ofa2_edge.persist import sha256_file

log = logging.getLogger(__name__)

LineCallback = Callable[[str], None]

# The only code the host asks a device's Python to run besides the agent: hash a file.
HASH_SNIPPET = (
    "import hashlib,sys\n"
    "try:\n"
    "    f=open(sys.argv[1],'rb')\n"
    "except OSError:\n"
    "    print('-')\n"
    "else:\n"
    "    h=hashlib.sha256()\n"
    "    for b in iter(lambda: f.read(1<<20), b''): h.update(b)\n"
    "    print(h.hexdigest())\n"
)


class UploadCorruptedError(MeasurementError):
    """A file reached the device with different bytes: the link is up, that copy is bad."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


class Transport(ABC):
    """One open connection to a device; reuse it for a whole batch."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def __enter__(self) -> "Transport":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def open(self) -> None:
        """Connect (retrying transient failures); raise DeviceUnreachableError if impossible."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def work_dir(self) -> str:
        """The device-side folder holding the agent and models."""

    @abstractmethod
    def run(self, argv: Sequence[str], timeout_s: float, on_line: LineCallback | None = None) -> CommandResult:
        """Run `argv` in the work dir; stream stdout lines to `on_line` as they arrive."""

    @abstractmethod
    def _put(self, local: Path, remote: str) -> None:
        """Copy one file to the device (atomically: temp name, then rename)."""

    @abstractmethod
    def remove_work_dir(self) -> None: ...

    def remote_path(self, name: str) -> str:
        return f"{self.work_dir.rstrip('/')}/{name}"

    def remote_sha256(self, name: str) -> str | None:
        """sha256 of a file in the work dir, computed on the device; None when absent."""
        res = self.run([self.device.python, "-c", HASH_SNIPPET, self.remote_path(name)], timeout_s=120)
        digest = res.stdout.strip()
        if res.returncode != 0 or not digest:
            raise DeviceUnreachableError(
                f"{self.device.key}: cannot run {self.device.python} on the device ({res.stderr.strip()[:200]}); "
                "install Python 3.8+ there or set the device's python path"
            )
        return None if digest == "-" else digest

    def upload(self, local: Path, name: str, sha256: str | None = None) -> str:
        """Upload `local` as `name` unless the device already holds the same bytes."""
        sha256 = sha256 or sha256_file(local)
        if self.remote_sha256(name) == sha256:
            log.debug("%s: %s already present", self.device.key, name)
            return self.remote_path(name)
        self._put(local, self.remote_path(name))
        arrived = self.remote_sha256(name)
        if arrived != sha256:
            raise UploadCorruptedError(f"{self.device.key}: {name} arrived corrupted (sha256 {arrived} != {sha256})")
        return self.remote_path(name)


class LocalTransport(Transport):
    """This machine: the agent runs in a subprocess, exactly as it would on a board."""

    def __init__(self, device: Device, base_dir: Path | None = None) -> None:
        super().__init__(device)
        self._base = Path(device.work_dir) if device.work_dir else base_dir
        self._dir: Path | None = None

    def open(self) -> None:
        if self._base is not None:
            self._base.mkdir(parents=True, exist_ok=True)
            self._dir = self._base
        else:
            self._dir = Path(tempfile.mkdtemp(prefix="ofa2-edge-local-"))

    def close(self) -> None:
        pass

    @property
    def work_dir(self) -> str:
        if self._dir is None:
            raise RuntimeError("transport is not open")
        return str(self._dir)

    def _python(self, argv: Sequence[str]) -> list[str]:
        # `python3` on this machine means the interpreter we run in, so the local device
        # sees the same runtimes (onnxruntime, LiteRT) the host installed.
        return [sys.executable, *argv[1:]] if argv and argv[0] == self.device.python == "python3" else list(argv)

    def run(self, argv: Sequence[str], timeout_s: float, on_line: LineCallback | None = None) -> CommandResult:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        proc = subprocess.Popen(
            self._python(argv),
            cwd=self.work_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        err_chunks: list[str] = []
        err_thread = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        err_thread.start()
        out_lines = []
        try:
            for line in proc.stdout:
                out_lines.append(line)
                if on_line:
                    on_line(line.rstrip("\n"))
            proc.wait()
        finally:
            timer.cancel()
            err_thread.join(timeout=5)
        return CommandResult(proc.returncode, "".join(out_lines), "".join(err_chunks), timed_out.is_set())

    def _put(self, local: Path, remote: str) -> None:
        tmp = remote + ".part"
        shutil.copyfile(local, tmp)
        os.replace(tmp, remote)

    def remove_work_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def retry(what: str, attempts: int, action: Callable[[], None], is_transient: Callable[[Exception], bool]) -> None:
    """Run `action`, retrying transient failures with exponential backoff (bounded)."""
    for attempt in range(1, attempts + 1):
        try:
            action()
            return
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_transient(exc) or attempt == attempts:
                raise
            delay = min(2.0 ** (attempt - 1), 8.0)
            log.warning("%s failed (%s); retrying in %.0f s (%d/%d)", what, exc, delay, attempt, attempts)
            time.sleep(delay)
