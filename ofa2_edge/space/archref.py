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
from ofa2_edge.space.ofa_config import load_net_config
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.core.workspace import Workspace

ARCH_ID = re.compile(r"^a-[0-9a-f]{12}$")
_MINMAX = re.compile(r"^(min|max)(?:@(\d+))?$")


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
                except ValueError:
                    continue
                for rec in _records(doc):
                    if rec["arch_id"] == arch_id:
                        arch = Arch.from_dict(rec["arch"])
                        if arch.id == arch_id:
                            return arch
    return None


def _from_json(doc: Any, where: str) -> Arch:
    if isinstance(doc, dict) and "arch" in doc and isinstance(doc["arch"], dict):
        doc = doc["arch"]
    if isinstance(doc, dict) and "blocks" in doc and "first_conv" in doc:
        raise InvalidArchError(f"{where}: this is an OFA net.config; use `ofa2-edge arch from-config`")
    return Arch.from_dict(doc)


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
    if text.startswith("{"):
        try:
            return _from_json(json.loads(text), "inline JSON")
        except ValueError as exc:
            if isinstance(exc, InvalidArchError):
                raise
            raise InvalidArchError(f"inline arch JSON does not parse: {exc}") from exc
    path = Path(text)
    if path.is_file() or path.is_dir():
        if path.is_dir() or path.name == "net.config":
            return load_net_config(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidArchError(f"{path}: not a readable arch JSON file ({exc})") from exc
        return _from_json(doc, str(path))
    raise InvalidArchError(
        f"cannot read an arch from {text!r}: expected min, max, min@R, an arch id (a-xxxxxxxxxxxx), "
        "a JSON file or inline JSON like '{\"ks\": [...], \"e\": [...], \"d\": [...], \"r\": 224}'"
    )
