"""Which power rails make up a board's power, read from sysfs or from ``tegrastats``.

One rule for the agent's energy sampler and the host-side tegrastats parser:

* a whole-module input rail (``VDD_IN`` on TX2/Xavier NX/Orin NX/Nano, ``POM_5V_IN`` on the
  Nano) already holds every other rail: when present it is the only basis;
* otherwise (AGX Xavier, AGX Orin) the monitors sit on parallel branches and the basis is
  their sum. Neither Xavier's ``SYS5V`` nor Orin's ``VIN_SYS_5V0`` is a total: they measure
  the 5 V system input beside the CPU/GPU supplies (a real AGX Xavier line reads SYS5V
  3306 mW with GPU+CPU+SOC at 4017 mW; a real AGX Orin line VIN_SYS_5V0 4968 mW with
  VDD_CPU_CV at 14312 mW);
* a rail measured downstream of another measured rail is left out of the sum while its
  parent is there (Orin's ``VDDQ_VDD2_1V8AO`` is fed from the 5 V system rail), and
  not-connected channels (``NC``) never count.

Two channels may share a label (an AGX Orin lists ``NC`` twice): the second becomes
``NC#2``, so no reading overwrites another.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
NOT_CONNECTED = "NC"
# rail -> the measured rail that feeds it (summing both would count it twice)
DOWNSTREAM_OF = {"VDDQ_VDD2_1V8AO": "VIN_SYS_5V0"}


def base_label(label: str) -> str:
    """The label without the ``#n`` that :func:`unique_labels` adds."""
    return label.split("#", 1)[0]


def unique_labels(labels: Iterable[str]) -> List[str]:
    """The labels in order, the second and later copies of a label suffixed ``#2``, ``#3``..."""
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        n = seen.get(label, 0) + 1
        seen[label] = n
        out.append(label if n == 1 else f"{label}#{n}")
    return out


def energy_basis(labels: Iterable[str]) -> Tuple[str, ...]:
    """The rails whose sum is the board's power (see the module docstring); () when none."""
    names = list(labels)
    for total in INPUT_RAILS:
        if total in names:
            return (total,)
    present = {base_label(n) for n in names}
    return tuple(n for n in names if base_label(n) != NOT_CONNECTED
                 and DOWNSTREAM_OF.get(base_label(n)) not in present)
