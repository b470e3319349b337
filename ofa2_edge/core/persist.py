"""Durable, versioned files: atomic writes, schema-checked reads, flushed appends.

Every file the toolkit writes carries a `schema_version`; readers refuse versions they do
not know. Whole files are written to a temporary sibling and renamed into place, so a
crash leaves either the old file or the new one, never half of one. Append-only logs
(JSON Lines) are flushed and fsynced per record. Only an unterminated last line is a crash
artefact: readers skip it with a warning, and the next append removes it if it is not a
readable record. Any other unreadable line is an error naming the file and line: a log is
never read with a row silently missing. No pickle anywhere.
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
    except (OSError, ValueError, RecursionError) as exc:
        raise SchemaError(
            f"{path}: not a readable JSON file ({type(exc).__name__}: {str(exc)[:200]}); restore it from a copy or "
            "regenerate it"
        ) from exc
    return check_schema(doc, kind, versions, str(path))


def _is_record(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line, flushed and fsynced before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, separators=(",", ":"))
    if "\n" in line:
        raise ValueError("a JSON Lines record cannot contain a newline")
    with open(path, "r+b" if path.exists() else "wb") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end > 0:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":
                # A crash left the last line without its newline. A complete record only
                # lacks the newline; anything else is a torn line, which readers skip and
                # which must not become an unreadable middle line: cut it off.
                start = _last_line_start(fh, end)
                fh.seek(start)
                tail = fh.read(end - start)
                if _is_record(tail):
                    fh.seek(end)
                    fh.write(b"\n")
                else:
                    log.warning("%s: removing a torn last line (%d bytes) left by a crash", path, len(tail))
                    fh.truncate(start)
                    fh.seek(start)
        fh.write(line.encode("utf-8") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def _last_line_start(fh: Any, end: int, chunk: int = 1 << 16) -> int:
    """Offset just after the last newline before `end` (0 if there is none)."""
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        fh.seek(pos - step)
        block = fh.read(step)
        i = block.rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def iter_jsonl(path: str | Path, max_line_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSON Lines file (see `iter_jsonl_numbered`)."""
    for _, record in iter_jsonl_numbered(path, max_line_bytes):
        yield record


def iter_jsonl_numbered(path: str | Path, max_line_bytes: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) of a JSON Lines file.

    An unreadable unterminated last line is a crash artefact: logged and skipped. Any other
    unreadable line, a line that is not a JSON object, or one longer than `max_line_bytes`
    raises SchemaError naming the file and line.
    """
    path = Path(path)
    fix = "fix or remove that line (nothing was changed)"
    with open(path, "rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_line_bytes + 2) if max_line_bytes else fh.readline()
            if not raw:
                return
            lineno += 1
            terminated = raw.endswith(b"\n")
            if max_line_bytes and len(raw.rstrip(b"\r\n")) > max_line_bytes:
                raise SchemaError(f"{path}:{lineno}: a line longer than {max_line_bytes} bytes; {fix}")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                if not terminated:
                    log.warning("%s:%d: skipping an unterminated last line (torn by a crash)", path, lineno)
                    return
                raise SchemaError(
                    f"{path}:{lineno}: not a JSON line ({type(exc).__name__}: {str(exc)[:120]}); {fix}"
                ) from None
            if not isinstance(record, dict):
                raise SchemaError(f"{path}:{lineno}: expected a JSON object per line, got {type(record).__name__}; {fix}")
            yield lineno, record


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
