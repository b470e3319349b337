"""ONNX export: parity with torch in onnxruntime, metadata, determinism, failure leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters import ExportCache, export_module, export_subnet, onnx_export, random_supernet, read_sidecar
from exporters.cache import META_NAME
from exporters.onnx_export import ort_session, read_onnx_metadata
from exporters.parity import check_parity
from ofa2_edge.core.errors import ExportError, InvalidArchError, InvalidInputError, SchemaError
from ofa2_edge.data.imagefolder import image_batches
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.supernet import load_supernet, noise_batches, recalibrate_bn

SPACE = SearchSpace()
#: the min and max nets of the search space, and 10 seeded random subnets
ARCHS = [SPACE.smallest(), SPACE.largest(), *SPACE.sample(10, np.random.default_rng(2024))]


@pytest.fixture(scope="module")
def cache(export_cache_dir: Path) -> ExportCache:
    return ExportCache(export_cache_dir / "exports")


def _independent_check(model_path: Path, arch: Arch) -> tuple[float, float]:
    """onnxruntime on the file vs the torch subnet rebuilt from scratch, on an input the export never saw."""
    subnet = random_supernet(arch.w).extract(arch)
    recalibrate_bn(subnet, noise_batches(arch.r, 0))
    x = torch.randn(1, 3, arch.r, arch.r, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        expected = subnet(x).numpy()
    got = ort_session(model_path).run(["logits"], {"input": x.numpy()})[0]
    return float(np.max(np.abs(got - expected))), float(np.max(np.abs(expected)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS, ids=[f"{a.id}@{a.r}" for a in ARCHS])
def test_parity_with_torch(arch: Arch, cache: ExportCache) -> None:
    model = export_subnet(arch, "onnx", cache=cache)
    assert model.parity["max_abs_diff"] <= 1e-4
    # activations are O(1) (noise-recalibrated BN), so a 1e-4 check is meaningful
    assert 1e-2 < model.parity["reference_max_abs"] < 1e2 and not model.parity.get("weak")
    session = ort_session(model.path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, out.name, out.shape) == ("input", [1, 3, arch.r, arch.r], "logits", [1, 1000])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS[:3], ids=["min", "max", "random"])
def test_parity_checked_independently(arch: Arch, cache: ExportCache) -> None:
    """Not trusting the export's own figures: the file vs a freshly built subnet on another input."""
    model = export_subnet(arch, "onnx", cache=cache)
    diff, scale = _independent_check(model.path, arch)
    assert diff <= 1e-4 and 1e-2 < scale < 1e2


def test_metadata_round_trip(cache: ExportCache) -> None:
    arch = SPACE.smallest()
    model = export_subnet(arch, "onnx", cache=cache)
    meta = read_onnx_metadata(model.path)
    assert meta == model.metadata
    assert meta["arch_id"] == arch.id and Arch.from_dict(meta["arch"]) == arch and meta["resolution"] == arch.r
    assert meta["input"] == {"name": "input", "shape": [1, 3, arch.r, arch.r], "dtype": "float32", "layout": "NCHW"}
    assert meta["preprocessing"]["input_size"] == arch.r and meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["weights_source"] == "random:0" and meta["latency_only"] is True
    assert meta["bn_stats_source"] == "noise:0 (4 images)"
    assert meta["exporter"]["opset"] == 17 and meta["exporter"]["torch"] == torch.__version__
    proto = onnx.load(str(model.path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key: json.loads(p.value) for p in proto.metadata_props} == meta  # every value is JSON
    # the sidecar holds the same facts plus the file's checksum
    side = read_sidecar(model.path.parent / META_NAME)
    assert side.metadata == meta and side.sha256 == model.sha256 and side.parity == model.parity


def test_same_arch_and_weights_give_a_byte_identical_file(tmp_path: Path, cache: ExportCache) -> None:
    arch = SPACE.smallest()
    first = export_subnet(arch, "onnx", cache=cache)
    again = export_subnet(arch, "onnx", cache=ExportCache(tmp_path))
    assert not again.cached and again.sha256 == first.sha256
    assert again.path.read_bytes() == first.path.read_bytes()


def test_checkpoint_weights_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "supernet.pth"
    torch.save({"state_dict": random_supernet(1.2, seed=3).state_dict()}, path)
    net = load_supernet(path)
    arch = SPACE.smallest()
    model = export_subnet(arch, "onnx", supernet=net, cache=ExportCache(tmp_path / "c"), bn="noise")
    assert model.metadata["weights_source"] == net.weights_source and net.weights_source.startswith("sha256:")
    assert model.latency_only is False
    # a different weights source is a different export
    assert model.sha256 != export_subnet(arch, "onnx", cache=ExportCache(tmp_path / "c")).sha256


def test_caller_prepared_subnet_is_keyed_by_its_tensors(tmp_path: Path) -> None:
    """A subnet whose BN was recalibrated on images (as bundles do) is exported as it is."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    arch = SPACE.smallest()
    subnet = random_supernet(1.2).extract(arch)
    recalibrate_bn(subnet, image_batches(folder, subnet.preprocessing, batch_size=2), source="tiny-folder")
    cache = ExportCache(tmp_path / "c")
    model = export_module(subnet, "onnx", cache=cache)
    assert model.metadata["bn_stats_source"] == "tiny-folder (4 images)" and not model.cached
    assert export_module(subnet, "onnx", cache=cache).cached
    with torch.no_grad():
        subnet.first_conv.bn.running_mean += 0.5  # same labels, different tensors: must not hit
    assert not export_module(subnet, "onnx", cache=cache).cached


def test_failed_parity_is_an_error_and_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a zero tolerance: any float difference between onnxruntime and torch fails the real comparison
    monkeypatch.setattr(onnx_export, "ATOL", 0.0)
    monkeypatch.setattr(onnx_export, "RTOL", 0.0)
    cache = ExportCache(tmp_path)
    with pytest.raises(ExportError, match="exceeds the tolerance"):
        export_subnet(SPACE.smallest(), "onnx", cache=cache)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    with pytest.raises(InvalidInputError, match="not supported"):
        export_subnet(SPACE.smallest(), "coreml", cache=cache)
    with pytest.raises(InvalidInputError, match="BN statistics recipe"):
        export_subnet(SPACE.smallest(), "onnx", cache=cache, bn="images")
    with pytest.raises(InvalidArchError, match="w1.0 subnet but the supernet is w1.2"):
        export_subnet(Arch.smallest(160, w=1.0), "onnx", supernet=random_supernet(1.2), cache=cache)
    with pytest.raises(InvalidArchError, match="expected an Arch"):
        export_subnet({"ks": [3]}, "onnx", cache=cache)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_foreign_or_future_files_are_refused(tmp_path: Path, cache: ExportCache) -> None:
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(SchemaError, match="not an ofa2-edge export"):
        read_onnx_metadata(plain)
    model = export_subnet(SPACE.smallest(), "onnx", cache=cache)
    proto = onnx.load(str(model.path))
    for prop in proto.metadata_props:
        if prop.key == "ofa2_edge_metadata_version":
            prop.value = "2"
    onnx.save(proto, str(tmp_path / "future.onnx"))
    with pytest.raises(SchemaError, match="metadata version 2 is not supported"):
        read_onnx_metadata(tmp_path / "future.onnx")
    side = json.loads((model.path.parent / META_NAME).read_text())
    side["schema_version"] = 2
    (tmp_path / "meta.json").write_text(json.dumps(side))
    with pytest.raises(SchemaError, match="schema_version 2"):
        read_sidecar(tmp_path / "meta.json", verify=False)


def test_parity_tolerance_is_absolute_for_logits_and_relative_for_large_outputs() -> None:
    ref = np.array([[0.5, -1.0, 0.25]], dtype=np.float32)
    assert check_parity(ref, ref + 9e-5, onnx_export.ATOL, onnx_export.RTOL, "x")["tolerance"] == onnx_export.ATOL
    with pytest.raises(ExportError, match="exceeds the tolerance"):
        check_parity(ref, ref + 2e-4, onnx_export.ATOL, onnx_export.RTOL, "x")  # O(1) outputs: 1e-4 holds
    big = ref * 400  # outputs up to 400: float32 rounding grows with them
    figures = check_parity(big, big + 3e-3, onnx_export.ATOL, onnx_export.RTOL, "x")
    assert figures["tolerance"] == pytest.approx(onnx_export.RTOL * 400)
    with pytest.raises(ExportError):
        check_parity(big, big + 0.1, onnx_export.ATOL, onnx_export.RTOL, "x")
