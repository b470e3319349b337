"""A static OFA-MobileNetV3 subnet built from plain torch modules.

Exporters (ONNX, LiteRT) trace this module, so it holds only Conv2d (the depthwise ones
skip padding-only taps when torch runs them, never in an export), BatchNorm2d, ReLU,
Hardswish, Hardsigmoid, AdaptiveAvgPool2d and Linear, composed by three tiny containers
(squeeze-and-excite, MBConv, residual). Module names follow OFA's static `MobileNetV3`, so a
subnet's `state_dict` has the same keys as the one OFA's `get_active_subnet` returns.

The shape of every layer comes from :mod:`ofa2_edge.space.netplan` (the same plan the cost
counters and latency tables price), so what is exported is what was costed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ofa2_edge.data.preprocessing import Preprocessing
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.netplan import BN_EPS, BN_MOMENTUM, N_CLASSES, Layer, layer_plan, se_channels


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise conv that, in torch, skips the taps that only ever meet zero padding.

    On a map smaller than its kernel (a 7x7 kernel on the 1x1 and 2x2 maps of a 32-48 px
    input) those taps multiply padding only, and oneDNN's depthwise kernel still pays for
    them: 3-10x the time of the whole rest of the net (measured, 2026-12-07). The central crop
    with the padding reduced by the same amount gives the same outputs, shape and gradients
    (the cropped taps' gradient is exactly zero). Exports keep the declared kernel: what is
    timed on a device is the architecture as named.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return super()._conv_forward(x, weight, bias)
        crop = [_unused_taps(x.shape[2 + d], self.kernel_size[d], self.stride[d], self.padding[d]) for d in (0, 1)]  # type: ignore[index]
        if crop == [0, 0]:
            return super()._conv_forward(x, weight, bias)
        ch, cw = crop
        w = weight[:, :, ch : weight.shape[2] - ch, cw : weight.shape[3] - cw]
        pad = (self.padding[0] - ch, self.padding[1] - cw)  # type: ignore[index]
        return nn.functional.conv2d(x, w, bias, self.stride, pad, self.dilation, self.groups)


def _unused_taps(size: int, kernel: int, stride: int, pad: int) -> int:
    """How many taps at each end of a centred `kernel` (padding `pad`) only meet padding on
    an input of `size`: the first output reads from -pad, the last from (out-1)*stride-pad."""
    out = (size + 2 * pad - kernel) // stride + 1
    return max(0, min(pad - (out - 1) * stride, pad + 1 - size, (kernel - 1) // 2))


def _act(hswish: bool) -> nn.Module:
    return nn.Hardswish() if hswish else nn.ReLU()


def conv_bn_act(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, hswish: bool = True) -> nn.Sequential:
    """OFA's `ConvLayer` (weight, BN, activation), as a plain Sequential."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
            bn=batch_norm(out_ch),
            act=_act(hswish),
        )
    )


class SqueezeExcite(nn.Module):
    """OFA's `SEModule`: x * hsigmoid(expand(relu(reduce(mean(x)))))."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            OrderedDict(
                reduce=nn.Conv2d(channels, hidden, 1, bias=True),
                relu=nn.ReLU(),
                expand=nn.Conv2d(hidden, channels, 1, bias=True),
                h_sigmoid=nn.Hardsigmoid(),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class MBConv(nn.Module):
    """OFA's `MBConvLayer`: [1x1 expand, BN, act], depthwise kxk, BN, act, [SE], 1x1 project, BN."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        mid, act = layer.mid_ch, layer.hswish
        self.inverted_bottleneck = conv_bn_act(layer.in_ch, mid, 1, 1, act) if layer.has_expand else None
        depth = OrderedDict(
            conv=DepthwiseConv2d(mid, mid, layer.kernel, layer.stride, layer.kernel // 2, groups=mid, bias=False),
            bn=batch_norm(mid),
            act=_act(act),
        )
        if layer.se:
            depth["se"] = SqueezeExcite(mid, se_channels(mid))
        self.depth_conv = nn.Sequential(depth)
        self.point_linear = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(mid, layer.out_ch, 1, bias=False), bn=batch_norm(layer.out_ch))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    """An MBConv block with the identity shortcut where stride is 1 and channels match."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.conv = MBConv(layer)
        self.identity = layer.idskip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + x if self.identity else y


def tail_modules(layers: Sequence[Layer], n_classes: int = N_CLASSES) -> dict[str, nn.Module]:
    """The final expand conv, pooling, feature-mix conv and classifier (`n_classes` outputs;
    the plan's Logits layer is ImageNet's 1000) from their plan layers."""
    final, _pool, mix, logits = layers
    return {
        "final_expand_layer": conv_bn_act(final.in_ch, final.out_ch, 1, 1, hswish=True),
        "global_avg_pool": nn.AdaptiveAvgPool2d(1),
        # OFA's feature mix layer has neither BN nor bias
        "feature_mix_layer": nn.Sequential(
            OrderedDict(conv=nn.Conv2d(mix.in_ch, mix.out_ch, 1, bias=False), act=nn.Hardswish())
        ),
        # dropout precedes it in training; it is the identity at inference
        "classifier": nn.Sequential(OrderedDict(linear=nn.Linear(logits.in_ch, n_classes))),
    }


class StaticSubnet(nn.Module):
    """One OFA-MobileNetV3 subnet, with the facts an exporter needs attached.

    `arch` is what it is, `weights_source` where its weights come from (``sha256:<hex>`` of
    a checkpoint file, or ``random:<seed>``), `bn_stats_source` where its BatchNorm
    running statistics come from (``supernet`` until :func:`recalibrate_bn` replaces
    them), `preprocessing` the input recipe (OFA's ImageNet one unless given: a supernet
    trained on a user's data passes its dataset's), `n_classes` the classifier's outputs.
    """

    def __init__(
        self,
        arch: Arch,
        weights_source: str,
        n_classes: int = N_CLASSES,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        plan = layer_plan(arch)
        first, blocks, tail = plan[0], plan[1:-4], plan[-4:]
        self.first_conv = conv_bn_act(first.in_ch, first.out_ch, first.kernel, first.stride, hswish=True)
        self.blocks = nn.ModuleList(ResidualBlock(layer) for layer in blocks)
        for name, module in tail_modules(tail, n_classes).items():
            self.add_module(name, module)
        self.arch = arch
        self.n_classes = n_classes
        self.weights_source = weights_source
        self.bn_stats_source = "supernet"
        self.preprocessing = preprocessing or Preprocessing.for_resolution(arch.r)
        if self.preprocessing.input_size != arch.r:
            raise ValueError(f"preprocessing is for {self.preprocessing.input_size} px, the arch runs at {arch.r} px")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.preprocessing.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = self.global_avg_pool(x)
        x = self.feature_mix_layer(x)
        return self.classifier(torch.flatten(x, 1))
