"""The elastic supernet against OFA's own implementation, checkpoint loading, extraction, costs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_reference import CALIBRATION_RESOLUTIONS, ofa, reference_dynamic_output, reference_subnet, reference_supernet
from torch import nn

from ofa2_edge.core.errors import CheckpointError, InvalidArchError, InvalidInputError
from ofa2_edge.space.arch import Arch, SearchSpace, genomes_of
from ofa2_edge.space.costs import macs_m, params_m
from ofa2_edge.space.netplan import mid_channels
from ofa2_edge.supernet import StaticSubnet, Supernet, load_supernet
from ofa2_edge.supernet.checkpoint import expected_shapes

WIDTHS = (1.0, 1.2)
RESOLUTIONS = CALIBRATION_RESOLUTIONS  # 128, 160, 192, 224 and the odd 236
TOLERANCE = 1e-4
PLAIN_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Hardswish, nn.Hardsigmoid, nn.AdaptiveAvgPool2d, nn.Linear)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP's spinning threads make
    every forward 10x slower; one thread is also bitwise repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"w{w}")
def reference(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(OFA's supernet with random weights, its checkpoint file in OFA's format)."""
    w = request.param
    net = reference_supernet(w, seed=7)
    path = tmp_path_factory.mktemp("ckpt") / f"ofa_mbv3_d234_e346_k357_w{w}"
    torch.save({"state_dict": net.state_dict()}, path)
    return net, path


@pytest.fixture(scope="module")
def random_supernet() -> Supernet:
    return Supernet.random(1.2, seed=3)


def oracle_archs(w: float, n: int, seed: int) -> list[Arch]:
    """n random archs (seeded) at the test resolutions, plus the min and max net at each."""
    space = SearchSpace(resolutions=RESOLUTIONS, w=w)
    archs = space.sample(n, np.random.default_rng(seed))
    return archs + [f(r, w) for r in RESOLUTIONS for f in (Arch.smallest, Arch.largest)]


def image(r: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, r, r, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the reference check
@pytest.mark.parametrize("w", WIDTHS)
def test_state_dict_names_and_shapes_are_ofas(w: float) -> None:
    with torch.random.fork_rng():
        ref = ofa().OFAMobileNetV3(width_mult=w, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ours = Supernet.skeleton(w).state_dict()
    assert list(ours) == list(theirs)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in ours.items()} == theirs
    assert expected_shapes(w) == theirs
    assert len(theirs) == 475


@pytest.mark.slow
def test_extracted_subnets_equal_ofas_active_subnets(reference) -> None:
    ref, path = reference
    w = ref.width_mult
    supernet = load_supernet(path, width_mult=w)
    assert supernet.weights_source == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    worst = 0.0
    for i, arch in enumerate(oracle_archs(w, 20, seed=11)):
        theirs = reference_subnet(ref, arch)
        ours = supernet.extract(arch)
        # the sliced and transformed tensors themselves (OFA's new BN layers restart their batch counter)
        their_state, our_state = theirs.state_dict(), ours.state_dict()
        assert list(our_state) == list(their_state), arch
        for key, value in their_state.items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(our_state[key], value), (arch, key)
        x = image(arch.r, seed=i)
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        # outputs far above the tolerance, so the check is not vacuous
        assert float(expected.std()) > 200 * TOLERANCE, arch
        diff = float((got - expected).abs().max())
        worst = max(worst, diff)
        assert diff <= TOLERANCE, f"{arch}: max abs diff {diff:.3g}"
    print(f"w{w}: worst max abs diff over {i + 1} archs: {worst:.3g}")


@pytest.mark.slow
def test_dynamic_forward_equals_ofas_dynamic_forward(reference) -> None:
    ref, path = reference
    supernet = load_supernet(path, width_mult=ref.width_mult)
    archs = SearchSpace(resolutions=RESOLUTIONS, w=ref.width_mult).sample(3, np.random.default_rng(5))
    for i, arch in enumerate(archs + [Arch.smallest(160, ref.width_mult), Arch.largest(236, ref.width_mult)]):
        x = image(arch.r, seed=100 + i)
        expected = reference_dynamic_output(ref, arch, x)
        with torch.no_grad():
            got = supernet(x, arch)
        assert float((got - expected).abs().max()) <= TOLERANCE, arch


def test_dynamic_forward_reaches_only_the_used_slices() -> None:
    arch = Arch.smallest(64)
    net = Supernet.random(1.2, seed=3).train()
    bn = net.blocks[1].conv.depth_conv.bn.bn
    mean_before = bn.running_mean.clone()
    net(image(64, 0, batch=2), arch).square().mean().backward()
    mid = mid_channels(net.blocks[0].conv.point_linear.conv.out_channels, arch.e[0])
    # gradients: used channels and the centre 3x3 (via both transform matrices) only
    grad = net.blocks[1].conv.depth_conv.conv.conv.weight.grad
    assert grad[:mid, :, 2:5, 2:5].abs().sum() > 0
    assert grad[mid:].abs().sum() == 0 and grad[:, :, 0].abs().sum() == 0
    assert net.blocks[1].conv.depth_conv.conv.get_parameter("7to5_matrix").grad is not None
    # train mode updates the running statistics of the used channels, as OFA's DynamicBatchNorm2d
    assert not torch.equal(bn.running_mean[:mid], mean_before[:mid])
    assert torch.equal(bn.running_mean[mid:], mean_before[mid:])
    assert net.blocks[3].conv.depth_conv.conv.conv.weight.grad is None  # slot 2 is not in a depth-2 stage


# ---------------------------------------------------------------- costs cross-check
def hook_macs(module: nn.Module, r: int) -> int:
    """MACs counted as OFA's `ofa.utils.flops_counter.profile` does, by forward hooks."""
    total = 0

    def conv(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_channels * out.numel() * m.kernel_size[0] * m.kernel_size[1] // m.groups

    def linear(m: nn.Linear, _inp, _out) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        module(torch.zeros(1, 3, r, r))
    for h in handles:
        h.remove()
    return total


@pytest.mark.slow
def test_macs_and_params_of_extracted_subnets_equal_the_analytic_costs(random_supernet: Supernet) -> None:
    archs = SearchSpace(resolutions=(128, 160, 176, 224, 236)).sample(22, np.random.default_rng(2))
    archs += [Arch.smallest(160), Arch.largest(224)]
    g = genomes_of(archs)
    macs, params = macs_m(g, 1.2), params_m(g, 1.2)
    for arch, m, p in zip(archs, macs, params):
        subnet = random_supernet.extract(arch)
        assert hook_macs(subnet, arch.r) == round(m * 1e6), arch
        assert sum(t.numel() for t in subnet.parameters()) == round(p * 1e6), arch


@pytest.mark.slow
def test_ofas_profiler_agrees_on_its_own_subnets() -> None:
    ref = reference_supernet(1.2, seed=1)
    archs = SearchSpace(resolutions=(160, 224)).sample(3, np.random.default_rng(9)) + [Arch.largest(224)]
    for arch in archs:
        ops, n_params = ofa().profile(reference_subnet(ref, arch), (1, 3, arch.r, arch.r))
        g = genomes_of([arch])
        # OFA's profiler sums in float32 (1 ulp = 16 at 2e8), hence the relative tolerance
        assert ops == pytest.approx(float(macs_m(g)[0]) * 1e6, rel=1e-6), arch
        assert n_params == pytest.approx(float(params_m(g)[0]) * 1e6, rel=1e-6), arch


# ---------------------------------------------------------------- extraction
def test_subnet_is_standalone_plain_torch_and_in_eval_mode(random_supernet: Supernet) -> None:
    arch = Arch.from_dict({"ks": [5] * 20, "e": [4] * 20, "d": [3, 2, 4, 2, 3], "r": 176})
    subnet = random_supernet.extract(arch)
    assert isinstance(subnet, StaticSubnet) and not subnet.training
    assert subnet.arch == arch and subnet.weights_source == "random:3" and subnet.bn_stats_source == "supernet"
    assert subnet.input_shape == (1, 3, 176, 176) and subnet.preprocessing.resize_size == 202
    leaves = [m for m in subnet.modules() if not list(m.children())]
    assert all(isinstance(m, PLAIN_MODULES) for m in leaves), {type(m).__name__ for m in leaves}
    assert len(subnet.blocks) == 1 + sum(arch.d)
    ours = {t.untyped_storage().data_ptr() for t in subnet.state_dict().values()}
    theirs = {t.untyped_storage().data_ptr() for t in random_supernet.state_dict().values()}
    assert not ours & theirs


def test_changing_the_supernet_later_does_not_change_the_subnet() -> None:
    net = Supernet.random(1.2, seed=4)
    arch = Arch.largest(128)
    subnet = net.extract(arch)
    x = image(128, 0)
    with torch.no_grad():
        before = subnet(x)
        for p in net.parameters():
            p.mul_(-2.0)
        for b in net.buffers():
            b.add_(1)
        after = subnet(x)
        assert torch.equal(before, after)
        assert not torch.allclose(net.extract(arch)(x), before)


def test_random_supernets_are_seeded_and_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b, c = Supernet.random(1.0, 1), Supernet.random(1.0, 1), Supernet.random(1.0, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.first_conv.conv.weight, c.first_conv.conv.weight)
    assert a.weights_source == "random:1" and a.width_mult == 1.0


def test_random_subnets_keep_their_activations_in_range() -> None:
    # OFA's 'he_fout' init would give ~1e-12 here: a parity check on that proves nothing
    net = Supernet.random(1.2, seed=0)
    for arch in (Arch.smallest(128), Arch.largest(160)):
        with torch.no_grad():
            y = net.extract(arch)(image(arch.r, 1))
        assert 1e-5 < float(y.std()) < 1e4


def test_extract_refuses_an_arch_of_the_other_width(random_supernet: Supernet) -> None:
    with pytest.raises(InvalidArchError, match="w1.0 subnet but this supernet is w1.2"):
        random_supernet.extract(Arch.smallest(160, w=1.0))
    with pytest.raises(InvalidInputError, match="width_mult"):
        Supernet.random(1.5, 0)


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def state_w10() -> dict[str, torch.Tensor]:
    return Supernet.random(1.0, seed=5).state_dict()


def save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_checkpoint_forms_that_load(tmp_path: Path, state_w10) -> None:
    wrapped = load_supernet(save(tmp_path / "a.pth", {"state_dict": state_w10, "epoch": 3}), width_mult=1.0)
    bare = load_supernet(save(tmp_path / "b.pth", state_w10), width_mult=1.0)
    legacy = {
        k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
        for k, v in state_w10.items()
    }
    assert any(".mobile_inverted_conv." in k for k in legacy)
    old = load_supernet(save(tmp_path / "c.pth", {"state_dict": legacy}), width_mult=1.0)
    no_counters = {k: v.clone() for k, v in state_w10.items() if not k.endswith("num_batches_tracked")}
    from_memory = load_supernet(no_counters, width_mult=1.0)
    for net in (wrapped, bare, old, from_memory):
        assert not net.training
        for key, value in state_w10.items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(net.state_dict()[key], value), key
    assert wrapped.weights_source == "sha256:" + hashlib.sha256((tmp_path / "a.pth").read_bytes()).hexdigest()
    assert from_memory.weights_source.startswith("state_dict-sha256:")
    # tensors are copied out of an in-memory state_dict
    no_counters["first_conv.conv.weight"].zero_()
    assert not torch.equal(from_memory.first_conv.conv.weight, no_counters["first_conv.conv.weight"])


def test_half_precision_checkpoints_load_as_float32(state_w10) -> None:
    half = {k: v.half() if v.is_floating_point() else v for k, v in state_w10.items()}
    net = load_supernet(half, width_mult=1.0)
    assert net.first_conv.conv.weight.dtype == torch.float32


def bad_checkpoint_message(source, width_mult: float = 1.0) -> str:
    with pytest.raises(CheckpointError) as info:
        load_supernet(source, width_mult=width_mult)
    return str(info.value)


def test_unreadable_files_are_one_clear_error(tmp_path: Path, state_w10) -> None:
    assert "not found" in bad_checkpoint_message(tmp_path / "missing.pth")
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "corrupt" in bad_checkpoint_message(tmp_path / "noise.pth")
    full = save(tmp_path / "full.pth", {"state_dict": state_w10}).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(full[: len(full) // 2])
    assert "corrupt" in bad_checkpoint_message(tmp_path / "truncated.pth")
    msg = bad_checkpoint_message(save(tmp_path / "pickled.pth", {"state_dict": state_w10, "cfg": Path("x")}))
    assert "Python objects" in msg and "pathlib" in msg and "state_dict" in msg
    (tmp_path / "page.pth").write_text("<html>404 Not Found</html>")
    assert "not a torch checkpoint" in bad_checkpoint_message(tmp_path / "page.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "corrupt" in bad_checkpoint_message(tmp_path / "empty.pth")
    assert "holds a list" in bad_checkpoint_message(save(tmp_path / "list.pth", [1, 2, 3]))
    assert "expected a checkpoint path or a state_dict" in bad_checkpoint_message(7)


def test_mismatched_state_dicts_are_one_error_naming_the_keys(state_w10) -> None:
    missing = dict(state_w10)
    for key in [k for k in missing if "blocks.3." in k]:
        del missing[key]
    msg = bad_checkpoint_message(missing)
    assert "missing keys (" in msg and "blocks.3.conv.inverted_bottleneck.conv.conv.weight" in msg and "more" in msg

    extra = dict(state_w10, **{"blocks.21.conv.point_linear.conv.conv.weight": torch.zeros(1)})
    assert "unexpected keys (1): blocks.21.conv.point_linear.conv.conv.weight" in bad_checkpoint_message(extra)

    shape = dict(state_w10, **{"first_conv.conv.weight": torch.zeros(8, 3, 3, 3)})
    assert "first_conv.conv.weight (8, 3, 3, 3) vs (16, 3, 3, 3)" in bad_checkpoint_message(shape)
    # the classifier may have any number of classes (a trained supernet), but weight and bias must agree
    shape = dict(state_w10, **{"classifier.linear.weight": torch.zeros(10, 1280)})
    assert "classifier.linear.bias (1000,) vs (10,)" in bad_checkpoint_message(shape)

    nan = dict(state_w10)
    nan["final_expand_layer.bn.running_var"] = nan["final_expand_layer.bn.running_var"].clone().fill_(float("nan"))
    assert "NaN" in bad_checkpoint_message(nan)

    text = dict(state_w10, **{"first_conv.bn.bias": "zero"})
    assert "not tensors (1): first_conv.bn.bias (str)" in bad_checkpoint_message(text)


def test_a_checkpoint_of_the_other_width_says_which_width_it_is(state_w10) -> None:
    msg = bad_checkpoint_message(state_w10, width_mult=1.2)
    assert "shape mismatches" in msg and "load it with width_mult=1.0" in msg


def test_a_foreign_supernet_is_refused(state_w10) -> None:
    # e.g. OFA's depth-only supernet (kernel 3 only): no transform matrices, smaller kernels
    foreign = {k: v for k, v in state_w10.items() if not k.endswith("_matrix")}
    foreign = {k: v[..., 2:5, 2:5] if k.endswith("depth_conv.conv.conv.weight") else v for k, v in foreign.items()}
    msg = bad_checkpoint_message(foreign)
    assert "missing keys (40)" in msg and "shape mismatches" in msg and "ofa_mbv3_d234_e346_k357_w1.0" in msg


@pytest.mark.parametrize("training", [True, False])
def test_the_nhwc_layout_changes_speed_not_values(training: bool) -> None:
    """Training and evaluation run the nets channels-last (faster with oneDNN): outputs and
    gradients match the NCHW ones to float tolerance, and the layout leaves the state's values alone."""
    from ofa2_edge.supernet.network import channels_last

    plain = Supernet.random(1.0, seed=3, n_classes=10).train(training)
    nhwc = channels_last(Supernet.random(1.0, seed=3, n_classes=10)).train(training)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), nhwc.state_dict().values(), strict=True))
    assert nhwc.first_conv.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    for arch in (Arch.largest(40, 1.0), Arch.smallest(40, 1.0)):
        a, b = plain(x, arch), nhwc(channels_last(x), arch)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        if training:
            a.square().sum().backward()
            b.square().sum().backward()
    if training:
        pairs = [(p.grad.flatten(), q.grad.flatten()) for p, q in zip(plain.parameters(), nhwc.parameters(), strict=True)
                 if p.grad is not None]  # fmt: skip
        g, h = torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])
        # float32 summation order through 20 batch-statistics BN layers: ~1e-3 apart; a layout bug is O(1)
        assert len(pairs) > 100 and float((g - h).norm()) <= 1e-2 * float(g.norm())
    assert channels_last(torch.zeros(2, 3)).shape == (2, 3)  # not an image batch: unchanged


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_skipping_padding_only_taps_equals_the_plain_conv(kernel: int, stride: int) -> None:
    from ofa2_edge.supernet.static import DepthwiseConv2d

    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    for size in range(1, 11):
        plain = nn.Conv2d(6, 6, kernel, stride, kernel // 2, groups=6, bias=False)
        fast = DepthwiseConv2d(6, 6, kernel, stride, kernel // 2, groups=6, bias=False)
        fast.load_state_dict(plain.state_dict())
        x = torch.randn(2, 6, size, size, generator=gen, requires_grad=True)
        want, got = plain(x), fast(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        g_want = torch.autograd.grad(want.square().sum(), (x, plain.weight))
        g_got = torch.autograd.grad(got.square().sum(), (x, fast.weight))
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_an_exported_subnet_keeps_its_declared_kernels_on_small_maps(random_supernet: Supernet) -> None:
    import onnx

    from exporters.onnx_export import build_onnx

    arch = SearchSpace(resolutions=(32,), w=random_supernet.width_mult).largest(32)  # 7x7 kernels on 1x1 maps
    built = build_onnx(random_supernet.extract(arch))  # its parity check: onnxruntime (full kernels) == torch (cropped)
    kernels = [
        tuple(a.ints) for n in onnx.load_from_string(built.data).graph.node if n.op_type == "Conv"
        for a in n.attribute if a.name == "kernel_shape"
    ]  # fmt: skip
    assert kernels.count((7, 7)) == sum(arch.d) == 20
