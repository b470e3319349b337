"""The row formatter child: the very bytes `runstore.rows_blob` makes, through failures."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from ofa2_edge.search import formatter
from ofa2_edge.search.encoding import GenomeCodec
from ofa2_edge.search.runstore import rows_blob
from ofa2_edge.space.arch import SearchSpace

FIELDS = ("latency_ms:note10", "top1_pct")


def batch(n: int, seed: int, feasible: bool = False) -> tuple:
    rng = np.random.default_rng(seed)
    codec = GenomeCodec(SearchSpace())
    genomes = codec.decode(np.stack([rng.integers(0, c, n) for c in codec.n_choices], axis=1))
    values = rng.random((n, len(FIELDS))) * 100
    gens = rng.integers(1, 1000, n)
    return genomes, 1.2, gens, FIELDS, values, (rng.random(n) < 0.5) if feasible else None


@pytest.mark.parametrize("feasible", [False, True])
def test_the_child_formats_exactly_what_rows_blob_does(feasible: bool) -> None:
    args = batch(500, seed=1, feasible=feasible)
    pending = formatter.submit_rows(*args)
    assert pending.future is not None  # formatted by the child, not here
    assert pending.blob() == rows_blob(*args)
    assert pending.blob().count(b"\n") == 500


def test_non_finite_values_survive_the_trip() -> None:
    genomes, w, gens, fields, values, _ = batch(3, seed=2)
    values[0, 0], values[1, 1] = np.nan, np.inf
    assert formatter.submit_rows(genomes, w, gens, fields, values, None).blob() == rows_blob(genomes, w, gens, fields, values, None)


def test_requests_are_answered_in_order() -> None:
    batches = [batch(50 + i, seed=10 + i) for i in range(6)]
    pending = [formatter.submit_rows(*b) for b in batches]
    assert [p.blob() for p in pending] == [rows_blob(*b) for b in batches]


def test_ctrl_c_at_the_terminal_does_not_reach_the_child() -> None:
    formatter.submit_rows(*batch(1, seed=3)).blob()
    child = formatter._running_child()
    assert child is not None
    assert os.getpgid(child.proc.pid) != os.getpgrp()  # its own session: not in the foreground group


def test_a_killed_child_loses_no_rows() -> None:
    first = batch(2000, seed=4)
    formatter.submit_rows(*first).blob()  # the child is running
    child = formatter._running_child()
    assert child is not None
    pending = formatter.submit_rows(*first)
    os.kill(child.proc.pid, signal.SIGKILL)
    assert pending.blob() == rows_blob(*first)  # answered before the kill, or formatted here after it
    later = batch(100, seed=5)
    again = formatter.submit_rows(*later)
    assert again.blob() == rows_blob(*later)
    assert formatter._running_child() is not child  # a new child took over


def test_a_child_that_cannot_run_is_given_up_after_one_try(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formatter, "_child", None)
    monkeypatch.setattr(formatter, "_given_up", False)
    monkeypatch.setattr(formatter.sys, "executable", "/bin/false")  # starts, exits at once
    started = []
    real = formatter._Child
    monkeypatch.setattr(formatter, "_Child", lambda: started.append(1) or real())
    batches = [batch(30, seed=20 + i) for i in range(3)]
    assert [formatter.submit_rows(*b).blob() for b in batches] == [rows_blob(*b) for b in batches]
    assert formatter._given_up and len(started) == 1
    assert formatter.submit_rows(*batches[0]).future is None  # formatted here from then on
