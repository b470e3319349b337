"""Analytic costs of subnets: MACs, parameters and peak activation memory.

Counting follows OFA's own profiler (`ofa.utils.flops_counter`): convolutions count
``in_ch * out_elements * k * k / groups``, linear layers ``in * out``; batch norm,
activations and pooling count nothing. Parameters are trainable tensors (conv and linear
weights, BN affine terms, biases). Peak memory is an estimate of the largest set of live
float32 activations at batch 1 (input, output and a held residual), which is what bounds
the arena size of an embedded runtime; fused or in-place kernels can need less.

Units: MACs and parameters in millions, memory in megabytes (10^6 bytes).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np

from ofa2_edge.space.arch import DEFAULT_WIDTH_MULT, Arch, genomes_of
from ofa2_edge.space.netplan import Layer, layer_plan, se_channels
from ofa2_edge.space.slotcost import SlotTable, build_slot_table, evaluate

BYTES_PER_ACTIVATION = 4


def _has_expand(layer: Layer) -> bool:
    # The first block (expand ratio 1) has no inverted bottleneck; elastic blocks always do.
    return layer.mid_ch != layer.in_ch


def layer_macs(layer: Layer) -> int:
    """Multiply-accumulates of one layer."""
    out_px = layer.out_size * layer.out_size
    if layer.kind == "Conv":
        return layer.in_ch * layer.out_ch * layer.kernel * layer.kernel * out_px
    if layer.kind == "expanded_conv":
        mid = layer.mid_ch
        macs = layer.in_ch * mid * layer.in_size * layer.in_size if _has_expand(layer) else 0
        macs += mid * layer.kernel * layer.kernel * out_px  # depthwise
        if layer.se:
            macs += 2 * mid * se_channels(mid)
        return macs + mid * layer.out_ch * out_px
    if layer.kind in ("Conv_1", "Conv_2", "Logits"):
        return layer.in_ch * layer.out_ch * out_px
    if layer.kind == "AvgPool2D":
        return 0
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def layer_params(layer: Layer) -> int:
    """Trainable parameters of one layer (BN weight and bias count, running stats do not)."""
    if layer.kind == "Conv":
        return layer.in_ch * layer.out_ch * layer.kernel * layer.kernel + 2 * layer.out_ch
    if layer.kind == "expanded_conv":
        mid = layer.mid_ch
        params = (layer.in_ch * mid + 2 * mid) if _has_expand(layer) else 0
        params += mid * layer.kernel * layer.kernel + 2 * mid
        if layer.se:
            se = se_channels(mid)
            params += mid * se + se + se * mid + mid
        return params + mid * layer.out_ch + 2 * layer.out_ch
    if layer.kind == "Conv_1":
        return layer.in_ch * layer.out_ch + 2 * layer.out_ch
    if layer.kind == "Conv_2":
        return layer.in_ch * layer.out_ch
    if layer.kind == "Logits":
        return layer.in_ch * layer.out_ch + layer.out_ch
    if layer.kind == "AvgPool2D":
        return 0
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def layer_peak_bytes(layer: Layer) -> int:
    """Largest set of float32 activations alive at once while this layer runs."""
    x_in = layer.in_size * layer.in_size * layer.in_ch
    x_out = layer.out_size * layer.out_size * layer.out_ch
    if layer.kind != "expanded_conv":
        return (x_in + x_out) * BYTES_PER_ACTIVATION
    expanded = layer.in_size * layer.in_size * layer.mid_ch if _has_expand(layer) else x_in
    dw_out = layer.out_size * layer.out_size * layer.mid_ch
    held = x_in if layer.idskip else 0  # the residual input stays alive to the add
    steps = [
        x_in + expanded if _has_expand(layer) else 0,
        expanded + dw_out + held,
        2 * dw_out + held if layer.se else 0,
        dw_out + x_out + held,
    ]
    return max(steps) * BYTES_PER_ACTIVATION


@lru_cache(maxsize=512)
def _macs_table(r: int, w: float) -> SlotTable:
    return build_slot_table(layer_macs, r, w)


@lru_cache(maxsize=512)
def _params_table(r: int, w: float) -> SlotTable:
    return build_slot_table(layer_params, r, w)


@lru_cache(maxsize=512)
def _peak_table(r: int, w: float) -> SlotTable:
    return build_slot_table(layer_peak_bytes, r, w, reduce="max")


def macs_m(genomes: np.ndarray, w: float = DEFAULT_WIDTH_MULT) -> np.ndarray:
    """MACs in millions for a (n, 46) genome batch."""
    return evaluate(genomes, lambda r: _macs_table(r, w)) / 1e6


def params_m(genomes: np.ndarray, w: float = DEFAULT_WIDTH_MULT) -> np.ndarray:
    """Trainable parameters in millions for a (n, 46) genome batch."""
    return evaluate(genomes, lambda r: _params_table(r, w)) / 1e6


def peak_mem_mb(genomes: np.ndarray, w: float = DEFAULT_WIDTH_MULT) -> np.ndarray:
    """Estimated peak activation memory in MB (float32, batch 1) for a genome batch."""
    return evaluate(genomes, lambda r: _peak_table(r, w), reduce="max") / 1e6


def arch_costs(archs: Iterable[Arch]) -> list[dict[str, float]]:
    """MACs, params and peak memory of each arch (archs may mix width multipliers)."""
    archs = list(archs)
    out: list[dict[str, float]] = [{} for _ in archs]
    for w in sorted({a.w for a in archs}):
        idx = [i for i, a in enumerate(archs) if a.w == w]
        g = genomes_of(archs[i] for i in idx)
        for i, m, p, k in zip(idx, macs_m(g, w), params_m(g, w), peak_mem_mb(g, w)):
            out[i] = {"macs_m": float(m), "params_m": float(p), "peak_mem_mb": float(k)}
    return out


def plan_costs(arch: Arch) -> list[tuple[Layer, int, int]]:
    """Each layer of the subnet with its MACs and parameters, for display."""
    return [(layer, layer_macs(layer), layer_params(layer)) for layer in layer_plan(arch)]
