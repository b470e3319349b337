"""Numerical parity between a torch subnet and its exported file, run inside every export.

An export that the target runtime does not compute like torch is an error, not a file.
The check input is a fixed seeded N(0, 1) image (what the preprocessed, normalised input
looks like in scale), so the same export always checks the same numbers.

The tolerance is ``max(atol, rtol * max|reference|)``: with outputs up to O(1) logits (a
noise-recalibrated random-weight subnet, a trained one) it is the plain ``atol``; larger
outputs get float32 rounding room in proportion to their scale instead of a spurious failure
(a subnet with real-checkpoint weights recalibrated on a few images reached outputs of 167 and
differed from torch by 2.9e-3 in onnxruntime, 1.7e-5 of its scale).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ofa2_edge.core.errors import ExportError

log = logging.getLogger(__name__)

#: Seed of the parity input; recorded in every export's parity figures.
PARITY_SEED = 20231
#: Below this output scale a max-abs-diff check says little; it is logged and recorded.
WEAK_SCALE = 1e-2


def parity_inputs(resolution: int, n: int = 1, seed: int = PARITY_SEED) -> np.ndarray:
    """`n` seeded N(0, 1) images (n, 3, r, r) float32, drawn from a private generator."""
    return parity_tensors((3, resolution, resolution), n, seed)


def parity_tensors(shape: tuple[int, ...], n: int = 1, seed: int = PARITY_SEED) -> np.ndarray:
    """`n` seeded N(0, 1) inputs of one sample's `shape` (a single layer takes feature maps)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen).numpy()


def torch_outputs(module: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The module's outputs for `images`, one image at a time (batch 1, as exported)."""
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[None])).numpy() for x in images])


def check_parity(
    reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float, what: str, seed: int = PARITY_SEED
) -> dict[str, Any]:
    """Compare `candidate` with `reference`; raise :class:`ExportError` beyond tolerance.

    Returns the figures recorded with the export: max abs diff, the reference's scale,
    the tolerance used, and the seed of the input.
    """
    if candidate.shape != reference.shape:
        raise ExportError(f"{what}: output shape {candidate.shape} differs from torch's {reference.shape}")
    if not np.all(np.isfinite(candidate)):
        raise ExportError(f"{what}: the exported model produced NaN or infinite outputs")
    scale = float(np.max(np.abs(reference)))
    diff = float(np.max(np.abs(candidate.astype(np.float64) - reference.astype(np.float64))))
    tol = max(atol, rtol * scale)
    figures = {
        "max_abs_diff": diff,
        "reference_max_abs": scale,
        "tolerance": tol,
        "atol": atol,
        "rtol": rtol,
        "input_seed": seed,
        "n_inputs": int(reference.shape[0]),
    }
    if scale < WEAK_SCALE:
        log.warning("%s: outputs are tiny (max |y| = %.2e); the parity check says little", what, scale)
        figures["weak"] = True
    if not diff <= tol:
        raise ExportError(
            f"{what}: max abs diff {diff:.3e} against torch exceeds the tolerance {tol:.1e} "
            f"(outputs up to {scale:.3g}); the exported file was discarded"
        )
    return figures


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of rows whose arg-max class is the same."""
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)))


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean cosine similarity of the rows (1 = same direction)."""
    num = np.sum(reference * candidate, axis=1)
    den = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))
