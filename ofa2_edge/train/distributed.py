"""More than one process: torchrun's environment, DistributedDataParallel, synchronised BN.

Why this shape: a sandwich step runs several subnets of *one* module, each touching a
different part of the shared weights. We run all of a step's subnets inside one forward
of a small wrapper module (:class:`SandwichLoss`) and call ``backward`` once on the summed
loss, so DistributedDataParallel sees an ordinary one-forward-one-backward step and
all-reduces (averages) the gradients once per step. Parameters that no subnet of the step
used are found by DDP itself (``find_unused_parameters=True``). No gradient is reduced by
hand and no ``no_sync`` bookkeeping is needed.

BatchNorm: every rank holds ``batch_size / world_size`` images; per-rank batch statistics
would make a 2-process run differ from a 1-process run. On CUDA the BN layers become
``torch.nn.SyncBatchNorm``. PyTorch's SyncBatchNorm refuses CPU tensors, so on CPU (gloo)
the BN layers of each step's subnet normalise with the *global* batch mean and variance,
reduced with PyTorch's differentiable collective ``torch.distributed.nn.functional.all_reduce``
(:class:`GlobalBatchNorm2d`). The loss of a 2-process run then equals the 1-process loss up
to float summation order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env() -> DistEnv:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a plain
    process is rank 0 of 1. gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device="cuda" if torch.cuda.is_available() else "cpu")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        backend = "nccl"
    else:
        device, backend = "cpu", "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch across all ranks (CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        n_local = torch.tensor([x.numel() / c], dtype=x.dtype)
        sums = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), n_local]))
        n = sums[-1]
        mean = sums[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


def sync_bn_converter(env: DistEnv):
    """The `Supernet.bn_convert` for a distributed run (None for one process)."""
    if not env.distributed:
        return None
    if env.device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm

    def convert(module: nn.Module) -> nn.Module:
        for m in module.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = GlobalBatchNorm2d
        return module

    return convert


class SandwichLoss(nn.Module):
    """One step's loss: the largest subnet's cross-entropy plus, for every other subnet,
    cross-entropy and `kd_ratio` x KL divergence to the largest's (detached) soft targets."""

    def __init__(self, supernet: nn.Module) -> None:
        super().__init__()
        self.supernet = supernet

    def forward(self, x, y, archs, kd_ratio: float, label_smoothing: float):  # type: ignore[override]
        logits = self.supernet(x, archs[0])
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        parts = [loss.detach()]
        teacher = F.softmax(logits.detach(), dim=1)
        for arch in archs[1:]:
            out = self.supernet(x, arch)
            part = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            if kd_ratio > 0:
                part = part + kd_ratio * F.kl_div(F.log_softmax(out, dim=1), teacher, reduction="batchmean")
            parts.append(part.detach())
            loss = loss + part
        return loss, torch.stack(parts)
