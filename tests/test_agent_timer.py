"""The thread-CPU timer: a single-threaded model's own compute time, for shared hosts."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import pytest
from agent_models import FAST, conv_net, request, save, spec

from device_agents.records import MeasureRequest, Protocol, TensorRTBuild
from device_agents.runner import BatchRunner


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_protocol_refuses_thread_cpu_where_it_would_lie() -> None:
    with pytest.raises(ValueError, match="needs threads == 1"):
        Protocol(timer="thread_cpu", threads=4)
    with pytest.raises(ValueError, match="timer 'sundial'"):
        Protocol(timer="sundial")
    trt = spec("a-000000000001", "m.onnx", "0" * 64, runtime="tensorrt", tensorrt=TensorRTBuild())
    with pytest.raises(ValueError, match="cannot time TensorRT"):
        MeasureRequest("b-1", "jetson", "/tmp", Protocol(timer="thread_cpu"), (trt,))


def test_thread_cpu_timing_ignores_a_busy_neighbour(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # a few ms per run, so scheduler time slices land inside runs and sub-ms jitter is small
    sha = save(conv_net(channels=32, depth=6, size=96), work / "m.onnx")
    model = spec("a-000000000001", "m.onnx", sha, in_shape=(1, 3, 96, 96))

    def measure(timer: str) -> float:
        protocol = dataclasses.replace(FAST, timer=timer, blocks=3, runs_per_block=20)
        out: list = []
        BatchRunner(request(work, [model], protocol), out.append, device_fingerprint="f").run()
        (result,) = [r for r in out if hasattr(r, "stats")]
        assert result.ok and result.protocol.timer == timer
        return result.stats.median_ms

    # two spinning processes keep both cores of a small host busy while we measure
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/OpenMP state
    hogs = [spawn.Process(target=_spin, args=(20.0,)) for _ in range(2)]
    for hog in hogs:
        hog.start()
    time.sleep(1.0)  # let them start spinning
    try:
        cpu_ms, wall_ms = measure("thread_cpu"), measure("wall")
    finally:
        for hog in hogs:
            hog.kill()
    # Preempted time counts on the wall clock, not as CPU time. The two figures come from two
    # sessions, which differ by a few percent on a noisy host even without preemption.
    assert 0 < cpu_ms <= wall_ms * 1.10
