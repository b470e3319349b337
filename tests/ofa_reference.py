"""The oracle: OFA's own `OFAMobileNetV3` (the public `ofa` package, a test dependency only).

`ofa` imports torchvision at import time (for data loaders we never use), and PyPI's
torchvision does not import beside torch 2.13. A minimal stand-in is placed in
`sys.modules` for the duration of the import and removed afterwards. Nothing here calls
OFA's pretrained loaders, so the network is never reached.
"""

from __future__ import annotations

import sys
import types
from functools import lru_cache
from typing import Any

import pytest
import torch
from torch import nn

from ofa2_edge.space.arch import Arch

OFA_VERSION = "0.1.0.post202307202001"
#: Resolutions the oracle tests use (an odd one like OFA's released 236 px nets included).
CALIBRATION_RESOLUTIONS = (128, 160, 192, 224, 236)
_STANDIN = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.datasets")


def _standin_modules() -> dict[str, types.ModuleType]:
    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    fn, ds = types.ModuleType("torchvision.transforms.functional"), types.ModuleType("torchvision.datasets")
    # OFA subclasses this at import time (MyRandomResizedCrop); it is never instantiated here
    tr.RandomResizedCrop = type("RandomResizedCrop", (), {})
    tr.functional, tv.transforms, tv.datasets = fn, tr, ds
    return dict(zip(_STANDIN, (tv, tr, fn, ds)))


@lru_cache(maxsize=1)
def ofa() -> types.SimpleNamespace:
    """OFA's `OFAMobileNetV3`, `profile` (MACs counter) and `set_running_statistics` (BN
    recalibration), imported behind the stand-in."""
    saved = {name: sys.modules[name] for name in _STANDIN if name in sys.modules}
    sys.modules.update(_standin_modules())
    try:
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
        from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics
        from ofa.utils.flops_counter import profile
    except ImportError as exc:
        pytest.fail(
            f"the reference package `ofa` is not importable ({exc}); install the test dependency: "
            f"pip install --no-deps ofa=={OFA_VERSION}"
        )
    finally:
        for name in _STANDIN:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return types.SimpleNamespace(
        OFAMobileNetV3=OFAMobileNetV3, profile=profile, set_running_statistics=set_running_statistics
    )


def reference_supernet(width_mult: float, seed: int) -> Any:
    """OFA's supernet with every tensor drawn from a seeded generator.

    BN layers get random affine terms and random running statistics, and the kernel
    transform matrices are perturbed identities: a wrong slice, a missed transform or a BN
    in the wrong place changes the output. The running statistics are the max net's on
    noise at the tested resolutions, perturbed per channel; like a trained supernet's,
    they keep the outputs O(1), so an absolute tolerance is a relative one. (With
    arbitrary statistics a random net's outputs reach 1e3 and float32 rounding alone
    exceeds 1e-4.)
    """
    with torch.random.fork_rng():  # OFA's constructor draws its default init from the global RNG
        net = ofa().OFAMobileNetV3(
            width_mult=width_mult, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]
        )
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1, generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.2, generator=gen)
            elif isinstance(module, nn.Linear):  # scaled so that even the max net's logits stay O(1)
                module.weight.normal_(0.0, 0.3 * module.weight.shape[1] ** -0.5, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
        for name, param in net.named_parameters():
            if name.endswith("_matrix"):
                n = param.shape[0]
                param.copy_(torch.eye(n) + 0.1 * torch.randn(n, n, generator=gen))
        # running statistics: the max net's on noise at the tested resolutions (cumulative
        # average), then perturbed per channel
        net.set_max_net()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        net.train()
        for r in CALIBRATION_RESOLUTIONS:
            net(torch.randn(2, 3, r, r, generator=gen))
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn(bn.num_features, generator=gen) * bn.running_var.sqrt())
            bn.running_var.mul_(torch.empty(bn.num_features).uniform_(0.8, 1.25, generator=gen))
            bn.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=gen)))
    return net.eval()


def reference_subnet(net: Any, arch: Arch) -> nn.Module:
    """OFA's static subnet for `arch` (set_active_subnet + get_active_subnet), in eval mode."""
    net.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
    return net.get_active_subnet(preserve_weight=True).eval()


def reference_dynamic_output(net: Any, arch: Arch, x: torch.Tensor) -> torch.Tensor:
    """OFA's dynamic supernet forward with `arch` active."""
    net.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
    with torch.no_grad():
        return net(x)
