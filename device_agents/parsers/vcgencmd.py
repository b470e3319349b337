"""Raspberry Pi ``vcgencmd`` answers: get_throttled, measure_temp, measure_clock, measure_volts.

Each function finds its answers anywhere in a text (a transcript may hold prompts and
several commands); ``find_*`` return all in order, the plain forms the first and raise
:class:`ParseError` when there is none.
"""

from __future__ import annotations

import dataclasses
import re
from typing import List, Optional

from device_agents.parsers.text import ParseError, clean_lines, number
from device_agents.records import ThrottleState

_THROTTLED = re.compile(r"\bthrottled=(0x[0-9A-Fa-f]+|\d+)\b")
_TEMP = re.compile(r"\btemp=(-?[0-9.]+)'C")
_CLOCK = re.compile(r"^(?:(\w+):\s*)?frequency\((\d+)\)=(\d+)\s*$")
_VOLTS = re.compile(r"\bvolt=([0-9.]+)V\b")


@dataclasses.dataclass(frozen=True)
class ClockReading:
    source: Optional[str]  # "arm", "core", ... when the capture names it
    index: int  # firmware clock id, e.g. 45 or 48 for arm, 0 on a Pi 5
    hz: int


def find_throttled(text: str) -> List[ThrottleState]:
    # vcgencmd prints hex (0x50005); a bare number is decimal, also with a leading zero
    return [ThrottleState.from_raw(int(v, 16) if v[:2].lower() == "0x" else int(v, 10)) for v in _THROTTLED.findall(text)]


def parse_throttled(text: str) -> ThrottleState:
    found = find_throttled(text)
    if not found:
        raise ParseError("no 'throttled=0x...' in vcgencmd output")
    return found[0]


def find_temps(text: str) -> List[float]:
    return [number(v, "temperature") for v in _TEMP.findall(text)]


def parse_temp(text: str) -> float:
    found = find_temps(text)
    if not found:
        raise ParseError("no \"temp=NN.N'C\" in vcgencmd output")
    return found[0]


def find_clocks(text: str) -> List[ClockReading]:
    out = []
    for line in clean_lines(text):
        m = _CLOCK.match(line)
        if m:
            out.append(ClockReading(m.group(1), int(m.group(2)), int(m.group(3))))
    return out


def parse_clock(text: str) -> ClockReading:
    found = find_clocks(text)
    if not found:
        raise ParseError("no 'frequency(N)=HZ' in vcgencmd output")
    return found[0]


def find_volts(text: str) -> List[float]:
    return [number(v, "voltage") for v in _VOLTS.findall(text)]


def parse_volts(text: str) -> float:
    found = find_volts(text)
    if not found:
        raise ParseError("no 'volt=N.NNNNV' in vcgencmd output")
    return found[0]
