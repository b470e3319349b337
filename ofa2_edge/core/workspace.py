"""Where the toolkit keeps its files: one workspace folder, plus a user cache.

A workspace holds what a team shares and keeps: `latency_tables/` (one folder per device),
`runs/`, `bundles/` and the device inventory `devices.yaml`. Exports are content-addressed
and rebuildable, so they live in the user cache. The workspace is `--workspace`, else
`$OFA2_EDGE_HOME`, else the current directory; the cache is `$OFA2_EDGE_CACHE`, else the
platform's user cache folder.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import platformdirs

APP_NAME = "ofa2-edge"
# A device key names a folder under latency_tables/ and appears in objective names
# (latency:<key>): lowercase, so a table never differs from another by case alone.
DEVICE_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def unknown_device(key: str, known: Iterable[str], where: str) -> str:
    """The message for a device key nothing here knows (a typo, most often): what is known,
    the closest known key, and only then how to add a new board."""
    names = sorted(set(known))
    close = difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.6)
    new = key if DEVICE_KEY_PATTERN.match(key) else "KEY"
    known_text = f"known devices: {', '.join(names)}" if names else "no device is known here yet"
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown device {key!r} ({where}); {known_text}{guess}; a new board: "
        f"`ofa2-edge devices add {new} --host HOST ...`, then `ofa2-edge calibrate --device {new}`"
    )


@dataclass(frozen=True)
class Workspace:
    root: Path
    cache_dir: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None, cache_dir: str | Path | None = None) -> "Workspace":
        root = Path(root or os.environ.get("OFA2_EDGE_HOME") or Path.cwd())
        cache = Path(cache_dir or os.environ.get("OFA2_EDGE_CACHE") or platformdirs.user_cache_dir(APP_NAME))
        return cls(root=root.resolve(), cache_dir=cache.resolve())

    @property
    def tables_dir(self) -> Path:
        return self.root / "latency_tables"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def inventory_path(self) -> Path:
        return self.root / "devices.yaml"

    @property
    def exports_dir(self) -> Path:
        return self.cache_dir / "exports"
