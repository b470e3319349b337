"""The writer lock: exclusive across processes, gone with a killed holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ofa2_edge.core.errors import LockedError
from ofa2_edge.core.locks import exclusive

HOLD = """
import sys, time
from pathlib import Path
from ofa2_edge.core.locks import exclusive
with exclusive(Path(sys.argv[1]), "the table"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(lock: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    lock = tmp_path / "t" / ".lock"
    proc = _holder(lock)
    try:
        with pytest.raises(LockedError, match=rf"the table is being written .*pid {proc.pid}"):
            with exclusive(lock, "the table"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with exclusive(lock, "the table"):  # taken at once
        assert f"pid {os.getpid()}" in lock.read_text()


def test_a_waiting_writer_gets_the_lock_when_the_holder_ends(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    t0 = time.monotonic()
    killer = subprocess.Popen([sys.executable, "-c", f"import os,time,signal; time.sleep(0.5); os.kill({proc.pid}, 9)"])
    with exclusive(lock, "the table", wait_s=30):
        assert time.monotonic() - t0 < 30
    killer.wait()
    proc.wait()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with exclusive(lock, "the run"):
        with pytest.raises(LockedError):
            with exclusive(lock, "the run"):
                pass
    with exclusive(lock, "the run"):
        pass
