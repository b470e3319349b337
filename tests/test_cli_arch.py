"""`ofa2-edge arch ...` through the real entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_json_is_seeded(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "arch", "sample", "--n", "4", "--seed", "3", "--json")
    assert code == 0
    first = json.loads(out)
    _, again, _ = run_cli(capsys, "arch", "sample", "--n", "4", "--seed", "3", "--json")
    assert json.loads(again) == first and len(first) == 4
    assert all(rec["arch_id"].startswith("a-") and rec["macs_m"] > 0 for rec in first)


def test_show_the_595m_released_net(capsys: pytest.CaptureFixture[str], assets_dir: Path) -> None:
    folder = assets_dir / "ofa_specialized" / "flops-595M_top1-80.0_finetune-75"
    code, out, _ = run_cli(capsys, "arch", "show", str(folder))
    assert code == 0 and "595.2 MMACs" in out
    code, out, _ = run_cli(capsys, "arch", "from-config", str(folder / "net.config"), "--json")
    assert code == 0 and json.loads(out)["arch"]["r"] == 236


def test_show_resolves_an_id_from_workspace_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, out, _ = run_cli(capsys, "arch", "show", "max@208", "--json")
    record = json.loads(out)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "archive.jsonl").write_text(json.dumps({"arch_id": record["arch_id"], "arch": record["arch"]}) + "\n")
    code, out, _ = run_cli(capsys, "-W", str(tmp_path), "arch", "show", record["arch_id"], "--json")
    assert code == 0 and json.loads(out)["arch"] == record["arch"]
    code, _, err = run_cli(capsys, "-W", str(tmp_path), "arch", "show", "a-000000000000")
    assert code == EXIT_FAILURE and "not in this workspace" in err


def test_bad_arch_is_bad_input_without_traceback(capsys: pytest.CaptureFixture[str], assets_dir: Path) -> None:
    code, _, err = run_cli(capsys, "arch", "show", '{"ks": [4], "e": [3], "d": [2], "r": 224}')
    assert code == EXIT_FAILURE and "d: expected 5 values, got 1" in err and "Traceback" not in err
    proxyless = assets_dir / "ofa_specialized" / "cpu_lat-10ms_top1-71.1_finetune-25"
    code, _, err = run_cli(capsys, "arch", "from-config", str(proxyless))
    assert code == EXIT_FAILURE and "ProxylessNAS" in err


def test_console_script_is_installed() -> None:
    exe = shutil.which("ofa2-edge", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("the ofa2-edge console script is not installed in this environment (pip install -e .)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "arch" in proc.stdout
