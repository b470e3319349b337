"""``agent.pyz infer``: run a model on caller-given inputs and print its outputs (parity checks).

Timing is the `measure` command's job; this one answers "does the device's runtime compute
what torch computed?". The inputs arrive as a ``.npy`` file (n samples, read with
``allow_pickle=False``) in the work dir; each sample is run alone (batch 1, as exported) and
every output is printed as one JSON document on stdout: float32 values survive JSON exactly
(each is a double with the same value). The runtime is loaded exactly as `measure` loads it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from device_agents.records import ModelSpec, Protocol, TensorSpec
from device_agents.runtimes import get_runtime
from device_agents.runtimes.base import LoadContext

INFER_SCHEMA = "agent.infer"
INFER_VERSION = 1


def infer(runtime_name: str, model_path: str, inputs_path: str, threads: int = 1) -> Dict[str, Any]:
    """Outputs of the model for each sample of the inputs file (raises on any failure)."""
    import numpy as np

    samples = np.load(inputs_path, allow_pickle=False)
    if samples.ndim < 2 or samples.shape[0] < 1:
        raise ValueError("%s: expected an array of shape (n, ...) with n >= 1, got %s" % (inputs_path, samples.shape))
    dtype = str(samples.dtype)
    spec = ModelSpec(
        arch_id="infer", arch=None, model_file=os.path.basename(model_path), sha256="0" * 64, runtime=runtime_name,
        inputs=(TensorSpec(None, tuple(int(d) for d in (1,) + samples.shape[1:]), dtype),),
        outputs=(TensorSpec(None, (1,), "float32"),),
    )
    runtime = get_runtime(runtime_name)
    version = runtime.version()
    session = runtime.load(model_path, spec, Protocol(threads=threads),
                           LoadContext(os.path.dirname(os.path.abspath(model_path)), "", lambda stage: None))
    outputs: List[List[Dict[str, Any]]] = []
    for sample in samples:
        got = session.outputs_for([np.ascontiguousarray(sample[None])])
        outputs.append([{"shape": [int(d) for d in np.shape(arr)],
                         "values": np.asarray(arr, dtype=np.float64).ravel().tolist()} for arr in got])
    session.close()
    return {"schema": INFER_SCHEMA, "schema_version": INFER_VERSION, "runtime": runtime_name,
            "runtime_version": version, "threads": threads, "outputs": outputs}


def dumps(doc: Dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))
