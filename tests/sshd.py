"""A real OpenSSH server on 127.0.0.1 that plays a remote board in tests.

Keys and config live in a temp folder (hence `StrictModes no`); the daemon runs in the
foreground as a child process so a test can kill it mid-batch and start it again.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import skip_or_fail

from ofa2_edge.devices.inventory import Device

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def descendants(pid: int) -> list[int]:
    """All processes below `pid`, read from /proc (sshd sessions call setsid, so no killpg)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class Sshd:
    root: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_key: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "sshd.log", "ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        """Kill the daemon and every session it forked, as a board losing power would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def known_hosts_line(self) -> str:
        pub = (self.host_key.with_suffix(".pub")).read_text().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"

    def rotate_host_key(self) -> None:
        """Replace the server's host key, as a reflashed board (or an attacker) would."""
        self.host_key.unlink()
        self.host_key.with_suffix(".pub").unlink()
        keygen(self.host_key)


def make_sshd(root: Path) -> Sshd:
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        skip_or_fail("ssh", "OpenSSH server not installed (apt-get install openssh-server)")
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    host_key, client_key = root / "host_ed25519", root / "client_ed25519"
    keygen(host_key)
    keygen(client_key)
    (root / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    server = Sshd(root, port, getpass.getuser(), client_key, root / "known_hosts", host_key)
    server.known_hosts.write_text(server.known_hosts_line())
    server.start()
    return server


def ssh_device(server: Sshd, tmp_path: Path, **kw: object) -> Device:
    """A device record for `server` with strict host keys; its work folder under `tmp_path`
    unless `kw` names one (any field of `kw` replaces the default)."""
    fields: dict[str, object] = {
        "key": "pi-test",
        "transport": "ssh",
        "host": "127.0.0.1",
        "port": server.port,
        "user": server.user,
        "key_file": str(server.client_key),
        "known_hosts": str(server.known_hosts),
        "work_dir": str(tmp_path / "remote-work"),
        "python": sys.executable,
        "connect_timeout_s": 5,
    }
    return Device(**{**fields, **kw})  # type: ignore[arg-type]
