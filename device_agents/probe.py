"""``agent.pyz probe``: what this device is, which runtimes it has, and its fingerprint.

The fingerprint hashes only *stable* facts — the ones that decide latency and stay put
between measurements unless someone changes the hardware or its power configuration:
machine architecture, OS family, CPU model, logical core count, the set of maximum CPU
frequencies, board model, memory size (to 0.5 GiB) and the Jetson power mode. Load,
temperatures, current frequencies, free disk, kernel and Python versions are reported but
not hashed (runtime versions are stored with every measurement instead).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from typing import Any, Dict, Optional

from device_agents import AGENT_VERSION
from device_agents.parsers.cpu import parse_cpuinfo
from device_agents.parsers.text import ParseError
from device_agents.records import ProbeReport, RuntimeInfo, fingerprint_of
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


def stable_facts(reader: TelemetryReader) -> Dict[str, Any]:
    """The facts the fingerprint hashes (see the module docstring for why these)."""
    mem = _meminfo_mib(reader.proc_root)
    mode, _ = reader.jetson_power_mode()
    total = mem.get("MemTotal")
    return {
        "machine": platform.machine(),
        "os_name": platform.system(),
        "cpu_model": cpu_model(reader.proc_root),
        "cpu_cores": os.cpu_count() or 0,
        "cpu_max_freq_khz": sorted(set(reader.max_freqs().values())),
        "board_model": board_model(reader.sys_root, reader.proc_root),
        "mem_total_gib": round(total / 1024 * 2) / 2 if total else None,
        "jetson_power_mode": mode,
    }


def device_fingerprint(reader: TelemetryReader) -> str:
    return fingerprint_of(stable_facts(reader))


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
    facts = stable_facts(reader)
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
    )
