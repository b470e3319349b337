"""select -> bundle -> check -> verify, on a real small run, the local device and a real sshd."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from records_factory import probe_report, record_for
from sshd import Sshd, make_sshd

from device_agents.records import Protocol
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE, SchemaError
from ofa2_edge.deploy.bundle import check_bundle, read_manifest
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.supernet import Supernet
from ofa2_edge.surrogates.lut import LutSurrogate
from ofa2_edge.tables.device import DeviceTable

QUICK = ["--quick"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    """A workspace with Note10 imported, a `local` table (real fingerprint) and a small run."""
    ws = tmp_path_factory.mktemp("deploy-ws")
    assert main(["-W", str(ws), "tables", "import", str(assets_dir / "note10"), "--key", "note10"]) == 0
    lut = LutSurrogate.from_folder(assets_dir / "note10")
    table = DeviceTable(ws / "latency_tables", "local")
    table.bind(probe_report(), "onnxruntime")  # this machine's real fingerprint
    archs = SearchSpace().sample(30, np.random.default_rng(1))
    for arch, ms in zip(archs, lut.predict(archs) / 4, strict=True):  # a device 4x faster than a Note10
        table.append(record_for(arch, float(ms), Protocol(), fingerprint=probe_report().fingerprint))
    assert main(["-W", str(ws), "fit", "--device", "local"]) == 0
    args = ["-W", str(ws), "search", "--objectives", "top1,latency:local,latency:note10", "--pop", "24", "--gens", "12"]
    assert main([*args, "--seed", "1", "-o", str(ws / "runs" / "demo")]) == 0
    return ws


def front(ws: Path) -> list[dict]:
    return json.loads((ws / "runs/demo/front.json").read_text())["rows"]


def test_select_filters_ranks_and_explains(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = ["-W", str(workspace)]
    capsys.readouterr()
    assert main([*ws, "select", "demo", "--device", "note10", "--max-latency", "30", "--min-top1", "78", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    picks = doc["candidates"]
    assert picks and all(c["limit_latency_ms"] <= 30 and c["top1_pct"] >= 78 for c in picks)
    assert [c["top1_pct"] for c in picks] == sorted((c["top1_pct"] for c in picks), reverse=True)
    lats = [c["latency_ms"] for c in picks]
    assert lats == sorted(lats, reverse=True)  # non-dominated: more accurate costs more latency
    assert main([*ws, "select", "demo", "--device", "note10", "--max-latency", "30", "--safe", "0.9", "--json"]) == 0
    safe = json.loads(capsys.readouterr().out)["candidates"]
    assert all(c["limit_latency_ms"] >= c["latency_ms"] and c["limit_latency_ms"] <= 30 for c in safe)
    assert main([*ws, "select", "demo", "--device", "note10", "--max-latency", "1"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "no candidate meets latency <= 1 ms" in err and "the fastest candidate needs" in err
    # --json still prints its document (no candidates, the reason) and keeps the exit code
    assert main([*ws, "select", "demo", "--device", "note10", "--max-latency", "1", "--json"]) == EXIT_FAILURE
    captured = capsys.readouterr()
    empty = json.loads(captured.out)
    assert empty["candidates"] == [] and "the fastest candidate needs" in empty["reason"]
    assert empty["limits"]["max_latency_ms"] == 1 and "no candidate meets" in captured.err


def test_bundle_check_tamper_and_verify_locally(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = ["-W", str(workspace)]
    out = tmp_path / "bundles"
    capsys.readouterr()
    code = main(
        [*ws, "bundle", "demo", "--device", "local", "--max-latency", "8", "-o", str(out), "--verify", *QUICK, "--json"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    folder = Path(summary["bundle"])
    manifest = read_manifest(folder)
    assert manifest["status"] == "latency-only" and manifest["weights"]["source"] == "random:0"
    assert manifest["latency"]["measured"]["latency_ms"] > 0
    assert manifest["latency"]["measured"]["device_fingerprint"] == probe_report().fingerprint
    assert manifest["input"]["shape"] == [1, 3, manifest["arch"]["r"], manifest["arch"]["r"]]
    assert {f["name"] for f in manifest["files"]} == {"model.onnx"}
    assert manifest["run"] == {"id": "demo", "path": "runs/demo"}  # no path of this host
    assert str(workspace) not in (folder / "manifest.json").read_text()
    import onnx

    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(props["ofa2_edge_bundle"])["device"] == "local" and "preprocessing" in props
    # the verified measurement also sharpened the device's table
    table = DeviceTable(workspace / "latency_tables", "local")
    assert any(r.arch_id == manifest["arch"]["id"] and r.protocol.blocks == 3 for r in table.records())
    # check passes on the folder and the archive ...
    assert main(["bundle", "check", str(folder)]) == 0
    assert main(["bundle", "check", str(folder) + ".tar.gz"]) == 0
    # ... and fails on any tampering
    copy = tmp_path / "copy"
    for tamper in ("model", "manifest", "extra", "missing"):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(folder, copy)
        if tamper == "model":
            data = bytearray((copy / "model.onnx").read_bytes())
            data[len(data) // 2] ^= 1
            (copy / "model.onnx").write_bytes(bytes(data))
        elif tamper == "manifest":
            doc = json.loads((copy / "manifest.json").read_text())
            doc["accuracy"]["top1_pct"] = 99.0
            (copy / "manifest.json").write_text(json.dumps(doc))
        elif tamper == "extra":
            (copy / "payload.sh").write_text("echo hi")
        else:
            (copy / "model.onnx").unlink()
        with pytest.raises(SchemaError, match="bundle check failed"):
            check_bundle(copy)
        assert main(["bundle", "check", str(copy)]) != 0


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.mark.ssh
def test_bundle_verify_over_ssh(
    workspace: Path, tmp_path: Path, sshd: Sshd, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws-ssh"
    shutil.copytree(workspace / "latency_tables", ws / "latency_tables")
    shutil.copytree(workspace / "runs", ws / "runs")
    # the sshd "board" is this machine, so the local table's predictor serves it too
    shutil.copytree(ws / "latency_tables/local", ws / "latency_tables/pi")
    add = [
        "-W",
        str(ws),
        "devices",
        "add",
        "pi",
        "--host",
        "127.0.0.1",
        "--port",
        str(sshd.port),
        "--user",
        sshd.user,
        "--key-file",
        str(sshd.client_key),
        "--known-hosts",
        str(sshd.known_hosts),
        "--python",
        sys.executable,
        "--work-dir",
        str(tmp_path / "pi-work"),
    ]
    assert main(add) == 0
    capsys.readouterr()
    code = main(["-W", str(ws), "bundle", "demo", "--device", "pi", "--max-latency", "8", "--verify", *QUICK, "--json"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    manifest = check_bundle(summary["archive"])
    assert manifest["device"]["key"] == "pi" and manifest["latency"]["measured"]["runtime"] == "onnxruntime"
    # the board's work folder is removed after a complete batch; the user's work_dir stays
    assert (tmp_path / "pi-work").is_dir() and not list((tmp_path / "pi-work").iterdir())


def test_bundle_with_real_weights_and_bn_recalibration(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ofa_mbv3_d234_e346_k357_w1.2"
    torch.save({"state_dict": Supernet.random(1.2, seed=3).state_dict()}, ckpt)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(1000)))
    capsys.readouterr()
    code = main(
        [
            "-W",
            str(workspace),
            "bundle",
            "demo",
            "--device",
            "local",
            "--max-latency",
            "8",
            "--supernet",
            str(ckpt),
            "--calib-images",
            str(images),
            "--labels",
            str(labels),
            "-o",
            str(tmp_path / "b"),
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(json.loads(capsys.readouterr().out)["bundle"])
    assert manifest["status"] == "deployable" and manifest["weights"]["source"].startswith("sha256:")
    assert manifest["weights"]["bn_stats_source"].startswith("images:")
    assert {f["name"] for f in manifest["files"]} == {"model.onnx", "labels.txt"}
    labels.write_text("only\ntwo")
    code = main(
        [
            "-W",
            str(workspace),
            "bundle",
            "demo",
            "--device",
            "local",
            "--max-latency",
            "8",
            "--labels",
            str(labels),
            "-o",
            str(tmp_path / "c"),
        ]
    )
    assert code == EXIT_FAILURE and "2 labels, but the model has 1000 classes" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before anything was exported or written


def test_bundle_refusals(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = ["-W", str(workspace)]
    assert main([*ws, "bundle", "demo", "--device", "local", "--pick", "a-000000000000"]) == EXIT_FAILURE
    assert "not on the front" in capsys.readouterr().err
    assert main([*ws, "bundle", "demo", "--device", "local", "--calib-images", str(tmp_path)]) == EXIT_FAILURE
    assert "--supernet" in capsys.readouterr().err
    assert main([*ws, "bundle", "nope", "--device", "local"]) == EXIT_FAILURE
    assert main([*ws, "select", "demo", "--device", "ghost"]) == EXIT_FAILURE
    assert "ofa2-edge calibrate --device ghost" in capsys.readouterr().err
