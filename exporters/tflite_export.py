"""A static subnet to TFLite (LiteRT): fp32 through litert-torch, int8 through AI Edge Quantizer.

Both converters come with the optional ``[tflite]`` extra and are imported only here, on
first use, so the base install never pays for them (~900 MB, several seconds of import).

- **fp32**: `litert_torch.convert` (torch.export -> StableHLO -> TFLite flatbuffer; no
  TensorFlow needed). The module is wrapped so the signature reads ``input`` -> ``logits``
  like the ONNX export. The file takes **NCHW** input, as the ONNX file and the
  preprocessing record do: the converter inserts one TRANSPOSE to NHWC in front of the
  first conv. Measured here on the min net at 160 px (where it weighs most), an NHWC-input
  variant ran 2.78-2.85 ms vs 2.85-2.88 ms (min of 200 runs, 1 thread): ~1%, inside the
  noise, so one layout for every format beats a second variant to cache and ship.
- **int8**: full-integer static quantisation of the fp32 flatbuffer with AI Edge Quantizer
  (`ai_edge_quantizer`, Google's LiteRT quantiser, installed with litert-torch): int8
  weights (per channel) and activations (per tensor) for every supported op, ranges
  calibrated on a :class:`RepresentativeSet`. Model input and output stay float32 (a
  QUANTIZE / DEQUANTIZE pair at the edges), so the int8 file is fed exactly like the fp32
  one. It starts from the cached fp32 file, so it costs the calibration (~1-3 s) rather
  than a second conversion (~20-30 s). The PT2E route of litert-torch annotates only
  conv/linear/add/pool and would leave hardswish, SE multiplies and means in float.

Parity: fp32 vs torch, max abs diff <= 1e-3, else :class:`ExportError`. int8 vs the fp32
file on a fixed seeded batch: top-1 agreement, mean cosine similarity and max abs diff
are recorded; agreement below 50% is logged as a warning; a cosine below 0.5 or
non-finite outputs mean a broken quantisation and are an error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from exporters.metadata import model_metadata
from exporters.parity import PARITY_SEED, check_parity, mean_cosine, parity_inputs, top1_agreement, torch_outputs
from exporters.records import BuiltModel, TensorSpec
from exporters.representative import RepresentativeSet
from ofa2_edge.core.errors import ExportError
from ofa2_edge.data.preprocessing import Preprocessing
from ofa2_edge.supernet import StaticSubnet

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
SIGNATURE = "serving_default"
ATOL = 1e-3
RTOL = 5e-5
#: int8 checks: a fixed seeded batch compared with the fp32 file.
INT8_CHECK_SAMPLES = 32
INT8_AGREEMENT_WARN = 0.5
INT8_COSINE_MIN = 0.5
INSTALL_HINT = "install the TFLite extra: pip install 'ofa2-edge[tflite]'"
_DISTRIBUTIONS = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def require_litert() -> None:
    """Raise :class:`ExportError` with the install command unless the converters import."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"TFLite export needs litert-torch and ai-edge-litert ({exc}); {INSTALL_HINT}") from exc


def versions() -> dict[str, str]:
    """Installed versions of the converter stack (part of the cache key)."""
    out = {}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch prints a progress tree to stdout unless told not to; --json needs stdout clean."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


class _NamedIO(torch.nn.Module):
    """Names the TFLite signature's tensors ``input`` and ``logits`` (litert-torch takes them
    from the keyword argument and the returned dict)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:
        return {OUTPUT_NAME: self.net(input)}


def run_tflite(model: bytes, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Outputs of a TFLite model (signature ``serving_default``) for each (3, r, r) image."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=threads)
    runner = interpreter.get_signature_runner(SIGNATURE)
    return np.concatenate([runner(**{INPUT_NAME: x[None]})[OUTPUT_NAME] for x in images])


def _specs(r: int, n_classes: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    return (TensorSpec(INPUT_NAME, (1, 3, r, r), "float32", "NCHW"),), (
        TensorSpec(OUTPUT_NAME, (1, n_classes), "float32", None),
    )


def build_tflite_fp32(subnet: StaticSubnet) -> BuiltModel:
    """Convert `subnet` to an fp32 .tflite and check it against torch in the LiteRT interpreter."""
    require_litert()
    import litert_torch

    subnet.eval()
    r = subnet.arch.r
    inputs, outputs = _specs(r, subnet.classifier.linear.out_features)
    exporter = {"name": "litert_torch.convert", "torch": torch.__version__, **versions(), "signature": SIGNATURE}
    metadata = model_metadata(subnet, inputs, outputs, exporter)
    sample = torch.zeros(subnet.input_shape)
    try:
        with _quiet_converter():
            data = litert_torch.convert(_NamedIO(subnet).eval(), sample_kwargs={INPUT_NAME: sample}).model_content()
    except Exception as exc:  # the converter stack raises many types; all mean "could not convert"
        raise ExportError(f"TFLite conversion of {subnet.arch.id} failed: {type(exc).__name__}: {exc}") from exc

    images = parity_inputs(r)
    parity = check_parity(
        torch_outputs(subnet, images), run_tflite(bytes(data), images), ATOL, RTOL, f"TFLite export of {subnet.arch.id}"
    )
    parity["runtime"] = f"ai-edge-litert {versions()['ai-edge-litert']}"
    return BuiltModel(bytes(data), "tflite", metadata, inputs, outputs, parity)


def _int8_recipe() -> Any:
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(
        regex=".*",
        operation_name=ops.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
        algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT,
    )
    # keep the model's float32 input and output: it is fed exactly like the fp32 file
    for edge in (ops.INPUT, ops.OUTPUT):
        manager.add_quantization_config(regex=".*", operation_name=edge, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe()


def build_tflite_int8(
    fp32_model: bytes, fp32_metadata: dict[str, Any], representative: RepresentativeSet
) -> BuiltModel:
    """Quantise an fp32 .tflite (from :func:`build_tflite_fp32`) to int8; record its agreement with it."""
    require_litert()
    from ai_edge_quantizer import quantizer

    prep = Preprocessing.from_dict(fp32_metadata["preprocessing"])
    arch_id = fp32_metadata["arch_id"]
    samples = [{INPUT_NAME: x} for x in representative.images(prep)]
    try:
        quant = quantizer.Quantizer(fp32_model, _int8_recipe())
        calibration = quant.calibrate({SIGNATURE: samples}, num_threads=1)
        data = bytes(quant.quantize(calibration, enable_progress_report=False).quantized_model)
    except Exception as exc:  # the quantiser raises many types; all mean "could not quantise"
        raise ExportError(f"int8 quantisation of {arch_id} failed: {type(exc).__name__}: {exc}") from exc

    images = parity_inputs(prep.input_size, n=INT8_CHECK_SAMPLES)
    reference, got = run_tflite(fp32_model, images), run_tflite(data, images)
    what = f"int8 TFLite export of {arch_id}"
    if not np.all(np.isfinite(got)):
        raise ExportError(f"{what}: the quantised model produced NaN or infinite outputs")
    figures = {
        "compared_with": "tflite fp32",
        "top1_agreement": top1_agreement(reference, got),
        "mean_cosine": mean_cosine(reference, got),
        "max_abs_diff": float(np.max(np.abs(got - reference))),
        "reference_max_abs": float(np.max(np.abs(reference))),
        "n_inputs": INT8_CHECK_SAMPLES,
        "input_seed": PARITY_SEED,
        "runtime": f"ai-edge-litert {versions()['ai-edge-litert']}",
        "warnings": [],
    }
    if figures["mean_cosine"] < INT8_COSINE_MIN:
        raise ExportError(
            f"{what}: outputs no longer resemble the fp32 model's (mean cosine {figures['mean_cosine']:.2f} < "
            f"{INT8_COSINE_MIN}); the quantisation is broken, the file was discarded"
        )
    if figures["top1_agreement"] < INT8_AGREEMENT_WARN:
        message = (
            f"top-1 agreement with fp32 is {figures['top1_agreement']:.0%} on {INT8_CHECK_SAMPLES} noise inputs "
            f"(< {INT8_AGREEMENT_WARN:.0%}); calibrate on real images (--calib-images) before trusting accuracy"
        )
        log.warning("%s: %s", what, message)
        figures["warnings"].append(message)

    inputs, outputs = _specs(prep.input_size, int(fp32_metadata["output"]["shape"][1]))
    exporter = {
        **fp32_metadata["exporter"],
        **versions(),
        "quantization": {
            "tool": "ai_edge_quantizer",
            "recipe": "static int8: weights per-channel symmetric, activations per-tensor; float32 input/output",
            "representative_set": representative.describe(),
        },
    }
    metadata = {**fp32_metadata, "exporter": exporter}
    return BuiltModel(data, "tflite-int8", metadata, inputs, outputs, figures)
