"""CPU identity from ``/proc/cpuinfo`` and ``lscpu``.

A 64-bit Raspberry Pi kernel prints no ``model name``: the core is named from the
implementer/part ids instead (the same table util-linux's lscpu uses), and the board from
the trailing ``Model``/``Revision``/``Serial`` block.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from device_agents.parsers.text import ParseError

# (implementer, part) -> core name; from util-linux sys-utils/lscpu-arm.c.
ARM_PARTS = {
    ("0x41", "0xb76"): "ARM1176", ("0x41", "0xc07"): "Cortex-A7", ("0x41", "0xc08"): "Cortex-A8",
    ("0x41", "0xc09"): "Cortex-A9", ("0x41", "0xc0f"): "Cortex-A15", ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35", ("0x41", "0xd05"): "Cortex-A55", ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd09"): "Cortex-A73", ("0x41", "0xd0a"): "Cortex-A75",
    ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd0d"): "Cortex-A77",
    ("0x41", "0xd40"): "Neoverse-V1", ("0x41", "0xd41"): "Cortex-A78", ("0x41", "0xd42"): "Cortex-A78AE",
    ("0x41", "0xd44"): "Cortex-X1", ("0x41", "0xd46"): "Cortex-A510", ("0x41", "0xd47"): "Cortex-A710",
    ("0x41", "0xd4b"): "Cortex-A78C", ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x4e", "0x003"): "Denver 2", ("0x4e", "0x004"): "Carmel",
}

_KEY_VALUE = re.compile(r"^([A-Za-z][A-Za-z0-9 _()]*?)\s*:\s?(.*)$")
_LSCPU_KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9 ()\-/_]*?):\s*(.*?)\s*$")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    processors: Tuple[Dict[str, str], ...]
    model_name: Optional[str]  # "model name", else the ARM core name from implementer/part
    hardware: Optional[str]
    board_model: Optional[str]
    revision: Optional[str]
    serial: Optional[str]

    @property
    def cores(self) -> int:
        return len(self.processors)


def parse_cpuinfo(text: str) -> CpuInfo:
    processors: List[Dict[str, str]] = []
    board: Dict[str, str] = {}
    current: Optional[Dict[str, str]] = None
    for raw in text.splitlines():
        m = _KEY_VALUE.match(raw.strip())
        if not m:
            continue
        key, value = m.group(1).strip(), m.group(2).strip()
        if key == "processor":
            current = {}
            processors.append(current)
            continue
        if current is not None and key not in ("Hardware", "Revision", "Serial", "Model") and key not in current:
            current[key] = value
        elif key in ("Hardware", "Revision", "Serial", "Model"):
            board[key] = value
    if not processors:
        raise ParseError("no 'processor : N' entries in /proc/cpuinfo text")
    first = processors[0]
    name = first.get("model name")
    if name is None:
        name = ARM_PARTS.get((first.get("CPU implementer", ""), first.get("CPU part", "")))
    return CpuInfo(tuple(processors), name, board.get("Hardware"), board.get("Model"), board.get("Revision"),
                   board.get("Serial"))


def _mhz(value: Optional[str]) -> Optional[float]:
    """A clock in MHz from lscpu, None when absent or unreadable."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Lscpu:
    fields: Dict[str, str]

    @property
    def architecture(self) -> Optional[str]:
        return self.fields.get("Architecture")

    @property
    def cpus(self) -> Optional[int]:
        v = self.fields.get("CPU(s)")
        return int(v) if v and v.isdigit() else None

    @property
    def model_name(self) -> Optional[str]:
        return self.fields.get("Model name")

    @property
    def max_mhz(self) -> Optional[float]:
        return _mhz(self.fields.get("CPU max MHz"))

    @property
    def min_mhz(self) -> Optional[float]:
        return _mhz(self.fields.get("CPU min MHz"))

    @property
    def flags(self) -> Tuple[str, ...]:
        return tuple(self.fields.get("Flags", "").split())


def parse_lscpu(text: str) -> List[Lscpu]:
    """Every ``lscpu`` listing in the text (a new one starts at each ``Architecture:``).

    Handles the flat and the newer tree layout (indented keys, wrapped ``Flags`` lines).
    """
    listings: List[Dict[str, str]] = []
    flags_col: Optional[int] = None  # column where the Flags value starts, while it may wrap
    for raw in text.splitlines():
        if flags_col is not None and raw[:flags_col].strip() == "" and raw[flags_col:].strip():
            # A wrapped Flags line continues at the value column; wraps fall mid-word, so a
            # space at that column starts a new flag and a letter continues the last one.
            listings[-1]["Flags"] += raw[flags_col:].rstrip()
            continue
        flags_col = None
        m = _LSCPU_KEY.match(raw)
        if not m:
            continue
        key, value = m.group(2).strip(), m.group(3)
        if key == "Architecture":
            listings.append({})
        if listings:
            listings[-1][key] = value
            if key == "Flags":
                flags_col = m.start(3)
    if not listings:
        raise ParseError("no 'Architecture:' line in lscpu output")
    return [Lscpu(d) for d in listings]
