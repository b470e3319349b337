"""The main job on your own data (`data:` in ofa2-edge.yaml): train, evaluate, fit, search,
a deployable bundle classifying held-out images on `local`; a rerun reuses everything; a bad
`data:` is one SchemaError naming the key and the file, before anything is written."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import _idx

from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import SchemaError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.bundle import check_bundle
from ofa2_edge.workflows.job import JobConfig, run_job

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed (scripts/install-system-deps)"
)


def fashion_subset(folder: Path, n_train: int = 200, n_test: int = 60) -> Path:
    """The first images of the real Fashion-MNIST as a small IDX dataset (all 10 classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        for kind, nd, header in (("images", 3, 16), ("labels", 1, 8)):
            name = f"{part}-{kind}-idx{nd}-ubyte.gz"
            raw = gzip.decompress((FASHION / name).read_bytes())
            arr = np.frombuffer(raw, dtype=np.uint8, offset=header)
            arr = arr.reshape(-1, 28, 28)[:n] if nd == 3 else arr[:n]
            (folder / name).write_bytes(gzip.compress(_idx(arr), mtime=0))
    return folder


JOB = """schema_version: 1
devices: [{key: local, budget: 10, quick: true}]
search: {pop: 8, gens: 3, seed: 1}
data: {path: ../data, format: idx}
train: {width: 1.0, resolutions: [32], epochs: 0.5, batch_size: 16, seed: 0, eval_images: 20, recal_images: 32}
evaluate: {budget: 10, bn_images: 16, batch_size: 64, models: [ridge]}
bundle: {verify_images: 24}
"""


class Interrupted(Exception):
    pass


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {"stderr": out.err})


def ok_records(table: Path) -> list[str]:
    """Arch ids of the latency table's records that hold a measurement (not a failed export)."""
    rows = [json.loads(line) for line in (table / "measurements.jsonl").read_text().splitlines() if line.strip()]
    return sorted(r["arch_id"] for r in rows if not r.get("error_kind"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@needs_fashion
def test_run_on_your_data_ships_a_deployable_bundle_and_a_rerun_reuses_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fashion_subset(tmp_path / "data")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "ofa2-edge.yaml").write_text(JOB)

    # A job interrupted in the middle of training (here: after its first phase was checkpointed).
    def interrupt(event: str, info: dict) -> None:
        if event == "train.step" and info["phase"] == "kernel":
            raise Interrupted

    with pytest.raises(Interrupted):
        run_job(Workspace.resolve(ws), JobConfig.load(ws / "ofa2-edge.yaml"), on_event=interrupt)
    assert not (ws / "latency_tables").exists() and not (ws / "accuracy_tables").exists()

    # --accept-unstable: whether this loaded host's latency predictor passes its check is not
    # what this test is about (the manifest records the verdict either way).
    args = ["-W", str(ws), "run", "--accept-unstable", "--json"]
    code, first = run_json(capsys, *args)
    assert code == 0, first
    assert set(first["seconds"]) == {"reference tables", "train", "evaluate", "fit accuracy", "calibrate + fit",
                                     "search", "dashboard", "bundle"}  # fmt: skip
    own = first["own_data"]
    assert own["dataset"]["classes"] == 10 and own["dataset"]["sizes"]["test"] == 60
    # the rerun continued the interrupted training from its checkpoint, then went on
    assert own["supernet"]["status"] == "resumed" and own["supernet"]["resumed_from_step"] >= 1
    assert own["supernet"]["steps"] > own["supernet"]["resumed_from_step"]
    supernet = Path(own["supernet"]["folder"])
    assert supernet.parent == ws / "supernets" and (supernet / "manifest.json").is_file()
    assert json.loads((supernet / "manifest.json").read_text())["complete"] is True
    assert own["table"]["evaluated_now"] == 10 and own["table"]["n_evaluated"] == 10
    assert own["predictor"]["refitted"] is True and own["predictor"]["model"] == "ridge"

    # top-1 came from the table's predictor, in the supernet's space (w 1.0, 32 px), not OFA's
    acc = first["accuracy"]
    assert acc["source"] == "accuracy-table" and acc["table"] == own["table"]["name"]
    config = json.loads((Path(first["run"]) / "config.json").read_text())
    assert config["accuracy"] == own["table"]["name"]
    assert config["objectives"] == ["top1", "latency:local", "macs"]  # no Note10 reference at 32 px
    assert config["space"]["resolutions"] == [32] and config["space"]["w"] == 1.0

    bundle = first["bundle"]
    assert bundle["status"] == "deployable" and bundle["reused"] is False
    on_device = bundle["on_device"]
    assert on_device["n_images"] == 24 and on_device["part"] == "test" and on_device["passed"]
    assert on_device["agreement_pct"] >= 99.0
    folder = Path(bundle["folder"])
    manifest = check_bundle(folder)
    assert manifest["status"] == "deployable" and manifest["accuracy"]["on_device"] == on_device
    labels = (folder / "labels.txt").read_text().splitlines()
    assert len(labels) == 10 and manifest["output"]["shape"][-1] == 10
    assert manifest["preprocessing"]["input_size"] == 32 and manifest["latency"]["measured"] is not None
    assert manifest["accuracy"]["source"] == f"predictor:{own['table']['name']}"

    # The rerun: nothing retrained, re-evaluated, refitted or re-measured; the same pick and bundle.
    table = Path(own["table"]["folder"])
    before = {p: (p.stat().st_mtime_ns, sha(p)) for p in (supernet / "supernet.pth", supernet / "manifest.json",
                                                          table / "predictor.json")}  # fmt: skip
    rows = (table / "evaluations.jsonl").read_bytes() if (table / "evaluations.jsonl").is_file() else None
    archive = sha(Path(bundle["archive"]))
    latency = ws / "latency_tables" / "local"
    surrogate, measured = sha(latency / "surrogate.json"), ok_records(latency)
    code, again = run_json(capsys, *args)
    assert code == 0, again
    assert again["own_data"]["supernet"]["status"] == "reused"
    assert again["own_data"]["table"]["evaluated_now"] == 0 and again["own_data"]["table"]["already_in_table"] == 10
    assert again["own_data"]["predictor"]["refitted"] is False
    assert {p: (p.stat().st_mtime_ns, sha(p)) for p in before} == before
    if rows is not None:
        assert (table / "evaluations.jsonl").read_bytes() == rows
    # Nothing measured is measured again (a subnet whose export failed, e.g. its random-weight
    # parity check at 32 px, is retried: it has no measurement); the latency predictor is kept.
    assert again["devices"]["local"]["refitted"] is False and sha(latency / "surrogate.json") == surrogate
    assert ok_records(latency) == measured
    assert again["run"] == first["run"] and again["bundle"]["pick"]["arch_id"] == bundle["pick"]["arch_id"]
    assert again["bundle"]["reused"] is True and again["bundle"]["on_device"] == on_device
    assert sha(Path(again["bundle"]["archive"])) == archive and again["pick_change"] is None

    # The human summary says where top-1 came from and that the bundle classifies.
    from ofa2_edge.cli.run import _print_summary

    capsys.readouterr()
    _print_summary(again)
    text = capsys.readouterr().out
    assert f"accuracy: YOUR TABLE {own['table']['name']}" in text and "(kept: the table did not change)" in text
    assert "DEPLOYABLE (trained weights, labels.txt)" in text and "agreement with torch (passed)" in text
    assert "supernet: " in text and "reused (already trained on this data with these settings)" in text


BAD = [
    ("data: [fashion]\n", "data must be a mapping"),
    ("data: {path: ../data, colour: red}\ntrain: {epochs: 1}\n", "unknown data key(s) colour"),
    ("data: {format: idx}\ntrain: {epochs: 1}\n", "data has no 'path'"),
    ("data: {path: ../nosuch}\ntrain: {epochs: 1}\n", "data.path must be an existing dataset folder"),
    ("data: {path: ../data, format: csv}\ntrain: {epochs: 1}\n", "data.format must be one of imagefolder, idx"),
    ("data: {path: ../data}\n", "train needs its budget"),
    ("data: {path: ../data}\ntrain: {epochs: 1, widht: 1.0}\n", "unknown train key(s) widht"),
    ("data: {path: ../data}\ntrain: {epochs: 1, width: 0.5}\n", "train.width must be one of"),
    ("data: {path: ../data}\ntrain: {epochs: 1, resolutions: [28]}\n", "train.resolutions"),
    ("data: {path: ../data}\ntrain: {epochs: 1}\nsupernet: sn\n", "not both"),
    ("data: {path: ../data}\ntrain: {epochs: 1}\nevaluate: {budget: 3}\n", "evaluate.budget must be"),
    ("data: {path: ../data}\ntrain: {epochs: 1}\nresolutions: [32]\n", "resolutions does not apply with data"),
    ("train: {epochs: 1}\n", "only apply to a job on your own data"),
]


@pytest.mark.parametrize(("yaml_text", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_data_section_is_one_schema_error_naming_the_key_and_file_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, message: str
) -> None:
    (tmp_path / "data").mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    config = ws / "ofa2-edge.yaml"
    config.write_text("schema_version: 1\n" + yaml_text)
    with pytest.raises(SchemaError) as err:
        JobConfig.load(config)
    assert message in str(err.value) and str(config) in str(err.value)
    assert main(["-W", str(ws), "run"]) == 1
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in ws.iterdir()) == ["ofa2-edge.yaml"]  # nothing calibrated, trained or written


def test_without_data_the_config_is_the_imagenet_job(tmp_path: Path) -> None:
    config = tmp_path / "ofa2-edge.yaml"
    config.write_text("schema_version: 1\n")
    job = JobConfig.load(config)
    assert job.own_data is None and job.reference_tables == ("note10",)
    assert job.all_objectives == ("top1", "latency:local", "latency:note10", "macs")


def test_data_paths_are_relative_to_the_config_and_defaults_apply(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "ws").mkdir()
    config = tmp_path / "ws" / "ofa2-edge.yaml"
    config.write_text("schema_version: 1\ndata: {path: ../data, format: imagefolder}\ntrain: {max_minutes: 30}\n")
    job = JobConfig.load(config)
    own = job.own_data
    assert own is not None and own.data.path == (tmp_path / "data").resolve() and own.data.format == "imagefolder"
    assert own.train is not None and own.train.max_minutes == 30.0 and own.train.epochs is None
    assert own.evaluate.budget == 60 and own.verify_images == 200 and own.supernet is None
    assert job.reference_tables == () and job.all_objectives == ("top1", "latency:local", "macs")


@needs_fashion
def test_the_example_config_reads() -> None:
    job = JobConfig.load(Path(__file__).parent.parent / "examples" / "own-data.yaml")
    assert job.own_data is not None and job.own_data.data.path == FASHION and job.own_data.train is not None
    assert job.own_data.train.max_minutes == 60 and job.own_data.evaluate.repeat_fraction == 0.2


def test_a_given_supernet_is_used_as_is_and_must_match_the_data(tmp_path: Path) -> None:
    from test_evaluate import trained_stand_in, write_idx_set

    from ofa2_edge.core.errors import InvalidInputError
    from ofa2_edge.workflows.own_data import open_data, prepare_supernet

    data = write_idx_set(tmp_path / "data")
    sn = trained_stand_in(tmp_path / "ws" / "supernets" / "mine", data, tmp_path / "cache")
    config = tmp_path / "ws" / "ofa2-edge.yaml"
    config.write_text("schema_version: 1\ndata: {path: ../data}\nsupernet: supernets/mine\n")
    own = JobConfig.load(config).own_data
    assert own is not None and own.supernet == sn.resolve() and own.train is None
    ws = Workspace.resolve(tmp_path / "ws")
    trained, info = prepare_supernet(ws, own, open_data(own, ws), lambda event, info: None)
    assert info["status"] == "given" and info["sha256"] == trained.sha256 and trained.resolutions == (32,)
    write_idx_set(tmp_path / "other", seed=9)
    config.write_text("schema_version: 1\ndata: {path: ../other}\nsupernet: supernets/mine\n")
    own = JobConfig.load(config).own_data
    assert own is not None
    with pytest.raises(InvalidInputError, match="was trained on dataset"):
        prepare_supernet(ws, own, open_data(own, ws), lambda event, info: None)
