"""The official OFA assets: where to find them, and how to download them safely.

The accuracy predictor and the Samsung Note10 lookup tables come from the `han-cai/files`
repository that OFA's own code downloads from. Each file is pinned by sha256: a download
is streamed to a temporary file, hashed, and renamed into place only when the hash
matches, so a corrupt or truncated transfer leaves nothing behind. Files found on disk are
verified too, so a damaged copy is reported instead of silently producing wrong numbers.

Lookup order for every file: an explicit folder (`--assets DIR`), `$OFA2_EDGE_ASSETS`,
then the user cache (`ofa2-edge assets fetch` writes there).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import platformdirs

from ofa2_edge.core.errors import AssetError

log = logging.getLogger(__name__)

OFA_FILES_URL = "https://raw.githubusercontent.com/han-cai/files/master/ofa/"
# Large files of that repository are stored with Git LFS; this host serves their content.
OFA_LFS_URL = "https://media.githubusercontent.com/media/han-cai/files/master/ofa/"
CHUNK = 1 << 16
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


class ChecksumMismatchError(AssetError):
    """A download completed but is not the pinned file: never retried, never kept."""


class _LfsPointer(Exception):
    """The server sent a Git LFS pointer instead of the file: try the next base URL."""


@dataclass(frozen=True)
class Asset:
    """One official file: its path below the assets folder and its pinned sha256."""

    relpath: str
    sha256: str | None
    description: str


ACC_PREDICTOR = Asset(
    "acc_predictor.pth",
    "48685122a3540636b06699af66cd816456b25f29b69563e2fda9bed4018eeba0",
    "OFA's ImageNet top-1 predictor for the w1.2 MobileNetV3 space",
)
NOTE10_TABLES = tuple(
    Asset(f"note10/{r}_lookup_table.yaml", sha, f"Samsung Note10 latency lookup table at {r} px")
    for r, sha in (
        (160, "a2671a45e9400542679ed03de946b45d6a35010f9ab21834af3e7ba8341d36d1"),
        (176, "34223ae037d5719a5f33261bdfd9341f590a2999edf520f174309605dc06307c"),
        (192, "0ff5ca0649e56ad34a42d6a8a6f20adb5121c8d12d135299397b310472db79e2"),
        (208, "41aa63af766a8298354e6aa5ae69d512ac68656a6e7d0a4fa5dc725c8d438633"),
        (224, "c13a9bcb3f4becae844bce4897129c4e42975984c1029cbd5acb48c970136530"),
    )
)
OFFICIAL_ASSETS: tuple[Asset, ...] = (ACC_PREDICTOR, *NOTE10_TABLES)
# No public sha256 is published for the supernet checkpoint: the user must supply one.
SUPERNET_W12 = Asset("ofa_nets/ofa_mbv3_d234_e346_k357_w1.2", None, "OFA-MobileNetV3 w1.2 supernet checkpoint (~30 MB)")


def default_cache_dir() -> Path:
    """Where `assets fetch` writes: `$OFA2_EDGE_CACHE/assets` or the user cache folder."""
    root = os.environ.get("OFA2_EDGE_CACHE") or platformdirs.user_cache_dir("ofa2-edge")
    return Path(root) / "assets"


def search_dirs(assets_dir: str | Path | None = None) -> list[tuple[str, Path | None]]:
    """The folders searched, in order, with a label saying where each came from."""
    env = os.environ.get("OFA2_EDGE_ASSETS")
    return [
        ("--assets", Path(assets_dir) if assets_dir else None),
        ("$OFA2_EDGE_ASSETS", Path(env) if env else None),
        ("user cache", default_cache_dir()),
    ]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=64)
def _verified(path: str, size: int, mtime_ns: int, expected: str) -> bool:
    return sha256_of(Path(path)) == expected


def _known(relpath: str) -> Asset | None:
    return next((a for a in (*OFFICIAL_ASSETS, SUPERNET_W12) if a.relpath == relpath), None)


def _locate(rel: str, assets_dir: str | Path | None, corrupt: list[str]) -> Path | None:
    """The first verified copy of `rel` in the searched folders; damaged copies go to `corrupt`."""
    asset = _known(rel)
    for _, folder in search_dirs(assets_dir):
        if folder is None or not (folder / rel).is_file():
            continue
        path = folder / rel
        st = path.stat()
        if asset and asset.sha256 and not _verified(str(path), st.st_size, st.st_mtime_ns, asset.sha256):
            corrupt.append(f"{path} (sha256 differs from the official file)")
            continue
        return path
    return None


def find_assets(relpaths: Sequence[str], assets_dir: str | Path | None = None) -> dict[str, Path]:
    """Locate each file (verified against its pinned hash); one error lists all that are missing."""
    found: dict[str, Path] = {}
    corrupt: list[str] = []
    for rel in relpaths:
        path = _locate(rel, assets_dir, corrupt)
        if path is not None:
            found[rel] = path
    missing = [rel for rel in relpaths if rel not in found]
    if missing:
        looked = "; ".join(f"{label}: {folder if folder else '(not set)'}" for label, folder in search_dirs(assets_dir))
        problems = f" Damaged copies ignored: {', '.join(corrupt)}." if corrupt else ""
        # The next step would stop on the others (the accuracy predictor after minutes of
        # calibration): name every official file missing, so that one fetch supplies them all.
        others = [a.relpath for a in OFFICIAL_ASSETS if a.relpath not in relpaths and not _locate(a.relpath, assets_dir, [])]
        also = f" Also missing (needed by later steps): {', '.join(others)}." if others else ""
        raise AssetError(
            f"missing official OFA asset(s): {', '.join(missing)}.{also} Looked in {looked}.{problems} "
            "Supply them either with `ofa2-edge assets fetch` (needs internet), or by pointing --assets DIR "
            "or $OFA2_EDGE_ASSETS at a folder that holds them."
        )
    return found


def find_asset(relpath: str, assets_dir: str | Path | None = None) -> Path:
    """Locate one asset file (see `find_assets`)."""
    return find_assets([relpath], assets_dir)[relpath]


@dataclass(frozen=True)
class FetchResult:
    relpath: str
    path: Path
    status: str  # "present" (already there, verified) | "downloaded"
    bytes: int
    sha256: str


def _download(url: str, target: Path, expected_sha: str, timeout: float) -> int:
    """Stream `url` into `target` atomically; raise AssetError on any mismatch (keeping nothing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        head = b""
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            for block in iter(lambda: resp.read(CHUNK), b""):
                out.write(block)
                h.update(block)
                size += len(block)
                head = head or block[: len(LFS_POINTER)]
            out.flush()
            os.fsync(out.fileno())
        if declared is not None and int(declared) != size:
            raise AssetError(f"{url}: connection dropped after {size} of {declared} bytes")
        digest = h.hexdigest()
        if digest != expected_sha and head.startswith(LFS_POINTER):
            raise _LfsPointer(url)
        if digest != expected_sha:
            raise ChecksumMismatchError(
                f"{url}: sha256 {digest} does not match the pinned {expected_sha}; nothing was kept "
                "(a corrupted transfer, a tampered mirror, or a Git LFS pointer instead of the file)"
            )
        os.replace(tmp, target)
        return size
    finally:
        tmp.unlink(missing_ok=True)


def fetch_assets(
    assets: Iterable[Asset] = OFFICIAL_ASSETS,
    dest: str | Path | None = None,
    base_urls: Sequence[str] = (OFA_FILES_URL, OFA_LFS_URL),
    sha_overrides: dict[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    on_file: Callable[[FetchResult], None] | None = None,
) -> list[FetchResult]:
    """Download every asset not already present (verified) in `dest` (default: user cache).

    Network errors are retried with backoff, then the next base URL is tried; a sha256
    mismatch is never retried. The first file that cannot be fetched raises `AssetError`;
    files fetched before it are kept (each one is complete and verified).
    """
    dest = Path(dest) if dest else default_cache_dir()
    results = []
    for asset in assets:
        expected = (sha_overrides or {}).get(asset.relpath, asset.sha256)
        if not expected:
            raise AssetError(
                f"{asset.relpath}: no sha256 is pinned for this file; pass the expected sha256 from a source "
                "you trust (e.g. --supernet-sha256) — ofa2-edge does not keep unverified downloads"
            )
        target = dest / asset.relpath
        if target.is_file() and sha256_of(target) == expected:
            result = FetchResult(asset.relpath, target, "present", target.stat().st_size, expected)
        else:
            result = FetchResult(
                asset.relpath,
                target,
                "downloaded",
                _fetch_one(asset, target, expected, base_urls, timeout, retries),
                expected,
            )
        results.append(result)
        if on_file:
            on_file(result)
    return results


def _fetch_one(
    asset: Asset, target: Path, expected: str, base_urls: Sequence[str], timeout: float, retries: int
) -> int:
    errors = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + asset.relpath
        for attempt in range(1, retries + 1):
            try:
                log.info("downloading %s (attempt %d)", url, attempt)
                return _download(url, target, expected, timeout)
            except ChecksumMismatchError:
                raise
            except _LfsPointer:
                errors.append(f"{url}: a Git LFS pointer, not the file")
                break
            except AssetError as exc:  # a dropped connection: worth another try
                errors.append(str(exc))
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                errors.append(f"{url}: {exc}")
                if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
                    break
            time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
    raise AssetError(f"could not download {asset.relpath}: " + "; ".join(errors[-3:]))
