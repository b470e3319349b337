"""End to end on your own data: supernet -> evaluate -> fit-accuracy -> search --accuracy TABLE
-> bundle build --supernet --verify, the bundle classifying held-out images on `local`
through the real agent (a subprocess running onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from records_factory import probe_report, record_for
from test_evaluate import trained_stand_in, write_idx_set

from device_agents.records import Protocol
from ofa2_edge.cli.main import main
from ofa2_edge.deploy.bundle import check_bundle
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.space.costs import arch_costs
from ofa2_edge.tables.device import DeviceTable


def cli(capsys: pytest.CaptureFixture[str], ws: Path, *args: str) -> tuple[int, str, str]:
    code = main(["-W", str(ws), *args])
    out, err = capsys.readouterr()
    return code, out, err


def local_table_at(ws: Path, resolutions: tuple[int, ...]) -> None:
    """A `local` latency table (this machine's fingerprint) at the dataset's resolutions,
    its latencies proportional to MACs, fitted."""
    table = DeviceTable(ws / "latency_tables", "local")
    table.bind(probe_report(), "onnxruntime")
    archs = SearchSpace(resolutions=resolutions, w=1.0).sample(24, np.random.default_rng(3))
    for arch, costs in zip(archs, arch_costs(archs), strict=True):
        ms = 0.2 + costs["macs_m"] / 50.0
        table.append(record_for(arch, ms, Protocol(), fingerprint=probe_report().fingerprint))
    assert main(["-W", str(ws), "fit", "--device", "local", "--width", "1.0"]) == 0


def test_own_data_end_to_end_bundle_classifies_on_local(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The whole chain on a supernet folder written through own17's checkpoint API (random
    weights, the dataset's manifest): fast enough for every CI run."""
    data = write_idx_set(tmp_path / "data", n_train=120, n_test=40, n_classes=4)
    sn = trained_stand_in(tmp_path / "ws" / "supernets" / "tiny", data, tmp_path / "cache", resolutions=(32,))
    own_data_chain(capsys, tmp_path / "ws", sn, data)


@pytest.mark.slow
def test_own_data_end_to_end_with_a_really_trained_supernet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The same chain on a supernet trained by `ofa2_edge.train` (progressive shrinking, 1 tiny epoch)."""
    from ofa2_edge.train import TrainConfig, train

    data = write_idx_set(tmp_path / "data", n_train=120, n_test=40, n_classes=4)
    sn = tmp_path / "ws" / "supernets" / "tiny"
    summary = train(TrainConfig(data=data, output=sn, width_mult=1.0, resolutions=(32,), epochs=1, batch_size=32,
                                seed=0, eval_images=16, recal_images=32, cache_dir=tmp_path / "cache"))  # fmt: skip
    assert summary["complete"]
    own_data_chain(capsys, tmp_path / "ws", sn, data)


def own_data_chain(capsys: pytest.CaptureFixture[str], ws: Path, sn: Path, data: Path) -> None:
    common = ("--bn-images", "32", "--batch-size", "64")
    code, out, err = cli(capsys, ws, "evaluate", "--supernet", str(sn), "--data", str(data), "--budget", "10", *common, "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["n_evaluated"] == 10
    code, out, err = cli(capsys, ws, "fit-accuracy", "--table", "tiny", "--models", "ridge", "--json")
    assert code == 0, err
    fitted = json.loads(out)
    assert fitted["report"]["features"] == {"kind": "blocks-onehot-r-onehot", "resolutions": [32]}
    assert "kendall_tau" in fitted["report"]["held_out"] and Path(fitted["path"]).name == "predictor.json"
    local_table_at(ws, (32,))
    run = ws / "runs" / "own"
    code, out, err = cli(capsys, ws, "search", "--objectives", "top1,latency:local", "--accuracy", "tiny",
                         "--pop", "8", "--gens", "3", "-o", str(run), "--no-plot", "--json")  # fmt: skip
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["space"]["resolutions"] == [32] and config["space"]["w"] == 1.0 and config["accuracy"] == "tiny"
    code, out, err = cli(capsys, ws, "bundle", str(run), "--device", "local", "--supernet", str(sn), "--data", str(data),
                         "--verify", "--quick", "--verify-images", "24", "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "deployable"
    on_device = summary["on_device"]
    assert on_device["n_images"] == 24 and on_device["part"] == "test" and on_device["passed"]
    assert on_device["agreement_pct"] >= 99.0
    folder = Path(summary["bundle"])
    manifest = check_bundle(folder)
    assert manifest["accuracy"]["on_device"] == on_device
    assert (folder / "labels.txt").read_text().splitlines() == ["0", "1", "2", "3"]
    prep = manifest["preprocessing"]
    assert prep["input_size"] == 32 and prep["crop_pct"] == 1.0 and prep["mean"] != [0.485, 0.456, 0.406]
    assert manifest["output"]["shape"][-1] == 4 and manifest["latency"]["measured"] is not None
    assert manifest["weights"]["bn_stats_source"].startswith("train subset seed 0")
    measured = manifest["accuracy"]["measured"]  # the pick itself, with the bundle's weights and BN statistics
    assert measured["val_n_images"] == 12 and measured["test_n_images"] == 40 and 0 <= measured["test_top1_pct"] <= 100


def test_the_agent_refuses_a_pickled_batch_and_a_damaged_copy(tmp_path: Path) -> None:
    from device_agents.classify import ClassifyError, classify, load_images

    bad = tmp_path / "objects.npy"
    np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ClassifyError, match="not a plain .npy array"):
        load_images(str(bad))
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((2, 3, 4, 4), dtype=np.int64))
    with pytest.raises(ClassifyError, match="float32"):
        load_images(str(ints))
    with pytest.raises(ClassifyError, match="sha256"):
        classify(str(ints), "0" * 64, str(ints), "0" * 64, "onnxruntime", 1)
