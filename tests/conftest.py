"""Shared fixtures, and the rule that CI may not silently skip system-dependent tests.

Tests marked `ssh`, `browser`, `tflite`, `tensorrt` or `arm64` (emulated aarch64 boards,
:mod:`arm64`) skip where their component is missing. `OFA2_EDGE_REQUIRE` (comma-separated markers; `.ci/run` sets it) turns such a
skip into a failure, so a CI machine that lost sshd or Chromium cannot pass quietly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings

# The fuzz suites draw the same examples every run (a verdict that changes between two runs
# of the same commit is no verdict); HYPOTHESIS_PROFILE=explore draws new ones to hunt bugs.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures" / "device_outputs"


def required_markers() -> set[str]:
    return {m.strip() for m in os.environ.get("OFA2_EDGE_REQUIRE", "").split(",") if m.strip()}


def skip_or_fail(marker: str, reason: str) -> None:
    """Skip a test whose component is missing, or fail if CI requires that marker."""
    if marker in required_markers():
        pytest.fail(f"{reason} (required by OFA2_EDGE_REQUIRE={marker}; .ci/run should have installed it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The official OFA assets: $OFA2_EDGE_ASSETS, else ../shared/ofa_assets beside the repo."""
    env = os.environ.get("OFA2_EDGE_ASSETS")
    path = Path(env) if env else REPO.parent / "shared" / "ofa_assets"
    if not (path / "acc_predictor.pth").is_file():
        pytest.fail(
            f"official OFA assets not found at {path}: set OFA2_EDGE_ASSETS to a folder holding "
            "acc_predictor.pth and note10/, or run `ofa2-edge assets fetch`"
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Real outputs of on-device tools (trtexec, benchmark_model, tegrastats, ...)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"device-output fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def export_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the session (as `$OFA2_EDGE_CACHE`; entries under `exports/`), so
    the slow TFLite conversions of one test module are reused by the next."""
    return tmp_path_factory.mktemp("ofa2-edge-cache")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(export_cache_dir: Path) -> Iterator[None]:
    """Every test (and every CLI it runs) caches under the session's folder, never in the
    user's own cache: exports are shared between tests, nothing leaks out of the suite."""
    old = os.environ.get("OFA2_EDGE_CACHE")
    os.environ["OFA2_EDGE_CACHE"] = str(export_cache_dir)
    yield
    if old is None:
        os.environ.pop("OFA2_EDGE_CACHE", None)
    else:
        os.environ["OFA2_EDGE_CACHE"] = old


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path (checked before the module's run is built, so a skip is quick)."""
    path = os.environ.get("OFA2_EDGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        skip_or_fail(
            "browser",
            f"headless Chromium not found ({path or 'no chromium on PATH'}; Debian: apt-get install chromium)",
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("browser", "Playwright for Python is not installed (pip install -e '.[test]')")
    return str(path)
