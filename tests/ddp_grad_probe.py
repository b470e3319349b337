"""Run by test_train.py as `python tests/ddp_grad_probe.py OUT` and `torchrun --nproc_per_node 2 ...`:
one sandwich step (largest, smallest, a random subnet, distillation) of a seeded supernet on a
fixed global batch of 8; rank 0 saves the loss parts and every parameter's gradient to OUT."""

import sys

import numpy as np
import torch
from torch import nn

from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.supernet import Supernet
from ofa2_edge.train.distributed import SandwichLoss, init_from_env, sync_bn_converter

env = init_from_env()
net = Supernet.random(1.0, seed=1, n_classes=4).train()
net.bn_convert = sync_bn_converter(env)
x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
model: nn.Module = SandwichLoss(net)
if env.distributed:
    model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)
    local = 8 // env.world_size
    x, y = x[env.rank * local : (env.rank + 1) * local], y[env.rank * local : (env.rank + 1) * local]
archs = [Arch.largest(32, 1.0), Arch.smallest(32, 1.0), *SearchSpace((32,), w=1.0).sample(1, np.random.default_rng(3))]
loss, parts = model(x, y, archs, 1.0, 0.1)
loss.backward()
if env.distributed:
    torch.distributed.all_reduce(parts)
    parts = parts / env.world_size
if env.rank == 0:
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    torch.save({"parts": parts, "grads": grads}, sys.argv[1])
if env.distributed:
    torch.distributed.destroy_process_group()
