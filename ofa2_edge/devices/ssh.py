"""SSH transport (paramiko): key authentication, strict host keys, one connection per batch.

Host keys are checked strictly against a known_hosts file: an unknown key is refused
unless the user explicitly trusts it on first use (then it is recorded), and a changed key
is always refused with the standard warning, because a reflashed board and a
man-in-the-middle look the same from here.

The work folder is `<work_dir>/ofa2-edge-work-<device key>`, made with a marker file and
kept after an incomplete session, so a rerun after a dropped link re-sends no model that
already arrived. A folder of that name without our marker is refused, never written to or
deleted.
"""

from __future__ import annotations

import logging
import shlex
import socket
import stat
import time
from pathlib import Path
from typing import Sequence

import paramiko

from ofa2_edge.core.errors import DeviceUnreachableError, InvalidInputError
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.transport import (
    WORK_MARKER,
    WORK_PREFIX,
    CommandResult,
    LineCallback,
    Transport,
    read_work_marker,
    retry,
    work_marker,
)

log = logging.getLogger(__name__)

DEFAULT_WORK_DIR = "/tmp"  # the parent of the work folder when the device names none
CONNECT_ATTEMPTS = 3


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown (never a changed) host key once, and record it in known_hosts."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.known_hosts))
        log.warning("trusted new host key for %s: %s %s", hostname, key.get_name(), key.fingerprint)


_PUBLIC_KEY_PREFIXES = (b"ssh-", b"ecdsa-", b"sk-ssh-", b"sk-ecdsa-", b"---- BEGIN SSH2 PUBLIC KEY")
MAX_KEY_FILE_BYTES = 1 << 20


def check_key_file(device: Device) -> None:
    """Refuse a device's key file that is missing, unreadable or not a private key, naming it."""
    if device.key_file is None:
        return
    path = Path(device.key_file).expanduser()
    where = f"{device.key}: key_file {path}"
    fix = "set the path of the private key (`ofa2-edge devices add ... --key-file PATH --replace` or devices.yaml)"
    if not path.exists():
        raise InvalidInputError(f"{where} does not exist; {fix}")
    if not path.is_file():
        raise InvalidInputError(f"{where} is not a file; {fix}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInputError(f"{where} cannot be read ({exc.strerror or exc}); check its permissions") from exc
    if data.lstrip().startswith(_PUBLIC_KEY_PREFIXES):
        raise InvalidInputError(
            f"{where} is a public key; give the private key instead (usually the same path without .pub)"
        )
    if len(data) > MAX_KEY_FILE_BYTES or b"PRIVATE KEY-----" not in data:
        raise InvalidInputError(f"{where} is not a private key file (expected '-----BEGIN ... PRIVATE KEY-----')")
    try:
        paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException as exc:
        raise InvalidInputError(
            f"{where} is protected by a passphrase; load it into ssh-agent and leave key_file unset"
        ) from exc
    except (paramiko.SSHException, ValueError, TypeError, IndexError, UnicodeError) as exc:
        raise InvalidInputError(f"{where} is not a private key ofa2-edge can read ({exc})") from exc


def _host_label(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class SSHTransport(Transport):
    """A board reached over SSH; the agent runs with the board's own Python."""

    reuses_work_folder = True

    def __init__(self, device: Device, trust_on_first_use: bool = False) -> None:
        super().__init__(device)
        self.trust_on_first_use = trust_on_first_use
        self.known_hosts = Path(device.known_hosts or "~/.ssh/known_hosts").expanduser()
        self._client: paramiko.SSHClient | None = None
        self._parent = (device.work_dir or DEFAULT_WORK_DIR).rstrip("/") or "/"
        self._work_dir = f"{self._parent.rstrip('/')}/{WORK_PREFIX}{device.key}"

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(
            _TrustOnFirstUse(self.known_hosts) if self.trust_on_first_use else paramiko.RejectPolicy()
        )
        d = self.device
        try:
            client.connect(
                d.host,
                port=d.port,
                username=d.user,
                key_filename=d.key_file,
                timeout=d.connect_timeout_s,
                banner_timeout=d.connect_timeout_s,
                auth_timeout=d.connect_timeout_s,
                allow_agent=d.key_file is None,
                look_for_keys=d.key_file is None,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise DeviceUnreachableError(
                f"{d.key}: the host key of {_host_label(d.host, d.port)} has CHANGED (got {exc.key.get_name()} "
                f"{exc.key.fingerprint}). Someone may be intercepting the connection, or the board was reflashed. "
                f"If you are sure it is the latter, remove the old key (ssh-keygen -f {self.known_hosts} -R "
                f"'{_host_label(d.host, d.port)}') and connect again with --trust-on-first-use."
            ) from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise DeviceUnreachableError(
                    f"{d.key}: {_host_label(d.host, d.port)} is not in {self.known_hosts}; verify its host key "
                    "fingerprint and add it (ssh-keyscan / a first manual ssh), or pass --trust-on-first-use"
                ) from exc
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(5)
        self._client = client

    def open(self) -> None:
        d = self.device
        check_key_file(d)  # a wrong key file is the user's to fix, not a network fault to retry
        try:
            retry(f"connecting to {d.key}", CONNECT_ATTEMPTS, self._connect, _is_transient)
        except DeviceUnreachableError:
            raise
        except paramiko.AuthenticationException as exc:
            raise DeviceUnreachableError(
                f"{d.key}: authentication as {d.user} failed ({exc}); check the key file {d.key_file}"
            ) from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise DeviceUnreachableError(f"{d.key}: cannot reach {d.host}:{d.port} ({exc})") from exc
        self._make_work_folder()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise DeviceUnreachableError(f"{self.device.key}: not connected")
        return self._client

    @property
    def work_dir(self) -> str:
        return self._work_dir

    # ------------------------------------------------------------------ operations
    def run(self, argv: Sequence[str], timeout_s: float, on_line: LineCallback | None = None) -> CommandResult:
        """Run `argv` in the work folder, streaming stdout lines to `on_line`.

        The channel's stdin stays open (never written) while the command runs and is closed
        with the channel when it ends, times out or `on_line` raises; sshd then closes the
        command's stdin, as it does when this process dies or the link drops, and an agent
        started with ``--watch-stdin`` stops its workers and exits. Output is decoded as
        UTF-8 with replacement (the record parser refuses a damaged line).
        """
        command = f"cd {shlex.quote(self.work_dir)} && exec {shlex.join(argv)}"
        channel = None
        try:
            channel = self.client.get_transport().open_session()  # type: ignore[union-attr]
            channel.settimeout(1.0)
            channel.exec_command(command)
            out, err, buf = [], [], b""
            deadline = time.monotonic() + timeout_s
            timed_out = False
            while True:
                if channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(65536))
                if channel.recv_ready():
                    chunk = channel.recv(65536)
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        out.append(line + b"\n")
                        if on_line:
                            on_line(line.decode("utf-8", "replace"))
                    continue
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if channel.closed or not self.client.get_transport().is_active():  # type: ignore[union-attr]
                    raise DeviceUnreachableError(f"{self.device.key}: connection lost while running the agent")
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.02)
            if buf:
                out.append(buf)
                if on_line:
                    on_line(buf.decode("utf-8", "replace"))
            code = -1 if timed_out else channel.recv_exit_status()
            channel.close()
            if not timed_out and code == -1:  # closed without an exit status: the link died
                raise DeviceUnreachableError(f"{self.device.key}: connection lost while running the agent")
        except (OSError, EOFError, paramiko.SSHException, socket.timeout) as exc:
            raise DeviceUnreachableError(f"{self.device.key}: connection lost ({exc})") from exc
        finally:
            if channel is not None:
                try:
                    channel.close()  # idempotent; ends a command nobody reads any more
                except (OSError, EOFError, paramiko.SSHException):
                    pass  # the link is already gone, and with it the command's stdin
        return CommandResult(
            code, b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace"), timed_out
        )

    def _sftp(self) -> paramiko.SFTPClient:
        try:
            return self.client.open_sftp()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise DeviceUnreachableError(f"{self.device.key}: SFTP unavailable ({exc})") from exc

    def _mkdirs(self, path: str) -> None:
        sftp = self._sftp()
        try:
            parts = [p for p in path.split("/") if p]
            current = "" if path.startswith("/") else "."
            for part in parts:
                current = f"{current}/{part}"
                try:
                    sftp.stat(current)
                except FileNotFoundError:
                    try:
                        sftp.mkdir(current, mode=0o700)
                    except OSError as exc:  # fine if another session (a replica on this host) made it meanwhile
                        try:
                            made = stat.S_ISDIR(sftp.stat(current).st_mode or 0)
                        except OSError:
                            made = False
                        if not made:
                            raise DeviceUnreachableError(f"{self.device.key}: cannot make {current} ({exc})") from exc
        finally:
            sftp.close()

    def _read_marker(self, sftp: paramiko.SFTPClient) -> dict | None:
        try:
            with sftp.open(f"{self._work_dir}/{WORK_MARKER}", "rb") as f:
                return read_work_marker(f.read(65536))
        except (OSError, EOFError):
            return None

    def _make_work_folder(self) -> None:
        """Make (or reuse) the marked work folder inside the user's `work_dir`."""
        self._mkdirs(self._parent)  # the user's folder: made if missing, never removed
        sftp = self._sftp()
        try:
            try:
                sftp.mkdir(self._work_dir, mode=0o700)
            except OSError:
                if self._read_marker(sftp) is None:
                    raise InvalidInputError(
                        f"{self.device.key}: {self._work_dir} exists on the device but was not made by ofa2-edge "
                        f"(no {WORK_MARKER}); ofa2-edge will neither write into it nor delete it. Move it away "
                        "or set another work_dir for the device"
                    ) from None
                return
            with sftp.open(f"{self._work_dir}/{WORK_MARKER}", "wb") as f:
                f.write(work_marker(self.device.key, user=self.device.user).encode())
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise DeviceUnreachableError(f"{self.device.key}: cannot make {self._work_dir} ({exc})") from exc
        finally:
            sftp.close()

    def _put(self, local: Path, remote: str) -> None:
        sftp = self._sftp()
        try:
            tmp = remote + ".part"
            sftp.put(str(local), tmp)
            try:
                sftp.posix_rename(tmp, remote)
            except OSError:
                sftp.remove(remote)
                sftp.rename(tmp, remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise DeviceUnreachableError(f"{self.device.key}: upload of {local.name} failed ({exc})") from exc
        finally:
            sftp.close()

    def remove_work_dir(self) -> None:
        """Delete our marked work folder through SFTP (no remote shell `rm -rf` built from
        strings); SFTP lists entries without following symlinks, so none is walked into."""
        sftp = self._sftp()
        if self._read_marker(sftp) is None:
            sftp.close()
            log.warning("%s: %s has no ofa2-edge marker; left in place", self.device.key, self._work_dir)
            return

        def rmtree(path: str) -> None:
            for entry in sftp.listdir_attr(path):
                child = f"{path}/{entry.filename}"
                if child == marker:
                    continue
                if stat.S_ISDIR(entry.st_mode or 0):
                    rmtree(child)
                else:
                    sftp.remove(child)
            if path == self.work_dir:
                sftp.remove(marker)  # last: a folder cut short keeps its marker and stays ours
            sftp.rmdir(path)

        marker = f"{self.work_dir}/{WORK_MARKER}"
        try:
            rmtree(self.work_dir)
        except FileNotFoundError:
            pass
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise DeviceUnreachableError(f"{self.device.key}: cannot remove {self.work_dir} ({exc})") from exc
        finally:
            sftp.close()


def _is_transient(exc: Exception) -> bool:
    """Worth retrying: refused/reset connections and timeouts, not auth or host-key problems."""
    if isinstance(exc, (DeviceUnreachableError, paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return False
    return isinstance(exc, (OSError, EOFError, paramiko.SSHException))
