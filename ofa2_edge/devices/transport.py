"""How the host reaches a device: run a fixed command, upload a file, clean up.

A transport never interprets what the device sends back beyond the agent's JSON records,
and only runs argv lists the host builds itself (the agent and a fixed hashing snippet).
`local` is just another device behind the same interface, so every test and the demo
exercise the real agent path (TVM's "local runner reuses the remote code path").

The toolkit deletes only what it created. A device's configured `work_dir` is the user's
folder: it is created when missing and never removed. The agent and models live in a work
folder the transport makes inside it, marked as ofa2-edge's own by a marker file
(`WORK_MARKER`); only a folder holding that marker is ever removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ofa2_edge.core.errors import DeviceUnreachableError, MeasurementError
from ofa2_edge.core.persist import sha256_file
from ofa2_edge.devices.inventory import Device

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


WORK_PREFIX = "ofa2-edge-work-"
WORK_MARKER = ".ofa2-edge-work.json"
WORK_SCHEMA = "ofa2-edge/work-folder"
WORK_SCHEMA_VERSION = 1


def work_marker(device_key: str, **owner: Any) -> str:
    """The marker text that makes a folder ofa2-edge's own (written right after mkdir)."""
    return json.dumps(
        {
            "schema": WORK_SCHEMA,
            "schema_version": WORK_SCHEMA_VERSION,
            "device": device_key,
            "created_at": datetime.now(timezone.utc).isoformat(),
            **owner,
        }
    )


def read_work_marker(text: str | bytes | None) -> dict[str, Any] | None:
    """The marker's fields when `text` is an ofa2-edge work-folder marker; None otherwise."""
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != WORK_SCHEMA:
        return None
    return doc


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

    # True when a later session finds the same work folder again (so an incomplete one is
    # kept for the rerun); False when every session gets a fresh folder.
    reuses_work_folder = False

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
    def remove_work_dir(self) -> None:
        """Remove the work folder this transport made, and only when it holds our marker."""

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
    """This machine: the agent runs in a subprocess, exactly as it would on a board.

    Each session gets a fresh work folder (copies are cheap here), so two commands measuring
    `local` at once, from one workspace or two, never share or delete each other's files.
    Folders left by a killed process (its pid gone) are swept when the next session opens.
    """

    def __init__(self, device: Device, base_dir: Path | None = None) -> None:
        super().__init__(device)
        self._parent = Path(device.work_dir).expanduser().absolute() if device.work_dir else base_dir
        self._dir: Path | None = None

    def open(self) -> None:
        if self._dir is not None and self._dir.is_dir():
            return  # a reconnect keeps the session's folder
        parent = self._parent if self._parent is not None else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)  # the user's folder: made if missing, never removed
        _sweep_abandoned(parent)
        folder = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{self.device.key}-", dir=parent))
        (folder / WORK_MARKER).write_text(
            work_marker(self.device.key, host=socket.gethostname(), pid=os.getpid()), encoding="utf-8"
        )
        self._dir = folder

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
        """Run `argv` in the work folder, streaming stdout lines to `on_line`.

        The command's stdin is a pipe this process holds open (and never writes to) until the
        command ends: if this process dies, the kernel closes it and an agent started with
        ``--watch-stdin`` stops its workers and exits. Output is decoded as UTF-8 with
        replacement, as over SSH: undecodable bytes reach the record parser, which refuses
        the line with a clear error, never a UnicodeDecodeError.
        """
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        proc = subprocess.Popen(
            self._python(argv),
            cwd=self.work_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
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
            if proc.poll() is None:  # on_line raised: do not leave the command running for nobody
                proc.kill()
                proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            err_thread.join(timeout=5)
        return CommandResult(proc.returncode, "".join(out_lines), "".join(err_chunks), timed_out.is_set())

    def _put(self, local: Path, remote: str) -> None:
        tmp = remote + ".part"
        shutil.copyfile(local, tmp)
        os.replace(tmp, remote)

    def remove_work_dir(self) -> None:
        if self._dir is not None and _owned(self._dir):
            shutil.rmtree(self._dir, ignore_errors=True)
        elif self._dir is not None:
            log.warning("%s: %s has no ofa2-edge marker; left in place", self.device.key, self._dir)


def _owned(folder: Path) -> dict[str, Any] | None:
    try:
        return read_work_marker((folder / WORK_MARKER).read_bytes())
    except OSError:
        return None


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown owner: keep its folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _sweep_abandoned(parent: Path) -> None:
    """Remove this machine's work folders whose creating process is gone (killed hosts)."""
    host = socket.gethostname()
    for folder in parent.glob(f"{WORK_PREFIX}*"):
        marker = _owned(folder) if folder.is_dir() and not folder.is_symlink() else None
        if marker and marker.get("host") == host and not _pid_alive(marker.get("pid")):
            log.info("removing the abandoned work folder %s", folder)
            shutil.rmtree(folder, ignore_errors=True)


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
