"""The CLI's contract with its users: the README's CLI table, `--json`, exit codes and the
messages a new user meets first (a typo'd device, a wrong run path, a command not on PATH)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from sshd import free_port

from ofa2_edge.cli import common
from ofa2_edge.cli.main import app, main
from ofa2_edge.core.errors import EXIT_FAILURE, EXIT_MEASUREMENT, EXIT_UNREACHABLE, EXIT_USAGE

README = Path(__file__).resolve().parent.parent / "README.md"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich wraps long lines on stderr


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    """A workspace with OFA's Note10 table and a small run `demo` searched on it."""
    root = tmp_path_factory.mktemp("contract-ws")
    assert main(["-W", str(root), "tables", "import", str(assets_dir / "note10"), "--key", "note10"]) == 0
    search = ["search", "--objectives", "top1,latency:note10", "--pop", "12", "--gens", "3", "--no-plot"]
    assert main(["-W", str(root), *search, "-o", str(root / "runs" / "demo")]) == 0
    return root


# ------------------------------------------------------------------ the README's CLI table
def readme_commands() -> list[tuple[str, ...]]:
    """Every command the `| command | what it does |` table under "## CLI reference" lists."""
    section = README.read_text().split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no command table under ## CLI reference"
    found: list[tuple[str, ...]] = []
    for row in rows:
        for quoted in re.findall(r"`([^`]+)`", row.split("|")[1]):
            first, *more = [part.strip() for part in quoted.split(" / ")]
            words = tuple(first.split())
            found.append(words)
            found += [(*words[:-1], sub) for sub in more]
    return found


def app_commands() -> dict[tuple[str, ...], Any]:
    """Every leaf command of the Typer app, by its words."""
    leaves: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            leaves[path] = command

    walk(typer.main.get_command(app), ())
    return leaves


#: The commands that only write (and say what they wrote on stderr); the README names them.
WITHOUT_JSON = {("devices", "add"), ("devices", "remove"), ("tables", "export"), ("tables", "import")}


def test_the_readme_table_lists_exactly_the_apps_commands() -> None:
    listed = readme_commands()
    assert len(listed) == len(set(listed)), "a command is listed twice"
    assert sorted(listed) == sorted(app_commands())


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_every_listed_command_has_help(capsys: pytest.CaptureFixture[str], words: tuple[str, ...]) -> None:
    code, out, _ = cli(capsys, *words, "--help")
    assert code == 0 and "Usage:" in out


def test_the_readme_says_which_commands_take_json() -> None:
    text = " ".join(README.read_text().split("## CLI reference", 1)[1].split("| command |", 1)[0].split())
    assert "Every command takes `--json` except `devices add / remove` and `tables export / import`" in text
    for words, command in app_commands().items():
        takes = any("--json" in getattr(p, "opts", ()) for p in command.params)
        assert takes == (words not in WITHOUT_JSON), " ".join(words)


# ------------------------------------------------------------------ exit codes
def test_bad_input_exits_1_and_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "-W", str(tmp_path), "arch", "show", '{"ks": [4], "e": [3], "d": [2], "r": 224}')
    assert code == EXIT_FAILURE == 1 and "d: expected 5 values" in err
    assert cli(capsys, "-W", str(tmp_path), "predict", "--device", "nosuch", "min")[0] == 1
    assert cli(capsys, "-W", str(tmp_path), "search", "--no-such-option")[0] == EXIT_USAGE == 2  # unknown option
    assert cli(capsys, "-W", str(tmp_path), "select")[0] == 2  # missing argument
    assert cli(capsys, "-W", str(tmp_path), "runs", "show", "x", "--top", "many")[0] == 2  # wrong type


def test_an_unreachable_device_exits_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ws = ["-W", str(tmp_path)]
    port = str(free_port())  # nothing listens there: the connection is refused
    assert main([*ws, "devices", "add", "ghost", "--host", "127.0.0.1", "--port", port, "--user", "pi"]) == 0
    code, _, err = cli(capsys, *ws, "devices", "probe", "ghost", "--trust-on-first-use")
    assert code == EXIT_UNREACHABLE == 3 and "cannot reach 127.0.0.1" in err


def test_a_failed_measurement_exits_4(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The device answers, but its agent's probe report is not one: reached, not measured."""
    liar = tmp_path / "python"
    liar.write_text(f'#!/bin/sh\ncase "$2" in probe) echo "{{}}"; exit 0;; esac\nexec {sys.executable} "$@"\n')
    liar.chmod(0o755)
    ws = ["-W", str(tmp_path)]
    assert main([*ws, "devices", "add", "liar", "--python", str(liar)]) == 0
    code, _, err = cli(capsys, *ws, "devices", "probe", "liar")
    assert code == EXIT_MEASUREMENT == 4 and "probe report is invalid" in err


# ------------------------------------------------------------------ a typo'd device, a wrong run path
@pytest.mark.parametrize(
    "args",
    [
        ["predict", "--device", "nte10", "min"],
        ["select", "demo", "--device", "nte10"],
        ["bundle", "demo", "--device", "nte10"],
        ["dashboard", "demo", "--device", "nte10", "-o", "{ws}/page.html"],
        ["tables", "show", "nte10"],
        ["fit", "--device", "nte10"],
        ["search", "--objectives", "top1,latency:nte10", "-o", "{ws}/runs/typo"],
    ],
    ids=lambda a: a[0] if a[0] != "tables" else "tables-show",
)
def test_a_typod_device_is_unknown_with_the_closest_before_any_new_board(
    capsys: pytest.CaptureFixture[str], ws: Path, args: list[str]
) -> None:
    code, out, err = cli(capsys, "-W", str(ws), *[a.replace("{ws}", str(ws)) for a in args])
    assert code == EXIT_FAILURE and out == ""
    unknown, known, closest, add = (err.find(s) for s in (
        "unknown device 'nte10'", "known devices: ", "did you mean 'note10'?", "devices add nte10"))  # fmt: skip
    assert -1 < unknown < known < closest < add, err
    assert "calibrate --device nte10" not in err[:add]  # no advice to calibrate the typo first


def test_calibrating_a_typod_device_names_the_inventory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "-W", str(tmp_path), "calibrate", "--device", "lcoal", "--quick")
    assert code == EXIT_FAILURE
    assert err.index("unknown device 'lcoal'") < err.index("known devices: local (did you mean 'local'?)")
    assert err.index("did you mean") < err.index("devices add lcoal")


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "show", "runs/nope"],
        ["runs", "compare", "demo", "runs/nope"],
        ["dashboard", "runs/nope"],
        ["select", "runs/nope", "--device", "note10"],
        ["bundle", "runs/nope", "--device", "local"],
    ],
    ids=lambda a: "-".join(a[:2]) if a[0] == "runs" else a[0],
)
def test_a_missing_run_path_is_named_as_given(capsys: pytest.CaptureFixture[str], ws: Path, args: list[str]) -> None:
    code, _, err = cli(capsys, "-W", str(ws), *args)
    assert code == EXIT_FAILURE and "no run 'runs/nope'" in err and "runs there: demo" in err
    assert "runs/runs" not in err


def test_a_run_path_relative_to_the_workspace_is_found(capsys: pytest.CaptureFixture[str], ws: Path) -> None:
    code, out, _ = cli(capsys, "-W", str(ws), "select", "runs/demo", "--device", "note10", "--json")
    assert code == 0 and json.loads(out)["run"] == "demo"


# ------------------------------------------------------------------ hints name a command that works
def test_command_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "ofa2-edge"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(script), "run"])
    assert common.command_name() == ".venv/bin/ofa2-edge"  # `make run`: the venv is not on PATH
    monkeypatch.setattr(sys, "argv", [".venv/bin/ofa2-edge"])
    assert common.command_name() == ".venv/bin/ofa2-edge"
    monkeypatch.setattr(sys, "argv", [str(script)])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert common.command_name() == str(script)  # outside the current folder: the full path
    monkeypatch.chdir("/")
    assert common.command_name() == str(script)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin")
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert common.command_name() == "ofa2-edge"  # on PATH (an activated venv)
    monkeypatch.setattr(sys, "argv", ["/somewhere/ofa2_edge/__main__.py"])
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    assert common.command_name() == "ofa2-edge"  # python -m, with the venv's script on PATH
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert common.command_name() == str(script)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "py dir" / "python3"))
    assert common.command_name() == f"'{tmp_path / 'py dir' / 'python3'}' -m ofa2_edge"
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/pytest"])
    assert common.command_name() == "ofa2-edge"  # embedded in another program: the plain name


def test_error_hints_name_the_command_that_was_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "ofa2-edge").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [".venv/bin/ofa2-edge"])
    code, _, err = cli(capsys, "select", "demo", "--device", "lcoal")
    assert code == EXIT_FAILURE and "`.venv/bin/ofa2-edge devices add lcoal" in err and "`ofa2-edge " not in err
    code, out, _ = cli(capsys, "runs", "list")
    assert code == 0 and "`.venv/bin/ofa2-edge search`" in out


def test_runs_list_never_cuts_a_run_id(capsys: pytest.CaptureFixture[str], ws: Path, tmp_path: Path) -> None:
    import shutil

    long_id = "main-3f9c2a7b1e5d4c6a0b1c2d3e"
    other = tmp_path / "ws"
    shutil.copytree(ws / "runs" / "demo", other / "runs" / long_id)
    old = common.out_console.width
    common.out_console.width = 80  # a plain terminal, as in CI logs
    try:
        code, out, _ = cli(capsys, "-W", str(other), "runs", "list")
    finally:
        common.out_console.width = old
    assert code == 0 and long_id in out and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_a_workspace_inventory_is_not_committed_by_accident() -> None:
    """`make run` uses the repository as its workspace; `devices add` writes hosts and key paths there."""
    ignored = (README.parent / ".gitignore").read_text().splitlines()
    assert "/devices.yaml" in ignored
