"""Jetson ``tegrastats`` lines (TX1 legacy, TX2, Nano, Xavier and the JetPack 5+ form).

A line is a run of fields: ``RAM used/totalMB``, ``SWAP used/totalMB``, the CPU loads
(``CPU [16%@1479,off,...]`` or the TX1 legacy ``cpu [17%,13%]@408``), engine loads
(``EMC_FREQ 4%@1600``, ``GR3D_FREQ 28%@76``, legacy ``EMC 1%@408``), temperatures
(``CPU@44C``; -256C marks a powered-off sensor) and power rails in mW, current/average
(``POM_5V_IN 4122/3107``, Xavier's bare ``GPU 463/463``, JetPack 5's ``VDD_IN 5000mW/5000mW``).
A label that repeats (an AGX Orin prints ``NC`` twice) is kept apart as ``NC#2``; which
rails add up to the board's power is :mod:`device_agents.rails`' rule.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from device_agents.parsers.text import ParseError, clean_lines, number
from device_agents.rails import energy_basis, unique_labels

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\b(?:CPU|cpu) \[([^\]]*)\](?:@(\d+))?")
_ENGINE = re.compile(r"\b(EMC_FREQ|GR3D_FREQ|EMC|GR3D|VIC_FREQ) (\d+)%(?:@(\d+))?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?[0-9.]+)C\b")
_RAIL = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![0-9]*(?:MB|kB))")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "lfb"}


@dataclasses.dataclass(frozen=True)
class CpuLoad:
    online: bool
    load_percent: Optional[int]
    freq_mhz: Optional[int]


@dataclasses.dataclass(frozen=True)
class TegraStats:
    ram_used_mb: int
    ram_total_mb: int
    swap_used_mb: Optional[int]
    swap_total_mb: Optional[int]
    cpus: Tuple[CpuLoad, ...]
    emc_percent: Optional[int]
    emc_freq_mhz: Optional[int]
    gr3d_percent: Optional[int]
    gr3d_freq_mhz: Optional[int]
    temperatures_c: Dict[str, float]
    rails_mw: Dict[str, Tuple[int, int]]  # name -> (current, average)

    def total_power_mw(self) -> Optional[int]:
        """The board's current power: its input rail (VDD_IN, POM_5V_IN) when it has one, else
        the sum of its connected branch rails; None without rails."""
        basis = energy_basis(self.rails_mw)
        return sum(self.rails_mw[name][0] for name in basis) if basis else None


def _cpus(body: str, shared_freq: Optional[str]) -> Tuple[CpuLoad, ...]:
    out = []
    for item in body.split(","):
        item = item.strip()
        if item == "off":
            out.append(CpuLoad(False, None, None))
            continue
        m = re.match(r"^(\d+)%(?:@(\d+))?$", item)
        if not m:
            raise ParseError(f"unreadable CPU entry {item!r} in tegrastats line")
        freq = m.group(2) or shared_freq
        out.append(CpuLoad(True, int(m.group(1)), int(freq) if freq else None))
    return tuple(out)


def parse_tegrastats_line(line: str) -> TegraStats:
    ram = _RAM.search(line)
    if not ram:
        raise ParseError(f"not a tegrastats line (no RAM field): {line[:80]!r}")
    swap = _SWAP.search(line)
    cpu = _CPU.search(line)
    engines = {m.group(1): (int(m.group(2)), int(m.group(3)) if m.group(3) else None)
               for m in _ENGINE.finditer(line)}
    emc = engines.get("EMC_FREQ", engines.get("EMC", (None, None)))
    gr3d = engines.get("GR3D_FREQ", engines.get("GR3D", (None, None)))
    temps = {m.group(1): number(m.group(2), f"temperature {m.group(1)}") for m in _TEMP.finditer(line)}
    found = [(m.group(1), (int(m.group(2)), int(m.group(3)))) for m in _RAIL.finditer(line)
             if m.group(1) not in _NOT_RAILS]
    rails = dict(zip(unique_labels(name for name, _ in found), (value for _, value in found)))
    return TegraStats(
        ram_used_mb=int(ram.group(1)),
        ram_total_mb=int(ram.group(2)),
        swap_used_mb=int(swap.group(1)) if swap else None,
        swap_total_mb=int(swap.group(2)) if swap else None,
        cpus=_cpus(cpu.group(1), cpu.group(2)) if cpu else (),
        emc_percent=emc[0],
        emc_freq_mhz=emc[1],
        gr3d_percent=gr3d[0],
        gr3d_freq_mhz=gr3d[1],
        temperatures_c=temps,
        rails_mw=rails,
    )


def parse_tegrastats(text: str) -> List[TegraStats]:
    """Every tegrastats line in a capture (prompts and other lines are skipped)."""
    out = [parse_tegrastats_line(ln) for ln in clean_lines(text) if _RAM.search(ln)]
    if not out:
        raise ParseError("no tegrastats line (RAM used/totalMB ...) in the text")
    return out
