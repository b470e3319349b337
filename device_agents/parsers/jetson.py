"""Jetson power mode (``nvpmodel -q``) and clocks (``jetson_clocks --show``)."""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Optional

from device_agents.parsers.text import ParseError, clean_lines

_MODE = re.compile(r"^NV Power Mode:\s*(.+?)\s*$")
_FAN = re.compile(r"^NV Fan Mode:\s*(.+?)\s*$")
_SOC = re.compile(r"SOC family:\s*(\S+)")
_MACHINE = re.compile(r"Machine:\s*(.+?)\s*$")
_ONLINE = re.compile(r"^Online CPUs:\s*(\S+)")
_CPU = re.compile(r"^cpu(\d+):\s*(.*)$")
_UNIT = re.compile(r"^(GPU|EMC)\s+(.*)$")
_KV = re.compile(r"(\w+)=(\S+)")
_FAN_SPEED = re.compile(r"^Fan:\s*speed=(\d+)")


@dataclasses.dataclass(frozen=True)
class NvpModel:
    power_mode: str
    mode_id: Optional[int]
    fan_mode: Optional[str]


def parse_nvpmodel(text: str) -> NvpModel:
    """``nvpmodel -q``: the mode name, the numeric id on the next line (when printed), the fan mode.

    The ``NVPM ERROR`` lines a non-root run prints after the mode are ignored; when the text
    holds several runs, the last one wins.
    """
    lines = clean_lines(text)
    result: Optional[NvpModel] = None
    fan: Optional[str] = None
    for i, line in enumerate(lines):
        m = _FAN.match(line)
        if m:
            fan = m.group(1)
            continue
        m = _MODE.match(line)
        if m:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            mode_id = int(nxt) if nxt.isdigit() else None
            result = NvpModel(m.group(1), mode_id, fan)
    if result is None:
        raise ParseError("no 'NV Power Mode:' line in nvpmodel output")
    return result


@dataclasses.dataclass(frozen=True)
class CpuClock:
    online: Optional[bool]
    governor: Optional[str]
    min_khz: Optional[int]
    max_khz: Optional[int]
    current_khz: Optional[int]


@dataclasses.dataclass(frozen=True)
class UnitClock:
    min_hz: Optional[int]
    max_hz: Optional[int]
    current_hz: Optional[int]


@dataclasses.dataclass(frozen=True)
class JetsonClocks:
    soc_family: Optional[str]
    machine: Optional[str]
    online_cpus: Optional[str]
    cpus: Dict[int, CpuClock]
    gpu: Optional[UnitClock]
    emc: Optional[UnitClock]
    fan_speed: Optional[int]
    power_mode: Optional[str]


def _int(kv: Dict[str, str], key: str) -> Optional[int]:
    return int(kv[key]) if key in kv and kv[key].isdigit() else None


def parse_jetson_clocks(text: str) -> JetsonClocks:
    """``jetson_clocks --show`` (L4T 28 ``Gonvernor`` typo included); partial output is fine."""
    soc = machine = online = power = None
    fan = None
    cpus: Dict[int, CpuClock] = {}
    units: Dict[str, UnitClock] = {}
    for line in clean_lines(text):
        if "SOC family:" in line:
            m = _SOC.search(line)
            soc = m.group(1) if m else None
            m = _MACHINE.search(line)
            machine = m.group(1) if m else None
            continue
        m = _ONLINE.match(line)
        if m:
            online = m.group(1)
            continue
        m = _CPU.match(line)
        if m:
            kv = dict(_KV.findall(m.group(2)))
            gov = kv.get("Governor", kv.get("Gonvernor"))
            on = kv.get("Online")
            cpus[int(m.group(1))] = CpuClock(
                online=None if on is None else on == "1",
                governor=gov,
                min_khz=_int(kv, "MinFreq"),
                max_khz=_int(kv, "MaxFreq"),
                current_khz=_int(kv, "CurrentFreq"),
            )
            continue
        m = _UNIT.match(line)
        if m:
            kv = dict(_KV.findall(m.group(2)))
            units[m.group(1)] = UnitClock(_int(kv, "MinFreq"), _int(kv, "MaxFreq"), _int(kv, "CurrentFreq"))
            continue
        m = _FAN_SPEED.match(line)
        if m:
            fan = int(m.group(1))
            continue
        m = _MODE.match(line)
        if m:
            power = m.group(1)
    if not cpus and soc is None:
        raise ParseError("no 'SOC family:' or 'cpuN:' lines in jetson_clocks output")
    return JetsonClocks(soc, machine, online, dict(sorted(cpus.items())), units.get("GPU"), units.get("EMC"),
                        fan, power)
