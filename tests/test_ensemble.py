"""Ensembles of front subnets: exact soft-vote scoring, split hygiene, resume, the CLI,
one-graph export (parity with torch and with the table's stored probabilities) and
measurement on the local device in both execution modes. Real supernet (random weights
bound to a tiny real dataset), real accuracy table, real onnxruntime and agent."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ofa2_edge.accuracy.source import open_supernet
from ofa2_edge.accuracy.table import AccuracyTable
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.data import batches, open_dataset
from ofa2_edge.ensemble.pool import Split, ensemble_id, load_pool, predicted_latency_ms
from ofa2_edge.ensemble.search import EnsembleConfig, EnsembleRunFolder, run_ensemble_search
from tests.ensemble_setup import DEVICE, TABLE, build_workspace


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_workspace(tmp_path_factory.mktemp("ens"))


@pytest.fixture(scope="module")
def pool(env: dict[str, Path]):  # noqa: ANN201
    ws = Workspace.resolve(env["ws"])
    table = AccuracyTable.of(ws, TABLE)
    return load_pool(ws, [r.arch for r in table.measured(0).values()], table, DEVICE)


def _cfg(**kw) -> EnsembleConfig:  # noqa: ANN003
    base = dict(source_run="t", table=TABLE, device=DEVICE, pop_size=16, n_gen=8, seed=3)
    return EnsembleConfig(**{**base, **kw})


def test_soft_vote_is_the_mean_of_the_stored_probabilities(env: dict[str, Path], pool) -> None:  # noqa: ANN001
    table = AccuracyTable.of(Workspace.resolve(env["ws"]), TABLE)
    ids = pool.ids[:3]
    labels = open_dataset(env["data"]).labels("val")
    mean = np.mean([table.probabilities(i, "val").astype(np.float32) for i in ids], axis=0)
    want = 100.0 * float((mean.argmax(1) == labels).mean())
    assert pool.val.top1_pct(pool.masks_of([ids]))[0] == pytest.approx(want)
    # a one-member ensemble is its subnet: the table's own top-1
    singles = pool.val.top1_pct(np.eye(pool.size, dtype=bool))
    assert np.allclose(singles, pool.single_val_top1_pct, atol=100.0 / labels.size + 1e-9)
    assert ensemble_id(ids) == ensemble_id(list(reversed(ids))) != ensemble_id(ids[:2])


def test_predicted_latency_is_the_sum_or_the_parallel_bound() -> None:
    lat = np.array([1.0, 2.0, 4.0])
    masks = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1]], dtype=bool)
    assert predicted_latency_ms(lat, masks, "sequential", None).tolist() == [7.0, 1.0, 6.0]
    assert predicted_latency_ms(lat, masks, "parallel", 4).tolist() == [4.0, 1.0, 4.0]  # enough cores: the slowest
    assert predicted_latency_ms(lat, masks, "parallel", 1).tolist() == [7.0, 1.0, 6.0]  # one core: no overlap
    assert predicted_latency_ms(lat, masks, "parallel", 2).tolist() == [4.0, 1.0, 4.0]
    assert predicted_latency_ms(np.array([3.0, 3.0, 3.0]), masks[:1], "parallel", 2).tolist() == [4.5]
    with pytest.raises(InvalidInputError, match="core count"):
        predicted_latency_ms(lat, masks, "parallel", None)


def _front(folder: Path) -> list[tuple[str, float, float]]:
    doc = EnsembleRunFolder(folder).front()
    return [(r["ensemble_id"], r["val_top1_pct"], r["latency_ms"]) for r in doc["rows"]]


def test_test_split_data_never_influences_the_choice(pool, tmp_path: Path) -> None:  # noqa: ANN001
    """Split hygiene: scrambling every test probability and label changes no chosen ensemble
    (only the reported test top-1), while scrambling the val labels does change the choice."""
    assert pool.test is not None
    run_ensemble_search(pool, _cfg(), tmp_path / "a")
    rng = np.random.default_rng(0)
    noise = rng.random(pool.test.probs.shape).astype(np.float32)
    scrambled = dataclasses.replace(pool, test=Split("test", noise / noise.sum(2, keepdims=True), rng.permutation(pool.test.labels)))
    run_ensemble_search(scrambled, _cfg(), tmp_path / "b")
    a, b = (EnsembleRunFolder(tmp_path / x) for x in "ab")
    assert _front(tmp_path / "a") == _front(tmp_path / "b")
    assert a.file("evaluations.jsonl").read_bytes() == b.file("evaluations.jsonl").read_bytes()
    assert [r["test_top1_pct"] for r in a.front()["rows"]] != [r["test_top1_pct"] for r in b.front()["rows"]]
    # the check has teeth: the val split does steer the search
    other = dataclasses.replace(pool, val=Split("val", pool.val.probs, np.roll(pool.val.labels, 1)))
    run_ensemble_search(other, _cfg(), tmp_path / "c")
    assert _front(tmp_path / "c") != _front(tmp_path / "a")


def test_an_interrupted_search_resumes_exactly(pool, tmp_path: Path) -> None:  # noqa: ANN001
    full = run_ensemble_search(pool, _cfg(), tmp_path / "full")
    assert full["state"] == "completed"

    def stop(row: dict) -> None:
        if row["gen"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ensemble_search(pool, _cfg(), tmp_path / "cut", progress=stop)
    cut = EnsembleRunFolder(tmp_path / "cut")
    assert cut.status()["state"] == "interrupted" and cut.checkpoint()["gen"] == 4
    with cut.file("evaluations.jsonl").open("ab") as fh:
        fh.write(b'{"ensemble_id": "torn')  # a killed writer's last line
    with pytest.raises(InvalidInputError, match="differ from it: n_gen"):
        run_ensemble_search(pool, _cfg(n_gen=9), tmp_path / "cut", resume=True)
    done = run_ensemble_search(pool, None, tmp_path / "cut", resume=True)
    assert done["state"] == "completed"
    assert _front(tmp_path / "cut") == _front(tmp_path / "full")
    f1, f2 = (EnsembleRunFolder(tmp_path / x).file("evaluations.jsonl").read_bytes() for x in ("full", "cut"))
    assert f1 == f2
    # a finished run is not changed by another resume; a new run into it is refused
    before = cut.file("front.json").read_bytes()
    assert run_ensemble_search(pool, None, tmp_path / "cut", resume=True)["state"] == "completed"
    assert cut.file("front.json").read_bytes() == before
    with pytest.raises(InvalidInputError, match="not empty"):
        run_ensemble_search(pool, _cfg(), tmp_path / "cut")


def test_members_stay_within_the_limit_and_singles_are_candidates(pool, tmp_path: Path) -> None:  # noqa: ANN001
    run_ensemble_search(pool, _cfg(max_members=2, mode="parallel"), tmp_path / "p")
    folder = EnsembleRunFolder(tmp_path / "p")
    rows, _ = folder.rows()
    assert rows and all(1 <= r["n_members"] <= 2 for r in rows)
    assert {r["members"][0] for r in rows if r["n_members"] == 1} == set(pool.ids)  # every single subnet scored
    cfg = folder.config()
    assert cfg["objectives"][1]["mode"] == "parallel" and cfg["objectives"][1]["cores"] == 2
    for r in folder.front()["rows"]:  # parallel: max(slowest, sum / 2 cores)
        assert r["latency_ms"] == pytest.approx(max(r["latency_max_ms"], r["latency_sum_ms"] / 2))


def cli(capsys: pytest.CaptureFixture[str], ws: Path, *args: str) -> tuple[int, str, str]:
    code = main(["-W", str(ws), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_evaluates_missing_front_members_then_searches(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ws = env["ws"]
    assert cli(capsys, ws, "fit-accuracy", "--table", TABLE, "--json")[0] == 0
    code, _, err = cli(capsys, ws, "search", "--objectives", f"top1,latency:{DEVICE}", "--accuracy", TABLE,
                       "--pop", "12", "--gens", "4", "--seed", "2", "-o", str(ws / "runs" / "s"), "--json")  # fmt: skip
    assert code == 0, err
    front = json.loads((ws / "runs" / "s" / "front.json").read_text())["rows"]
    table = AccuracyTable.of(Workspace.resolve(ws), TABLE)
    missing = {r["arch_id"] for r in front} - set(table.measured(0))
    args = ("ensemble", "s", "--table", TABLE, "--device", DEVICE, "--pop", "12", "--gens", "5", "--json")
    code, _, err = cli(capsys, ws, *args)
    assert code == 1 and "--supernet" in err and not (ws / "runs" / "s-ens").exists()
    code, out, err = cli(capsys, ws, *args, "--supernet", str(env["supernet"]))
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["evaluated_into_table"]) == missing
    assert {r["arch_id"] for r in front} <= set(table.measured(0))
    run = EnsembleRunFolder(ws / "runs" / "s-ens")
    assert run.status()["state"] == "completed" and run.front()["rows"]
    assert {c["arch_id"] for c in run.config()["candidates"]} == {r["arch_id"] for r in front}
    code, _, err = cli(capsys, ws, *args, "--supernet", str(env["supernet"]))
    assert code == 1 and "--resume" in err
    assert cli(capsys, ws, *args, "--resume")[0] == 0  # finished: nothing to do
    # the ensemble run is listed and shown beside the search run it came from
    code, out, err = cli(capsys, ws, "runs", "list", "--json")
    assert code == 0, err
    assert {(r["run_id"], r["kind"]) for r in json.loads(out)} == {("s", "search"), ("s-ens", "ensemble")}
    code, out, err = cli(capsys, ws, "runs", "show", "s-ens", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["kind"] == "ensemble" and shown["state"] == "completed" and shown["front"]["front_2d"] == run.front()["front_2d"]
    code, out, err = cli(capsys, ws, "runs", "show", "s-ens")
    assert code == 0 and "ensemble run s-ens" in out and run.front()["front_2d"][0]["ensemble_id"] in out
    # --measure without --supernet: random weights, but the TABLE's classifier (its head is part of the latency);
    # the imported table's device becomes this machine for it
    assert cli(capsys, ws, "devices", "add", DEVICE)[0] == 0
    code, out, err = cli(capsys, ws, *args, "--resume", "--measure", "1", "--quick")
    assert code == 0, err
    rows = json.loads(out)["measured"]
    assert {r["mode"] for r in rows} == {"sequential", "parallel"} and all(r["ok"] for r in rows)
    files = {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in Workspace.resolve(ws).exports_dir.rglob("*.onnx")}
    n_classes = len(table.binding().classes)
    for r in rows:
        model = onnx.load(str(files[r["model_sha256"]]))
        assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, n_classes]
    code, _, err = cli(capsys, ws, *args[:-1], "--mode", "parallel", "--cores", "0", "-o", str(ws / "runs" / "x"))
    assert code == 1 and "--cores" in err


def test_export_is_one_graph_matching_torch_and_the_table(env: dict[str, Path], pool) -> None:  # noqa: ANN001
    """Members at one resolution, BN recalibrated as the table did: the ONNX file's output on
    the val images is the mean of the stored probabilities (float16 storage tolerance)."""
    from exporters import ExportCache
    from ofa2_edge.ensemble.export import export_ensemble

    trained = open_supernet(env["supernet"])
    ds = open_dataset(env["data"])
    by_r: dict[int, list] = {}
    for a in pool.archs:
        by_r.setdefault(a.r, []).append(a)
    members = max(by_r.values(), key=len)[:2]
    assert len(members) == 2
    model = export_ensemble(members, trained.net, ExportCache(env["ws"] / "cache"), dataset=ds, bn_images=32, batch_size=64)
    assert model.parity["max_abs_diff"] <= model.parity["tolerance"]
    graph = onnx.load(str(model.path))
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["probs"]
    meta = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert meta["arch"]["ensemble"]["member_ids"] == sorted(a.id for a in members)
    sess = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    x = torch.cat([b for b, _ in batches(ds, "val", members[0].r, 64)]).numpy()
    got = np.concatenate([sess.run(None, {"input": xi[None]})[0] for xi in x])
    table = AccuracyTable.of(Workspace.resolve(env["ws"]), TABLE)
    want = np.mean([table.probabilities(a.id, "val").astype(np.float32) for a in members], axis=0)
    assert np.abs(got - want).max() < 2e-3


def test_mixed_resolutions_resize_in_graph_and_measure_in_both_modes(tmp_path: Path) -> None:
    from exporters import ExportCache
    from ofa2_edge.devices.inventory import Inventory
    from ofa2_edge.devices.session import DeviceSession
    from ofa2_edge.ensemble.export import export_ensemble, member_subnets
    from ofa2_edge.ensemble.measure import MEASURED_FILE, measure_ensembles, read_measured
    from ofa2_edge.space.arch import Arch

    a, b = Arch.smallest(32, 1.0), Arch.smallest(40, 1.0)
    cache = ExportCache(tmp_path / "cache")
    model = export_ensemble([b, a], cache=cache)
    graph = onnx.load(str(model.path))
    assert "Resize" in {n.op_type for n in graph.graph.node} and model.inputs[0].shape == (1, 3, 40, 40)
    # independent reference: each member on its own resized input, softmax, mean
    subs = {s.arch.r: s for s in member_subnets([a, b])}
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        small = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        want = (torch.softmax(subs[32](small), 1) + torch.softmax(subs[40](x), 1)).numpy() / 2
    got = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-3

    ws = Workspace.resolve(tmp_path / "ws")
    device = Inventory.load(ws.inventory_path).get("local")
    record = tmp_path / MEASURED_FILE
    with DeviceSession(device, ws.cache_dir) as session:
        for mode in ("sequential", "parallel"):
            rows = measure_ensembles(session, [[a, b]], mode, cache, cores=2, quick=True, record_to=record)
            (row,) = rows
            assert row["ok"] and row["estimate_ms"] > 0 and row["mode"] == mode
            assert row["runtime"] == {"sequential": "onnxruntime", "parallel": "onnxruntime-parallel"}[mode]
            assert row["threads"] == (1 if mode == "sequential" else 2) and row["model_sha256"] == model.sha256
        again = measure_ensembles(session, [[b, a]], "parallel", cache, cores=2, quick=True, record_to=record)
    assert len(read_measured(record)) == 2 and again[0]["ensemble_id"] == ensemble_id([a.id, b.id])


def test_a_bundle_holds_one_ensemble_model_and_lists_its_members(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from ofa2_edge.core.errors import SchemaError
    from ofa2_edge.deploy.bundle import check_manifest

    ws = env["ws"]
    run = EnsembleRunFolder(ws / "runs" / "s-ens")
    if not run.exists():  # the CLI test makes it; alone, make it here
        test_cli_evaluates_missing_front_members_then_searches(env, capsys)
    front = run.front()["rows"]
    pick = max(front, key=lambda r: (r["n_members"], r["val_top1_pct"]))
    code, out, err = cli(capsys, ws, "bundle", "build", "s-ens", "--device", DEVICE, "--pick", pick["ensemble_id"], "--json")
    assert code == 1 and "--supernet" in err
    bundles = Workspace.resolve(ws).root / "bundles"
    before = sorted(bundles.rglob("*")) if bundles.exists() else []
    code, out, err = cli(capsys, ws, "bundle", "build", "s-ens", "--device", DEVICE, "--pick", pick["ensemble_id"],
                         "--supernet", str(env["supernet"]), "--verify", "--json")  # fmt: skip
    assert code == 1 and "--verify is not implemented for ensemble bundles" in err and "--measure" in err  # never silently skipped
    assert (sorted(bundles.rglob("*")) if bundles.exists() else []) == before
    code, out, err = cli(capsys, ws, "bundle", "build", "s-ens", "--device", DEVICE, "--pick", pick["ensemble_id"],
                         "--supernet", str(env["supernet"]), "--json")  # fmt: skip
    assert code == 0, err
    folder = Path(json.loads(out)["folder"])
    m = json.loads((folder / "manifest.json").read_text())
    assert m["arch"]["id"] == pick["ensemble_id"] and m["arch"]["ensemble"]["rule"] == "soft-vote"
    assert [x["id"] for x in m["arch"]["ensemble"]["members"]] == pick["members"]
    assert m["accuracy"]["val_top1_pct"] == pick["val_top1_pct"] and m["accuracy"]["test_top1_pct"] == pick["test_top1_pct"]
    assert m["status"] == "deployable" and [f["name"] for f in m["files"] if f["name"].startswith("model.")] == ["model.onnx"]
    assert (folder / "labels.txt").read_text().splitlines() == list(AccuracyTable.of(Workspace.resolve(ws), TABLE).binding().classes)
    assert cli(capsys, ws, "bundle", "check", str(folder))[0] == 0
    assert cli(capsys, ws, "bundle", "check", str(folder.with_name(folder.name + ".tar.gz")))[0] == 0
    # the file answers like the stored probabilities say (same BN as the table, same-resolution images)
    r = max(a["r"] for a in m["arch"]["ensemble"]["members"])
    if all(a["r"] == r for a in m["arch"]["ensemble"]["members"]):
        ds = open_dataset(env["data"])
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        x = torch.cat([b for b, _ in batches(ds, "test", r, 64)]).numpy()
        got = np.concatenate([sess.run(None, {"input": xi[None]})[0] for xi in x])
        table = AccuracyTable.of(Workspace.resolve(ws), TABLE)
        want = np.mean([table.probabilities(i, "test").astype(np.float32) for i in pick["members"]], axis=0)
        assert np.abs(got - want).max() < 2e-3  # (random weights: near-uniform probabilities, so not argmax)
    # a manifest whose members do not make its id is refused
    bad = json.loads(json.dumps(m))
    bad["arch"]["ensemble"]["members"] = bad["arch"]["ensemble"]["members"][:1] if len(pick["members"]) > 1 else []
    with pytest.raises(SchemaError):
        check_manifest(bad, "manifest.json")


def _ensure_runs(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> EnsembleRunFolder:
    run = EnsembleRunFolder(env["ws"] / "runs" / "s-ens")
    if not run.exists():
        test_cli_evaluates_missing_front_members_then_searches(env, capsys)
    return run


def test_dashboard_carries_the_ensemble_front(env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.test_dashboard import blob_of

    run = _ensure_runs(env, capsys)
    out = tmp_path / "d.html"
    code, stdout, err = cli(capsys, env["ws"], "dashboard", "s", "-o", str(out), "--json")  # finds runs/s-ens by itself
    assert code == 0, err
    front2d = run.front()["front_2d"]
    assert json.loads(stdout)["ensembles"] == len(front2d)
    ens = blob_of(out.read_text())["ensembles"]
    assert ens["device"] == DEVICE and [r["id"] for r in ens["rows"]] == [r["ensemble_id"] for r in front2d]
    assert [(r["top1"], r["lat"]) for r in ens["rows"]] == [(r["val_top1_pct"], r["latency_ms"]) for r in front2d]
    code, _, err = cli(capsys, env["ws"], "dashboard", "s", "-o", str(out), "--ensemble", str(tmp_path))
    assert code == 1 and "not an ensemble run" in err


@pytest.mark.browser
def test_the_sliders_filter_the_ensembles_too(
    chromium: str,
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.test_dashboard import SET_SLIDER, offline_page

    executable = chromium
    run = _ensure_runs(env, capsys)
    rows = run.front()["front_2d"]
    out = tmp_path / "d.html"
    assert cli(capsys, env["ws"], "dashboard", "s", "-o", str(out))[0] == 0
    state = """() => {
      const gd = document.getElementById("pareto"), t = gd.data.find((x) => x.meta === "ens-pass");
      return {count: document.getElementById("ens-count").textContent, ids: t ? t.ids : [],
              maxLat: document.getElementById("max-latency").value, minTop1: document.getElementById("min-top1").value};
    }"""
    with offline_page(executable, out, tmp_path / "profile") as page:
        s = page.evaluate(state)
        assert s["count"] == f"{len(rows)} of {len(rows)} ensembles pass" and sorted(s["ids"]) == sorted(r["ensemble_id"] for r in rows)
        mid = sorted(r["latency_ms"] for r in rows)[len(rows) // 2]
        page.evaluate(SET_SLIDER, ["max-latency", f"{mid:.6f}"])
        s = page.evaluate(state)
        want = [r["ensemble_id"] for r in rows if r["latency_ms"] <= float(s["maxLat"]) and r["val_top1_pct"] >= float(s["minTop1"])]
        assert 0 < len(want) < len(rows)
        assert s["count"] == f"{len(want)} of {len(rows)} ensembles pass" and sorted(s["ids"]) == sorted(want)


@pytest.mark.tflite
@pytest.mark.slow
def test_tflite_export_of_an_ensemble_matches_its_onnx_export(tmp_path: Path) -> None:
    from conftest import skip_or_fail

    from exporters import ExportCache
    from ofa2_edge.ensemble.export import export_ensemble
    from ofa2_edge.space.arch import Arch

    for module in ("litert_torch", "ai_edge_litert"):
        try:
            __import__(module)
        except ImportError:
            skip_or_fail("tflite", f"{module} is not installed (pip install 'ofa2-edge[tflite]')")
    from ai_edge_litert.interpreter import Interpreter

    members = [Arch.smallest(32, 1.0), Arch.smallest(40, 1.0)]
    cache = ExportCache(tmp_path / "cache")
    tfl = export_ensemble(members, cache=cache, fmt="tflite")
    onx = export_ensemble(members, cache=cache)
    assert tfl.format == "tflite" and tfl.parity["max_abs_diff"] <= 1e-3 and tfl.outputs[0].name == "probs"
    x = np.random.default_rng(2).standard_normal((1, 3, 40, 40)).astype(np.float32)
    runner = Interpreter(model_path=str(tfl.path), num_threads=1).get_signature_runner("serving_default")
    got = runner(input=x)["probs"]
    want = ort.InferenceSession(str(onx.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - want).max() < 1e-3
