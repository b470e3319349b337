"""Registry of measuring runtimes, keyed by the name a request uses.

Importing this package imports no runtime library: each runtime imports its own (and
numpy, where its API needs arrays) when it is asked for its version or to load a model.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Type

from device_agents.records import RUNTIME_NAMES
from device_agents.runtimes.base import Runtime

_REGISTRY: Dict[str, Type[Runtime]] = {}


def register(name: str) -> Callable[[Type[Runtime]], Type[Runtime]]:
    """Class decorator: make a runtime available under `name` (one of records.RUNTIME_NAMES)."""

    def add(cls: Type[Runtime]) -> Type[Runtime]:
        if name not in RUNTIME_NAMES:
            raise ValueError(f"runtime name {name!r} is not in records.RUNTIME_NAMES; add it there first")
        if name in _REGISTRY:
            raise ValueError(f"runtime {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtin() -> None:
    # Imported here, not at the top, so that `register` exists when they import it.
    from device_agents.runtimes import litert, ort, trt  # noqa: F401


def get_runtime(name: str) -> Runtime:
    """A fresh runtime object; raises KeyError with the known names for an unknown one."""
    _load_builtin()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown runtime {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def runtime_names() -> List[str]:
    _load_builtin()
    return sorted(_REGISTRY)
