"""``agent.pyz classify``: run a batch of preprocessed images through a model, print top-1 labels.

The host preprocesses held-out images with the bundle's recorded preprocessing and sends
them as ONE ``.npy`` file (float32, (N, C, H, W) for ONNX); the agent reads it with
``numpy.load(allow_pickle=False)`` (a file that holds Python objects is refused, nothing
in it is executed), checks both files' sha256 against what the host says it sent, feeds
the images one at a time in the model's input shape and prints one JSON document: the
index of the largest output per image. Only the standard library, numpy and the runtime.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, Dict, List

from device_agents import AGENT_VERSION
from device_agents.records import ModelSpec, Protocol, RecordError, TensorSpec
from device_agents.runtimes import get_runtime
from device_agents.runtimes.base import ModelLoadFailed, RuntimeUnavailable

PREDICTIONS_EVENT = "agent.predictions"
#: At most this many images per request (the host sends a few hundred).
MAX_IMAGES = 100000


class ClassifyError(Exception):
    """The request cannot be served: bad files, a runtime that is missing or refuses the model."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_images(path: str) -> Any:
    """The image batch: a float32 array of rank 4 from a .npy file, never unpickled."""
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ClassifyError(f"{path}: not a plain .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 4:
        raise ClassifyError(f"{path}: expected a float32 array (N, C, H, W), got {getattr(arr, 'dtype', None)} "
                            f"of shape {getattr(arr, 'shape', None)}")
    if not 1 <= arr.shape[0] <= MAX_IMAGES:
        raise ClassifyError(f"{path}: {arr.shape[0]} images; send 1..{MAX_IMAGES}")
    if not np.isfinite(arr).all():
        raise ClassifyError(f"{path}: the images hold NaN or infinite values")
    return arr


def classify(model_path: str, model_sha256: str, images_path: str, images_sha256: str, runtime_name: str,
             threads: int) -> Dict[str, Any]:
    """Top-1 label of every image of `images_path` under `runtime_name`; the JSON-able answer."""
    for path, want in ((model_path, model_sha256), (images_path, images_sha256)):
        got = _sha256(path)
        if got != want:
            raise ClassifyError(f"{path}: sha256 {got} differs from the host's {want}; the copy is damaged")
    images = load_images(images_path)
    one = tuple(int(d) for d in (1, *images.shape[1:]))
    try:
        # the outputs are read, not checked: the spec's output entry is a placeholder
        spec = ModelSpec(arch_id="a-000000000000", arch={}, model_file=model_path.rsplit("/", 1)[-1],
                         sha256=model_sha256, runtime=runtime_name, inputs=(TensorSpec(None, one, "float32"),),
                         outputs=(TensorSpec(None, (1, 1), "float32"),))
        runtime = get_runtime(runtime_name)
        version = runtime.version()
        session = runtime.load(model_path, spec, Protocol(threads=threads), _NoContext())
    except (RuntimeUnavailable, ModelLoadFailed, KeyError, RecordError) as exc:
        raise ClassifyError(f"{runtime_name} cannot run {model_path}: {exc}") from None
    top1: List[int] = []
    n_outputs = None
    try:
        for i in range(images.shape[0]):
            out = session.outputs_for([images[i:i + 1]])[0]
            flat = out.reshape(-1)
            n_outputs = int(flat.shape[0])
            top1.append(int(flat.argmax()))
    except ModelLoadFailed:
        raise ClassifyError(f"runtime {runtime_name} cannot classify images in this agent") from None
    finally:
        session.close()
    return {"event": PREDICTIONS_EVENT, "agent_version": AGENT_VERSION, "runtime": runtime_name,
            "runtime_version": version, "model_sha256": model_sha256, "images_sha256": images_sha256,
            "n_images": len(top1), "n_outputs": n_outputs, "top1": top1}


class _NoContext:
    """A load context for runtimes that cache nothing (ONNX Runtime, LiteRT)."""

    engine_dir = "."
    device_fingerprint = ""

    def on_build(self, stage: str) -> None:  # pragma: no cover - TensorRT only
        pass


def main(args: Any) -> int:
    try:
        answer = classify(args.model, args.model_sha256, args.images, args.images_sha256, args.runtime, args.threads)
    except ClassifyError as exc:
        print(f"[agent] classify: {exc}", file=sys.stderr, flush=True)
        return 1
    sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0
