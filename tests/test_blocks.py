"""Block-mode calibration: the layer set, single-layer exports, tables, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from records_factory import probe_report, record_for

from device_agents.records import Protocol
from exporters import ExportCache, export_layer, random_supernet
from exporters.onnx_export import LAYER_OUTPUT_NAME, read_onnx_metadata
from exporters.parity import parity_tensors, torch_outputs
from ofa2_edge.calibration.blocks import (
    TableLayer,
    calibrate_blocks,
    distinct_layers,
    fit_after_blocks,
    resolution_layers,
    table_layers,
    write_complete_tables,
)
from ofa2_edge.calibration.calibrate import fit_table
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE, InvalidArchError, InvalidInputError, SchemaError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.devices.inventory import Device
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS, Arch, SearchSpace
from ofa2_edge.space.netplan import Layer, layer_plan, slot_layer, stem_layers, tail_layers
from ofa2_edge.supernet.layer import extract_layer
from ofa2_edge.surrogates.base import load_surrogate
from ofa2_edge.surrogates.lut import LutSurrogate, lut_latency, read_ofa_table, read_ofa_tables, write_ofa_table
from ofa2_edge.tables.device import DeviceTable, MeasureKey

FINGERPRINT = "f" * 16
PROTOCOL = Protocol()


def layer_record(t: TableLayer, ms: float, protocol: Protocol = PROTOCOL, fingerprint: str = FINGERPRINT):
    """An agent record of layer `t` (built with the agent's own dataclasses, so it validates)."""
    base = record_for(Arch.smallest(160), ms, protocol, fingerprint=fingerprint)
    return dataclasses.replace(base, arch_id=t.id, arch=t.to_dict(), model_file=f"{t.id}.onnx")


KEY = MeasureKey(FINGERPRINT, "onnxruntime", "1.0", PROTOCOL)


# ------------------------------------------------------------------ the layer set
@pytest.mark.parametrize("r", DEFAULT_RESOLUTIONS)
def test_layer_set_is_ofa_note10_key_set(r: int, assets_dir: Path) -> None:
    layers = resolution_layers(r, SearchSpace())
    ofa = read_ofa_table(assets_dir / "note10" / f"{r}_lookup_table.yaml")
    assert len(layers) == len(ofa) == 96
    assert [t.key for t in layers] == list(dict.fromkeys(t.key for t in layers))  # distinct
    assert {t.key for t in layers} == set(ofa)
    kinds = [t.layer.kind for t in layers]
    assert kinds[:2] == ["Conv", "expanded_conv"] and kinds[-4:] == ["Conv_1", "AvgPool2D", "Conv_2", "Logits"]
    assert len({t.id for t in layers}) == 96 and all(t.id.startswith("l-") and len(t.id) == 14 for t in layers)


def test_layers_shared_between_resolutions_are_measured_once() -> None:
    by_r = table_layers(SearchSpace())
    # 5 x 96 keys; Conv_2 and Logits (1x1) are the same everywhere, and 176/192 and 208/224 share
    # their last feature-map size (6x6, 7x7): the later stage-5 blocks, Conv_1 and AvgPool2D
    shared_last_stage = 9 + 2
    assert len(distinct_layers(by_r)) == 5 * 96 - 4 * 2 - 2 * shared_last_stage == 450
    assert len(distinct_layers({160: by_r[160]})) == 96


def test_a_restricted_space_needs_fewer_layers() -> None:
    space = SearchSpace(resolutions=(160,), ks=(3,), e=(3, 6), d=(2,))
    layers = resolution_layers(160, space)
    # stem 2 + per stage (first block, later blocks) x 1 kernel x 2 expands + tail 4
    assert len(layers) == 2 + 5 * 2 * 2 + 4


# ------------------------------------------------------------------ single layers
def test_chained_layers_compute_exactly_the_subnet() -> None:
    net = random_supernet(1.2)
    arch = Arch(ks=(3, 5, 7, 3) * 5, e=(3, 4, 6, 6) * 5, d=(4, 3, 2, 4, 3), r=160, w=1.2)
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = x
        for layer in layer_plan(arch):
            single = extract_layer(net, layer)
            y = single(y)
            assert tuple(y.shape) == single.output_shape
        np.testing.assert_array_equal(y.numpy(), net.extract(arch)(x).numpy())


@pytest.mark.parametrize(
    "layer",
    [
        stem_layers(176, 1.2)[0],
        stem_layers(176, 1.2)[1],
        slot_layer(176, 1.2, 4, 7, 6),  # stage 2's first block: stride 2, SE
        slot_layer(176, 1.2, 13, 5, 4),  # a later block: identity skip, SE, h-swish
        *tail_layers(176, 1.2),
    ],
    ids=lambda layer: layer.kind + (f"-{layer.slot}" if layer.slot is not None else ""),
)
def test_single_layer_export_parity(layer: Layer, tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    model = export_layer(layer, 1.2, "onnx", cache=cache)
    single = extract_layer(random_supernet(1.2), layer)
    assert model.arch_id == single.id and model.metadata["arch"] == {"layer": layer.lut_key(), "w": 1.2}
    assert model.inputs[0].shape == single.input_shape and model.outputs[0].shape == single.output_shape
    p = model.parity
    assert p["max_abs_diff"] <= p["tolerance"] and not p.get("weak")  # O(1) outputs: the check means something
    assert 0.1 < p["reference_max_abs"] < 100
    assert read_onnx_metadata(model.path)["latency_only"] is True
    # the file runs in onnxruntime and computes what torch computes (BN stats as exported: on noise)
    x = parity_tensors(single.input_shape[1:], n=1, seed=7)
    sess = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    got = sess.run([LAYER_OUTPUT_NAME], {"input": x})[0]
    assert got.shape == single.output_shape and np.all(np.isfinite(got))
    assert export_layer(layer, 1.2, "onnx", cache=cache).cached


def test_bn_of_a_single_layer_is_recalibrated_on_its_input(tmp_path: Path) -> None:
    layer = slot_layer(160, 1.2, 8, 3, 4)
    model = export_layer(layer, 1.2, cache=ExportCache(tmp_path))
    assert model.metadata["bn_stats_source"].startswith("noise:0")
    single = extract_layer(random_supernet(1.2), layer)
    out = torch_outputs(single, parity_tensors(single.input_shape[1:]))
    assert float(np.abs(out).max()) == pytest.approx(model.parity["reference_max_abs"], rel=0.5)


def test_layer_export_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    layer = stem_layers(160, 1.2)[0]
    with pytest.raises(InvalidInputError, match="single layer exports to onnx, not 'tflite'"):
        export_layer(layer, 1.2, "tflite", cache=cache)
    with pytest.raises(InvalidInputError, match="not a layer of the w1.2"):
        export_layer(stem_layers(160, 1.0)[0], 1.2, cache=cache)  # a w1.0 layer, w1.2 weights
    with pytest.raises(InvalidInputError, match="sizes do not fit its stride"):
        export_layer(dataclasses.replace(layer, out_size=81), 1.2, cache=cache)
    assert not any(cache.root.rglob("*.onnx"))


# ------------------------------------------------------------------ tables from records
def _bound_table(ws: Path, key: str = "board") -> DeviceTable:
    table = DeviceTable(ws / "latency_tables", key)
    table.bind(probe_report(cpu_model="Cortex-A72"), "onnxruntime")
    return table


def test_tables_are_written_only_when_complete_and_price_archs_by_their_layers(tmp_path: Path) -> None:
    table = _bound_table(tmp_path)
    by_r = table_layers(SearchSpace(resolutions=(160, 176)))
    rng = np.random.default_rng(0)
    layers = distinct_layers(by_r)
    ms = {t.id: float(rng.uniform(0.01, 2.0)) for t in layers}
    for t in layers[:-30]:  # the last 30 belong to 176 only
        table.append_block(layer_record(t, ms[t.id]))
    table.append_block(layer_record(layers[-1], 9.9, protocol=Protocol(blocks=3)))  # another protocol: not counted
    written, missing = write_complete_tables(table, by_r, table.measured_blocks(KEY))
    assert list(written) == [160] and len(missing[176]) == 30
    for t in layers[-30:]:
        table.append_block(layer_record(t, ms[t.id]))
    written, missing = write_complete_tables(table, by_r, table.measured_blocks(KEY))
    assert sorted(written) == [160, 176] and not missing

    lut = LutSurrogate(read_ofa_tables(table.folder))
    assert lut.covers(160) and lut.covers(176) and not lut.covers(192)
    archs = SearchSpace(resolutions=(160, 176)).sample(200, np.random.default_rng(1))
    by_key = {t.key: ms[t.id] for ls in by_r.values() for t in ls}
    expected = [sum(by_key[layer.lut_key()] for layer in layer_plan(a)) for a in archs]
    np.testing.assert_allclose(lut.predict(archs), expected, rtol=1e-12)  # exactly the sum of its layers
    table160 = read_ofa_table(table.folder / "160_lookup_table.yaml")
    at160 = [a for a in archs if a.r == 160]
    np.testing.assert_allclose(lut.predict(at160), [lut_latency(a, table160) for a in at160], rtol=1e-12)
    entry = table160[by_r[160][0].key]
    assert (entry.count, entry.std) == (10, 0.0)  # count = timed runs, std from the record
    with pytest.raises(InvalidArchError, match="covers resolutions 160, 176, not 224"):
        lut.predict([Arch.largest(224)])


def _e2e(table: DeviceTable, lut: LutSurrogate, space: SearchSpace, n: int) -> None:
    """End-to-end records whose latency is the LUT sum plus a per-net overhead (what a real
    device shows: the sum misses per-call costs), so the hybrid has something to learn."""
    for arch in space.sample(n, np.random.default_rng(3)):
        ms = float(lut.predict([arch])[0]) * 1.3 + 0.8
        table.append(record_for(arch, ms, PROTOCOL, fingerprint=table.device_info()["fingerprint"]))


def test_hybrid_is_tried_only_where_the_block_table_covers_the_data(tmp_path: Path, assets_dir: Path) -> None:
    table = _bound_table(tmp_path)
    note10 = read_ofa_tables(assets_dir / "note10")
    write_ofa_table(table.folder / "160_lookup_table.yaml", note10[160])
    _e2e(table, LutSurrogate(note10), SearchSpace(resolutions=(160, 176)), 30)
    _, report = fit_table(table, 1.2)
    note = report["table"]["block_table"]
    assert note["used"] is False and "does not cover the measured resolution(s) 176" in note["reason"]
    assert not any(row["kind"] == "hybrid" for row in report["selection"]["candidates"])

    write_ofa_table(table.folder / "176_lookup_table.yaml", note10[176])
    model, report = fit_after_blocks(table, 1.2)
    assert report["table"]["block_table"]["used"] is True
    assert {row["name"] for row in report["selection"]["candidates"]} >= {"hybrid[add]", "hybrid[log]"}
    assert report["held_out"]["share_within_10pct"] >= 0.95  # LUT x 1.3 + 0.8 ms: the hybrid's form


def test_without_end_to_end_data_the_lut_sum_is_the_predictor(tmp_path: Path, assets_dir: Path) -> None:
    table = _bound_table(tmp_path)
    assert fit_after_blocks(table, 1.2) == (None, {})
    write_ofa_table(table.folder / "160_lookup_table.yaml", read_ofa_table(assets_dir / "note10/160_lookup_table.yaml"))
    model, report = fit_after_blocks(table, 1.2)
    again = load_surrogate(table.surrogate_path)
    assert isinstance(again, LutSurrogate) and again.resolutions == (160,) and "uncorrected" in report["note"]
    assert again.predict([Arch.smallest(160)])[0] == pytest.approx(9.89, abs=0.005)  # Note10's min net


# ------------------------------------------------------------------ bad input
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda doc: {**doc, "arch_id": "l-000000000000"}, "not a layer record"),
        (lambda doc: {**doc, "arch": {"ks": [3] * 20}}, "not a layer record"),
        (lambda doc: {**doc, "schema_version": 9}, "schema_version"),
        (lambda doc: {**doc, "stats": None}, "needs stats"),
    ],
)
def test_a_damaged_block_record_is_refused_and_nothing_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, message: str
) -> None:
    ws = tmp_path / "ws"
    table = _bound_table(ws, "local")
    layers = resolution_layers(160, SearchSpace(resolutions=(160,)))
    for t in layers[:5]:
        table.append_block(layer_record(t, 0.5))
    lines = table.blocks_path.read_text().splitlines()
    lines[2] = json.dumps(damage(json.loads(lines[2])))
    table.blocks_path.write_text("\n".join(lines) + "\n")
    before = _snapshot(table.folder)
    with pytest.raises(SchemaError, match=message) as info:
        list(table.block_records())
    assert "blocks.jsonl:3" in str(info.value)
    args = ["-W", str(ws), "calibrate", "--blocks", "--resolutions", "160", "--quick"]
    assert main(args) != 0
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "blocks.jsonl:3" in err and "fix or remove that line" in err
    assert _snapshot(table.folder) == before


def test_a_torn_last_line_is_measured_again(tmp_path: Path) -> None:
    table = _bound_table(tmp_path)
    layers = resolution_layers(160, SearchSpace(resolutions=(160,)))
    for t in layers[:3]:
        table.append_block(layer_record(t, 0.5))
    with open(table.blocks_path, "ab") as fh:
        fh.write(table.blocks_path.read_bytes().splitlines()[0][:40])  # a crash mid-write
    assert len(table.measured_blocks(KEY)) == 3


def test_bad_options_change_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    assert main(["-W", str(ws), "calibrate", "--blocks", "--resolutions", "20", "--quick"]) == EXIT_FAILURE
    assert "resolutions value 20 is not allowed" in capsys.readouterr().err
    assert main(["-W", str(ws), "calibrate", "--budget", "0"]) == EXIT_FAILURE
    assert "--budget 0 measures nothing" in capsys.readouterr().err
    assert not (ws / "latency_tables").exists()
    pi = Device("pi", runtime="litert")
    with pytest.raises(InvalidInputError, match="block tables are measured from single-layer onnx exports"):
        calibrate_blocks(pi, Workspace.resolve(ws, tmp_path / "cache"), PROTOCOL)
    assert not (ws / "latency_tables").exists()


# ------------------------------------------------------------------ the real thing, killed and resumed
def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ofa2_edge", *args]


@pytest.mark.slow
def test_block_calibration_on_local_survives_kill_9_and_prices_archs(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    env = {**os.environ, "OFA2_EDGE_CACHE": str(tmp_path / "cache")}
    args = cli("-W", str(ws), "calibrate", "--blocks", "--resolutions", "160", "--quick", "--timer", "thread_cpu",
               "--json")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    table = DeviceTable(ws / "latency_tables", "local")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (not table.blocks_path.exists() or len(list(table.block_records())) < 10):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole tree: CLI, agent and workers
    proc.wait()
    before = list(table.block_records())
    assert 10 <= len(before) < 96, "the kill should land mid-calibration"
    assert not (table.folder / "160_lookup_table.yaml").exists() and not table.surrogate_path.exists()

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)["blocks"]
    assert summary["already_measured"] == len(before) and summary["measured_now"] == 96 - len(before)
    after = list(table.block_records())
    assert [r.arch_id for r in after[: len(before)]] == [r.arch_id for r in before]  # nothing lost or rewritten
    assert len({r.arch_id for r in after}) == 96 and all(r.ok for r in after)
    assert all(r.protocol.timer == "thread_cpu" for r in after)
    assert not table.measurements_path.exists()  # layer records stay apart from the arch records

    lut = LutSurrogate.from_folder(table.folder)
    assert lut.resolutions == (160,) and lut.covers(160)
    by_key = {r.arch["layer"]: r.estimate_ms for r in after}
    archs = SearchSpace(resolutions=(160,)).sample(50, np.random.default_rng(0))
    expected = [sum(by_key[layer.lut_key()] for layer in layer_plan(a)) for a in archs]
    np.testing.assert_allclose(lut.predict(archs), expected, rtol=1e-12)
    small, large = lut.predict([Arch.smallest(160), Arch.largest(160)])
    assert 0 < small < large
    assert isinstance(load_surrogate(table.surrogate_path), LutSurrogate)
    with pytest.raises(InvalidArchError, match="covers resolutions 160, not 224"):
        lut.predict([Arch.largest(224)])

    # with a budget, the subnets measured end to end fit the predictor, now with the hybrid on offer
    both = subprocess.run([*args, "--budget", "4"], env=env, capture_output=True, text=True, timeout=900)
    assert both.returncode == 0, both.stderr[-2000:]
    summary = json.loads(both.stdout)
    assert summary["blocks"]["already_measured"] == 96 and summary["blocks"]["measured_now"] == 0
    assert summary["measured_now"] == 4 and summary["blocks"]["lut_vs_end_to_end"]["n"] == 4
    assert summary["fit"]["table"]["block_table"]["used"] is True
    assert "hybrid[add]" in {row["name"] for row in summary["fit"]["selection"]["candidates"]}
    assert len(list(table.block_records())) == 96 and len(list(table.records())) == 4
