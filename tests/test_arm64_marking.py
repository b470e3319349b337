"""Emulation is never mistaken for a board, and exports fit the board's onnxruntime (no qemu needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from records_factory import probe_report

from device_agents.probe import boot_id, detect_emulation, machine_family, probe
from device_agents.records import Emulation, ProbeReport, RecordError, fingerprint_of
from exporters import ExportCache, export_subnet
from exporters.onnx_compat import DEFAULT_TARGET, OnnxTarget, check_loadable, onnx_target, ort_limits
from exporters.onnx_export import ort_session
from ofa2_edge.core.errors import ExportError, InvalidInputError
from ofa2_edge.space.arch import Arch
from ofa2_edge.tables.device import DeviceTable

REPO = Path(__file__).resolve().parents[1]


def elf_header(e_machine: int) -> bytes:
    """The first 20 bytes of a little-endian 64-bit ELF executable for `e_machine`."""
    return b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + struct.pack("<HH", 2, e_machine)


def fake_proc(tmp_path: Path, kernel_arch: str | None, exe_machine: int | None) -> Path:
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "thread-self").mkdir()
    if kernel_arch is not None:
        (proc / "sys" / "kernel" / "arch").write_text(kernel_arch + "\n")
    if exe_machine is not None:
        (proc / "thread-self" / "exe").write_bytes(elf_header(exe_machine) + b"\x00" * 100)
    return proc


def test_emulation_is_detected_from_the_kernel_and_from_the_real_executable(tmp_path: Path) -> None:
    both = detect_emulation(str(fake_proc(tmp_path / "a", "x86_64", 62)), machine="aarch64")
    assert both is not None and both.host_machine == "x86_64" and len(both.evidence) == 2
    assert "x86_64" in both.evidence[0] and "aarch64" in both.evidence[0]
    # an older kernel without /proc/sys/kernel/arch: the executable alone is enough
    exe_only = detect_emulation(str(fake_proc(tmp_path / "b", None, 62)), machine="aarch64")
    assert exe_only is not None and exe_only.host_machine == "x86_64"
    # a real Pi: aarch64 kernel and executable; a 32-bit Raspberry Pi OS on a 64-bit kernel is real too
    assert detect_emulation(str(fake_proc(tmp_path / "c", "aarch64", 183)), machine="aarch64") is None
    assert detect_emulation(str(fake_proc(tmp_path / "d", "aarch64", 40)), machine="armv7l") is None
    assert detect_emulation(str(fake_proc(tmp_path / "e", None, None)), machine="aarch64") is None
    assert machine_family("armv7l") == machine_family("aarch64") != machine_family("x86_64")


def test_a_real_machine_keeps_its_fingerprint_and_an_old_probe_still_reads(tmp_path: Path) -> None:
    report = probe(str(tmp_path))
    assert report.emulation is None and "emulated_on" not in report.fingerprint_facts
    doc = report.to_dict()
    del doc["emulation"]  # what an agent before emulation detection printed
    assert ProbeReport.from_dict(json.loads(json.dumps(doc))) == report
    # a probe whose facts and emulation disagree is refused
    forged = {**report.to_dict(), "emulation": {"emulator": "qemu-aarch64", "host_machine": "x86_64",
                                                 "evidence": ["x"]}}
    with pytest.raises(RecordError, match="emulated_on"):
        ProbeReport.from_dict(forged)


def test_the_probe_names_the_machine_it_runs_on_by_its_boot_id(tmp_path: Path) -> None:
    """Agents on one machine (loopback boards, containers, qemu-user boards on a host) report
    one kernel boot id: `calibrate --group` then never times them at once."""
    random_dir = tmp_path / "proc" / "sys" / "kernel" / "random"
    random_dir.mkdir(parents=True)
    (random_dir / "boot_id").write_text("0f2c9a8e-1b7d-4c55-9e1a-3d5b7c9e1f20\n")
    assert boot_id(str(tmp_path / "proc")) == "0f2c9a8e-1b7d-4c55-9e1a-3d5b7c9e1f20"
    assert boot_id(str(tmp_path / "no-proc")) is None  # not Linux: unknown, never guessed
    report = probe(str(tmp_path))
    assert report.boot_id == boot_id() and "boot_id" not in report.fingerprint_facts  # it changes at every boot
    doc = report.to_dict()
    del doc["boot_id"]  # what an agent before machine sharing was detected printed
    assert ProbeReport.from_dict(json.loads(json.dumps(doc))).boot_id is None


def test_the_probe_reports_the_cpus_the_agent_may_run_on(tmp_path: Path) -> None:
    """A pinned agent (cpuset, taskset) names its CPUs: replicas on one machine with disjoint
    sets may be timed at once. An agent that printed no set is taken to use the whole machine."""
    report = probe(str(tmp_path))
    assert report.cpus == sorted(os.sched_getaffinity(0)) and "cpus" not in report.fingerprint_facts
    pinned = subprocess.run([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0}); "
                             "from device_agents.probe import cpu_set; print(cpu_set())"],
                            capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
    assert pinned.stdout.strip() == "[0]"
    doc = report.to_dict()
    del doc["cpus"]  # what an agent before 0.4.2 printed
    assert ProbeReport.from_dict(json.loads(json.dumps(doc))).cpus is None


def emulated_probe() -> ProbeReport:
    real = probe_report(machine="aarch64")
    facts = {**real.fingerprint_facts, "emulated_on": "x86_64"}
    return dataclasses.replace(real, fingerprint_facts=facts, fingerprint=fingerprint_of(facts),
                               emulation=Emulation("qemu-aarch64", "x86_64", ["test"]))


def test_an_emulated_table_is_marked_refused_as_latency_source_and_never_mixed(tmp_path: Path) -> None:
    emu = DeviceTable(tmp_path, "pi-emu")
    emu.bind(emulated_probe(), "onnxruntime")
    assert emu.emulation() == {"host_machine": "x86_64", "emulator": "qemu-aarch64"}
    with pytest.raises(InvalidInputError, match="measured under emulation.*--allow-emulated"):
        emu.check_latency_source()
    emu.check_latency_source(allow_emulated=True)
    with pytest.raises(InvalidInputError, match="never share a table"):
        emu.bind(probe_report(), "onnxruntime", reuse=True)
    real = DeviceTable(tmp_path, "pi")
    real.bind(probe_report(), "onnxruntime")
    real.check_latency_source()
    assert real.emulation() is None
    with pytest.raises(InvalidInputError, match="never share a table"):
        real.bind(emulated_probe(), "onnxruntime", reuse=True)


def test_the_export_target_follows_the_devices_onnxruntime() -> None:
    assert onnx_target(None) == onnx_target("1.32.0") == onnx_target("1.19.2") == DEFAULT_TARGET
    assert ort_limits("1.19.2") == (10, 21)  # "max supported IR version: 10", seen on the Debian 11 board
    assert onnx_target("1.11.1") == OnnxTarget(8, 16) and onnx_target("1.10.0") == OnnxTarget(8, 15)
    assert onnx_target("1.8.1") == OnnxTarget(7, 14)
    with pytest.raises(ExportError, match="cannot run OFA subnets"):
        onnx_target("1.7.0")
    with pytest.raises(ExportError, match="loads IR <= 10"):
        check_loadable(14, 17, "1.19.2", "model.onnx")
    check_loadable(8, 17, "1.19.2", "model.onnx")


def test_an_export_for_an_older_onnxruntime_is_its_own_cache_entry(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path / "exports")
    arch = Arch.smallest(96)
    default = export_subnet(arch, "onnx", cache=cache)
    old = export_subnet(arch, "onnx", cache=cache, onnx_target=onnx_target("1.11.0"))
    assert old.path != default.path and old.sha256 != default.sha256
    a, b = onnx.load(str(default.path)), onnx.load(str(old.path))
    assert (a.ir_version, a.opset_import[0].version) == (8, 17)
    assert b.ir_version <= 8 and [o.version for o in b.opset_import if o.domain in ("", "ai.onnx")] == [16]
    assert old.metadata["exporter"]["opset"] == 16 and old.parity["max_abs_diff"] <= old.parity["tolerance"]
    ort_session(old.path)  # it loads and (the parity check above) computes like torch
    assert export_subnet(arch, "onnx", cache=cache, onnx_target=OnnxTarget(8, 16)).path == old.path  # cached


def test_device_parity_is_recorded_and_fails_above_the_export_tolerance(tmp_path: Path) -> None:
    from ofa2_edge.core.errors import MeasurementError
    from ofa2_edge.deploy.verify import device_parity
    from ofa2_edge.devices.inventory import Device
    from ofa2_edge.devices.session import DeviceSession, ShippableModel

    arch = Arch.smallest(96)
    exported = export_subnet(arch, "onnx")
    model = ShippableModel.from_export(exported, arch)
    with DeviceSession(Device(key="local"), tmp_path / "cache") as session:
        figures = device_parity(session, model, {"export": {"parity": exported.parity}})
        # this machine is the device: the same runtime computes the same numbers
        assert figures["checked"] and figures["max_abs_diff_vs_host"] == 0.0
        assert figures["max_abs_diff_vs_torch_bound"] == exported.parity["max_abs_diff"] <= figures["tolerance"]
        assert figures["device_runtime_version"] == session.runtime_version("onnxruntime")
        worse = {**exported.parity, "max_abs_diff": exported.parity["tolerance"] * 1.5}
        with pytest.raises(MeasurementError, match="above the export's tolerance"):
            device_parity(session, model, {"export": {"parity": worse}})
