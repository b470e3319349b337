"""TFLite (LiteRT) export: fp32 parity in the LiteRT interpreter, int8 quantisation and its agreement.

A conversion takes ~20-30 s here, so fp32 parity runs on the min and max nets and two
seeded random subnets (the ONNX tests cover ten); int8 starts from the cached fp32 file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import skip_or_fail

from exporters import ExportCache, RepresentativeSet, export_subnet, random_supernet, read_sidecar
from exporters.cache import META_NAME
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.supernet import noise_batches, recalibrate_bn

pytestmark = [pytest.mark.tflite, pytest.mark.slow]

SPACE = SearchSpace()
ARCHS = [SPACE.smallest(), SPACE.largest(), *SPACE.sample(2, np.random.default_rng(7))]


@pytest.fixture(scope="module", autouse=True)
def litert_available() -> None:
    for module in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"):
        if importlib.util.find_spec(module) is None:
            skip_or_fail("tflite", f"{module} is not installed (pip install 'ofa2-edge[tflite]')")


@pytest.fixture(scope="module")
def cache(export_cache_dir: Path) -> ExportCache:
    return ExportCache(export_cache_dir / "exports")


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=1)


@pytest.mark.parametrize("arch", ARCHS, ids=["min", "max", "random-1", "random-2"])
def test_fp32_parity_with_torch(arch: Arch, cache: ExportCache) -> None:
    model = export_subnet(arch, "tflite", cache=cache)
    assert model.parity["max_abs_diff"] <= 1e-3 and 1e-2 < model.parity["reference_max_abs"] < 1e2
    # independently: the file in the interpreter vs a freshly built subnet, on an input the export never saw
    subnet = random_supernet(arch.w).extract(arch)
    recalibrate_bn(subnet, noise_batches(arch.r, 0))
    x = torch.randn(1, 3, arch.r, arch.r, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = subnet(x).numpy()
    runner = _interpreter(model.path).get_signature_runner("serving_default")
    got = runner(input=x.numpy())["logits"]
    assert got.shape == (1, 1000) and float(np.max(np.abs(got - expected))) <= 1e-3
    (inp,) = _interpreter(model.path).get_input_details()
    assert list(inp["shape"]) == [1, 3, arch.r, arch.r] and inp["dtype"] == np.float32  # NCHW, float input
    assert model.metadata["input"]["layout"] == "NCHW"


def test_int8_runs_and_reports_agreement(cache: ExportCache) -> None:
    arch = SPACE.smallest()
    fp32 = export_subnet(arch, "tflite", cache=cache)
    q = export_subnet(arch, "tflite-int8", cache=cache)
    figures = q.parity
    assert figures["compared_with"] == "tflite fp32" and figures["n_inputs"] == 32
    assert 0.0 <= figures["top1_agreement"] <= 1.0 and figures["mean_cosine"] > 0.5
    assert q.bytes < fp32.bytes / 3  # int8 weights
    interp = _interpreter(q.path)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    assert inp["dtype"] == np.float32  # float I/O: fed exactly like the fp32 file
    assert sum(t["dtype"] == np.int8 for t in interp.get_tensor_details()) > 50  # really quantised
    quant = q.metadata["exporter"]["quantization"]
    assert quant["tool"] == "ai_edge_quantizer"
    assert quant["representative_set"] == {"source": "noise", "samples": 32, "seed": 7}
    assert q.metadata["arch_id"] == arch.id and q.metadata["preprocessing"] == fp32.metadata["preprocessing"]
    again = export_subnet(arch, "tflite-int8", cache=cache)
    assert again.cached and again.sha256 == q.sha256


def test_int8_from_an_image_folder(cache: ExportCache, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    rep = RepresentativeSet.from_folder(tmp_path, samples=4)
    arch = SPACE.smallest()
    q = export_subnet(arch, "tflite-int8", cache=cache, representative=rep)
    described = q.metadata["exporter"]["quantization"]["representative_set"]
    assert described["source"] == "images" and described["samples"] == 4 and len(described["folder_sha256"]) == 64
    assert q.cache_key != export_subnet(arch, "tflite-int8", cache=cache).cache_key
    (tmp_path / "img0.png").write_bytes((tmp_path / "img1.png").read_bytes())  # other images, other key
    assert RepresentativeSet.from_folder(tmp_path, samples=4).describe() != described


def test_sidecar_round_trip(cache: ExportCache, tmp_path: Path) -> None:
    model = export_subnet(SPACE.smallest(), "tflite", cache=cache)
    in_cache = read_sidecar(model.path.parent / META_NAME)
    assert in_cache.metadata == model.metadata and in_cache.sha256 == model.sha256
    copied = model.copy_to(tmp_path / "net.tflite")
    back = read_sidecar(tmp_path / "net.tflite.json")
    assert back.path == copied.path and back.sha256 == model.sha256 and back.metadata == model.metadata
    assert back.inputs == model.inputs and back.parity == model.parity and back.format == "tflite"
    assert back.metadata["exporter"]["name"] == "litert_torch.convert"
    assert back.metadata["weights_source"] == "random:0" and back.metadata["latency_only"] is True
