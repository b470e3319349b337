"""Measurement sessions through the real agent: locally, over a real sshd, and across a dying link."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from agent_models import conv_net, save
from sshd import Sshd, make_sshd, ssh_device

from device_agents.records import FailureKind, MeasureResult, Protocol, TensorSpec
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.space.arch import SearchSpace

QUICK = Protocol(
    warmup_runs=2,
    warmup_min_s=0.0,
    blocks=3,
    runs_per_block=5,
    block_min_s=0.0,
    block_warmup_runs=1,
    interleave=1,
    cooldown_s=0.0,
    timeout_s=60.0,
    remeasure=0,
    quiet_wait_s=0.0,
)


def models(tmp_path: Path, n: int) -> list[ShippableModel]:
    archs = SearchSpace().sample(n, np.random.default_rng(0))
    out = []
    for i, arch in enumerate(archs):
        path = tmp_path / f"m{i}.onnx"
        sha = save(conv_net(channels=8 + 4 * i, depth=2, size=32, seed=i), path)
        out.append(
            ShippableModel(
                arch,
                path,
                sha,
                "onnxruntime",
                (TensorSpec("x", (1, 3, 32, 32), "float32"),),
                (TensorSpec("y", (1, 10), "float32"),),
            )
        )
    return out


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


def test_local_session_measures_and_cleans_up(tmp_path: Path) -> None:
    batch = models(tmp_path, 3)
    seen: list[MeasureResult] = []
    with DeviceSession(Device(key="local"), tmp_path / "cache") as session:
        assert session.probe is not None and session.probe.fingerprint
        report = session.measure(batch, QUICK, seen.append)
        work_dir = Path(session.transport.work_dir)
    assert [r.arch_id for r in seen] == [r.arch_id for r in report.results]
    assert len(report.ok) == 3 and not report.not_measured
    assert all(r.device_fingerprint == session.probe.fingerprint and r.protocol == QUICK for r in report.ok)
    assert all(r.stats.estimate_ms > 0 for r in report.ok)
    assert not work_dir.exists()  # a complete batch leaves nothing on the device


def test_a_copy_corrupted_on_the_device_is_replaced(tmp_path: Path) -> None:
    batch = models(tmp_path, 1)
    with DeviceSession(Device(key="local"), tmp_path / "cache", cleanup=False) as session:
        session.measure(batch, QUICK)
        remote = Path(session.transport.remote_path(batch[0].remote_name))
        remote.write_bytes(b"bit rot")
        report = session.measure(batch, QUICK)
    assert len(report.ok) == 1


def test_mismatched_model_file_is_a_checksum_record(tmp_path: Path) -> None:
    (good,) = models(tmp_path, 1)
    wrong = dataclasses.replace(good, sha256="0" * 64)  # what the host believes differs from the bytes
    with DeviceSession(Device(key="local"), tmp_path / "cache") as session:
        report = session.measure([wrong], QUICK)
    assert report.failed[0].error_kind == FailureKind.UPLOAD_ERROR and "arrived corrupted" in report.failed[0].error_msg


@pytest.mark.ssh
def test_ssh_session_agrees_with_local(sshd: Sshd, tmp_path: Path) -> None:
    batch = models(tmp_path, 2)
    with DeviceSession(ssh_device(sshd, tmp_path), tmp_path / "cache") as session:
        remote = session.measure(batch, QUICK)
    with DeviceSession(Device(key="local"), tmp_path / "cache") as session:
        local = session.measure(batch, QUICK)
    for r, l in zip(remote.ok, local.ok, strict=True):
        # the same machine behind two transports: same model, same order of magnitude
        assert r.arch_id == l.arch_id and 1 / 3 < r.stats.estimate_ms / l.stats.estimate_ms < 3


@pytest.mark.ssh
def test_link_dying_mid_batch_loses_nothing_and_a_rerun_measures_the_rest(sshd: Sshd, tmp_path: Path) -> None:
    batch = models(tmp_path, 4)
    committed: list[MeasureResult] = []

    def commit(result: MeasureResult) -> None:
        committed.append(result)
        if len(committed) == 2:
            sshd.stop()  # the board loses power after two models

    device = ssh_device(sshd, tmp_path)
    session = DeviceSession(device, tmp_path / "cache", reconnects=1)
    with session:
        report = session.measure(batch, QUICK, commit)
        work_folder = Path(session.transport.work_dir)
    assert len(committed) == 2 and report.reconnects == 1
    done = {r.arch_id for r in committed}
    assert {a.id for a in report.not_measured} == {m.arch.id for m in batch} - done
    assert work_folder.exists()  # an incomplete batch keeps its files for the rerun

    sshd.start()
    rest = [m for m in batch if m.arch.id not in done]
    with DeviceSession(device, tmp_path / "cache") as again:
        report2 = again.measure(rest, QUICK, committed.append)
    assert {r.arch_id for r in report2.ok} == {m.arch.id for m in rest}
    assert len(committed) == 4 and len({r.arch_id for r in committed}) == 4


def test_every_session_checks_the_devices_runtime_but_a_probe_reports_it(tmp_path: Path) -> None:
    """TensorRT is not importable here: a session for a TensorRT device is refused at open
    (measure, calibrate and verify all go through it), a probe still reports the device."""
    device = Device(key="local", runtime="tensorrt")
    with pytest.raises(InvalidInputError, match=r"has no tensorrt .*install it there"):
        with DeviceSession(device, tmp_path / "cache"):
            pass
    with DeviceSession(device, tmp_path / "cache", check_runtime=False) as session:
        assert session.probe is not None and not session.probe.runtimes["tensorrt"].available
