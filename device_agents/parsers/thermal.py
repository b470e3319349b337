"""Thermal zones: the sysfs value format, and shell transcripts of reading them.

``/sys/class/thermal/thermal_zoneN/temp`` holds millidegrees Celsius (Linux
Documentation/thermal/sysfs-api); ``type`` names the sensor (``cpu-thermal``,
``CPU-therm``, ``gpu-thermal``...). Transcripts come as ``cat .../thermal_zone*/type``
followed by one line per zone (glob order), ``cat .../thermal_zoneN/temp`` followed by its
value, or ``/sys/class/thermal/thermal_zoneN: TYPE`` listings.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional

from device_agents.parsers.text import ParseError, clean_lines

_CAT = re.compile(r"\bcat\s+\S*thermal_zone(\d+|\*)/(type|temp)\b")
_LISTING = re.compile(r"thermal_zone(\d+):\s*(\S+)\s*$")


@dataclasses.dataclass(frozen=True)
class ThermalZone:
    type: Optional[str]
    temp_c: Optional[float]


def millidegrees_to_c(text: str) -> float:
    """A sysfs ``temp`` value in degrees Celsius.

    A few vendor kernels print whole degrees instead of millidegrees; a magnitude under
    1000 (1 degree in millidegrees, never a real die temperature) is read as degrees.
    """
    try:
        value = int(text.strip())
    except ValueError:
        raise ParseError(f"not a sysfs temperature (integer millidegrees): {text.strip()[:40]!r}") from None
    return float(value) if abs(value) < 1000 else value / 1000.0


def parse_thermal_transcript(text: str) -> Dict[int, ThermalZone]:
    """Zones read in a shell transcript, by zone number (a zone may lack type or temp)."""
    lines = clean_lines(text)
    types: Dict[int, str] = {}
    temps: Dict[int, float] = {}
    named: List[int] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _CAT.search(line)
        if m:
            zone, attr = m.group(1), m.group(2)
            if zone != "*":
                named.append(int(zone))
            out = []
            i += 1
            while i < len(lines) and lines[i] and "$" not in lines[i] and not _CAT.search(lines[i]):
                out.append(lines[i])
                i += 1
            indices = list(range(len(out))) if zone == "*" else [int(zone)] * min(len(out), 1)
            for idx, value in zip(indices, out):
                if attr == "type":
                    types[idx] = value
                else:
                    temps[idx] = millidegrees_to_c(value)
            continue
        m = _LISTING.search(line)
        if m:
            types[int(m.group(1))] = m.group(2)
        i += 1
    zones = sorted(set(types) | set(temps) | set(named))
    if not zones:
        raise ParseError("no thermal_zone reads in the text")
    return {z: ThermalZone(types.get(z), temps.get(z)) for z in zones}
