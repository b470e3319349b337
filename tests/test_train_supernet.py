"""The supernet for a dataset's classes: differentiable subnets, channel sorting, trained checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ofa2_edge.core.errors import CheckpointError
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.supernet import Supernet, load_supernet
from ofa2_edge.supernet.checkpoint import read_manifest
from ofa2_edge.supernet.manifest import SupernetManifest, dataset_preprocessing, write_trained


@pytest.fixture(scope="module")
def net10() -> Supernet:
    return Supernet.random(1.0, seed=3, n_classes=10)


def mid_arch(r: int = 32) -> Arch:
    return SearchSpace(resolutions=(r,), w=1.0).sample(1, np.random.default_rng(1))[0]


def test_n_class_supernet_forward_and_extract_agree(net10: Supernet) -> None:
    arch = mid_arch(40)
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net10(x, arch)
        sub = net10.extract(arch)
        assert out.shape == (2, 10) and sub.n_classes == 10
        assert torch.allclose(sub(x), out, atol=1e-5)


def test_forward_is_differentiable_into_the_shared_weights() -> None:
    net = Supernet.random(1.0, seed=4, n_classes=5).train()
    arch = Arch(ks=(3,) * 20, e=(3,) * 20, d=(2,) * 5, r=32, w=1.0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(net(x, arch), torch.tensor([0, 1, 2, 3])).backward()
    assert net.classifier.linear.weight.grad.abs().sum() > 0
    block = net.blocks[1].conv  # slot 0: used with expand 3, kernel 3 (through both transforms)
    mid = block.inverted_bottleneck.conv.conv.weight.grad
    used = mid[: mid.shape[0] // 2]
    assert used.abs().sum() > 0 and mid[mid.shape[0] // 2 :].abs().sum() == 0
    assert block.depth_conv.conv.get_parameter("7to5_matrix").grad.abs().sum() > 0
    assert block.depth_conv.conv.get_parameter("5to3_matrix").grad.abs().sum() > 0
    assert net.blocks[3].conv.point_linear.conv.conv.weight.grad is None  # slot 2: beyond depth 2


def test_sorting_channels_keeps_the_largest_net_and_orders_importance() -> None:
    net = Supernet.random(1.0, seed=6, n_classes=4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    big = Arch.largest(32, w=1.0)
    small = Arch(ks=(7,) * 20, e=(3,) * 20, d=(4,) * 5, r=32, w=1.0)
    with torch.no_grad():
        before_big, before_small = net(x, big), net(x, small)
        weight_id = id(net.blocks[1].conv.point_linear.conv.conv.weight)
        net.sort_channels()
        assert torch.allclose(net(x, big), before_big, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(net(x, small), before_small, atol=1e-4)
    proj = net.blocks[5].conv.point_linear.conv.conv.weight
    importance = proj.abs().sum(dim=(0, 2, 3))
    assert bool((importance[:-1] >= importance[1:]).all())
    assert id(net.blocks[1].conv.point_linear.conv.conv.weight) == weight_id


def trained_folder(tmp_path: Path, net: Supernet) -> tuple[Path, SupernetManifest]:
    prep = dataset_preprocessing((0.3, 0.3, 0.3), (0.35, 0.35, 0.35), 1.0, (32, 40))
    classes = tuple(f"c{i}" for i in range(net.n_classes))
    m = SupernetManifest(net.width_mult, classes, "f" * 64, prep, (32, 40), {"phases": []}, "expand", 9, True, "")
    folder = tmp_path / "supernets" / "fm"
    return folder, write_trained(folder, net.state_dict(), m)


def test_trained_checkpoint_round_trip_with_manifest(tmp_path: Path, net10: Supernet) -> None:
    folder, written = trained_folder(tmp_path, net10)
    assert read_manifest(folder) == written and read_manifest(folder / "supernet.pth") == written
    loaded = load_supernet(folder)  # width and classes from the folder, no arguments
    assert loaded.width_mult == 1.0 and loaded.n_classes == 10 and loaded.manifest == written
    assert loaded.weights_source == f"sha256:{written.sha256}"
    for k, v in net10.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    sub = loaded.extract(mid_arch(40))
    assert sub.preprocessing.mean == (0.3, 0.3, 0.3) and sub.preprocessing.resize_size == 40
    # the keys are OFA's: the same file loads as a bare state_dict too
    obj = torch.load(folder / "supernet.pth", weights_only=True)
    assert set(obj["state_dict"]) == set(Supernet.skeleton(1.0).state_dict())
    assert load_supernet(obj, width_mult=1.0).n_classes == 10


def test_a_manifest_that_does_not_match_the_weights_is_refused(tmp_path: Path, net10: Supernet) -> None:
    folder, _ = trained_folder(tmp_path, net10)
    other = Supernet.random(1.0, seed=9, n_classes=10)
    torch.save({"state_dict": other.state_dict()}, folder / "supernet.pth")
    with pytest.raises(CheckpointError, match="rerun the same `ofa2-edge train`"):
        load_supernet(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json"):
        load_supernet(folder)
