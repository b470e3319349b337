"""One writer at a time: an exclusive lock on a file beside what a command writes.

Tables and run folders are written by one process at a time. The lock is the kernel's
`flock` on a lock file, so it dies with its holder: a killed process never leaves a stale
lock behind, and the next writer takes it at once. The holder writes its pid and command
into the file, so a refused writer is told who holds it.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ofa2_edge.core.errors import LockedError


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"


@contextmanager
def exclusive(lock_path: Path, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock at `lock_path` for the block; wait up to `wait_s` seconds for a holder
    to finish, then raise LockedError naming `what` and the holder."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"{what} is being written by another ofa2-edge process ({_holder(fd)}); "
                        "wait for it to finish, or stop it and run this again"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:400]}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
