"""Table guards (issue 16): validated predictors, one writer per table, `measure --record`.

- `surrogate.json` is validated on load by each kind (and by a sanity check on the min
  and max nets); `tables show/list` and `predict` read it through its owner.
- Every command that writes a table holds its lock: a second writer is refused, writes
  nothing, and other tables are not affected.
- `measure --record` does not record an arch twice under one key; a device that cannot
  be reached exits 3 and the archs not reached are named.
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from records_factory import probe_report, record_for

from device_agents.records import Protocol
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_UNREACHABLE, SchemaError
from ofa2_edge.devices.inventory import Device, Inventory
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.surrogates.base import load_surrogate
from ofa2_edge.surrogates.linear import LinearSurrogate
from ofa2_edge.surrogates.lut import LutSurrogate
from ofa2_edge.surrogates.prior import HybridSurrogate
from ofa2_edge.surrogates.trees import TreeSurrogate
from ofa2_edge.tables.device import DeviceTable


@pytest.fixture(scope="module")
def note10(assets_dir: Path) -> LutSurrogate:
    return LutSurrogate.from_folder(assets_dir / "note10")


def fitted(note10: LutSurrogate) -> dict[str, Any]:
    archs = SearchSpace().sample(30, np.random.default_rng(0))
    y = note10.predict(archs)
    return {
        "linear": LinearSurrogate(features="compact").fit(archs, y),
        "trees": TreeSurrogate(n_estimators=5).fit(archs, y),
        "hybrid": HybridSurrogate(prior=note10).fit(archs, y * 1.3),
        "lut": note10,
    }


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return apply


DAMAGE = {
    "linear NaN coefficient": ("linear", _set(["params", "state", "coef", 0], float("nan")), "state.coef"),
    "linear negative coefficient": ("linear", _set(["params", "state", "coef", 1], -1.0), "state.coef"),
    "linear wrong length": ("linear", _set(["params", "state", "coef"], lambda c: c[:-1]), "state.coef"),
    "linear 1e8 ms": ("linear", _set(["params", "state", "coef"], lambda c: [v * 1e9 for v in c]), "ms for"),
    "no residuals": ("linear", _set(["params", "residuals"], []), "residuals"),
    "residual overflowing exp": ("linear", _set(["params", "residuals", 0], 710.0), "residuals"),
    "NaN residual": ("trees", _set(["params", "residuals", 0], float("nan")), "residuals"),
    "tree feature out of range": (
        "trees", _set(["params", "state", "ensemble", "feature", 0, 0], 10_000), "ensemble.feature"
    ),
    "hybrid wrong scale": ("hybrid", _set(["params", "state", "scale"], lambda s: [-1.0] * len(s)), "state.scale"),
    "hybrid NaN prior entry": (
        "hybrid", lambda d: next(iter(next(iter(d["params"]["spec"]["prior"]["params"]["tables"].values())).values()))
        .__setitem__(0, float("nan")), "mean"
    ),
    "lut negative mean": (
        "lut", lambda d: next(iter(next(iter(d["params"]["tables"].values())).values())).__setitem__(0, -3.0), "mean"
    ),
    "report not an object": ("linear", _set(["report"], "x"), "'report' must be an object"),
    "held_out not an object": ("linear", _set(["report", "held_out"], [1]), "held_out"),
    "unknown width": ("linear", _set(["width_mult"], 0.7), "width_mult"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_predictor_is_refused_on_load(note10: LutSurrogate, tmp_path: Path, name: str) -> None:
    kind, damage, field = DAMAGE[name]
    path = fitted(note10)[kind].save(tmp_path / "surrogate.json")
    assert load_surrogate(path).predict([Arch.smallest(160)])[0] > 0  # the undamaged file loads
    doc = json.loads(path.read_text())
    damage(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(SchemaError) as err:
        load_surrogate(path)
    assert str(path) in str(err.value) and field in str(err.value)


def _workspace_with_table(tmp_path: Path, note10: LutSurrogate, key: str = "pi") -> tuple[Path, DeviceTable]:
    ws = tmp_path / "ws"
    table = DeviceTable(ws / "latency_tables", key)
    table.bind(probe_report(cpu_model="Cortex-A72"), "onnxruntime")
    fingerprint = table.device_info()["fingerprint"]
    for arch in SearchSpace().sample(12, np.random.default_rng(1)):
        table.append(record_for(arch, float(note10.predict([arch])[0]), Protocol(), fingerprint=fingerprint))
    assert main(["-W", str(ws), "fit", "--device", key, "--json"]) == 0
    return ws, table


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda text: text[: len(text) // 2], "not a readable JSON file"),
        (lambda text: json.dumps({**json.loads(text), "report": [1, 2]}), "'report' must be an object"),
        (lambda text: text.replace('"coef": [', '"coef": [NaN, ', 1), "state.coef"),
    ],
    ids=["truncated", "report not a dict", "NaN coefficient"],
)
def test_tables_show_list_and_predict_name_a_damaged_predictor(
    tmp_path: Path, note10: LutSurrogate, capsys: pytest.CaptureFixture[str], damage: Any, expected: str
) -> None:
    ws, table = _workspace_with_table(tmp_path, note10)
    capsys.readouterr()
    table.surrogate_path.write_text(damage(table.surrogate_path.read_text()))
    before = table.surrogate_path.read_bytes()
    for args in (["tables", "show", "pi"], ["tables", "list"], ["predict", "min@160", "--device", "pi", "--json"]):
        code = main(["-W", str(ws), *args])
        out = capsys.readouterr()
        assert code == 1 and "surrogate.json" in out.err and expected in out.err, (args, out.err)
        assert "Traceback" not in out.err and out.out == ""  # never invalid JSON on stdout
    assert table.surrogate_path.read_bytes() == before


def test_a_second_writer_of_a_table_is_refused_and_writes_nothing(
    tmp_path: Path, note10: LutSurrogate, capsys: pytest.CaptureFixture[str]
) -> None:
    ws, _ = _workspace_with_table(tmp_path, note10, key="local")
    table = DeviceTable(ws / "latency_tables", "local")
    archive = tmp_path / "local.tar.gz"
    assert main(["-W", str(ws), "tables", "export", "local", "-o", str(archive)]) == 0
    before = {p.name: p.read_bytes() for p in table.folder.iterdir()}
    capsys.readouterr()
    writers = [
        ["fit", "--device", "local"],
        ["calibrate", "--device", "local", "--budget", "2", "--resolutions", "160", "--quick"],
        ["calibrate", "--device", "local", "--blocks", "--resolutions", "160", "--quick"],
        ["measure", "min@160", "--device", "local", "--record", "--quick"],
        ["tables", "import", str(archive), "--key", "local", "--replace"],
    ]
    with table.lock():  # another process is writing this table
        for args in writers:
            code = main(["-W", str(ws), *args])
            err = capsys.readouterr().err
            assert code == 1 and "latency table local is being written by another ofa2-edge process" in err, (args, err)
        with DeviceTable(ws / "latency_tables", "other").lock():  # another table is not affected
            pass
    assert {p.name: p.read_bytes() for p in table.folder.iterdir()} == before
    assert main(["-W", str(ws), "fit", "--device", "local"]) == 0  # the lock went with its holder


def test_threads_writing_different_tables_do_not_conflict(tmp_path: Path) -> None:
    """The main job calibrates devices in threads: one table each, no conflict."""
    errors: list[BaseException] = []
    inside = threading.Barrier(3, timeout=30)

    def write(key: str) -> None:
        try:
            with DeviceTable(tmp_path, key).lock():
                inside.wait()  # all three hold their lock at the same time
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _dropping_python(folder: Path) -> str:
    """A device `python` whose link drops in every `measure` (the agent never ends its batch)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "python-dropping"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import os, sys
            if "measure" in sys.argv[1:]:
                sys.exit(255)
            os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.slow
def test_measure_record_skips_recorded_archs_and_a_lost_link_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    args = ["-W", str(ws), "measure", "min@160", "--record", "--quick", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(first["results"]) == 1 and first["already_recorded"] == []
    table = DeviceTable(ws / "latency_tables", "local")
    rows = table.measurements_path.read_bytes()
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["results"] == [] and again["already_recorded"] == [Arch.smallest(160).id]
    assert table.measurements_path.read_bytes() == rows  # no duplicate row

    inventory = Inventory.load(ws / "devices.yaml")
    inventory.add(Device(key="flaky", python=_dropping_python(tmp_path / "flaky")))
    inventory.save()
    code = main(["-W", str(ws), "measure", "min@160", "max@160", "--device", "flaky", "--quick"])
    err = capsys.readouterr().err
    assert code == EXIT_UNREACHABLE
    assert "not measured" in err and Arch.smallest(160).id in err and Arch.largest(160).id in err


@pytest.mark.slow
def test_calibrate_on_a_lost_link_exits_3_and_keeps_nothing_half_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    inventory = Inventory.load(ws / "devices.yaml")
    inventory.add(Device(key="flaky", python=_dropping_python(tmp_path / "flaky")))
    inventory.save()
    code = main(["-W", str(ws), "calibrate", "--device", "flaky", "--budget", "10", "--quick"])
    err = capsys.readouterr().err
    assert code == EXIT_UNREACHABLE  # the device was not reached: 3, as the README says
    assert "link was lost before any model was measured" in err and "resumes" in err
    assert not DeviceTable(ws / "latency_tables", "flaky").surrogate_path.exists()
