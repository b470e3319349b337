"""Turn what a user types for an arch into an `Arch`: an id, a file, inline JSON, or min/max.

Ids are one-way hashes, so an id is looked up in the records the workspace already holds
(run folders and latency tables): every persisted record that names an arch carries both
`arch_id` and `arch`, which is the convention this lookup relies on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from ofa2_edge.core.errors import InvalidArchError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.space.arch import N_GENES, Arch, SearchSpace
from ofa2_edge.space.ofa_config import load_net_config

ARCH_ID = re.compile(r"^a-[0-9a-f]{12}$")
_MINMAX = re.compile(r"^(min|max)(?:@(\d{1,6}))?$")


def _records(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        if "arch_id" in obj and "arch" in obj:
            yield obj
        for value in obj.values():
            yield from _records(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _records(value)


def find_arch_by_id(arch_id: str, workspace: Workspace) -> Arch | None:
    """Search the workspace's runs and latency tables for a record of `arch_id`."""
    for folder in (workspace.runs_dir, workspace.tables_dir):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.json*")):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                continue
            if arch_id not in text:
                continue
            chunks = text.splitlines() if path.suffix == ".jsonl" else [text]
            for chunk in chunks:
                if arch_id not in chunk:
                    continue
                try:
                    doc = json.loads(chunk)
                except (ValueError, RecursionError):
                    continue
                for rec in _records(doc):
                    if rec["arch_id"] == arch_id:
                        try:
                            arch = Arch.from_dict(rec["arch"])
                        except InvalidArchError:
                            continue  # a damaged record is its owner's to report; look further
                        if arch.id == arch_id:
                            return arch
    return None


#: An arch is ~300 bytes of JSON; a record holding one a few kB. More is not an arch file.
MAX_ARCH_JSON_BYTES = 1 << 20


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number (JSON has no NaN or Infinity)")


def parse_arch_json(text: str, where: str) -> Any:
    """JSON text -> document, refusing NaN/Infinity, oversized and absurdly nested input."""
    if len(text) > MAX_ARCH_JSON_BYTES:
        raise InvalidArchError(f"{where}: {len(text):,} characters; an arch is a few hundred")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidArchError(f"{where}: JSON nested too deeply to be an arch") from None
    except ValueError as exc:
        raise InvalidArchError(f"{where}: not valid arch JSON ({str(exc)[:200]})") from None


def _from_json(doc: Any, where: str) -> Arch:
    """OFA's dict form, a record holding it under "arch", or OFA²'s 46-gene genome (a list)."""
    if isinstance(doc, list):
        if len(doc) != N_GENES:
            raise InvalidArchError(
                f"{where}: a genome is a list of {N_GENES} integers (ks 0-19, e 20-39, d 40-44, r 45); got {len(doc)}"
            )
        return _located(lambda: Arch.from_genome(doc), where)
    if isinstance(doc, dict) and "arch" in doc and isinstance(doc["arch"], dict):
        doc = doc["arch"]
    if isinstance(doc, dict) and "blocks" in doc and "first_conv" in doc:
        raise InvalidArchError(f"{where}: this is an OFA net.config; use `ofa2-edge arch from-config`")
    return _located(lambda: Arch.from_dict(doc), where)


def _located(build: Any, where: str) -> Arch:
    try:
        return build()
    except InvalidArchError as exc:
        raise InvalidArchError(f"{where}: {exc}") from None


def resolve_arch(text: str, workspace: Workspace | None = None, space: SearchSpace | None = None) -> Arch:
    """Parse `text`: ``min``/``max`` (optionally ``@R``), an arch id, a JSON file or inline JSON."""
    text = text.strip()
    space = space or SearchSpace()
    m = _MINMAX.match(text)
    if m:
        r = int(m.group(2)) if m.group(2) else None
        return space.smallest(r) if m.group(1) == "min" else space.largest(r)
    if ARCH_ID.match(text):
        arch = find_arch_by_id(text, workspace or Workspace.resolve())
        if arch is None:
            raise InvalidArchError(
                f"arch id {text} is not in this workspace's runs/ or latency_tables/; "
                "pass the arch as inline JSON or a JSON file instead"
            )
        return arch
    if text.startswith(("{", "[")):
        return _from_json(parse_arch_json(text, "inline arch JSON"), "inline arch JSON")
    path = Path(text)
    if path.is_file() or path.is_dir():
        if path.is_dir() or path.name == "net.config":
            return load_net_config(path)
        try:
            if path.stat().st_size > MAX_ARCH_JSON_BYTES:
                raise InvalidArchError(f"{path}: {path.stat().st_size:,} bytes; an arch file is a few hundred")
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArchError(f"{path}: not a readable arch JSON file ({exc})") from exc
        return _from_json(parse_arch_json(content, str(path)), str(path))
    raise InvalidArchError(
        f"cannot read an arch from {text[:80]!r}: expected min, max, min@R, an arch id (a-xxxxxxxxxxxx), "
        "a JSON file, inline JSON like '{\"ks\": [...], \"e\": [...], \"d\": [...], \"r\": 224}', "
        f"or a genome of {N_GENES} integers like '[3, 5, ..., 224]'"
    )
