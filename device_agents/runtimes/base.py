"""The interface every measuring runtime implements, and the errors it may raise.

A runtime is imported lazily: the agent must start, probe and report "runtime not
available on this device" on a board that has none of them. A runtime's library (and
numpy, where its API needs arrays) is imported inside its methods only.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

from device_agents.records import ModelSpec, Protocol, TensorSpec

Shape = Tuple[int, ...]


class RuntimeUnavailable(Exception):
    """The runtime's library cannot be imported here (-> ``runtime_missing``)."""


class ModelLoadFailed(Exception):
    """The runtime refused the model, or the model does not match the request (-> ``model_load_error``)."""


class Session:
    """A loaded model with its inputs prepared; `infer` is what the timed loop calls."""

    def infer(self) -> None:
        raise NotImplementedError

    def infer_output_shapes(self) -> List[Shape]:
        """Run once and return the shape of every output, in the model's output order."""
        raise NotImplementedError

    def output_names(self) -> List[Optional[str]]:
        raise NotImplementedError

    def outputs_for(self, arrays: Sequence[object]) -> List[object]:
        """Run once on the given input arrays (in the request's input order) and return every
        output as a numpy array: the device side of a parity check (``agent.pyz infer``)."""
        raise ModelLoadFailed(f"{type(self).__name__} cannot run caller-given inputs")

    def close(self) -> None:
        """Release device memory (TensorRT); the default has nothing to release."""


class LoadContext:
    """What a runtime may need beyond the model: where to cache, the device, a progress hook."""

    def __init__(self, engine_dir: str, device_fingerprint: str, on_build: Callable[[str], None]) -> None:
        self.engine_dir = engine_dir
        self.device_fingerprint = device_fingerprint
        self.on_build = on_build  # called with "building" / "built" around a long engine build


class Runtime:
    name = ""

    def version(self) -> str:
        """The runtime's version; raises :class:`RuntimeUnavailable` when it cannot be imported."""
        raise NotImplementedError

    def load(self, model_path: str, spec: ModelSpec, protocol: Protocol, ctx: LoadContext) -> Session:
        raise NotImplementedError


def resolve_inputs(
    model_inputs: Sequence[Tuple[str, Sequence[object], str]], wanted: Sequence[TensorSpec]
) -> List[Tuple[str, Shape, str]]:
    """Match the model's inputs (name, shape with symbolic dims, dtype) to the request's.

    Requested inputs match by name when named, else by position. A concrete model dimension
    must equal the requested one; a symbolic one (None, -1, a string) takes the request's.
    Any mismatch raises :class:`ModelLoadFailed` naming both shapes.
    """
    if len(model_inputs) != len(wanted):
        raise ModelLoadFailed(f"the model has {len(model_inputs)} input(s), the request describes {len(wanted)}")
    by_name = {name: (name, shape, dtype) for name, shape, dtype in model_inputs}
    out = []
    for pos, spec in enumerate(wanted):
        if spec.name is not None:
            if spec.name not in by_name:
                raise ModelLoadFailed(f"the model has no input {spec.name!r} (it has {', '.join(by_name)})")
            name, shape, dtype = by_name[spec.name]
        else:
            name, shape, dtype = model_inputs[pos]
        if len(shape) != len(spec.shape):
            raise ModelLoadFailed(f"input {name!r} has rank {len(shape)} in the model, {len(spec.shape)} in the request")
        resolved = []
        for dim, want in zip(shape, spec.shape):
            concrete = isinstance(dim, int) and not isinstance(dim, bool) and dim > 0
            if concrete and dim != want:
                raise ModelLoadFailed(f"input {name!r} has shape {list(shape)} in the model, "
                                      f"{list(spec.shape)} in the request")
            resolved.append(want)
        if dtype != spec.dtype:
            raise ModelLoadFailed(f"input {name!r} is {dtype} in the model, {spec.dtype} in the request")
        out.append((name, tuple(resolved), dtype))
    return out
