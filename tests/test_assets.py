"""The real download code against a real HTTP server on 127.0.0.1 serving the shared assets."""

from __future__ import annotations

import http.server
import json
import threading
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from ofa2_edge.cli.main import main
from ofa2_edge.core.assets import (
    ACC_PREDICTOR,
    NOTE10_TABLES,
    OFFICIAL_ASSETS,
    SUPERNET_W12,
    ChecksumMismatchError,
    fetch_assets,
    find_asset,
    find_assets,
    sha256_of,
)
from ofa2_edge.core.errors import AssetError


class AssetHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; `faults` maps a path to 'corrupt', 'drop' or 'lfs' misbehaviour."""

    faults: dict[str, str] = {}
    hits: dict[str, int] = {}

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        rel = self.path.lstrip("/")
        self.hits[rel] = self.hits.get(rel, 0) + 1
        fault = self.faults.get(rel)
        if fault is None:
            return super().do_GET()
        body = (Path(self.directory) / rel).read_bytes()
        if fault == "lfs":
            body = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 10\n"
        elif fault == "corrupt":
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection dies mid-transfer
            return
        self.wfile.write(body)


@pytest.fixture()
def server(assets_dir: Path) -> Iterator[tuple[str, type[AssetHandler]]]:
    handler = type("Handler", (AssetHandler,), {"faults": {}, "hits": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(assets_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_downloads_and_verifies_everything(server: tuple[str, type], tmp_path: Path, assets_dir: Path) -> None:
    url, _ = server
    results = fetch_assets(dest=tmp_path, base_urls=[url], retries=1)
    assert [r.status for r in results] == ["downloaded"] * len(OFFICIAL_ASSETS)
    for asset in OFFICIAL_ASSETS:
        assert sha256_of(tmp_path / asset.relpath) == asset.sha256 == sha256_of(assets_dir / asset.relpath)
    again = fetch_assets(dest=tmp_path, base_urls=[url], retries=1)
    assert [r.status for r in again] == ["present"] * len(OFFICIAL_ASSETS)
    assert not list(tmp_path.rglob("*.part"))


def test_corrupt_file_keeps_nothing_and_is_not_retried(server: tuple[str, type], tmp_path: Path) -> None:
    url, handler = server
    handler.faults[ACC_PREDICTOR.relpath] = "corrupt"
    with pytest.raises(ChecksumMismatchError, match="does not match the pinned"):
        fetch_assets([ACC_PREDICTOR], dest=tmp_path, base_urls=[url, url], retries=3)
    assert handler.hits[ACC_PREDICTOR.relpath] == 1
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_dropped_connection_is_retried_then_fails_cleanly(server: tuple[str, type], tmp_path: Path) -> None:
    url, handler = server
    table = NOTE10_TABLES[0]
    handler.faults[table.relpath] = "drop"
    with pytest.raises(AssetError, match="could not download note10/160_lookup_table.yaml"):
        fetch_assets([table], dest=tmp_path, base_urls=[url], retries=2)
    assert handler.hits[table.relpath] == 2
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    handler.faults.clear()  # the link comes back: the same call now succeeds
    assert fetch_assets([table], dest=tmp_path, base_urls=[url])[0].status == "downloaded"


def test_lfs_pointer_falls_through_to_next_mirror(server: tuple[str, type], tmp_path: Path, assets_dir: Path) -> None:
    url, handler = server
    handler.faults[ACC_PREDICTOR.relpath] = "lfs"
    with pytest.raises(AssetError, match="a Git LFS pointer"):
        fetch_assets([ACC_PREDICTOR], dest=tmp_path, base_urls=[url], retries=3)
    assert handler.hits[ACC_PREDICTOR.relpath] == 1


def test_unpinned_file_needs_an_explicit_hash(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="no sha256 is pinned"):
        fetch_assets([SUPERNET_W12], dest=tmp_path, base_urls=["http://127.0.0.1:9/"])


def test_lookup_order_and_missing_message(tmp_path: Path, assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OFA2_EDGE_ASSETS", str(assets_dir))
    assert find_asset(ACC_PREDICTOR.relpath) == assets_dir / ACC_PREDICTOR.relpath
    explicit = tmp_path / "mine"
    (explicit / "note10").mkdir(parents=True)
    (explicit / ACC_PREDICTOR.relpath).write_bytes((assets_dir / ACC_PREDICTOR.relpath).read_bytes())
    assert find_asset(ACC_PREDICTOR.relpath, explicit) == explicit / ACC_PREDICTOR.relpath
    monkeypatch.delenv("OFA2_EDGE_ASSETS")
    with pytest.raises(AssetError) as info:
        find_assets([a.relpath for a in OFFICIAL_ASSETS], explicit)
    msg = str(info.value)
    assert "note10/160_lookup_table.yaml" in msg and "acc_predictor.pth" not in msg.split("Looked")[0]
    assert "ofa2-edge assets fetch" in msg and "$OFA2_EDGE_ASSETS: (not set)" in msg


def test_missing_message_names_every_missing_official_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` looks for the Note10 tables first; the error also names the accuracy predictor,
    which the search needs minutes later, so that one fetch (or one folder) supplies all."""
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OFA2_EDGE_ASSETS", raising=False)
    with pytest.raises(AssetError) as info:
        find_assets([a.relpath for a in NOTE10_TABLES])
    needed, also = str(info.value).split("Looked in")[0].split("Also missing")
    assert all(a.relpath in needed for a in NOTE10_TABLES) and "acc_predictor.pth" in also
    capsys.readouterr()
    assert main(["-W", str(tmp_path / "ws"), "run"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "note10/224_lookup_table.yaml" in err and "acc_predictor.pth" in err and "assets fetch" in err


def test_damaged_local_copy_is_reported(tmp_path: Path, assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OFA2_EDGE_ASSETS", raising=False)
    (tmp_path / ACC_PREDICTOR.relpath).write_bytes(b"not a predictor")
    with pytest.raises(AssetError, match="Damaged copies ignored: .*acc_predictor.pth"):
        find_asset(ACC_PREDICTOR.relpath, tmp_path)


def test_cli_fetch_and_list(
    server: tuple[str, type], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OFA2_EDGE_ASSETS", raising=False)
    assert main(["assets", "list", "--json"]) == 1  # nothing anywhere yet
    capsys.readouterr()
    assert main(["assets", "fetch", "--base-url", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["files"]) == len(OFFICIAL_ASSETS)
    assert main(["assets", "list", "--json"]) == 0
    assert all(row["path"] for row in json.loads(capsys.readouterr().out))


def test_the_readmes_real_weights_flow(
    tmp_path: Path, assets_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`assets fetch --supernet --supernet-sha256 SHA` from a mirror, then `--supernet
    ofa_mbv3_d234_e346_k357_w1.2` by name, as the README shows (a random w1.2 supernet plays
    OFA's checkpoint, whose sha256 OFA does not publish)."""
    import torch

    from ofa2_edge.supernet import Supernet

    mirror = tmp_path / "mirror"
    for asset in OFFICIAL_ASSETS:
        (mirror / asset.relpath).parent.mkdir(parents=True, exist_ok=True)
        (mirror / asset.relpath).symlink_to(assets_dir / asset.relpath)
    checkpoint = mirror / SUPERNET_W12.relpath
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": Supernet.random(1.2, seed=4).state_dict()}, checkpoint)
    sha = sha256_of(checkpoint)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(AssetHandler, directory=str(mirror)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setenv("OFA2_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OFA2_EDGE_ASSETS", raising=False)
    monkeypatch.chdir(tmp_path)
    name = Path(SUPERNET_W12.relpath).name
    export = ["export", "min@160", "--supernet", name, "-o", str(tmp_path / "m.onnx"), "--json"]
    try:
        capsys.readouterr()
        assert main(export) == 1  # not fetched yet: the error says how to get it
        err = " ".join(capsys.readouterr().err.split())
        assert f"checkpoint {name} not found" in err and "assets fetch --supernet --supernet-sha256" in err
        assert main(["assets", "fetch", "--supernet", "--base-url", url]) == 1  # no sha256: refused
        assert "no sha256 is pinned" in capsys.readouterr().err
        assert main(["assets", "fetch", "--supernet", "--supernet-sha256", "0" * 64, "--base-url", url]) == 1
        assert not (tmp_path / "cache" / "assets" / SUPERNET_W12.relpath).exists()  # a mismatch keeps nothing
        assert main(["assets", "fetch", "--supernet", "--supernet-sha256", sha, "--base-url", url]) == 0
        capsys.readouterr()
        assert main(export) == 0
        assert json.loads(capsys.readouterr().out)["metadata"]["weights_source"] == f"sha256:{sha}"
    finally:
        httpd.shutdown()
        httpd.server_close()
