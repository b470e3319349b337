"""Vectorised evaluation of layer-additive costs over batches of genomes.

Many costs of a subnet are a sum (or a max) over its layers: MACs, parameters, a latency
lookup table, peak activation memory. The stem and tail are fixed per resolution and each
block slot's cost depends only on (slot, kernel, expand, resolution). A `SlotTable` holds
those numbers for one resolution, so a population of any size is priced with one gather
and one reduction per distinct resolution, with no Python loop over archs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from ofa2_edge.space.arch import (
    E_GENES,
    EXPAND_CHOICES,
    KERNEL_CHOICES,
    KS_GENES,
    N_BLOCKS,
    R_GENE,
    active_mask,
    as_genomes,
    choice_indices,
)
from ofa2_edge.space.netplan import Layer, slot_layer, stem_layers, tail_layers

Reduce = Literal["sum", "max"]


@dataclass(frozen=True)
class SlotTable:
    """Costs at one resolution: the fixed layers, and every slot x kernel x expand choice."""

    fixed: float
    slots: np.ndarray  # shape (N_BLOCKS, len(KERNEL_CHOICES), len(EXPAND_CHOICES))


def build_slot_table(layer_cost: Callable[[Layer], float], r: int, w: float, reduce: Reduce = "sum") -> SlotTable:
    """Price every possible layer at resolution `r` with `layer_cost`."""
    fixed_costs = [layer_cost(layer) for layer in (*stem_layers(r, w), *tail_layers(r, w))]
    slots = np.array(
        [
            [[layer_cost(slot_layer(r, w, i, k, e)) for e in EXPAND_CHOICES] for k in KERNEL_CHOICES]
            for i in range(N_BLOCKS)
        ],
        dtype=np.float64,
    )
    fixed = float(sum(fixed_costs)) if reduce == "sum" else float(max(fixed_costs))
    return SlotTable(fixed=fixed, slots=slots)


def slot_choice_indices(genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(active mask, kernel index, expand index), each (n, 20); inactive slots index 0."""
    g = as_genomes(genomes)
    active = active_mask(g)
    k_idx = choice_indices(np.where(active, g[:, KS_GENES], KERNEL_CHOICES[0]), KERNEL_CHOICES, "ks")
    e_idx = choice_indices(np.where(active, g[:, E_GENES], EXPAND_CHOICES[0]), EXPAND_CHOICES, "e")
    return active, k_idx, e_idx


def per_slot_costs(genomes: np.ndarray, table_of: Callable[[int], SlotTable]) -> tuple[np.ndarray, np.ndarray]:
    """(fixed cost per genome (n,), cost of each slot (n, 20) with inactive slots at 0)."""
    g = as_genomes(genomes)
    active, k_idx, e_idx = slot_choice_indices(g)
    if not len(g):
        return np.zeros(0), np.zeros((0, N_BLOCKS))
    resolutions, r_idx = np.unique(g[:, R_GENE], return_inverse=True)
    tables = [table_of(int(r)) for r in resolutions]
    fixed = np.array([t.fixed for t in tables], dtype=np.float64)[r_idx]
    slots = np.stack([t.slots for t in tables])[r_idx[:, None], np.arange(N_BLOCKS)[None, :], k_idx, e_idx]
    return fixed, np.where(active, slots, 0.0)


def evaluate(genomes: np.ndarray, table_of: Callable[[int], SlotTable], reduce: Reduce = "sum") -> np.ndarray:
    """Total cost per genome: fixed + sum of active slots, or the max of them all."""
    fixed, slots = per_slot_costs(genomes, table_of)
    if reduce == "sum":
        return fixed + slots.sum(axis=1)
    return np.maximum(fixed, slots.max(axis=1, initial=0.0))
