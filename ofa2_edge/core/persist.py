"""Durable, versioned files: atomic writes, schema-checked reads, flushed appends.

Every file the toolkit writes carries a `schema_version`; readers refuse versions they do
not know. Whole files are written to a temporary sibling and renamed into place, so a
crash leaves either the old file or the new one, never half of one. Append-only logs
(JSON Lines) are flushed and fsynced per record, and a torn last line from a crash is
reported and skipped rather than poisoning the log. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ofa2_edge.core.errors import SchemaError

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL on a random name, like mkstemp, but with the usual 0666 & ~umask mode
    # (mkstemp's 0600 would make bundles and tables unreadable to the rest of the team).
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, kind: str, version: int, payload: Mapping[str, Any], *, indent: int | None = 2) -> Path:
    """Write a versioned JSON document: ``{"schema": kind, "schema_version": version, ...}``.

    ``indent=None`` writes one compact line with the json module's C encoder (the indented
    form goes through its pure-Python encoder): for large machine-read documents."""
    doc = {"schema": kind, "schema_version": version, **payload}
    return atomic_write_text(path, json.dumps(doc, indent=indent, sort_keys=False) + "\n")


def check_schema(doc: Any, kind: str, versions: Iterable[int], where: str) -> dict[str, Any]:
    """Return `doc` if it is a JSON object of schema `kind` at a known version, else raise."""
    known = sorted(set(versions))
    if not isinstance(doc, dict):
        raise SchemaError(f"{where}: expected a JSON object of schema {kind!r}, got {type(doc).__name__}")
    if doc.get("schema") != kind:
        raise SchemaError(f"{where}: expected schema {kind!r}, found {doc.get('schema')!r}")
    version = doc.get("schema_version")
    if version not in known:
        raise SchemaError(
            f"{where}: schema_version {version!r} of {kind!r} is not supported by this ofa2-edge "
            f"(known: {', '.join(map(str, known))}); upgrade ofa2-edge or regenerate the file"
        )
    return doc


def read_json(path: str | Path, kind: str, versions: Iterable[int]) -> dict[str, Any]:
    """Read a versioned JSON document written by `write_json`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: not a readable JSON file ({exc})") from exc
    return check_schema(doc, kind, versions, str(path))


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line, flushed and fsynced before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, separators=(",", ":"))
    if "\n" in line:
        raise ValueError("a JSON Lines record cannot contain a newline")
    with open(path, "ab") as fh:
        # A crash may have left a torn last line without its newline: start on a fresh line.
        if fh.tell() > 0:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    fh.write(b"\n")
        fh.write(line.encode("utf-8") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSON Lines file; a torn line (from a crash) is logged and skipped."""
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                log.warning("%s:%d: skipping an unreadable (torn) line", path, lineno)
                continue
            if not isinstance(record, dict):
                raise SchemaError(f"{path}:{lineno}: expected a JSON object per line")
            yield record


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
