"""Architecture features for latency surrogates, computed for a whole genome batch at once.

Latency is close to additive in per-layer work, and what a layer costs depends on what kind
of work it is: pointwise convolutions are compute bound, depthwise ones memory bound, and
every op pays a fixed dispatch overhead. So each layer is described by a few *quantities*
(MACs split into pointwise / depthwise / squeeze-excite, activation bytes read and written,
weight bytes, op count), priced once per (resolution, slot, kernel, expand) from the layer
plan in `netplan` with the MAC and parameter counters of `costs`, and gathered per arch
with one indexing step per resolution (no Python loop over archs). Sums per stage and over
the whole net, plus the structural genes, give the design matrices of the surrogates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from ofa2_edge.space.arch import (
    D_GENES,
    DEFAULT_WIDTH_MULT,
    EXPAND_CHOICES,
    KERNEL_CHOICES,
    MAX_DEPTH,
    N_BLOCKS,
    N_STAGES,
    R_GENE,
    as_genomes,
)
from ofa2_edge.space.costs import BYTES_PER_ACTIVATION, layer_macs, layer_params
from ofa2_edge.space.netplan import Layer, se_channels, slot_layer, stem_layers, tail_layers
from ofa2_edge.space.slotcost import slot_choice_indices

#: Per-layer quantities, in this order along the last axis of every quantity array.
QUANTITIES: tuple[str, ...] = (
    "macs",  # all multiply-accumulates (equals costs.layer_macs)
    "pw_macs",  # pointwise (1x1) convolutions and linear layers
    "dw_macs",  # depthwise convolutions (kernel k: k*k MACs per output element)
    "se_macs",  # squeeze-and-excite fully connected layers
    "dw_out_elems",  # depthwise output elements (memory-bound work independent of k)
    "act_read_bytes",  # activations read by the layer's ops (float32)
    "act_write_bytes",  # activations written by the layer's ops (float32)
    "weight_bytes",  # parameters read (float32)
    "ops",  # convolutions, linear layers and elementwise adds run
    "layers",  # 1 per layer or MBConv block
)
Q = {name: i for i, name in enumerate(QUANTITIES)}
#: Groups of layers: the fixed stem + tail, then the five elastic stages.
GROUPS: tuple[str, ...] = ("fixed", *(f"stage{s + 1}" for s in range(N_STAGES)))


def layer_quantities(layer: Layer) -> np.ndarray:
    """The `QUANTITIES` of one layer, as float64."""
    macs = layer_macs(layer)
    in_px, out_px = layer.in_size**2, layer.out_size**2
    q = dict.fromkeys(QUANTITIES, 0.0)
    q["macs"], q["weight_bytes"], q["layers"] = macs, layer_params(layer) * BYTES_PER_ACTIVATION, 1.0
    if layer.kind == "expanded_conv":
        mid = layer.mid_ch
        expand = mid != layer.in_ch  # the first block has no inverted bottleneck
        dw_out = mid * out_px
        q["dw_macs"] = dw_out * layer.kernel * layer.kernel
        q["dw_out_elems"] = dw_out
        q["se_macs"] = 2 * mid * se_channels(mid) if layer.se else 0
        q["pw_macs"] = macs - q["dw_macs"] - q["se_macs"]
        read = (layer.in_ch * in_px if expand else 0) + mid * in_px + dw_out
        write = (mid * in_px if expand else 0) + dw_out + layer.out_ch * out_px
        ops = (1 if expand else 0) + 2
        if layer.se:
            read, write, ops = read + 2 * dw_out, write + dw_out, ops + 3  # pool, 2 FC, scale
        if layer.idskip:
            read, write, ops = read + 2 * layer.out_ch * out_px, write + layer.out_ch * out_px, ops + 1
        q["act_read_bytes"], q["act_write_bytes"], q["ops"] = read * 4.0, write * 4.0, float(ops)
    else:
        q["pw_macs"] = macs  # dense compute: the 3x3 stem conv, 1x1 convs, the classifier
        q["act_read_bytes"] = layer.in_ch * in_px * 4.0
        q["act_write_bytes"] = layer.out_ch * out_px * 4.0
        q["ops"] = 1.0
    return np.array([q[name] for name in QUANTITIES], dtype=np.float64)


@dataclass(frozen=True)
class ResolutionQuantities:
    """Every layer's quantities at one resolution: the fixed layers summed, and each
    (slot, kernel, expand) choice of the elastic blocks."""

    fixed: np.ndarray  # (Q,) quantities of the stem and tail
    slots: np.ndarray  # (N_BLOCKS, kernels, expands, Q)


@lru_cache(maxsize=256)
def resolution_quantities(r: int, w: float) -> ResolutionQuantities:
    fixed = sum(layer_quantities(layer) for layer in (*stem_layers(r, w), *tail_layers(r, w)))
    slots = np.array(
        [
            [[layer_quantities(slot_layer(r, w, i, k, e)) for e in EXPAND_CHOICES] for k in KERNEL_CHOICES]
            for i in range(N_BLOCKS)
        ]
    )
    return ResolutionQuantities(fixed=np.asarray(fixed), slots=slots)


@dataclass(frozen=True)
class ArchFeatures:
    """Features of a genome batch: per-group and per-block quantities plus the structure."""

    per_group: np.ndarray  # (n, 6, Q): fixed stem+tail, then the sum over each stage
    resolution: np.ndarray  # (n,)
    depth: np.ndarray  # (n, 5) blocks per stage
    kernel: np.ndarray  # (n, 20) kernel size of active slots, 0 where inactive
    expand: np.ndarray  # (n, 20) expand ratio of active slots, 0 where inactive
    _flat: np.ndarray  # every (resolution, slot, kernel, expand) row, then a zero row
    _rows: np.ndarray  # (n, 20) row of each block slot in `_flat`

    @cached_property
    def per_block(self) -> np.ndarray:
        """(n, 20, Q): each block slot's quantities, zero for inactive slots (built on demand:
        the surrogates only need the group sums, and this is the largest array)."""
        return np.take(self._flat, self._rows, axis=0)

    @cached_property
    def total(self) -> np.ndarray:
        """(n, Q) whole-net quantities."""
        return self.per_group.sum(axis=1)

    def quantity(self, name: str) -> np.ndarray:
        """(n,) whole-net total of one quantity, e.g. ``quantity("macs")``."""
        return self.total[:, Q[name]]

    def __len__(self) -> int:
        return self.resolution.shape[0]


def arch_features(genomes: np.ndarray, w: float = DEFAULT_WIDTH_MULT) -> ArchFeatures:
    """Compute `ArchFeatures` for a (n, 46) genome batch of width multiplier `w`."""
    g = as_genomes(genomes)
    n = g.shape[0]
    active, k_idx, e_idx = slot_choice_indices(g)
    r = g[:, R_GENE]
    values, r_idx = np.unique(r, return_inverse=True)
    tables = [resolution_quantities(int(v), float(w)) for v in values]
    # One flat table of every (resolution, slot, kernel, expand) row plus a zero row for
    # inactive slots, so the batch is priced by gathers, with no loop over archs.
    flat = np.concatenate([*(t.slots.reshape(-1, len(QUANTITIES)) for t in tables), np.zeros((1, len(QUANTITIES)))])
    per_r = N_BLOCKS * len(KERNEL_CHOICES) * len(EXPAND_CHOICES)
    rows = (
        r_idx[:, None] * per_r
        + np.arange(N_BLOCKS)[None, :] * (per_r // N_BLOCKS)
        + k_idx * len(EXPAND_CHOICES)
        + e_idx
    )
    rows = np.where(active, rows, flat.shape[0] - 1)
    per_group = np.empty((n, 1 + N_STAGES, len(QUANTITIES)))
    per_group[:, 0] = np.stack([t.fixed for t in tables])[r_idx]
    stages = per_group[:, 1:]
    np.take(flat, rows[:, 0::MAX_DEPTH], axis=0, out=stages)
    for pos in range(1, MAX_DEPTH):
        stages += np.take(flat, rows[:, pos::MAX_DEPTH], axis=0)
    kernels = np.asarray(KERNEL_CHOICES)[k_idx] * active
    expands = np.asarray(EXPAND_CHOICES)[e_idx] * active
    return ArchFeatures(per_group, r.astype(np.float64), g[:, D_GENES].astype(np.float64), kernels, expands, flat, rows)


# ------------------------------------------------------------------ design matrices
# Each surrogate reads one of these; all columns are non-negative "work" so a linear model
# with non-negative coefficients stays physically meaningful (more work never costs less).

#: The fewest prices that still separate work from per-op overhead (fits from ~5 samples).
MINIMAL_QUANTITIES = ("macs", "ops")
#: Whole-net quantities a compact additive model prices (few columns: fits from ~10 samples).
COMPACT_QUANTITIES = ("pw_macs", "dw_macs", "dw_out_elems", "act_read_bytes", "act_write_bytes", "weight_bytes", "ops")
#: Quantities priced separately per group by the per-stage model.
STAGE_QUANTITIES = ("pw_macs", "dw_macs", "dw_out_elems", "act_read_bytes", "act_write_bytes", "ops")


def minimal_matrix(f: ArchFeatures) -> tuple[np.ndarray, list[str]]:
    """Total MACs, op count and a constant: (n, 3)."""
    cols = [f.quantity(name) for name in MINIMAL_QUANTITIES]
    return np.column_stack([*cols, np.ones(len(f))]), [*MINIMAL_QUANTITIES, "const"]


def compact_matrix(f: ArchFeatures) -> tuple[np.ndarray, list[str]]:
    """Whole-net work per kind, plus a constant: (n, 8)."""
    cols = [f.quantity(name) for name in COMPACT_QUANTITIES]
    return np.column_stack([*cols, np.ones(len(f))]), [*COMPACT_QUANTITIES, "const"]


def stage_matrix(f: ArchFeatures) -> tuple[np.ndarray, list[str]]:
    """Work per kind per group (fixed stem+tail and five stages), plus a constant."""
    idx = [Q[name] for name in STAGE_QUANTITIES]
    block = f.per_group[:, :, idx].reshape(len(f), -1)
    names = [f"{group}.{name}" for group in GROUPS for name in STAGE_QUANTITIES]
    return np.column_stack([block, np.ones(len(f))]), [*names, "const"]


def tree_matrix(f: ArchFeatures) -> tuple[np.ndarray, list[str]]:
    """Structure and work for tree ensembles (which split on any column, scale-free)."""
    n = len(f)
    active = f.kernel > 0
    per_stage = lambda a: (a * active).reshape(n, N_STAGES, MAX_DEPTH).sum(axis=2) / f.depth
    cols = [
        f.resolution[:, None],
        f.depth,
        per_stage(f.kernel),
        per_stage(f.expand),
        f.total,
        f.per_group[:, 1:, Q["macs"]],
        f.per_group[:, 1:, Q["act_read_bytes"]],
    ]
    names = (
        ["resolution"]
        + [f"stage{s + 1}.depth" for s in range(N_STAGES)]
        + [f"stage{s + 1}.mean_kernel" for s in range(N_STAGES)]
        + [f"stage{s + 1}.mean_expand" for s in range(N_STAGES)]
        + [f"total.{q}" for q in QUANTITIES]
        + [f"stage{s + 1}.macs" for s in range(N_STAGES)]
        + [f"stage{s + 1}.act_read_bytes" for s in range(N_STAGES)]
    )
    return np.column_stack(cols), names


MATRICES = {"minimal": minimal_matrix, "compact": compact_matrix, "stage": stage_matrix, "tree": tree_matrix}
