"""The agent, the SSH workflow and cross-architecture parity on emulated aarch64 boards.

Each board is a Debian arm64 userland (Debian 12 / Python 3.11, Debian 11 / Python 3.9) run by
qemu-user behind a real sshd on 127.0.0.1 (:mod:`arm64`). What runs is real: the aarch64
interpreter, the aarch64 onnxruntime and LiteRT wheels, the project's exports. Times under
emulation are 200-400x off: these tests assert correctness, never speed.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from arm64 import IMAGES, add_args, board, board_device, torch_reference
from sshd import Sshd, make_sshd

from device_agents.records import MeasureResult, Protocol
from exporters import export_subnet
from exporters.parity import parity_inputs
from ofa2_edge.cli.main import main
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.space.arch import Arch
from ofa2_edge.tables.device import DeviceTable

pytestmark = [pytest.mark.arm64, pytest.mark.ssh, pytest.mark.slow]

#: OFA-min at a reduced resolution: ~1 s per inference under emulation.
R = 96
#: Timing is not the point here: the fewest runs the protocol allows.
TINY = Protocol(threads=1, warmup_runs=1, warmup_min_s=0.0, blocks=2, runs_per_block=2, block_min_s=0.0,
                block_warmup_runs=0, interleave=1, cooldown_s=0.0, timeout_s=300.0, remeasure=0, quiet_wait_s=0.0)


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


def onnx_min(r: int = R) -> ShippableModel:
    arch = Arch.smallest(r)
    return ShippableModel.from_export(export_subnet(arch, "onnx"), arch)


def tflite_min(r: int = R) -> ShippableModel:
    pytest.importorskip("litert_torch", reason="the [tflite] extra converts the LiteRT model")
    arch = Arch.smallest(r)
    return ShippableModel.from_export(export_subnet(arch, "tflite"), arch)


@pytest.mark.parametrize("image", IMAGES)
def test_probe_names_the_emulated_board_and_marks_it(
    image: str, sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pi = board(image)
    ws = ["-W", str(tmp_path / "ws")]
    assert main([*ws, *add_args(sshd, pi, tmp_path / "pi-work")]) == 0
    capsys.readouterr()
    assert main([*ws, "devices", "probe", "pi-emu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["machine"] == "aarch64" and doc["python_version"].startswith(pi.meta["python_version"][:3])
    assert doc["python_executable"] == pi.python  # the launcher: runnable by the agent's workers
    assert doc["runtimes"]["onnxruntime"] == {"available": True, "version": pi.onnxruntime, "detail": None}
    assert doc["runtimes"]["litert"]["available"] and pi.litert in doc["runtimes"]["litert"]["version"]
    assert doc["board_model"].startswith("Raspberry Pi 4") and doc["cpu_model"] == "Cortex-A72"
    assert ("bookworm" if image == "debian12" else "bullseye") in doc["os_pretty_name"]
    # never mistaken for a board: the evidence, and a fingerprint no real Pi 4 can share
    assert doc["emulation"]["host_machine"] == platform.machine() and doc["emulation"]["evidence"]
    assert doc["emulation"]["emulator"] == "qemu-aarch64"
    assert doc["fingerprint_facts"]["emulated_on"] == platform.machine()
    assert main([*ws, "devices", "probe", "pi-emu"]) == 0
    assert "EMULATED" in capsys.readouterr().out


@pytest.mark.parametrize("image", IMAGES)
def test_measure_ofa_min_in_onnxruntime_and_litert_and_the_host_keeps_the_records(
    image: str, sshd: Sshd, tmp_path: Path
) -> None:
    pi = board(image)
    with DeviceSession(board_device(sshd, pi, tmp_path / "pi-work"), tmp_path / "cache") as session:
        probe = session.probe
        assert probe is not None and probe.emulation is not None
        # one batch per runtime (the same arch); each record passed DeviceSession.check_record
        ok = [r for model in (onnx_min(), tflite_min()) for r in session.measure([model], TINY).results]
    assert [(r.ok, r.runtime) for r in ok] == [(True, "onnxruntime"), (True, "litert")], [r.error_msg for r in ok]
    assert ok[0].runtime_version == pi.onnxruntime and pi.litert in ok[1].runtime_version
    assert all(r.device_fingerprint == probe.fingerprint and r.stats.estimate_ms > 0 for r in ok)
    # the host stores and re-validates the record; the table says it was measured under emulation
    table = DeviceTable(tmp_path / "latency_tables", "pi-emu")
    table.bind(probe, "onnxruntime")
    table.append(ok[0])
    assert [r.arch_id for r in table.records()] == [ok[0].arch_id]
    assert table.emulation() == {"host_machine": platform.machine(), "emulator": "qemu-aarch64"}


@pytest.mark.parametrize("image", IMAGES)
def test_emulated_aarch64_outputs_match_torch_within_the_export_tolerance(
    image: str, sshd: Sshd, tmp_path: Path
) -> None:
    pi = board(image)
    models = [onnx_min(), tflite_min()]
    inputs = parity_inputs(R, 2)
    reference = torch_reference(models[0].arch, inputs)
    with DeviceSession(board_device(sshd, pi, tmp_path / "pi-work"), tmp_path / "cache") as session:
        for model in models:
            got = np.concatenate([sample[0] for sample in session.outputs(model, inputs)])
            assert got.shape == reference.shape == (2, 1000)
            tol = export_subnet(model.arch, "onnx" if model.runtime == "onnxruntime" else "tflite").parity["tolerance"]
            assert float(np.max(np.abs(got - reference))) <= tol, model.runtime


def test_a_link_dropped_mid_batch_on_the_emulated_board_loses_nothing(sshd: Sshd, tmp_path: Path) -> None:
    pi = board("debian12")
    batch = [onnx_min(r) for r in (96, 104, 112)]
    committed: list[MeasureResult] = []

    def commit(result: MeasureResult) -> None:
        committed.append(result)
        if len(committed) == 1:
            sshd.stop()  # the board loses power (qemu, the agent and its worker die with sshd's sessions)

    device = board_device(sshd, pi, tmp_path / "pi-work")
    with DeviceSession(device, tmp_path / "cache", reconnects=1) as session:
        report = session.measure(batch, TINY, commit)
    assert len(committed) == 1 and report.reconnects == 1
    rest = [m for m in batch if m.arch.id != committed[0].arch_id]
    assert {a.id for a in report.not_measured} == {m.arch.id for m in rest}
    sshd.start()
    with DeviceSession(device, tmp_path / "cache") as again:
        report2 = again.measure(rest, TINY, committed.append)
    assert {r.arch_id for r in report2.ok} == {m.arch.id for m in rest}
    assert len({r.arch_id for r in committed}) == 3


def test_an_emulated_table_is_no_latency_source_unless_allowed_and_bundle_verify_checks_device_parity(
    sshd: Sshd, tmp_path: Path, assets_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from records_factory import record_for

    from ofa2_edge.space.arch import SearchSpace
    from ofa2_edge.surrogates.lut import LutSurrogate

    pi = board("debian12")
    ws_dir = tmp_path / "ws"
    ws = ["-W", str(ws_dir)]
    assert main([*ws, *add_args(sshd, pi, tmp_path / "pi-work")]) == 0
    assert main([*ws, "tables", "import", str(assets_dir / "note10"), "--key", "note10"]) == 0
    with DeviceSession(board_device(sshd, pi, tmp_path / "pi-work"), tmp_path / "cache") as session:
        probe = session.probe
    assert probe is not None
    # a table "calibrated" on the emulated board (synthetic times: the point is where they came from)
    table = DeviceTable(ws_dir / "latency_tables", "pi-emu")
    table.bind(probe, "onnxruntime")
    archs = SearchSpace().sample(30, np.random.default_rng(1))
    lut = LutSurrogate.from_folder(assets_dir / "note10")
    for arch, ms in zip(archs, lut.predict(archs) * 300, strict=True):
        table.append(record_for(arch, float(ms), Protocol(), fingerprint=probe.fingerprint))
    assert main([*ws, "fit", "--device", "pi-emu"]) == 0
    search = [*ws, "search", "--objectives", "top1,latency:pi-emu", "--pop", "12", "--gens", "4", "--seed", "1",
              "-o", str(ws_dir / "runs" / "emu")]
    capsys.readouterr()
    assert main(search) != 0
    assert "measured under emulation" in capsys.readouterr().err
    assert not (ws_dir / "runs" / "emu").exists()  # refused before the run folder was made
    assert main([*search, "--allow-emulated"]) == 0
    # the same search on the real Note10 table needs no flag
    assert main([*ws, "search", "--objectives", "top1,latency:note10", "--pop", "12", "--gens", "2", "--seed", "1",
                 "-o", str(ws_dir / "runs" / "real")]) == 0
    capsys.readouterr()
    assert main([*ws, "select", "emu", "--device", "pi-emu", "--json"]) != 0
    assert "--allow-emulated" in capsys.readouterr().err
    assert main([*ws, "select", "emu", "--device", "pi-emu", "--allow-emulated", "--json"]) == 0
    fastest = min(json.loads(capsys.readouterr().out)["candidates"], key=lambda c: c["latency_ms"])
    # verify on the emulated board: measured there, and its outputs checked against torch's bound
    code = main([*ws, "bundle", "emu", "--device", "pi-emu", "--pick", fastest["arch_id"], "--allow-emulated",
                 "--verify", "--quick", "--json", "-o", str(tmp_path / "bundles")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    from ofa2_edge.deploy.bundle import check_bundle

    measured = check_bundle(summary["archive"])["latency"]["measured"]
    parity = measured["device_parity"]
    assert measured["device_fingerprint"] == probe.fingerprint and measured["runtime_version"] == pi.onnxruntime
    assert parity["device_runtime_version"] == pi.onnxruntime and parity["runtime"] == "onnxruntime"
    assert 0 <= parity["max_abs_diff_vs_host"] <= parity["max_abs_diff_vs_torch_bound"] <= parity["tolerance"]


def test_a_file_the_boards_onnxruntime_cannot_load_is_never_shipped(sshd: Sshd, tmp_path: Path) -> None:
    """onnxruntime 1.19.2 (the last for Python 3.9 on aarch64) loads ONNX IR <= 10: an IR 14
    file becomes a model_load_error record on the host; the same graph at IR 8 runs."""
    from agent_models import conv_net, save

    from device_agents.records import FailureKind, TensorSpec

    pi = board("debian11")
    arch = Arch.smallest(R)
    made = []
    for ir in (14, 8):
        model = conv_net(channels=8, depth=2, size=32)
        model.ir_version = ir
        path = tmp_path / f"ir{ir}.onnx"
        made.append(ShippableModel(arch, path, save(model, path), "onnxruntime",
                                   (TensorSpec("x", (1, 3, 32, 32), "float32"),),
                                   (TensorSpec("y", (1, 10), "float32"),)))
    with DeviceSession(board_device(sshd, pi, tmp_path / "pi-work"), tmp_path / "cache", cleanup=False) as session:
        (refused,) = session.measure([made[0]], TINY).results
        remote = Path(session.transport.remote_path(made[0].remote_name))
        (ran,) = session.measure([made[1]], TINY).results
    assert refused.error_kind == FailureKind.MODEL_LOAD_ERROR and "loads IR <= 10" in refused.error_msg
    assert not remote.exists()  # never shipped
    assert ran.ok and ran.runtime_version == pi.onnxruntime == "1.19.2"
