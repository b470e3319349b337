"""The run store's rows formatted off the search's path, in a second process.

A 100 x 1000 search evaluates ~90k networks. Turning them into JSON lines (canonical arch
text, sha256 arch id, float reprs: `runstore.rows_blob`) took ~0.3 s of a ~6 s run on the
search's own core. `submit_rows` hands the arrays to a child process and returns a
`PendingRows`; the search keeps stepping and picks the bytes up when they are ready. The
child only formats: it opens no file, and what lands on disk, in which order, and when a
checkpoint may name it stay decided in one place (`runner.SearchRun`).

The child is ``python -m ofa2_edge.search.formatter``, started once per Python process
and shared by its searches. It is a plain subprocess, not a multiprocessing worker: it
does not re-import the caller's main script (so scripts need no ``__main__`` guard),
nothing is pickled (arrays travel as ``.npz`` frames read with ``allow_pickle=False``),
and it runs in its own session, so Ctrl-C stops the search but not the formatting of
rows already handed over. If the child cannot start or dies, the same function runs in
this process: slower, the same bytes.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from queue import SimpleQueue
from typing import IO, Sequence

import numpy as np

from ofa2_edge.search.runstore import rows_blob

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")


# --------------------------------------------------------------------- framing
def _write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_LENGTH.pack(len(data)))
    out.write(data)
    out.flush()


def _read_frame(src: IO[bytes]) -> bytes:
    head = src.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the row formatter closed its pipe")
    (n,) = _LENGTH.unpack(head)
    data = src.read(n)
    if len(data) < n:
        raise EOFError("the row formatter closed its pipe mid-frame")
    return data


def _request(args: tuple) -> bytes:
    genomes, w, gen, fields, values, feasible = args
    buf = io.BytesIO()
    extra = {} if feasible is None else {"feasible": np.asarray(feasible, dtype=bool)}
    np.savez(buf, genomes=genomes, w=np.float64(w), gen=gen, fields=np.array(fields, dtype=str), values=values, **extra)
    return buf.getvalue()


def _answer(request: bytes) -> bytes:
    with np.load(io.BytesIO(request), allow_pickle=False) as z:
        feasible = z["feasible"] if "feasible" in z.files else None
        return rows_blob(z["genomes"], float(z["w"]), z["gen"], z["fields"].tolist(), z["values"], feasible)


def main() -> None:
    """The child: answer each request frame on stdin with its rows on stdout, until EOF."""
    src, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request = _read_frame(src)
        except EOFError:
            return
        _write_frame(out, _answer(request))


# --------------------------------------------------------------------- the parent's side
class _Child:
    """The child process and one thread that feeds it requests and reads its answers, in order."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the modules this process sees
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
        )
        self.jobs: SimpleQueue[tuple[bytes, Future]] = SimpleQueue()
        self.alive = True
        self.answered = 0
        threading.Thread(target=self._serve, name="ofa2-edge-row-formatter", daemon=True).start()

    def submit(self, request: bytes) -> Future:
        future: Future = Future()
        self.jobs.put((request, future))
        return future

    def _serve(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        while True:
            request, future = self.jobs.get()
            if not self.alive:
                future.set_exception(EOFError("the row formatter is gone"))
                continue
            try:
                _write_frame(self.proc.stdin, request)
                future.set_result(_read_frame(self.proc.stdout))
                self.answered += 1
            except (OSError, EOFError, ValueError) as exc:
                self.alive = False
                self.proc.kill()
                self.proc.wait()
                future.set_exception(exc)


_lock = threading.Lock()
_child: _Child | None = None
_given_up = False  # a child that died before its first answer will not do better the next time


def _running_child() -> _Child | None:
    """The shared child, started on first use and again after it died; None once a child
    could not start or died without answering (rows are then formatted in this process)."""
    global _child, _given_up
    with _lock:
        if _given_up:
            return None
        if _child is not None and not _child.alive and _child.answered == 0:
            log.warning("rows are formatted in this process: the row formatter process exits at start")
            _child, _given_up = None, True
            return None
        if _child is None or not _child.alive:
            try:
                _child = _Child()
            except (OSError, ValueError) as exc:  # no executable to run (embedded interpreters), no fork
                log.warning("rows are formatted in this process: cannot start the row formatter (%s)", exc)
                _child, _given_up = None, True
        return _child


@dataclass
class PendingRows:
    """Rows being formatted: `ready()` without blocking, `blob()` waits for the bytes."""

    args: tuple
    future: Future | None

    def ready(self) -> bool:
        return self.future is None or self.future.done()

    def blob(self) -> bytes:
        if self.future is not None:
            try:
                return self.future.result()
            except (OSError, EOFError, ValueError) as exc:  # the child died (killed, out of memory)
                log.warning("the row formatter process failed (%s); formatting in this process", exc)
        return rows_blob(*self.args)


def submit_rows(genomes: np.ndarray, w: float, gen: np.ndarray, fields: Sequence[str], values: np.ndarray, feasible: np.ndarray | None) -> PendingRows:
    """Start formatting rows (`runstore.rows_blob`'s arguments) in the child process."""
    args = (np.asarray(genomes, dtype=np.int16), float(w), np.asarray(gen, dtype=np.int64), tuple(fields), np.asarray(values, dtype=np.float64), feasible)
    child = _running_child()
    return PendingRows(args, child.submit(_request(args)) if child is not None else None)


if __name__ == "__main__":
    main()
