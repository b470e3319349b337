"""Objectives and constraints: loading, values, and one clear error before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.search.objectives import MetricContext, build_objectives, parse_constraint, parse_objective_list
from ofa2_edge.space import costs
from ofa2_edge.space.arch import Arch, SearchSpace, genomes_of
from ofa2_edge.surrogates.lut import LutSurrogate


@pytest.fixture(scope="module")
def note10_json(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lut") / "surrogate.json"
    LutSurrogate.from_folder(assets_dir / "note10").save(path, device="note10")
    return path


@pytest.fixture()
def workspace(tmp_path: Path, note10_json: Path) -> Workspace:
    dest = tmp_path / "latency_tables" / "note10"
    dest.mkdir(parents=True)
    shutil.copy(note10_json, dest / "surrogate.json")
    return Workspace.resolve(tmp_path, tmp_path / "cache")


def ctx(workspace: Workspace, assets_dir: Path, space: SearchSpace | None = None, **kw) -> MetricContext:
    return MetricContext(workspace, space or SearchSpace(), assets_dir=assets_dir, **kw)


def test_reference_values_of_every_metric(workspace: Workspace, assets_dir: Path) -> None:
    objs = build_objectives(["top1", "latency:note10", "macs", "params", "peak-mem"], [], ctx(workspace, assets_dir))
    g = genomes_of([Arch.smallest(160), Arch.largest(224)])
    ev = objs.evaluate(g)
    np.testing.assert_allclose(ev.values["top1"], [75.31, 83.59], atol=0.005)
    np.testing.assert_allclose(ev.values["latency:note10"], [9.89, 92.40], atol=0.005)
    np.testing.assert_allclose(ev.values["macs"], costs.macs_m(g))
    np.testing.assert_allclose(ev.values["params"], costs.params_m(g))
    np.testing.assert_allclose(ev.values["peak-mem"], costs.peak_mem_mb(g))
    # pymoo minimises: top-1 enters as the error 100 - top1, costs as they are
    np.testing.assert_allclose(ev.F[:, 0], 100 - ev.values["top1"])
    np.testing.assert_allclose(ev.F[:, 1], ev.values["latency:note10"])
    assert ev.G.shape == (2, 0)
    fields = {m.name: m.field for m in objs.objectives}
    assert fields == {"top1": "top1_pct", "latency:note10": "latency_ms:note10", "macs": "macs_m", "params": "params_m", "peak-mem": "peak_mem_mb"}
    assert objs.metrics["latency:note10"].source["kind"] == "lut" and len(objs.metrics["latency:note10"].source["sha256"]) == 64


def test_constraints_become_g_leq_zero(workspace: Workspace, assets_dir: Path) -> None:
    objs = build_objectives(["top1", "macs"], ["latency:note10<=30", "top1 >= 77"], ctx(workspace, assets_dir))
    assert set(objs.metrics) == {"top1", "macs", "latency:note10"}
    ev = objs.evaluate(genomes_of([Arch.smallest(160), Arch.largest(224)]))
    np.testing.assert_allclose(ev.G[:, 0], ev.values["latency:note10"] - 30)
    np.testing.assert_allclose(ev.G[:, 1], 77 - ev.values["top1"])
    assert (ev.G[0] > 0).any() and ev.G[1, 1] < 0  # min net fails top1>=77, max net fails latency


@pytest.mark.parametrize(
    ("text", "metric", "op", "bound"),
    [("latency:rpi4<=80", "latency:rpi4", "<=", 80.0), ("macs <= 600", "macs", "<=", 600.0), ("top1>=75.5", "top1", ">=", 75.5)],
)
def test_constraint_parsing(text: str, metric: str, op: str, bound: float) -> None:
    c = parse_constraint(text)
    assert (c.metric, c.op, c.bound) == (metric, op, bound)


@pytest.mark.parametrize(
    ("text", "message"),
    [("latency<80", "use <= or >="), ("macs==600", "use <= or >="), ("macs<=six", "not a number"), ("<=5", "malformed"), ("macs<=inf", "finite"), ("", "malformed")],
)
def test_malformed_constraints(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_constraint(text)


def test_objective_lists() -> None:
    assert parse_objective_list("top1, latency:note10,macs") == ["top1", "latency:note10", "macs"]
    with pytest.raises(InvalidInputError, match="listed twice"):
        parse_objective_list("top1,macs,top1")
    with pytest.raises(InvalidInputError, match="comma-separated"):
        parse_objective_list("top1,,macs")


@pytest.mark.parametrize(
    ("objectives", "constraints", "message"),
    [
        (["top1", "flops"], [], "unknown objective 'flops'"),
        (["top1", "latency"], [], "names its device"),
        (["top1", "latency:rpi4"], [], r"unknown device 'rpi4'.*known devices: note10.*devices add rpi4.*calibrate --device rpi4"),
        (["top1", "macs"], ["latency:rpi4<=80"], "unknown device 'rpi4'"),
        (["top1", "latency:bad/key"], [], "a device key is"),
        (["top1", "macs"], ["latency:note10<=5"], r"cannot be met: the smallest arch .* 9.89 ms"),
        (["top1", "macs"], ["macs>=100000"], "cannot be met: the largest arch"),
    ],
)
def test_bad_input_is_one_error_before_work(workspace: Workspace, assets_dir: Path, objectives, constraints, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        build_objectives(objectives, constraints, ctx(workspace, assets_dir))


def test_device_with_a_table_but_no_fitted_predictor(workspace: Workspace, assets_dir: Path) -> None:
    (workspace.tables_dir / "rpi4").mkdir()
    (workspace.tables_dir / "rpi4" / "measurements.jsonl").write_text("")
    with pytest.raises(InvalidInputError, match=r"'rpi4' has a latency table but no fitted latency predictor.*ofa2-edge fit --device rpi4"):
        build_objectives(["top1"], ["latency:rpi4<=80"], ctx(workspace, assets_dir))


def test_broken_or_mismatched_predictor_files(workspace: Workspace, assets_dir: Path, note10_json: Path) -> None:
    path = workspace.tables_dir / "note10" / "surrogate.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInputError, match="latency:note10: cannot use .*not a readable JSON"):
        build_objectives(["top1", "latency:note10"], [], ctx(workspace, assets_dir))
    doc = json.loads(note10_json.read_text())
    doc["kind"] = "gpr-from-the-future"
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="unknown surrogate kind 'gpr-from-the-future'"):
        build_objectives(["top1", "latency:note10"], [], ctx(workspace, assets_dir))
    shutil.copy(note10_json, path)
    with pytest.raises(InvalidInputError, match="width multiplier 1.2, the search space is w1.0"):
        build_objectives(["top1", "latency:note10"], [], ctx(workspace, assets_dir, SearchSpace(w=1.0)))
    with pytest.raises(InvalidInputError, match="covers resolutions 160, 176, 192, 208, 224, not 128"):
        build_objectives(["top1", "latency:note10"], [], ctx(workspace, assets_dir, SearchSpace(resolutions=(128, 160))))


def test_fitted_accuracy_predictor_as_top1(workspace: Workspace, assets_dir: Path, tmp_path: Path) -> None:
    from ofa2_edge.accuracy.predictor import DenseAccuracyPredictor

    # a linear "predictor": 70 % plus 1 point per active kernel-7 slot
    w = np.zeros((128, 1), dtype=np.float32)
    w[2:60:3, 0] = 1.0
    path = DenseAccuracyPredictor([w], [np.array([70.0])], resolutions=(160, 176, 192, 208, 224)).save(tmp_path / "acc.json")
    objs = build_objectives(["top1", "macs"], [], ctx(workspace, assets_dir, accuracy=str(path)))
    top1 = objs.evaluate(genomes_of([Arch.smallest(160), Arch.largest(224)])).values["top1"]
    np.testing.assert_allclose(top1, [70.0, 90.0])
    assert objs.metrics["top1"].source["kind"] == "fitted"
    with pytest.raises(Exception, match="no such accuracy predictor file"):
        build_objectives(["top1", "macs"], [], ctx(workspace, assets_dir, accuracy=str(tmp_path / "nope.json")))


def test_a_new_objective_is_one_registered_builder(tmp_path: Path) -> None:
    """Registering a family makes it resolvable by name, listed, and usable in constraints."""
    from ofa2_edge.search import objectives as ob

    @ob.register_metric("depth-total-test", help="total number of blocks")
    def _depth(arg: str, ctx: ob.MetricContext) -> ob.Metric:
        return ob.Metric("depth-total-test", "blocks", "", False, lambda g: g[:, 40:45].sum(axis=1).astype(float))

    try:
        assert "depth-total-test" in ob.metric_names()
        ctx = ob.MetricContext(Workspace.resolve(tmp_path, tmp_path / "cache"), SearchSpace())
        objs = ob.build_objectives(["macs", "depth-total-test"], ["depth-total-test<=18"], ctx)
        assert objs.n_obj == 2 and objs.n_constr == 1
        with pytest.raises(ValueError, match="registered twice"):
            ob.register_metric("depth-total-test")(_depth)
    finally:
        ob._METRICS.pop("depth-total-test")
