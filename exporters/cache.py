"""Content-addressed store of exported models, safe for several processes at once.

Layout under the cache root (``Workspace.exports_dir``, the user cache)::

    v1/<k0k1>/<key>/model.onnx | model.tflite   the model file
    v1/<k0k1>/<key>/meta.json                    sidecar: schema ofa2-edge/export, sha256, metadata, parity, key

`key` is the first 32 hex digits of the sha256 of the canonical JSON of everything that
determines the file (arch, weights source, BN statistics recipe, format, options,
toolkit and exporter versions). An entry is assembled in a private temporary folder
(``.<key>.tmp-<pid>-<random>``) and renamed into place in one atomic step, so readers
see a complete entry or none. Two processes that build the same entry at once both
succeed: the first rename wins, the second finds the entry present, checks it and uses
it. Every hit re-hashes the model file against its sidecar; an entry that fails (a
truncated or edited file, a missing sidecar) is moved aside, deleted and rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporters.formats import export_format
from exporters.records import (
    SIDECAR_SCHEMA,
    SIDECAR_VERSION,
    BuiltModel,
    ExportedModel,
    read_sidecar,
)
from ofa2_edge.core.errors import SchemaError
from ofa2_edge.core.persist import write_json
from ofa2_edge.core.workspace import Workspace

log = logging.getLogger(__name__)

LAYOUT_VERSION = "v1"
META_NAME = "meta.json"
KEY_HEX = 32
#: Leftover temporary folders of crashed processes older than this are removed.
STALE_SECONDS = 3600.0


def cache_key(key_doc: Mapping[str, Any]) -> str:
    """The content address of `key_doc` (canonical JSON, sha256, first 32 hex digits)."""
    text = json.dumps(key_doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_HEX]


class ExportCache:
    """Exported models stored by content address under `root`."""

    def __init__(self, root: str | Path, build_lock: AbstractContextManager[Any] | None = None) -> None:
        self.root = Path(root)
        self.build_lock = build_lock

    def building_under(self, lock: AbstractContextManager[Any] | None) -> ExportCache:
        """This cache, holding `lock` while it builds a missing entry (a hit needs no lock): the
        host's CPU is then busy, so a device timed on it waits (see `measure_archs`)."""
        return ExportCache(self.root, lock)

    @classmethod
    def default(cls, workspace: Workspace | None = None) -> ExportCache:
        """The user's cache (``$OFA2_EDGE_CACHE`` or the platform cache folder, then ``exports/``)."""
        return cls((workspace or Workspace.resolve()).exports_dir)

    def __repr__(self) -> str:
        return f"ExportCache({str(self.root)!r})"

    def entry_dir(self, key: str) -> Path:
        return self.root / LAYOUT_VERSION / key[:2] / key

    # ------------------------------------------------------------------ reading
    def lookup(self, key: str) -> ExportedModel | None:
        """The verified entry of `key`, or None; a damaged entry is evicted (and None returned)."""
        entry = self.entry_dir(key)
        if not entry.is_dir():
            return None
        try:
            model = read_sidecar(entry / META_NAME, verify=True)
            if model.cache_key != key:
                raise SchemaError(f"{entry / META_NAME}: records key {model.cache_key}, stored under {key}")
        except (SchemaError, OSError) as exc:
            log.warning("export cache entry %s is damaged (%s); rebuilding it", entry, exc)
            self._evict(entry)
            return None
        return replace(model, cached=True)

    # ------------------------------------------------------------------ writing
    def get_or_build(self, key_doc: Mapping[str, Any], build: Callable[[], BuiltModel]) -> ExportedModel:
        """The entry for `key_doc`, built with `build()` and stored if absent or damaged.

        If `build` raises (e.g. a failed parity check), nothing is stored.
        """
        key = cache_key(key_doc)
        found = self.lookup(key)
        if found is not None:
            log.debug("export cache hit %s", key)
            return found
        with self.build_lock or nullcontext():
            found = self.lookup(key) if self.build_lock is not None else None  # built while we waited
            if found is not None:
                return found
            start = time.perf_counter()
            built = build()
            seconds = time.perf_counter() - start
            return self._store(key, dict(key_doc), built, seconds)

    def _store(self, key: str, key_doc: dict[str, Any], built: BuiltModel, seconds: float) -> ExportedModel:
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-{os.getpid()}-", dir=final.parent))
        try:
            name = "model" + export_format(built.format).suffix
            with open(tmp / name, "wb") as fh:
                fh.write(built.data)
                fh.flush()
                os.fsync(fh.fileno())
            model = ExportedModel(
                path=final / name,
                format=built.format,
                sha256=hashlib.sha256(built.data).hexdigest(),
                bytes=len(built.data),
                metadata=built.metadata,
                inputs=built.inputs,
                outputs=built.outputs,
                parity=built.parity,
                cache_key=key,
                cached=False,
                extra={
                    "key": key_doc,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "export_seconds": round(seconds, 3),
                },
            )
            write_json(tmp / META_NAME, SIDECAR_SCHEMA, SIDECAR_VERSION, model.sidecar_doc())
            for _attempt in range(2):
                try:
                    os.rename(tmp, final)
                    log.debug("export cache stored %s (%.1f s)", key, seconds)
                    return model
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                # another process stored the same entry first: use it if it is sound
                existing = self.lookup(key)
                if existing is not None:
                    log.info("export cache entry %s was stored by another process first; using it", key)
                    return existing
            raise OSError(f"could not store export cache entry {final}: it keeps reappearing damaged")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _evict(self, entry: Path) -> None:
        """Move a damaged entry aside (one atomic rename) and delete it."""
        aside = entry.parent / f".{entry.name}.corrupt-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.rename(entry, aside)
        except FileNotFoundError:  # another process evicted it first
            return
        shutil.rmtree(aside, ignore_errors=True)

    def _remove_stale(self, final: Path) -> None:
        """Delete temporary folders of this key left by processes that died mid-build."""
        now = time.time()
        for path in final.parent.glob(f".{final.name}.*"):
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                continue
