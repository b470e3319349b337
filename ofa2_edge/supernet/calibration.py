"""BatchNorm recalibration of an extracted subnet (OFA's `set_running_statistics`).

A subnet sliced out of the supernet inherits running statistics that were accumulated
while *other* subnets ran, so OFA re-estimates them for each subnet on a few thousand
training images before it reports accuracy. We do what OFA does: run the subnet in train
mode (every BN layer normalises with its batch statistics), record each layer's batch mean
and biased batch variance, and set the running statistics to their average over all
batches weighted by batch size. (PyTorch's own `momentum=None` cumulative average would
weight batches equally and use the unbiased variance, which is not what OFA computed.)
"""

from __future__ import annotations

import copy
import logging
from typing import Iterable, Iterator

import torch
from torch import nn

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.supernet.static import StaticSubnet

log = logging.getLogger(__name__)


class _Accumulator:
    """Running, sample-weighted sums of one BN layer's batch mean and batch variance."""

    def __init__(self) -> None:
        self.mean_sum: torch.Tensor | None = None
        self.var_sum: torch.Tensor | None = None
        self.count = 0

    def __call__(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        n = x.shape[0]
        mean, var = mean.double() * n, var.double() * n
        self.mean_sum = mean if self.mean_sum is None else self.mean_sum + mean
        self.var_sum = var if self.var_sum is None else self.var_sum + var
        self.count += n


def noise_batches(
    resolution: int, seed: int, batch_size: int = 4, n_batches: int = 1, channels: int = 3
) -> Iterator[torch.Tensor]:
    """Seeded N(0, 1) image batches: the statistics source for subnets with random weights
    (`channels` other than 3: feature maps, for a single layer timed on its own).

    Random weights have no training data; recalibrating on noise gives every BN layer the
    statistics of its actual input, so a latency-only subnet has O(1) activations
    everywhere (no vanishing values that make parity checks vacuous, no denormals that
    slow some CPUs down) and is reproducible from (seed, batch_size, n_batches).
    """
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        yield torch.randn(batch_size, channels, resolution, resolution, generator=gen)


def recalibrate_bn(
    subnet: nn.Module, images: Iterable[torch.Tensor], source: str = "images", channels: int = 3
) -> int:
    """Re-estimate every BatchNorm2d's running statistics of `subnet` from `images`.

    `images` yields preprocessed (B, 3, r, r) float batches (e.g. from
    :func:`ofa2_edge.data.imagefolder.image_batches`, or :func:`noise_batches`). The passes run
    on a copy, so if reading the images fails half-way the subnet is left untouched; on
    success its statistics are replaced and it is returned to eval mode. `channels` is
    what the model's input has (3 for a subnet; a single layer takes feature maps). A
    `StaticSubnet` records ``"<source> (<n> images)"`` as its `bn_stats_source`, for
    metadata. Returns the number of images used.
    """
    targets = {name: m for name, m in subnet.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if not targets:
        raise InvalidInputError("recalibrate_bn: the model has no BatchNorm2d layer to recalibrate")
    work = copy.deepcopy(subnet).train()
    stats = {name: _Accumulator() for name in targets}
    handles = [m.register_forward_pre_hook(stats[name]) for name, m in work.named_modules() if name in stats]
    n_batches = n_images = 0
    try:
        with torch.no_grad():
            for batch in images:
                if (
                    not isinstance(batch, torch.Tensor)
                    or batch.ndim != 4
                    or batch.shape[1] != channels
                    or not batch.is_floating_point()
                ):
                    shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
                    raise InvalidInputError(
                        f"recalibrate_bn: expected (B, {channels}, H, W) float image batches, got {shape}"
                    )
                work(batch)
                n_batches += 1
                n_images += batch.shape[0]
    finally:
        for h in handles:
            h.remove()
    if n_images == 0:
        raise InvalidInputError("recalibrate_bn: no images were given; BN statistics left unchanged")
    with torch.no_grad():
        for name, bn in targets.items():
            acc = stats[name]
            bn.running_mean.copy_(acc.mean_sum / acc.count)
            bn.running_var.copy_(acc.var_sum / acc.count)
            bn.num_batches_tracked.fill_(n_batches)
    log.info("recalibrated %d BatchNorm layers on %d images (%d batches)", len(targets), n_images, n_batches)
    if isinstance(subnet, StaticSubnet):
        subnet.bn_stats_source = f"{source} ({n_images} images)"
    subnet.eval()
    return n_images
