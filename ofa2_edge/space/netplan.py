"""The concrete layer plan of an OFA-MobileNetV3 subnet: channels, strides, feature sizes.

This is the one place that knows the network's static shape (OFA's `OFAMobileNetV3`):
the supernet, the cost counters, block latency tables and surrogate features all read it,
so they cannot disagree about what a subnet is.

Layer kinds and key format follow OFA's latency lookup tables (`Conv`, `expanded_conv`,
`Conv_1`, `AvgPool2D`, `Conv_2`, `Logits`), so a plan can be priced by such a table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from ofa2_edge.space.arch import MAX_DEPTH, N_BLOCKS, Arch

BASE_STAGE_WIDTH = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE = (False, True, False, True, True)
N_CLASSES = 1000
CHANNEL_DIVISIBLE = 8
SE_REDUCTION = 4
#: OFA's BatchNorm settings (`bn_param=(0.1, 1e-5)`: momentum, eps) for every BN layer.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5

def make_divisible(value: float, divisor: int = CHANNEL_DIVISIBLE) -> int:
    """TF-slim's channel rounding, as OFA uses it (never rounds down by more than 10 %)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new

@dataclass(frozen=True)
class Widths:
    """Channel widths of the supernet at one width multiplier."""

    stem: int
    first_block: int
    stages: tuple[int, ...]
    final_expand: int
    feature_mix: int

@lru_cache(maxsize=None)
def widths(w: float) -> Widths:
    chans = [make_divisible(b * w) for b in BASE_STAGE_WIDTH]
    return Widths(stem=chans[0], first_block=chans[1], stages=tuple(chans[2:7]), final_expand=chans[7], feature_mix=chans[8])

def mid_channels(in_channels: int, expand: int) -> int:
    """Channels after the inverted bottleneck (OFA: make_divisible(round(in * e)))."""
    return make_divisible(round(in_channels * expand))

def se_channels(mid: int) -> int:
    """Hidden channels of the squeeze-and-excitation module."""
    return make_divisible(mid // SE_REDUCTION)

def conv_out(size: int, stride: int) -> int:
    """Output size of a 'same'-padded conv with odd kernel."""
    return (size - 1) // stride + 1

@dataclass(frozen=True)
class Layer:
    """One layer (or MBConv block) of a subnet, with the facts a cost model needs."""

    kind: str  # Conv | expanded_conv | Conv_1 | AvgPool2D | Conv_2 | Logits
    in_size: int  # spatial size (square) of the input
    out_size: int
    in_ch: int
    out_ch: int
    mid_ch: int = 0  # expanded_conv only
    kernel: int = 1
    stride: int = 1
    idskip: bool = False
    se: bool = False
    hswish: bool = False
    slot: int | None = None  # block slot 0..19 for elastic blocks

    @property
    def has_expand(self) -> bool:
        """Whether this MBConv block has an inverted bottleneck (the first block, expand 1, has none)."""
        return self.kind == "expanded_conv" and self.mid_ch != self.in_ch

    def lut_key(self) -> str:
        """The key of this layer in an OFA-format latency lookup table."""
        if self.kind == "Logits":
            return f"Logits-input:1x1x{self.in_ch}-output:{self.out_ch}"
        key = f"{self.kind}-input:{self.in_size}x{self.in_size}x{self.in_ch}-output:{self.out_size}x{self.out_size}x{self.out_ch}"
        if self.kind == "expanded_conv":
            key += (
                f"-expand:{self.mid_ch}-kernel:{self.kernel}-stride:{self.stride}"
                f"-idskip:{int(self.idskip)}-se:{int(self.se)}-hs:{int(self.hswish)}"
            )
        return key

def stem_layers(r: int, w: float) -> tuple[Layer, ...]:
    """The fixed head of the net: first conv and the first (expand 1) block."""
    wd = widths(w)
    s = conv_out(r, 2)
    first_conv = Layer("Conv", r, s, 3, wd.stem, kernel=3, stride=2, hswish=True)
    first_block = Layer(
        "expanded_conv", s, s, wd.stem, wd.first_block, mid_ch=wd.stem, kernel=3, stride=1,
        idskip=wd.stem == wd.first_block,
    )
    return first_conv, first_block

def tail_layers(r: int, w: float) -> tuple[Layer, ...]:
    """The fixed tail: final expand conv, global pooling, feature mix conv, classifier."""
    wd = widths(w)
    s = slot_in_size(r, N_BLOCKS - 1)
    last = wd.stages[-1]
    return (
        Layer("Conv_1", s, s, last, wd.final_expand, hswish=True),
        Layer("AvgPool2D", s, 1, wd.final_expand, wd.final_expand),
        Layer("Conv_2", 1, 1, wd.final_expand, wd.feature_mix, hswish=True),
        Layer("Logits", 1, 1, wd.feature_mix, N_CLASSES),
    )

def slot_in_size(r: int, slot: int) -> int:
    """Spatial input size of block slot `slot` (0..19) at resolution `r`."""
    size = conv_out(r, 2)
    for stage in range(slot // MAX_DEPTH + (slot % MAX_DEPTH > 0)):
        size = conv_out(size, STAGE_STRIDES[stage])
    return size

def slot_layer(r: int, w: float, slot: int, kernel: int, expand: int) -> Layer:
    """The MBConv block in slot `slot` with the given kernel and expand ratio."""
    wd = widths(w)
    stage, pos = divmod(slot, MAX_DEPTH)
    in_ch = (wd.first_block if stage == 0 else wd.stages[stage - 1]) if pos == 0 else wd.stages[stage]
    stride = STAGE_STRIDES[stage] if pos == 0 else 1
    in_size = slot_in_size(r, slot)
    out_ch = wd.stages[stage]
    return Layer(
        "expanded_conv", in_size, conv_out(in_size, stride), in_ch, out_ch,
        mid_ch=mid_channels(in_ch, expand), kernel=kernel, stride=stride,
        idskip=stride == 1 and in_ch == out_ch, se=STAGE_SE[stage],
        hswish=STAGE_ACTS[stage] == "h_swish", slot=slot,
    )

def layer_plan(arch: Arch) -> list[Layer]:
    """Every layer the subnet `arch` runs, in order."""
    blocks = [slot_layer(arch.r, arch.w, i, arch.ks[i], arch.e[i]) for i in arch.active_slots]
    return [*stem_layers(arch.r, arch.w), *blocks, *tail_layers(arch.r, arch.w)]


def key_id(lut_key: str) -> str:
    """Short stable id of a layer shape: ``l-`` + 12 hex of the sha256 of its lookup-table key.

    The key spells the whole shape (sizes, channels, kernel, stride, SE, activation), so
    equal keys are the same model; the 1x1 tail layers share one id across resolutions.
    """
    return "l-" + hashlib.sha256(lut_key.encode()).hexdigest()[:12]
