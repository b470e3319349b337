"""Strict conversion between frozen dataclasses and JSON values.

The host validates every record an agent sends, and the agent validates every request the
host sends, so both sides share this one converter: a field of the wrong type, a missing
field, an unknown field or a non-finite number is refused with the path of the offending
value (``models[2].protocol.blocks: expected int, got str``). Standard library only, and
Python 3.8: annotations are resolved with :func:`typing.get_type_hints`, so they must use
``typing.Optional``/``Tuple``/``Dict`` spelling, never ``X | None`` or ``dict[...]``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from typing import Any, Dict, Mapping, Type, TypeVar

T = TypeVar("T")

_NONE_TYPE = type(None)
_HINTS: Dict[type, Dict[str, Any]] = {}


class RecordError(ValueError):
    """A JSON document does not match the record it claims to be."""


def _hints(cls: type) -> Dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def to_json(value: Any) -> Any:
    """A JSON-ready value (dicts, lists, str, numbers, bool, None) from records and enums."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None:
            if _NONE_TYPE in args:
                return None
            raise RecordError(f"{where}: must not be null")
        inner = [a for a in args if a is not _NONE_TYPE]
        if len(inner) != 1:
            raise TypeError(f"{where}: unsupported union {tp!r}")
        return _convert(inner[0], value, where)
    if value is None:
        raise RecordError(f"{where}: must not be null")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}: expected a list, got {_type_name(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise RecordError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {_type_name(value)}")
        val_tp = args[1] if args else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecordError(f"{where}: keys must be strings")
            out[k] = _convert(val_tp, v, f"{where}.{k}")
        return out
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            known = ", ".join(repr(m.value) for m in tp)
            raise RecordError(f"{where}: {value!r} is not one of {known}") from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecordError(f"{where}: expected true/false, got {_type_name(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: expected an integer, got {_type_name(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where}: expected a number, got {_type_name(value)}")
        if not math.isfinite(value):
            raise RecordError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecordError(f"{where}: expected a string, got {_type_name(value)}")
        return value
    raise TypeError(f"{where}: unsupported field type {tp!r}")


def from_json(cls: Type[T], doc: Any, where: str = "record") -> T:
    """Build the dataclass `cls` from a JSON object; every field must be present and valid.

    Unknown fields are refused too: a record written by a newer agent with the same schema
    version would otherwise lose data silently. A class may define ``upgrade_json(doc)`` to
    turn an older version of its JSON into the current one first. Semantic checks live in each record's
    ``__post_init__``; their ``ValueError`` is re-raised as :class:`RecordError` with `where`.
    """
    upgrade = getattr(cls, "upgrade_json", None)
    if upgrade is not None:  # an older version of the record: fill in what its fields meant
        doc = upgrade(doc)
    if not isinstance(doc, Mapping):
        raise RecordError(f"{where}: expected an object, got {_type_name(doc)}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in doc]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(k for k in doc if k not in names)
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    kwargs = {n: _convert(hints[n], doc[n], f"{where}.{n}") for n in names}
    try:
        return cls(**kwargs)
    except RecordError:
        raise
    except ValueError as exc:
        raise RecordError(f"{where}: {exc}") from None


def check_envelope(doc: Any, schema: str, versions: typing.Iterable[int], where: str) -> Dict[str, Any]:
    """Return the body of a ``{"schema": ..., "schema_version": ..., ...}`` document."""
    if not isinstance(doc, Mapping):
        raise RecordError(f"{where}: expected a JSON object of schema {schema!r}, got {_type_name(doc)}")
    if doc.get("schema") != schema:
        raise RecordError(f"{where}: expected schema {schema!r}, found {doc.get('schema')!r}")
    known = sorted(set(versions))
    version = doc.get("schema_version")
    if isinstance(version, bool) or version not in known:
        raise RecordError(
            f"{where}: schema_version {version!r} of {schema!r} is not supported by this agent "
            f"(known: {', '.join(map(str, known))}); update the agent and the host together"
        )
    return {k: v for k, v in doc.items() if k not in ("schema", "schema_version")}
