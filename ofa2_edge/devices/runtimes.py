"""The device runtimes as the host sees them, one registry: which export formats each
reads, what to install on the device, and which timers it allows.

The agent has its own runtime registry (`device_agents/runtimes/`), which runs the file;
this one decides what to export and ship for it. Adding a runtime is one agent module,
one `register_runtime` entry here, and the export format it reads (`exporters.formats`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ofa2_edge.core.errors import InvalidInputError


@dataclass(frozen=True)
class HostRuntime:
    """What the host must know of a device runtime."""

    name: str
    formats: tuple[str, ...]  # the export formats it reads; the first is the default
    package: str  # what to install on the device when the probe does not find it
    timers: tuple[str, ...] = ("wall", "thread_cpu")
    builds_engine: bool = False  # builds an engine from the shipped file on the device (TensorRT)
    help: str = ""


_RUNTIMES: dict[str, HostRuntime] = {}


def register_runtime(runtime: HostRuntime) -> HostRuntime:
    if runtime.name in _RUNTIMES:
        raise ValueError(f"runtime {runtime.name!r} is registered twice")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def runtime_names() -> tuple[str, ...]:
    return tuple(_RUNTIMES)


def host_runtime(name: str) -> HostRuntime:
    """The registered runtime `name`; an unknown name is an error that lists the known ones."""
    runtime = _RUNTIMES.get(name)
    if runtime is None:
        raise InvalidInputError(f"runtime {name!r} is unknown; choose from {', '.join(_RUNTIMES)}")
    return runtime


def runtime_for_file(fmt: str, engine_build: bool = False) -> str:
    """The runtime that runs an exported file of `fmt` (an engine builder when a build spec
    comes with it): the first registered one that reads the format."""
    for runtime in _RUNTIMES.values():
        if fmt in runtime.formats and runtime.builds_engine == engine_build:
            return runtime.name
    raise InvalidInputError(f"no runtime reads {fmt!r} files{' with an engine build' if engine_build else ''}")


def check_timer(runtime: str, timer: str) -> None:
    """Refuse a timer the runtime cannot honour, before anything is exported or shipped."""
    allowed = host_runtime(runtime).timers
    if timer not in allowed:
        raise InvalidInputError(f"timer {timer!r} cannot time {runtime}; use {' or '.join(allowed)}")


register_runtime(HostRuntime("onnxruntime", ("onnx",), "onnxruntime", help="ONNX Runtime, CPU execution provider"))
register_runtime(HostRuntime("litert", ("tflite", "tflite-int8"), "ai-edge-litert", help="LiteRT (TFLite) with XNNPACK"))
register_runtime(
    HostRuntime(
        "tensorrt", ("onnx",), "tensorrt (JetPack)", timers=("wall",), builds_engine=True,
        help="TensorRT engines built on the device from ONNX",
    )
)
register_runtime(
    HostRuntime(
        "onnxruntime-parallel", ("onnx",), "onnxruntime", timers=("wall",),
        help="ONNX Runtime, parallel executor: independent branches (ensemble members) on inter-op threads",
    )
)
