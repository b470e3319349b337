"""Private stand-in for `ofa2_edge.assets.find_asset` until the lead's module lands.

Same signature and lookup order (explicit folder, `$OFA2_EDGE_ASSETS`, the user cache
folder); replace the one import in `ofa2_edge.accuracy.official` with
`from ofa2_edge.assets import find_asset` and delete this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from ofa2_edge.errors import AssetError
from ofa2_edge.workspace import APP_NAME


def find_asset(relpath: str, assets_dir: Path | None = None) -> Path:
    """The path of an official asset, or `AssetError` naming the file and how to supply it."""
    candidates: list[Path] = []
    if assets_dir is not None:
        candidates.append(Path(assets_dir))
    elif os.environ.get("OFA2_EDGE_ASSETS"):
        candidates.append(Path(os.environ["OFA2_EDGE_ASSETS"]))
    candidates.append(Path(platformdirs.user_cache_dir(APP_NAME)) / "assets")
    for folder in candidates:
        if (folder / relpath).exists():
            return folder / relpath
    looked = ", ".join(str(c) for c in candidates)
    raise AssetError(
        f"official asset {relpath} not found (looked in {looked}); run `ofa2-edge assets fetch`, "
        "or point --assets / $OFA2_EDGE_ASSETS at a folder that holds it"
    )
