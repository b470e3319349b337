"""``agent.pyz probe``: what this device is, which runtimes it has, and its fingerprint.

The fingerprint hashes only *stable* facts — the ones that decide latency and stay put
between measurements unless someone changes the hardware or its power configuration:
machine architecture, OS family, CPU model, logical core count, the set of maximum CPU
frequencies, board model, memory size (to 0.5 GiB) and the Jetson power mode. Load,
temperatures, current frequencies, free disk, kernel and Python versions are reported but
not hashed (runtime versions are stored with every measurement instead).

User-mode emulation (an aarch64 Python under qemu-user on an x86 host) is detected
(:func:`detect_emulation`) and hashed as `emulated_on`, so an emulated "board" never shares
a fingerprint with the real one: its timings are 200-400x off and must never pass for it.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from typing import Any, Dict, List, Optional

from device_agents import AGENT_VERSION
from device_agents.parsers.cpu import parse_cpuinfo
from device_agents.parsers.text import ParseError
from device_agents.records import Emulation, ProbeReport, RuntimeInfo, fingerprint_of
from device_agents.runtimes import get_runtime, runtime_names
from device_agents.runtimes.base import RuntimeUnavailable
from device_agents.telemetry import TelemetryReader


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r", errors="replace") as fh:
            return fh.read().replace("\x00", "").strip() or None
    except OSError:
        return None


def _meminfo_mib(proc_root: str) -> Dict[str, int]:
    text = _read(os.path.join(proc_root, "meminfo")) or ""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit() and parts[0].rstrip(":") in ("MemTotal", "MemAvailable"):
            out[parts[0].rstrip(":")] = int(parts[1]) // 1024
    return out


def _os_pretty_name(etc_root: str) -> Optional[str]:
    text = _read(os.path.join(etc_root, "os-release")) or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"') or None
    return None


def cpu_model(proc_root: str) -> Optional[str]:
    text = _read(os.path.join(proc_root, "cpuinfo"))
    if text:
        try:
            name = parse_cpuinfo(text).model_name
        except ParseError:
            name = None
        if name:
            return name
    return platform.processor() or None


def board_model(sys_root: str, proc_root: str) -> Optional[str]:
    """Device-tree model (Raspberry Pi, Jetson), else cpuinfo's Model line, else DMI product name."""
    model = _read(os.path.join(sys_root, "firmware", "devicetree", "base", "model"))
    if model:
        return model
    text = _read(os.path.join(proc_root, "cpuinfo"))
    if text:
        try:
            model = parse_cpuinfo(text).board_model
        except ParseError:
            model = None
        if model:
            return model
    return _read(os.path.join(sys_root, "class", "dmi", "id", "product_name"))


# ELF e_machine -> architecture, for the executables whose headers we read.
_ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm", 62: "x86_64",
                 183: "aarch64", 243: "riscv64"}


def machine_family(machine: str) -> str:
    """Architectures that run each other's code natively (a 32-bit ARM userland on an aarch64
    kernel is a real board, not emulation) map to one family."""
    m = machine.lower()
    if m.startswith("arm") or m == "aarch64":
        return "arm"
    if m in ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"):
        return "x86"
    if m.startswith("ppc"):
        return "ppc"
    return m


def _elf_machine(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    code = int.from_bytes(head[18:20], order)
    return _ELF_MACHINES.get(code, "elf-machine-%d" % code)


def detect_emulation(proc_root: str = "/proc", machine: Optional[str] = None) -> Optional[Emulation]:
    """Evidence that this interpreter is emulated, or None on a real machine.

    Two observations, each enough: the kernel's own architecture (`/proc/sys/kernel/arch`,
    Linux >= 6.1) is of another family than the interpreter's `platform.machine()` (qemu-user
    reports the guest's machine in uname), and this thread's real executable
    (`/proc/thread-self/exe`, which qemu-user 7.2 does not rewrite, unlike `/proc/self/exe`)
    is a program for another architecture: the emulator itself.
    """
    guest = machine or platform.machine()
    evidence: List[str] = []
    host: Optional[str] = None
    kernel = _read(os.path.join(proc_root, "sys", "kernel", "arch"))
    if kernel and machine_family(kernel) != machine_family(guest):
        evidence.append("the kernel is %s (/proc/sys/kernel/arch) while this Python runs as %s" % (kernel, guest))
        host = kernel
    exe = os.path.join(proc_root, "thread-self", "exe")
    exe_machine = _elf_machine(exe)
    emulator = None
    if exe_machine and machine_family(exe_machine) != machine_family(guest):
        try:
            emulator = os.path.basename(os.readlink(exe)) or None
        except OSError:
            emulator = None
        evidence.append("this process's executable%s is an %s program running the %s interpreter"
                        % (" (%s)" % emulator if emulator else "", exe_machine, guest))
        host = host or exe_machine
    if host is None:
        return None
    return Emulation(emulator=emulator, host_machine=host, evidence=evidence)


def boot_id(proc_root: str = "/proc") -> Optional[str]:
    """The running kernel's random boot id (Linux), None where there is none. Two agents that
    report the same one run on one machine (containers and loopback "boards" included): they
    share its CPUs unless their CPU sets (:func:`cpu_set`) are disjoint, so the host never
    times them at the same time then (see :mod:`ofa2_edge.calibration.group`). Not hashed: it
    changes at every boot."""
    text = _read(os.path.join(proc_root, "sys", "kernel", "random", "boot_id"))
    return text if text is not None and len(text) <= 64 and text.isprintable() else None


def cpu_set() -> Optional[List[int]]:
    """The CPUs this agent may run on (its affinity: a cpuset, `taskset`, a container's
    `--cpuset-cpus`), None where the OS does not say. Agents on one machine whose CPU sets are
    disjoint do not take each other's cores, so the host may time them at once (see
    :mod:`ofa2_edge.calibration.group`); the quiet gate looks only at these CPUs."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return sorted(int(c) for c in getaffinity(0))
    except OSError:
        return None


def stable_facts(reader: TelemetryReader, emulation: Optional[Emulation] = None) -> Dict[str, Any]:
    """The facts the fingerprint hashes (see the module docstring for why these)."""
    mem = _meminfo_mib(reader.proc_root)
    mode, _ = reader.jetson_power_mode()
    total = mem.get("MemTotal")
    facts: Dict[str, Any] = {
        "machine": platform.machine(),
        "os_name": platform.system(),
        "cpu_model": cpu_model(reader.proc_root),
        "cpu_cores": os.cpu_count() or 0,
        "cpu_max_freq_khz": sorted(set(reader.max_freqs().values())),
        "board_model": board_model(reader.sys_root, reader.proc_root),
        "mem_total_gib": round(total / 1024 * 2) / 2 if total else None,
        "jetson_power_mode": mode,
    }
    if emulation is not None:  # only then: the fingerprints of real devices stay what they were
        facts["emulated_on"] = emulation.host_machine
    return facts


def device_fingerprint(reader: TelemetryReader) -> str:
    return fingerprint_of(stable_facts(reader, detect_emulation(reader.proc_root)))


def runtime_infos() -> Dict[str, RuntimeInfo]:
    out = {}
    for name in runtime_names():
        try:
            out[name] = RuntimeInfo(True, get_runtime(name).version(), None)
        except RuntimeUnavailable as exc:
            out[name] = RuntimeInfo(False, None, f"runtime not available on this device: {exc}")
        except Exception as exc:  # noqa: BLE001 - a broken install must not stop the probe of the others
            out[name] = RuntimeInfo(False, None, f"runtime failed to import: {type(exc).__name__}: {exc}")
    return out


def probe(work_dir: str, reader: Optional[TelemetryReader] = None, etc_root: str = "/etc") -> ProbeReport:
    reader = reader or TelemetryReader()
    emulation = detect_emulation(reader.proc_root)
    facts = stable_facts(reader, emulation)
    mem = _meminfo_mib(reader.proc_root)
    try:
        free: Optional[int] = shutil.disk_usage(work_dir).free // (1024 * 1024)
    except OSError:
        free = None
    uname = platform.uname()
    return ProbeReport(
        agent_version=AGENT_VERSION,
        python_version=platform.python_version(),
        python_implementation=platform.python_implementation(),
        python_executable=sys.executable,
        os_name=uname.system,
        os_release=uname.release,
        os_version=uname.version,
        os_pretty_name=_os_pretty_name(etc_root),
        machine=uname.machine,
        cpu_model=facts["cpu_model"],
        cpu_cores=os.cpu_count() or 0,
        cpu_max_freq_khz=reader.max_freqs(),
        board_model=facts["board_model"],
        mem_total_mib=mem.get("MemTotal"),
        mem_available_mib=mem.get("MemAvailable"),
        work_dir=os.path.abspath(work_dir),
        disk_free_mib=free,
        runtimes=runtime_infos(),
        jetson_power_mode=facts["jetson_power_mode"],
        telemetry=reader.snapshot(),
        fingerprint_facts=facts,
        fingerprint=fingerprint_of(facts),
        emulation=emulation,
        boot_id=boot_id(reader.proc_root),
        cpus=cpu_set(),
    )
