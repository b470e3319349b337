"""What a device table can hold a predictor of: latency now, energy and peak memory when the
device reports them. A quantity names its unit and how one agent record gives its value;
each gets its own predictor file in the table (:meth:`DeviceTable.predictor_path`) and its
own search objective (``<quantity>:<device>``, :mod:`ofa2_edge.search.objectives`).

A new quantity is one `register_quantity` call here (and its field in the agent's record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from device_agents.records import MeasureResult
from ofa2_edge.core.errors import InvalidInputError


@dataclass(frozen=True)
class Quantity:
    """A measured per-inference quantity a device predictor can be fitted for."""

    name: str  # also the objective family: latency:<device>
    unit: str
    help: str
    value: Callable[[MeasureResult], float | None] = field(repr=False, compare=False)

    @property
    def field(self) -> str:
        """The name of its values in records and run rows (unit included, e.g. latency_ms)."""
        return f"{self.name}_{self.unit.lower()}"


_QUANTITIES: dict[str, Quantity] = {}


def register_quantity(quantity: Quantity) -> Quantity:
    if quantity.name in _QUANTITIES:
        raise ValueError(f"quantity {quantity.name!r} is registered twice")
    _QUANTITIES[quantity.name] = quantity
    return quantity


def quantity_names() -> list[str]:
    return list(_QUANTITIES)


def quantity(name: str) -> Quantity:
    """The quantity called `name`; an error listing the known ones otherwise."""
    if name not in _QUANTITIES:
        raise InvalidInputError(f"unknown quantity {name!r}; choose from {', '.join(_QUANTITIES)}")
    return _QUANTITIES[name]


def _energy(record: MeasureResult) -> float | None:
    """Energy above the board's idle baseline where the agent took one, else the board's total."""
    if record.energy is None:
        return None
    net = record.energy.net_energy_mj_per_inference
    return net if net is not None else record.energy.energy_mj_per_inference


LATENCY = register_quantity(
    Quantity("latency", "ms", "the protocol's latency estimate", lambda r: r.estimate_ms)
)
ENERGY = register_quantity(
    Quantity("energy", "mJ", "board energy of one inference (devices with power rails)", _energy)
)
MEMORY = register_quantity(
    Quantity("memory", "MiB", "peak resident memory of the runtime process", lambda r: r.peak_rss_mib)
)
