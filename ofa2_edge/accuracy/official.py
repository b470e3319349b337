"""OFA's official ImageNet top-1 predictor (`acc_predictor.pth`), run in numpy.

The file is a torch state_dict of ``Linear(128,400) ReLU Linear(400,400) ReLU
Linear(400,400) ReLU Linear(400,1)`` (keys ``0.weight`` ... ``6.bias``, float32) whose output
is top-1 as a fraction on OFA's 10k hold-out split. It is read with
``torch.load(weights_only=True)`` (no arbitrary unpickling), checked key by key, and turned
into a numpy `DenseAccuracyPredictor` that reports percent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ofa2_edge.accuracy.predictor import DenseAccuracyPredictor
from ofa2_edge.core.assets import find_asset
from ofa2_edge.core.errors import AssetError, SchemaError
from ofa2_edge.core.persist import sha256_file
from ofa2_edge.space.arch import OFA_RESOLUTIONS, PREDICTOR_FEATURES

OFFICIAL_FILE = "acc_predictor.pth"
HIDDEN = 400
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "0.weight": (HIDDEN, PREDICTOR_FEATURES),
    "0.bias": (HIDDEN,),
    "2.weight": (HIDDEN, HIDDEN),
    "2.bias": (HIDDEN,),
    "4.weight": (HIDDEN, HIDDEN),
    "4.bias": (HIDDEN,),
    "6.weight": (1, HIDDEN),
    "6.bias": (1,),
}


def _refuse(path: Path, what: str) -> AssetError:
    return AssetError(
        f"{path}: {what}; this is not OFA's acc_predictor.pth (a state_dict of Linear(128,400) ReLU "
        "Linear(400,400) ReLU Linear(400,400) ReLU Linear(400,1)). Fetch it again with `ofa2-edge assets fetch`"
    )


def load_official_predictor(path: str | Path) -> DenseAccuracyPredictor:
    """Read and verify an `acc_predictor.pth`; any mismatch is one clear `AssetError`."""
    import torch  # heavy: only when the official file is actually read

    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: no such file; fetch the official predictor with `ofa2-edge assets fetch`")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  damaged bytes fail deep inside torch's unpickler and zip reader
        # (UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, but also KeyError,
        # AssertionError, ... on a damaged storage table): every one is this file's fault.
        first = (str(exc).splitlines() or [""])[0][:200]
        raise _refuse(path, f"cannot be read as a torch state_dict ({type(exc).__name__}: {first})") from exc
    if not isinstance(state, dict):
        raise _refuse(path, f"holds a {type(state).__name__}, not a state_dict")
    keys = set(state)
    if keys != set(EXPECTED_SHAPES):
        missing = sorted(set(EXPECTED_SHAPES) - keys)
        extra = sorted(keys - set(EXPECTED_SHAPES))
        raise _refuse(path, f"wrong keys (missing: {missing or 'none'}; unexpected: {extra or 'none'})")
    arrays: dict[str, np.ndarray] = {}
    for key, shape in EXPECTED_SHAPES.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor):
            raise _refuse(path, f"{key} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != shape:
            raise _refuse(path, f"{key} has shape {tuple(tensor.shape)}, expected {shape}")
        if tensor.dtype != torch.float32:
            raise _refuse(path, f"{key} has dtype {tensor.dtype}, expected torch.float32")
        arrays[key] = tensor.detach().numpy()
        if not np.isfinite(arrays[key]).all():
            raise _refuse(path, f"{key} holds non-finite values")
    layers = ("0", "2", "4", "6")
    try:
        return DenseAccuracyPredictor(
            [arrays[f"{i}.weight"].T for i in layers],
            [arrays[f"{i}.bias"] for i in layers],
            output_scale=100.0,  # OFA's predictor answers a fraction; the toolkit speaks percent
            resolutions=OFA_RESOLUTIONS,
            source={"kind": "official", "name": "ofa-official", "path": str(path.resolve()), "sha256": sha256_file(path)},
        )
    except SchemaError as exc:  # e.g. weights so large that its outputs could overflow
        raise _refuse(path, str(exc)) from exc


def official_predictor(assets_dir: Path | None = None) -> DenseAccuracyPredictor:
    """The official predictor found through the asset lookup (`--assets`, env, user cache)."""
    return load_official_predictor(find_asset(OFFICIAL_FILE, assets_dir))
