"""The export cache: hits, misses, damaged entries rebuilt, two processes exporting the same subnet."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporters import ExportCache, export_subnet, read_sidecar
from exporters.cache import META_NAME, cache_key
from exporters.records import BuiltModel, TensorSpec
from ofa2_edge.space.arch import SearchSpace

REPO = Path(__file__).resolve().parent.parent
ARCH = SearchSpace().smallest()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the min net's ONNX export, built once; tests work on copies of it."""
    root = tmp_path_factory.mktemp("seed-cache")
    export_subnet(ARCH, "onnx", cache=ExportCache(root))
    return root


def _copy(seeded: Path, dest: Path) -> ExportCache:
    shutil.copytree(seeded, dest, dirs_exist_ok=True)
    return ExportCache(dest)


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in (root / "v1").glob("*/*") if p.is_dir())


def _leftovers(root: Path) -> list[Path]:
    return sorted(p for p in (root / "v1").glob("*/.*"))


def test_miss_then_hit(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    first = export_subnet(ARCH, "onnx", cache=cache)
    assert not first.cached and first.path.is_file() and first.path.parent.parent.parent == tmp_path / "v1"
    start = time.perf_counter()
    hit = export_subnet(ARCH, "onnx", cache=cache)
    assert hit.cached and hit.path == first.path and hit.sha256 == first.sha256 and hit.parity == first.parity
    assert time.perf_counter() - start < 5.0  # generous: a hit re-hashes the file, it never re-exports
    assert len(_entries(tmp_path)) == 1 and _leftovers(tmp_path) == []
    key = read_sidecar(first.path.parent / META_NAME).extra["key"]
    assert key["arch_id"] == ARCH.id and key["weights_source"] == "random:0" and key["format"] == "onnx"
    assert key["bn_stats"] == {"recipe": "noise", "seed": 0, "images": 4}
    assert {"ofa2_edge", "torch", "onnx", "opset"} <= set(key["versions"])
    assert cache_key(key) == first.cache_key


class RecordingLock:
    """A lock that says whether it is held, and how often it was taken."""

    def __init__(self) -> None:
        self.held, self.taken = False, 0

    def __enter__(self) -> None:
        self.held, self.taken = True, self.taken + 1

    def __exit__(self, *exc: object) -> None:
        self.held = False


def test_a_build_holds_the_build_lock_and_a_hit_does_not(seeded: Path, tmp_path: Path) -> None:
    """`measure_archs` gives the host's CPU lock: an export keeps devices on the host waiting,
    a cache hit (no CPU) does not."""
    lock = RecordingLock()
    cache = _copy(seeded, tmp_path).building_under(lock)
    assert export_subnet(ARCH, "onnx", cache=cache).cached and lock.taken == 0
    seen: list[bool] = []

    def build() -> BuiltModel:
        seen.append(lock.held)
        return _fake_build(b"model")

    key_doc = {"arch_id": ARCH.id, "format": "onnx", "test": "lock"}
    assert not cache.get_or_build(key_doc, build).cached
    assert seen == [True] and lock.taken == 1 and not lock.held
    assert cache.get_or_build(key_doc, build).cached and lock.taken == 1


def test_every_input_of_the_file_is_in_the_key(seeded: Path, tmp_path: Path) -> None:
    cache = _copy(seeded, tmp_path)
    base = export_subnet(ARCH, "onnx", cache=cache)
    assert base.cached
    other_bn = export_subnet(ARCH, "onnx", cache=cache, bn="supernet")
    other_arch = export_subnet(SearchSpace().smallest(176), "onnx", cache=cache)
    assert len({base.cache_key, other_bn.cache_key, other_arch.cache_key}) == 3
    assert other_bn.metadata["bn_stats_source"] == "supernet"
    assert len(_entries(tmp_path)) == 3


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete the sidecar", "garble the sidecar"])
def test_damaged_entry_is_detected_and_rebuilt(
    seeded: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _copy(seeded, tmp_path)
    good = export_subnet(ARCH, "onnx", cache=cache)
    assert good.cached
    meta = good.path.parent / META_NAME
    if damage == "flip a byte":
        data = bytearray(good.path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        good.path.write_bytes(bytes(data))
    elif damage == "truncate":
        with open(good.path, "r+b") as fh:
            fh.truncate(good.bytes // 3)
    elif damage == "delete the sidecar":
        meta.unlink()
    else:
        meta.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="exporters.cache"):
        again = export_subnet(ARCH, "onnx", cache=cache)
    assert not again.cached and "damaged" in caplog.text
    assert again.path == good.path and again.sha256 == good.sha256  # rebuilt, byte for byte
    assert read_sidecar(meta).sha256 == good.sha256
    assert len(_entries(tmp_path)) == 1 and _leftovers(tmp_path) == []


def _fake_build(marker: bytes) -> BuiltModel:
    spec = TensorSpec("input", (1, 3, 160, 160), "float32", "NCHW")
    metadata = {"arch_id": ARCH.id, "arch": ARCH.to_dict()}
    return BuiltModel(marker, "onnx", metadata, (spec,), (TensorSpec("logits", (1, 1000)),), {"max_abs_diff": 0.0})


def test_losing_the_rename_race_uses_the_winners_entry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """While this process builds, another stores the same key; this one must not clobber or fail."""
    key_doc = {"arch_id": ARCH.id, "format": "onnx", "test": "race"}
    ours, theirs = ExportCache(tmp_path), ExportCache(tmp_path)

    def build_while_another_wins() -> BuiltModel:
        theirs.get_or_build(key_doc, lambda: _fake_build(b"winner"))
        return _fake_build(b"loser")

    with caplog.at_level(logging.INFO, logger="exporters.cache"):
        model = ours.get_or_build(key_doc, build_while_another_wins)
    assert model.cached and model.path.read_bytes() == b"winner"
    assert "stored by another process first" in caplog.text
    assert len(_entries(tmp_path)) == 1 and _leftovers(tmp_path) == []


def test_stale_temporary_folders_are_removed(tmp_path: Path) -> None:
    key_doc = {"test": "stale"}
    key = cache_key(key_doc)
    parent = tmp_path / "v1" / key[:2]
    stale, fresh = parent / f".{key}.tmp-1-dead", parent / f".{key}.tmp-2-live"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    ExportCache(tmp_path).get_or_build(key_doc, lambda: _fake_build(b"x"))
    assert not stale.exists() and fresh.exists()  # a live build of another process is left alone


WORKER = """
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from exporters import ExportCache, export_subnet, random_supernet
from ofa2_edge.space.arch import SearchSpace
root, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
arch = SearchSpace().smallest()
random_supernet(arch.w)                     # everything slow happens before the barrier
(root / f"ready-{me}").touch()
deadline = time.time() + 120
while not (root / f"ready-{other}").exists():
    if time.time() > deadline:
        sys.exit("the other worker never became ready")
    time.sleep(0.01)
model = export_subnet(arch, "onnx", cache=ExportCache(root / "cache"))
print(json.dumps({"path": str(model.path), "sha256": model.sha256, "cached": model.cached}))
"""


@pytest.mark.slow
def test_two_processes_export_the_same_subnet(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), me, other],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    (a, err_a), (b, err_b) = results
    # both started building after the barrier; exactly one stored its entry, the other used it
    assert a["path"] == b["path"] and a["sha256"] == b["sha256"]
    assert sorted([a["cached"], b["cached"]]) == [False, True]
    assert "stored by another process first" in err_a + err_b
    root = tmp_path / "cache"
    assert len(_entries(root)) == 1 and _leftovers(root) == []
    model = read_sidecar(Path(a["path"]).parent / META_NAME, verify=True)
    # and a third, independent export in this process gives the very same bytes (deterministic across processes)
    assert export_subnet(ARCH, "onnx", cache=ExportCache(tmp_path / "mine")).sha256 == model.sha256
