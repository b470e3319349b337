"""Preprocessing facts, the image-folder loader and BatchNorm recalibration (OFA's practice)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from ofa_reference import ofa
from PIL import Image
from torch import nn

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.data.imagefolder import image_batches, list_images
from ofa2_edge.data.preprocessing import Preprocessing, preprocess_image, resized_hw
from ofa2_edge.space.arch import Arch
from ofa2_edge.supernet import Supernet, noise_batches, recalibrate_bn

R = 128  # small, so the passes stay quick


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 PNGs and 4 JPEGs of random colours and sizes, in two class folders like ImageNet's."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(36):
        h, w = (int(v) for v in rng.integers(90, 260, size=2))
        base = rng.integers(0, 256, size=3)
        pixels = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / ("n0001" if i % 2 else "n0002")
        folder.mkdir(exist_ok=True)
        suffix = ".jpg" if i >= 32 else ".png"
        Image.fromarray(pixels).save(folder / f"img{i:02d}{suffix}")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture()
def subnet():
    return Supernet.random(1.2, seed=0).extract(
        Arch.from_dict({"ks": [3, 5, 7, 5] * 5, "e": [3, 4, 6, 4] * 5, "d": [2, 3, 2, 3, 2], "r": R})
    )


def bn_layers(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


# ---------------------------------------------------------------- preprocessing
@given(st.integers(min_value=32, max_value=1024))
def test_preprocessing_round_trips_and_follows_ofas_recipe(r: int) -> None:
    prep = Preprocessing.for_resolution(r)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert prep.resize_size == int(np.ceil(r / 0.875)) and prep.input_shape == (1, 3, r, r)


def test_preprocessing_facts_and_validation() -> None:
    prep = Preprocessing.for_resolution(224)
    d = prep.to_dict()
    assert d["resize_size"] == 256 and d["mean"] == [0.485, 0.456, 0.406] and d["std"] == [0.229, 0.224, 0.225]
    assert d["interpolation"] == "bilinear" and d["layout"] == "NCHW" and d["dtype"] == "float32"
    assert Preprocessing.for_resolution(236).resize_size == 270
    with pytest.raises(InvalidInputError, match="interpolation"):
        Preprocessing.from_dict({**d, "interpolation": "bicubic"})
    with pytest.raises(InvalidInputError, match="unknown field"):
        Preprocessing.from_dict({**d, "scale": 2})
    with pytest.raises(InvalidInputError, match="smaller than the crop"):
        Preprocessing(input_size=224, resize_size=200)


@pytest.mark.parametrize("size", [(300, 400), (257, 199), (100, 80)])
def test_preprocess_image_matches_the_pil_pipeline_within_a_grey_level(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    prep = Preprocessing.for_resolution(160)
    ours = preprocess_image(img, prep)
    # torchvision's Resize(int) + CenterCrop + ToTensor + Normalize on a PIL image
    rh, rw = resized_hw(*size, prep.resize_size)
    assert min(rh, rw) == prep.resize_size
    pil = np.asarray(Image.fromarray(img).resize((rw, rh), Image.BILINEAR), dtype=np.float32) / 255
    top, left = round((rh - 160) / 2), round((rw - 160) / 2)
    ref = torch.from_numpy(pil[top : top + 160, left : left + 160]).permute(2, 0, 1)
    ref = (ref - torch.tensor(prep.mean).view(3, 1, 1)) / torch.tensor(prep.std).view(3, 1, 1)
    grey_level = 1.0 / 255 / min(prep.std)
    assert ours.shape == (3, 160, 160) and ours.dtype == torch.float32
    assert float((ours - ref).abs().max()) <= 1.05 * grey_level
    with pytest.raises(InvalidInputError, match="uint8 RGB"):
        preprocess_image(img.astype(np.float32), prep)


# ---------------------------------------------------------------- image folder
def test_image_folder_batches(image_folder: Path) -> None:
    files = list_images(image_folder)
    assert len(files) == 36 and files == sorted(files)
    prep = Preprocessing.for_resolution(R)
    batches = list(image_batches(image_folder, prep, batch_size=10))
    assert [b.shape[0] for b in batches] == [10, 10, 10, 6] and batches[0].shape[1:] == (3, R, R)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    a = torch.cat(list(image_batches(image_folder, prep, 8, max_images=12, rng=rng_a)))
    b = torch.cat(list(image_batches(image_folder, prep, 5, max_images=12, rng=rng_b)))
    assert a.shape[0] == 12 and torch.equal(a, b)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match="holds no"):
        list_images(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InvalidInputError, match="broken.jpg"):
        list(image_batches(tmp_path, Preprocessing.for_resolution(R)))


# ---------------------------------------------------------------- recalibration
@pytest.mark.slow
def test_recalibrated_statistics_are_the_sample_weighted_batch_statistics(subnet, image_folder: Path) -> None:
    prep = Preprocessing.for_resolution(R)
    batches = list(image_batches(image_folder, prep, batch_size=10, max_images=32))  # 10, 10, 10, 2
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bn_layers(subnet).items()}
    assert recalibrate_bn(subnet, batches, source="folder") == 32
    assert not subnet.training and subnet.bn_stats_source == "folder (32 images)"
    for name, bn in bn_layers(subnet).items():
        assert not torch.allclose(bn.running_mean, before[name][0]), name
        assert not torch.allclose(bn.running_var, before[name][1]), name
        assert int(bn.num_batches_tracked) == 4
    # straightforward reference for the first BN layer, whose input does not depend on BN:
    # the mean over all images, and the batch-size-weighted mean of per-batch biased variances
    conv = subnet.first_conv.conv
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    mean = torch.cat(outs).mean(dim=(0, 2, 3))
    var = sum(o.var(dim=(0, 2, 3), unbiased=False) * o.shape[0] for o in outs) / 32
    torch.testing.assert_close(subnet.first_conv.bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(subnet.first_conv.bn.running_var, var, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_recalibration_equals_ofas_set_running_statistics(subnet, image_folder: Path) -> None:
    batches = list(image_batches(image_folder, Preprocessing.for_resolution(R), batch_size=12))  # 12, 12, 12
    theirs = copy.deepcopy(subnet)
    ofa().set_running_statistics(theirs, [(b, None) for b in batches])
    recalibrate_bn(subnet, batches)
    ours_bn, theirs_bn = bn_layers(subnet), bn_layers(theirs)
    for name in ours_bn:
        torch.testing.assert_close(ours_bn[name].running_mean, theirs_bn[name].running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours_bn[name].running_var, theirs_bn[name].running_var, rtol=1e-4, atol=1e-5)


def test_one_batch_recalibration_makes_eval_equal_train_mode(subnet) -> None:
    # recalibrated on exactly one batch, eval mode normalises that batch with its own
    # statistics: the output equals the train-mode output of the unrecalibrated subnet
    x = next(noise_batches(R, seed=4, batch_size=6))
    train_copy = copy.deepcopy(subnet).train()
    with torch.no_grad():
        expected = train_copy(x)
    recalibrate_bn(subnet, [x], source="noise:4")
    with torch.no_grad():
        got = subnet(x)
    assert float(expected.std()) > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert subnet.bn_stats_source == "noise:4 (6 images)"


def test_a_failed_recalibration_leaves_the_subnet_unchanged(subnet) -> None:
    state = {k: v.clone() for k, v in subnet.state_dict().items()}

    def failing():
        yield next(noise_batches(R, seed=0))
        raise InvalidInputError("cannot read image x.jpg")

    with pytest.raises(InvalidInputError, match="x.jpg"):
        recalibrate_bn(subnet, failing())
    with pytest.raises(InvalidInputError, match="no images"):
        recalibrate_bn(subnet, [])
    with pytest.raises(InvalidInputError, match="float image batches"):
        recalibrate_bn(subnet, [torch.zeros(2, 1, R, R)])
    assert all(torch.equal(v, state[k]) for k, v in subnet.state_dict().items())
    assert subnet.bn_stats_source == "supernet"


def test_noise_recalibration_brings_random_subnets_to_unit_scale() -> None:
    net = Supernet.random(1.2, seed=1)
    arch = Arch.largest(R)
    subnet = net.extract(arch)
    recalibrate_bn(subnet, noise_batches(R, seed=1, batch_size=4), source="noise:1")
    outs = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(float(o.std()))) for b in subnet.blocks]
    with torch.no_grad():
        subnet(next(noise_batches(R, seed=2, batch_size=2)))
    for h in hooks:
        h.remove()
    assert all(0.2 < s < 10 for s in outs), outs
    assert torch.equal(next(noise_batches(R, 5)), next(noise_batches(R, 5)))
