"""One layer of the plan as a standalone model: the unit an OFA-style block lookup table times.

A block table prices a subnet by the sum of its layers' latencies, each measured on its
own (OFA's `LatencyTable`). :func:`extract_layer` builds that layer from the *same* static
module the full subnet uses (`conv_bn_act`, `ResidualBlock`, the tail modules) and copies
its tensors out of the supernet, so a layer timed alone computes exactly what it computes
inside an exported subnet with the same weights. Its input is the layer's input feature
map, (1, C, H, W) as the plan gives it; the classifier takes the pooled (1, C, 1, 1) map
and flattens it first, as :class:`StaticSubnet` does.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import EXPAND_CHOICES, MAX_DEPTH, N_BLOCKS, N_STAGES, Arch
from ofa2_edge.space.netplan import Layer, conv_out, key_id, mid_channels, slot_layer, stem_layers, tail_layers
from ofa2_edge.supernet.network import Supernet
from ofa2_edge.supernet.static import ResidualBlock

#: Any resolution: the supernet's tensors do not depend on it; the plan functions want one.
_PLAN_RESOLUTION = 224
#: Which supernet module holds each fixed layer's tensors.
FIXED_MODULES = {
    "Conv": "first_conv",
    "Conv_1": "final_expand_layer",
    "AvgPool2D": "global_avg_pool",
    "Conv_2": "feature_mix_layer",
    "Logits": "classifier",
}


def layer_id(layer: Layer) -> str:
    return key_id(layer.lut_key())


def block_expand(layer: Layer) -> int:
    """The expand ratio of an elastic block (a layer records its middle channels, not the ratio)."""
    found = [e for e in EXPAND_CHOICES if mid_channels(layer.in_ch, e) == layer.mid_ch]
    if layer.kind != "expanded_conv" or layer.slot is None or not found:
        raise InvalidInputError(f"{layer.lut_key()} is not an elastic block of the supernet (no slot or expand ratio)")
    return found[0]


def _shape_free(layer: Layer) -> Layer:
    """The layer without its spatial sizes and slot: what must match the supernet's plan."""
    return dataclasses.replace(layer, in_size=0, out_size=0, slot=None)


def _plan_twin(layer: Layer, w: float) -> Layer:
    """The supernet's own plan layer of the same kind and place (sizes aside)."""
    r = _PLAN_RESOLUTION
    if layer.kind == "expanded_conv" and layer.slot is None:
        return stem_layers(r, w)[1]
    if layer.kind == "expanded_conv":
        return slot_layer(r, w, layer.slot, layer.kernel, block_expand(layer))
    if layer.kind == "Conv":
        return stem_layers(r, w)[0]
    tail = {t.kind: t for t in tail_layers(r, w)}
    if layer.kind not in tail:
        raise InvalidInputError(f"unknown layer kind {layer.kind!r}")
    return tail[layer.kind]


def check_layer(layer: Layer, w: float) -> None:
    """Raise unless `layer` is a layer of the w`w` network with consistent sizes."""
    twin = _plan_twin(layer, w)
    if _shape_free(layer) != _shape_free(twin):
        raise InvalidInputError(f"{layer.lut_key()} is not a layer of the w{w} OFA-MobileNetV3 network")
    if layer.kind == "AvgPool2D":
        ok = layer.out_size == 1
    elif layer.kind in ("Conv_2", "Logits"):
        ok = layer.in_size == layer.out_size == 1
    else:
        ok = layer.in_size >= 1 and layer.out_size == conv_out(layer.in_size, layer.stride)
    if not ok:
        raise InvalidInputError(f"{layer.lut_key()}: its input and output sizes do not fit its stride")


class LayerNet(nn.Module):
    """A single plan layer with the facts an exporter needs: `layer`, `w`, `weights_source`,
    `bn_stats_source` (``supernet`` until recalibrated), `input_shape`, `output_shape`."""

    def __init__(self, layer: Layer, w: float, body: nn.Module, weights_source: str) -> None:
        super().__init__()
        self.body = body
        self.layer = layer
        self.w = w
        self.weights_source = weights_source
        self.bn_stats_source = "supernet"
        self.flatten = layer.kind == "Logits"

    @property
    def id(self) -> str:
        return layer_id(self.layer)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        size = self.layer.in_size
        return (1, self.layer.in_ch, size, size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.flatten:
            return (1, self.layer.out_ch)
        size = self.layer.out_size
        return (1, self.layer.out_ch, size, size)

    @property
    def has_batch_norm(self) -> bool:
        return any(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.flatten(x, 1) if self.flatten else x)


def extract_layer(supernet: Supernet, layer: Layer) -> LayerNet:
    """`layer` as a standalone model (eval mode) holding copies of the supernet's tensors.

    Raises :class:`InvalidInputError` if `layer` is not a layer of the supernet's network.
    """
    w = supernet.width_mult
    check_layer(layer, w)
    if layer.kind == "expanded_conv" and layer.slot is None:
        body: nn.Module = copy.deepcopy(supernet.blocks[0])
    elif layer.kind == "expanded_conv":
        body = _elastic_block(supernet, layer)
    else:
        body = copy.deepcopy(supernet.get_submodule(FIXED_MODULES[layer.kind]))
    return LayerNet(layer, w, body, supernet.weights_source).eval()


def _elastic_block(supernet: Supernet, layer: Layer) -> ResidualBlock:
    """The (kernel, expand) block of slot `layer.slot`, through the supernet's public `subnet_tensors`."""
    assert layer.slot is not None
    k, e = layer.kernel, block_expand(layer)
    w = supernet.width_mult
    full = Arch(ks=(k,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(MAX_DEPTH,) * N_STAGES, r=_PLAN_RESOLUTION, w=w)
    prefix = f"blocks.{layer.slot + 1}."  # every slot is active in `full`; blocks.0 is the first block
    with torch.no_grad():
        tensors = {
            key.removeprefix(prefix): t.detach().clone(memory_format=torch.contiguous_format)
            for key, t in supernet.subnet_tensors(full).items()
            if key.startswith(prefix)
        }
    with torch.device("meta"):
        block = ResidualBlock(layer)
    block.load_state_dict(tensors, strict=True, assign=True)
    return block
