"""The main job end to end: `ofa2-edge run` on local, resumed, and with several devices at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from sshd import Sshd, make_sshd

from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_MEASUREMENT
from ofa2_edge.deploy.bundle import check_bundle
from ofa2_edge.workflows.job import knee


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {"stderr": out.err})


@pytest.mark.slow
def test_run_on_local_then_rerun_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = ["-W", str(tmp_path)]
    args = [*ws, "run", "--budget", "10", "--quick", "--gens", "20", "--json"]
    code, first = run_json(capsys, *args)
    quality = first["devices"]["local"]["quality"]
    # The quality verdict depends on how busy this machine is; what follows from it does not.
    if not quality["good"]:
        assert code == 1 and "--accept-unstable" in first["bundle_refused"] and not first["bundle"]
        code, first = run_json(capsys, *args, "--accept-unstable")
    assert code == 0, first
    for name, path in first["files"].items():
        assert Path(path).is_file(), name
    assert first["front_size"] > 5 and first["hypervolume"]["value"] > 0
    local = first["devices"]["local"]
    assert local["n_train"] == 10 and local["measured_now"] + local["already_measured"] == 10
    manifest = check_bundle(first["files"]["bundle"])
    assert manifest["latency"]["measured"]["latency_ms"] > 0 and manifest["status"] == "latency-only"
    recorded = manifest["latency"]["predicted"]["predictor_quality"]
    assert recorded["good"] == quality["good"] and recorded["accepted_unstable"] == (not quality["good"])
    html = Path(first["files"]["dashboard"]).read_text()
    assert "latency:local" in html and "latency:note10" in html
    assert set(first["seconds"]) == {"reference tables", "calibrate + fit", "search", "dashboard", "bundle"}

    # The verification added a record to the table, but nothing new was calibrated: the
    # predictor is kept, so the rerun reuses the search, the pick and the bundle.
    table = tmp_path / "latency_tables" / "local"
    predictor = (table / "surrogate.json").read_bytes()
    bundle_sha = Path(first["files"]["bundle"]).read_bytes()
    code, again = run_json(capsys, *args, "--accept-unstable")
    assert code == 0, again
    assert again["devices"]["local"]["measured_now"] == 0 and again["devices"]["local"]["refitted"] is False
    assert (table / "surrogate.json").read_bytes() == predictor
    assert again["run"] == first["run"] and again["bundle"]["pick"]["arch_id"] == first["bundle"]["pick"]["arch_id"]
    assert again["bundle"]["reused"] is True and again["pick_change"] is None
    assert Path(again["files"]["bundle"]).read_bytes() == bundle_sha
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir() if not p.name.startswith(".")) == sorted(
        [Path(first["bundle"]["folder"]).name, Path(first["files"]["bundle"]).name]
    )

    # Asked for, a refit takes the verification in; the next run says why its pick may differ.
    assert main([*ws, "fit", "-d", "local"]) == 0
    assert (table / "surrogate.json").read_bytes() != predictor
    code, third = run_json(capsys, *args, "--accept-unstable", "--no-verify")
    assert code == 0 and third["run"] != first["run"]
    if third["bundle"]["pick"]["arch_id"] != first["bundle"]["pick"]["arch_id"]:
        assert "the local predictor changed" in third["pick_change"]
    else:
        assert third["pick_change"] is None


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = make_sshd(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.ssh
def test_several_devices_at_once_and_a_failed_one(
    tmp_path: Path, sshd: Sshd, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    common = [
        "--user",
        sshd.user,
        "--key-file",
        str(sshd.client_key),
        "--known-hosts",
        str(sshd.known_hosts),
        "--python",
        sys.executable,
    ]
    assert (
        main(
            [
                "-W",
                str(ws),
                "devices",
                "add",
                "pi",
                "--host",
                "127.0.0.1",
                "--port",
                str(sshd.port),
                *common,
                "--work-dir",
                str(tmp_path / "pi-work"),
            ]
        )
        == 0
    )
    dead_port = str(sshd.port + 1 if sshd.port < 65000 else sshd.port - 1)
    assert main(["-W", str(ws), "devices", "add", "ghost", "--host", "127.0.0.1", "--port", dead_port, *common]) == 0
    (ws / "ofa2-edge.yaml").write_text(
        yaml.safe_dump(
            {
                "schema_version": 1,
                "devices": [
                    {"key": "local", "budget": 10, "quick": True},
                    {"key": "pi", "budget": 10, "quick": True},
                    {"key": "ghost", "budget": 10, "quick": True},
                ],
                "search": {"pop": 30, "gens": 15, "seed": 2},
            }
        )
    )
    code, summary = run_json(capsys, "-W", str(ws), "run", "--json")
    assert code == EXIT_MEASUREMENT  # one device failed ...
    assert set(summary["failed_devices"]) == {"ghost"} and "cannot reach" in summary["failed_devices"]["ghost"]
    assert set(summary["devices"]) == {"local", "pi"}  # ... the others finished
    config = json.loads((Path(summary["run"]) / "config.json").read_text())
    assert config["objectives"] == ["top1", "latency:local", "latency:pi", "latency:note10", "macs"]
    assert summary["devices"]["pi"]["measured_now"] == 10


def test_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ofa2-edge.yaml").write_text("schema_version: 1\ndevices: [{key: local, budgit: 3}]\n")
    assert main(["-W", str(tmp_path), "run"]) != 0
    assert "unknown key(s) budgit" in capsys.readouterr().err
    (tmp_path / "ofa2-edge.yaml").write_text("schema_version: 1\ndevices: [nosuch]\n")
    assert main(["-W", str(tmp_path), "run"]) != 0
    assert "unknown device 'nosuch'" in capsys.readouterr().err


class _Stop(Exception):
    pass


@pytest.mark.parametrize(("flag", "expected"), [([], False), (["--verify"], True), (["--no-verify"], False)])
def test_the_configs_verify_is_kept_unless_a_flag_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], expected: bool
) -> None:
    import ofa2_edge.workflows.job as job_module

    seen = {}

    def fake_run_job(workspace: object, config: job_module.JobConfig, *args: object) -> None:
        seen["config"] = config
        raise _Stop

    monkeypatch.setattr(job_module, "run_job", fake_run_job)
    (tmp_path / "ofa2-edge.yaml").write_text("schema_version: 1\nverify: false\n")
    with pytest.raises(_Stop):
        main(["-W", str(tmp_path), "run", *flag])
    assert seen["config"].verify is expected


def test_a_run_id_that_is_a_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-W", str(tmp_path), "run", "--run-id", "../elsewhere"]) == 1
    assert "--run-id '../elsewhere'" in capsys.readouterr().err


def test_missing_assets_are_all_named_before_any_calibration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ofa2_edge.core.assets import NOTE10_TABLES, find_assets

    # The Note10 tables are there, OFA's accuracy predictor is not: the job must say so
    # before calibrating `local` (minutes), not when the search first needs it.
    partial = tmp_path / "partial-assets"
    for asset in NOTE10_TABLES:
        (partial / asset.relpath).parent.mkdir(parents=True, exist_ok=True)
        (partial / asset.relpath).symlink_to(find_assets([asset.relpath])[asset.relpath])
    monkeypatch.setenv("OFA2_EDGE_ASSETS", str(partial))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ws = tmp_path / "ws"
    ws.mkdir()
    assert main(["-W", str(ws), "--assets", str(partial), "run"]) == 1
    assert "acc_predictor.pth" in capsys.readouterr().err
    assert not (ws / "latency_tables" / "local").exists()


def test_knee_is_the_corner_of_a_front() -> None:
    latency = np.array([1.0, 2.0, 3.0, 10.0])
    top1 = np.array([70.0, 78.0, 79.0, 80.0])
    assert knee(top1, latency) == 1
