"""The elastic OFA-MobileNetV3 supernet (ks 3,5,7; expand 3,4,6; depth 2,3,4; w1.0 or w1.2).

Its parameters and buffers carry exactly the names and shapes of OFA's
``OFAMobileNetV3(width_mult=w, ks_list=[3,5,7], expand_ratio_list=[3,4,6], depth_list=[2,3,4])``
(the official checkpoints ``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``), so those load as they
are. A subnet is chosen per call, never by mutating the supernet (OFA toggles
`active_kernel_size` & co. on its modules instead):

- **elastic kernel**: the 7x7 depthwise kernel is centre-cropped to 5x5 and mapped through
  the learned 25x25 ``7to5_matrix``; a 3x3 kernel continues from that 5x5 result through the
  ``5to3_matrix`` (OFA's kernel transformation, `KERNEL_TRANSFORM_MODE = 1`);
- **elastic expand ratio**: a block with ratio e uses the *first* make_divisible(in * e)
  middle channels of every tensor that touches them (expand conv outputs, BN, depthwise
  filters, SE, projection inputs). OFA's progressive shrinking sorts those channels by
  importance (`re_organize_middle_weights`) before each width stage, and its released
  checkpoints are stored sorted, so slicing the first channels *is* OFA's semantics; a
  supernet trained without that sorting would give poor small-expand subnets;
- **elastic depth**: a stage of depth d runs its first d blocks;
- **elastic resolution**: the net is convolutional up to a global average pool, so any
  input size works; a subnet's resolution is part of its `Arch`.

:meth:`Supernet.extract` copies the chosen slices into a standalone :class:`StaticSubnet`;
:meth:`Supernet.forward` runs the same subnet on the supernet's own tensors (no copies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ofa2_edge.core.errors import InvalidArchError, InvalidInputError
from ofa2_edge.data.preprocessing import Preprocessing
from ofa2_edge.space.arch import EXPAND_CHOICES, KERNEL_CHOICES, N_BLOCKS, WIDTH_MULTS, Arch
from ofa2_edge.space.netplan import (
    N_CLASSES,
    Layer,
    mid_channels,
    se_channels,
    slot_layer,
    stem_layers,
    tail_layers,
)
from ofa2_edge.supernet.static import ResidualBlock, StaticSubnet, batch_norm, conv_bn_act, tail_modules

if TYPE_CHECKING:
    from ofa2_edge.supernet.manifest import SupernetManifest

#: Any resolution: the supernet's tensors do not depend on it; the plan functions want one.
_PLAN_RESOLUTION = 224


def check_width_mult(width_mult: float) -> float:
    for w in WIDTH_MULTS:
        if isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool) and abs(width_mult - w) < 1e-9:
            return w
    raise InvalidInputError(
        f"width_mult: {width_mult!r} is not an OFA-MobileNetV3 supernet; choose from "
        f"{', '.join(str(w) for w in WIDTH_MULTS)}"
    )


def check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise InvalidInputError(f"n_classes: expected an integer >= 2, got {n_classes!r}")
    return n_classes


def _center(size: int, sub: int) -> slice:
    start = size // 2 - sub // 2
    return slice(start, start + sub)


# ------------------------------------------------------------------ elastic parts
# Each mirrors one OFA dynamic module, down to its child names, so state_dict keys match.
class ElasticPointwise(nn.Module):
    """OFA's `DynamicConv2d`: a 1x1 conv whose input/output channels are sliced."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)


class ElasticBatchNorm(nn.Module):
    """OFA's `DynamicBatchNorm2d`: a BN whose first channels are used."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = batch_norm(channels)


class ElasticDepthwise(nn.Module):
    """OFA's `DynamicSeparableConv2d`: a 7x7 depthwise conv plus the kernel transform matrices."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        ks = sorted(KERNEL_CHOICES)
        self.conv = nn.Conv2d(channels, channels, ks[-1], stride, ks[-1] // 2, groups=channels, bias=False)
        for small, large in zip(ks[:-1], ks[1:]):  # registered as 5to3 then 7to5, like OFA
            self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))

    def reset_transforms(self) -> None:
        """Scaled identities: a k x k crop of a (k+2) x (k+2) kernel keeps its expected energy."""
        with torch.no_grad():
            for name, matrix in self.named_parameters(recurse=False):
                large, small = (int(v) for v in name.removesuffix("_matrix").split("to"))
                matrix.copy_(torch.eye(small * small) * (large / small))

    def active_filter(self, channels: int, kernel: int) -> torch.Tensor:
        """The (channels, 1, k, k) filter of a k x k subnet kernel (OFA's `get_active_filter`)."""
        ks = sorted(KERNEL_CHOICES)
        filt = self.conv.weight[:channels]
        for large, small in zip(reversed(ks[1:]), reversed(ks[:-1])):
            if large <= kernel:
                break
            crop = filt[:, :, _center(large, small), _center(large, small)].reshape(-1, small * small)
            matrix = getattr(self, f"{large}to{small}_matrix")
            filt = F.linear(crop, matrix).reshape(channels, 1, small, small)
        return filt


class ElasticSE(nn.Module):
    """OFA's `DynamicSE`: squeeze-and-excite whose hidden and outer channels are sliced."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = se_channels(channels)
        self.fc = nn.Sequential()
        self.fc.add_module("reduce", nn.Conv2d(channels, hidden, 1, bias=True))
        self.fc.add_module("expand", nn.Conv2d(hidden, channels, 1, bias=True))


class ElasticMBConv(nn.Module):
    """OFA's `DynamicMBConvLayer` at its largest choice (kernel 7, expand 6)."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        mid = layer.mid_ch
        self.inverted_bottleneck = nn.ModuleDict(
            {"conv": ElasticPointwise(layer.in_ch, mid), "bn": ElasticBatchNorm(mid)}
        )
        depth: dict[str, nn.Module] = {"conv": ElasticDepthwise(mid, layer.stride), "bn": ElasticBatchNorm(mid)}
        if layer.se:
            depth["se"] = ElasticSE(mid)
        self.depth_conv = nn.ModuleDict(depth)
        self.point_linear = nn.ModuleDict(
            {"conv": ElasticPointwise(mid, layer.out_ch), "bn": ElasticBatchNorm(layer.out_ch)}
        )

    def active_tensors(self, in_ch: int, kernel: int, expand: int) -> dict[str, torch.Tensor]:
        """The tensors of the (kernel, expand) block, keyed as in a static `MBConv` (views
        into this module where a slice suffices; the transformed kernel is computed)."""
        mid = mid_channels(in_ch, expand)
        out: dict[str, torch.Tensor] = {
            "inverted_bottleneck.conv.weight": self.inverted_bottleneck.conv.conv.weight[:mid, :in_ch]
        }
        _bn_slice(out, "inverted_bottleneck.bn", self.inverted_bottleneck.bn.bn, mid)
        out["depth_conv.conv.weight"] = self.depth_conv.conv.active_filter(mid, kernel)
        _bn_slice(out, "depth_conv.bn", self.depth_conv.bn.bn, mid)
        if "se" in self.depth_conv:
            fc, hidden = self.depth_conv.se.fc, se_channels(mid)
            out["depth_conv.se.fc.reduce.weight"] = fc.reduce.weight[:hidden, :mid]
            out["depth_conv.se.fc.reduce.bias"] = fc.reduce.bias[:hidden]
            out["depth_conv.se.fc.expand.weight"] = fc.expand.weight[:mid, :hidden]
            out["depth_conv.se.fc.expand.bias"] = fc.expand.bias[:mid]
        out["point_linear.conv.weight"] = self.point_linear.conv.conv.weight[:, :mid]
        _bn_slice(out, "point_linear.bn", self.point_linear.bn.bn, None)
        return out


def _bn_slice(out: dict[str, torch.Tensor], prefix: str, bn: nn.BatchNorm2d, channels: int | None) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.{name}"] = getattr(bn, name)[:channels]
    out[f"{prefix}.num_batches_tracked"] = bn.num_batches_tracked


class ElasticBlock(nn.Module):
    """OFA's `ResidualBlock` around an elastic MBConv (the shortcut holds no tensors)."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.conv = ElasticMBConv(layer)


# ------------------------------------------------------------------ the supernet
_Layout = TypeVar("_Layout", nn.Module, torch.Tensor)


def channels_last(obj: _Layout) -> _Layout:
    """`obj` (a module, or a (B, C, H, W) batch) in the NHWC memory layout, where oneDNN runs
    these nets' convolutions 1.3-1.9x faster to train and 1.2-1.6x faster to evaluate than
    NCHW on this CPU (32-48 px, 2 threads; benchmarks/results/training_layout.md). Values are unchanged;
    checkpoints are written contiguous and exports trace NCHW, so only the speed differs."""
    if isinstance(obj, nn.Module):
        return obj.to(memory_format=torch.channels_last)
    return obj.contiguous(memory_format=torch.channels_last) if obj.ndim == 4 else obj


class Supernet(nn.Module):
    """OFA-MobileNetV3 supernet; `weights_source` says where its weights came from.

    Get one from :func:`ofa2_edge.supernet.load_supernet` (a checkpoint) or
    :meth:`Supernet.random` (seeded); the bare constructor leaves torch's default init.
    `n_classes` is the classifier's output count (ImageNet's 1000 for OFA's checkpoints, a
    dataset's classes for a supernet trained by `ofa2-edge train`). `manifest` is the
    trained checkpoint's manifest (None for OFA's files): it carries the dataset's classes
    and preprocessing, which :meth:`extract` hands to every subnet. `bn_convert`, when set
    (by the trainer under torch.distributed), rewrites the BatchNorm layers of the module
    each :meth:`forward` builds, e.g. into synchronised ones.
    """

    def __init__(
        self, width_mult: float = 1.2, weights_source: str = "uninitialised", n_classes: int = N_CLASSES
    ) -> None:
        super().__init__()
        self.width_mult = check_width_mult(width_mult)
        self.weights_source = weights_source
        self.manifest: SupernetManifest | None = None
        self.bn_convert: Callable[[nn.Module], nn.Module] | None = None
        r, w = _PLAN_RESOLUTION, self.width_mult
        first_conv, first_block = stem_layers(r, w)
        self.first_conv = conv_bn_act(first_conv.in_ch, first_conv.out_ch, first_conv.kernel, first_conv.stride)
        blocks: list[nn.Module] = [ResidualBlock(first_block)]
        blocks += [ElasticBlock(slot_layer(r, w, i, max(KERNEL_CHOICES), max(EXPAND_CHOICES))) for i in range(N_BLOCKS)]
        self.blocks = nn.ModuleList(blocks)
        for name, module in tail_modules(tail_layers(r, w), check_n_classes(n_classes)).items():
            self.add_module(name, module)

    @property
    def n_classes(self) -> int:
        return int(self.classifier.linear.out_features)

    def preprocessing_for(self, r: int) -> Preprocessing:
        """The input recipe of a subnet at `r` px: the trained dataset's, else OFA's ImageNet one."""
        if self.manifest is not None:
            return self.manifest.preprocessing_for(r)
        return Preprocessing.for_resolution(r)

    # ------------------------------------------------------------ constructors
    @classmethod
    def skeleton(cls, width_mult: float = 1.2, n_classes: int = N_CLASSES) -> "Supernet":
        """A supernet on the meta device: every name and shape, no memory, no RNG use."""
        with torch.device("meta"):
            return cls(width_mult, n_classes=n_classes)

    def replace_classifier(self, n_classes: int, generator: torch.Generator) -> None:
        """A new, seeded classifier for `n_classes` classes (fine-tuning OFA's ImageNet
        weights on a user's data keeps every other tensor)."""
        old = self.classifier.linear
        new = nn.Linear(old.in_features, check_n_classes(n_classes), device=old.weight.device)
        with torch.no_grad():
            bound = 1.0 / new.weight.shape[1] ** 0.5
            new.weight.uniform_(-bound, bound, generator=generator)
            new.bias.zero_()
        self.classifier.linear = new

    @classmethod
    def random(cls, width_mult: float = 1.2, seed: int = 0, n_classes: int = N_CLASSES) -> "Supernet":
        """A supernet with seeded random weights, for work where only the shape matters
        (latency); its `weights_source` is ``random:<seed>``. All draws come from one
        `torch.Generator` seeded with `seed`; the global RNG is not touched.

        Convolutions are He-initialised on their fan-in and the kernel transforms are scaled
        identities that keep a cropped kernel's energy, so activations keep their scale
        through the net. (OFA's own 'he_fout' init, meant for training with batch
        statistics, shrinks the depthwise outputs by ~1/channels each: an eval-mode
        subnet would output ~1e-12, which makes any numerical parity check vacuous.)
        BN layers start as identities; :func:`ofa2_edge.supernet.calibration.noise_batches`
        with :func:`recalibrate_bn` gives an extracted subnet O(1) activations everywhere.
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InvalidInputError(f"seed: expected a non-negative integer, got {seed!r}")
        net = cls.skeleton(width_mult, n_classes).to_empty(device="cpu")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.BatchNorm2d):
                    module.reset_parameters()
                elif isinstance(module, nn.Linear):
                    bound = 1.0 / module.weight.shape[1] ** 0.5
                    module.weight.uniform_(-bound, bound, generator=gen)
                    module.bias.zero_()
                elif isinstance(module, ElasticDepthwise):
                    module.reset_transforms()
        net.weights_source = f"random:{seed}"
        return net.eval()

    # ------------------------------------------------------------ subnets
    def _check_arch(self, arch: Arch) -> None:
        if not isinstance(arch, Arch):
            raise InvalidArchError(f"expected an Arch, got {type(arch).__name__}")
        if arch.w != self.width_mult:
            raise InvalidArchError(
                f"arch {arch.id} is a w{arch.w} subnet but this supernet is w{self.width_mult}; "
                f"use the w{arch.w} supernet checkpoint"
            )

    def subnet_tensors(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Every tensor of `arch`'s static subnet, keyed as in `StaticSubnet.state_dict()`.

        Slices are views into this supernet (nothing is copied here); the 5x5 and 3x3
        depthwise kernels are computed through the transform matrices.
        """
        self._check_arch(arch)
        out: dict[str, torch.Tensor] = {}
        for prefix in ("first_conv", "blocks.0"):
            for key, tensor in self.get_submodule(prefix).state_dict(keep_vars=True).items():
                out[f"{prefix}.{key}"] = tensor
        in_ch = self.blocks[0].conv.point_linear.conv.out_channels
        for j, slot in enumerate(arch.active_slots, start=1):
            block: ElasticBlock = self.blocks[slot + 1]
            for key, tensor in block.conv.active_tensors(in_ch, arch.ks[slot], arch.e[slot]).items():
                out[f"blocks.{j}.conv.{key}"] = tensor
            in_ch = block.conv.point_linear.conv.conv.out_channels
        for prefix in ("final_expand_layer", "feature_mix_layer", "classifier"):
            for key, tensor in self.get_submodule(prefix).state_dict(keep_vars=True).items():
                out[f"{prefix}.{key}"] = tensor
        return out

    def extract(self, arch: Arch) -> StaticSubnet:
        """A standalone static subnet (eval mode) holding copies of `arch`'s weights.

        Nothing in it refers back to this supernet: changing the supernet afterwards does
        not change the subnet. Modules are built on the meta device and the copies are
        assigned to them, so no time goes into initialising weights that are overwritten.
        """
        with torch.no_grad():
            tensors = {
                k: t.detach().clone(memory_format=torch.contiguous_format) for k, t in self.subnet_tensors(arch).items()
            }
        with torch.device("meta"):
            subnet = StaticSubnet(arch, self.weights_source, self.n_classes, self.preprocessing_for(arch.r))
        subnet.load_state_dict(tensors, strict=True, assign=True)
        return subnet.eval()

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:  # type: ignore[override]
        """Run subnet `arch` on the supernet's own tensors (gradients reach the supernet).

        In train mode BatchNorm updates the used channels of the supernet's running
        statistics, as OFA's `DynamicBatchNorm2d` does.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidInputError(f"expected an (N, 3, H, W) image batch, got shape {tuple(x.shape)}")
        tensors = self.subnet_tensors(arch)
        with torch.device("meta"):
            skeleton: nn.Module = StaticSubnet(arch, self.weights_source, self.n_classes)
        if self.bn_convert is not None:
            skeleton = self.bn_convert(skeleton)
        skeleton.train(self.training)
        return torch.func.functional_call(skeleton, tensors, (x,), strict=True)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """OFA's `re_organize_middle_weights`: reorder every elastic block's middle channels
        by importance (L1 norm of the projection weights that read them), and the SE hidden
        channels by the L1 norm of the SE expand weights, most important first.

        Run before training the elastic expand ratio, so that the first channels a small
        ratio keeps are the most useful ones. The permutation is consistent across every
        tensor that touches the channels, so the largest subnet computes exactly the same
        function afterwards. Tensors are permuted in place (parameters keep their identity).
        """

        def permute(t: torch.Tensor, dim: int, idx: torch.Tensor) -> None:
            t.copy_(torch.index_select(t, dim, idx))

        for block in self.blocks[1:]:
            mb: ElasticMBConv = block.conv
            proj = mb.point_linear.conv.conv.weight
            idx = torch.argsort(proj.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
            permute(proj, 1, idx)
            for bn in (mb.depth_conv.bn.bn, mb.inverted_bottleneck.bn.bn):
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    permute(t, 0, idx)
            permute(mb.depth_conv.conv.conv.weight, 0, idx)
            permute(mb.inverted_bottleneck.conv.conv.weight, 0, idx)
            if "se" in mb.depth_conv:
                fc = mb.depth_conv.se.fc
                permute(fc.expand.weight, 0, idx)
                permute(fc.expand.bias, 0, idx)
                permute(fc.reduce.weight, 1, idx)
                se_idx = torch.argsort(fc.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
                permute(fc.expand.weight, 1, se_idx)
                permute(fc.reduce.weight, 0, se_idx)
                permute(fc.reduce.bias, 0, se_idx)

    def extra_repr(self) -> str:
        return f"width_mult={self.width_mult}, n_classes={self.n_classes}, weights_source={self.weights_source!r}"
