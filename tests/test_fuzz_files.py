"""Fuzz tests (hypothesis) of the persisted formats a user or a disk hands the toolkit back:
export sidecars, the job config `ofa2-edge.yaml`, `devices.yaml` and `surrogate.json` as
damaged bytes (their field-level fuzzing lives in test_fuzz_inputs / test_fuzz_readers).

The property (issue 16): a damaged file reads back as a valid object or gives one
Ofa2EdgeError naming the file; never another exception, never a change on disk.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import file_damage, read_or_clear_error
from test_fuzz_inputs import GOOD_YAML, _well_typed

from device_agents.records import TIMERS
from exporters import ExportCache, export_subnet, format_names, read_sidecar
from exporters.cache import META_NAME
from ofa2_edge.core.errors import InvalidArchError, SchemaError
from ofa2_edge.devices.inventory import Inventory
from ofa2_edge.devices.session import ShippableModel
from ofa2_edge.search.algorithms import ALGORITHMS
from ofa2_edge.space.arch import NETWORK_RESOLUTIONS, Arch, SearchSpace
from ofa2_edge.surrogates.base import MAX_PREDICTED_MS, MIN_PREDICTED_MS, load_surrogate
from ofa2_edge.surrogates.linear import LinearSurrogate
from ofa2_edge.surrogates.lut import LutSurrogate, read_ofa_table
from ofa2_edge.workflows.job import DevicePlan, JobConfig

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ARCH = Arch.smallest(160)


def json_text(tree: Any) -> str:
    return json.dumps(tree, indent=2)


def yaml_text(tree: Any) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- export sidecars
@pytest.fixture(scope="module")
def cache_entry() -> Path:
    """The min net's ONNX export in the session's cache (never changed: tests damage copies)."""
    return export_subnet(ARCH, "onnx").path.parent


@pytest.fixture(scope="module")
def exported(cache_entry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `m.onnx` and its sidecar `m.onnx.json`, as `ofa2-edge export` writes them."""
    folder = tmp_path_factory.mktemp("export")
    read_sidecar(cache_entry / META_NAME).copy_to(folder / "m.onnx")
    return folder


@FUZZ
@given(data=st.data())
def test_a_damaged_export_sidecar_reads_back_or_is_one_clear_error(exported: Path, data: st.DataObject) -> None:
    good = exported / "m.onnx.json"
    original = read_sidecar(good)
    raw = good.read_bytes()
    damaged = exported / "damaged.onnx.json"  # beside the model: a `file` it names is looked up here
    damaged.write_bytes(data.draw(file_damage(json.loads(raw), raw, json_text)))
    model_stat = (exported / "m.onnx").stat()
    try:
        model = read_or_clear_error(damaged, read_sidecar)
    finally:
        damaged.unlink()
    assert (exported / "m.onnx").stat().st_mtime_ns == model_stat.st_mtime_ns
    if model is None:
        return
    # verified: the very file, with what the downstream readers need, well typed
    assert model.path == original.path and model.sha256 == original.sha256 and model.bytes == original.bytes
    assert model.format in format_names() and model.arch_id == model.metadata["arch_id"]
    for spec in (*model.inputs, *model.outputs):
        assert isinstance(spec.name, str) and all(isinstance(v, int) and v >= 1 for v in spec.shape)
    assert json.loads(json.dumps(model.sidecar_doc()))["file"] == "m.onnx"
    ShippableModel.from_export(model, ARCH)


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_a_damaged_cache_sidecar_is_a_miss_never_an_exception(
    cache_entry: Path, tmp_path: Path, data: st.DataObject
) -> None:
    """The cache reads its entries through `read_sidecar`: a damaged one is evicted and rebuilt."""
    root = Path(shutil.copytree(cache_entry.parents[2], Path(tempfile.mkdtemp(dir=tmp_path)) / "cache"))
    entry = root / cache_entry.relative_to(cache_entry.parents[2])
    raw = (entry / META_NAME).read_bytes()
    (entry / META_NAME).write_bytes(data.draw(file_damage(json.loads(raw), raw, json_text)))
    found = ExportCache(root).lookup(entry.name)
    if found is None:
        assert not entry.exists()
    else:
        assert found.cache_key == entry.name and found.sha256 == read_sidecar(cache_entry / META_NAME).sha256
    shutil.rmtree(root)


# --------------------------------------------------------------------------- ofa2-edge.yaml
GOOD_JOB = """schema_version: 1
devices:
  - local
  - {key: rpi4-lab, budget: 80}
  - {key: jetson, budget: 60, format: onnx, timer: wall, quick: false}
reference_tables: [note10]
objectives: [top1, latency:rpi4-lab, macs]
resolutions: [160, 176, 192, 208, 224]
search: {algorithm: auto, pop: 100, gens: 300, seed: 1}
run_id: main
verify: true
"""


def _well_formed(job: JobConfig) -> None:
    """What `run_job` takes for granted about a loaded config."""
    assert job.devices and all(isinstance(d, DevicePlan) for d in job.devices)
    for d in job.devices:
        assert isinstance(d.key, str) and d.key and "/" not in d.key
        assert type(d.budget) is int and d.budget >= 10
        assert d.format is None or d.format in format_names()
        assert d.timer in TIMERS and type(d.quick) is bool
    assert len({d.key for d in job.devices}) == len(job.devices)
    assert all(isinstance(k, str) and k for k in job.reference_tables)
    assert job.objectives is None or all(isinstance(o, str) and o for o in job.objectives)
    assert all(type(r) is int and r in NETWORK_RESOLUTIONS for r in job.resolutions) and job.resolutions
    SearchSpace(resolutions=job.resolutions)
    assert job.algorithm == "auto" or job.algorithm in ALGORITHMS
    assert type(job.pop) is int and job.pop >= 2 and type(job.gens) is int and job.gens >= 1
    assert type(job.seed) is int and job.seed >= 0
    assert isinstance(job.run_id, str) and job.run_id == Path(job.run_id).name and job.run_id not in (".", "..")
    assert type(job.verify) is bool
    job.all_objectives  # noqa: B018  (computed from the fields above)


def test_the_example_job_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "ofa2-edge.yaml"
    path.write_text(GOOD_JOB)
    job = JobConfig.load(path)
    _well_formed(job)
    assert [d.key for d in job.devices] == ["local", "rpi4-lab", "jetson"] and job.devices[2].format == "onnx"


@FUZZ
@given(data=st.data())
def test_a_damaged_job_config_loads_well_formed_or_is_one_clear_error(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "ofa2-edge.yaml"
    path.write_bytes(data.draw(file_damage(yaml.safe_load(GOOD_JOB), GOOD_JOB.encode(), yaml_text)))
    job = read_or_clear_error(path, JobConfig.load)
    if job is not None:
        _well_formed(job)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("schema_version: 1\nverify: 'no'\n", "verify must be true or false"),
        ("schema_version: 1\nrun_id: ../../elsewhere\n", "run_id must be a plain folder name"),
        ("schema_version: 1\nsearch: {pop: .inf}\n", "search.pop must be an integer"),
        ("schema_version: 1\ndevices: [{key: [1]}]\n", "devices[0].key must be a device key"),
        ("schema_version: 1\ndevices: [{budget: 30}]\n", "devices[0] has no 'key'"),
        ("schema_version: 1\nresolutions: [160, 99999]\n", "resolutions must be"),
        ("schema_version: true\n", "schema_version: 1"),
        ("schema_version: 1\nobjectives: [top1, latency]\n", "objectives must be one of"),
        ("schema_version: 1\nsearch: {algorithm: nsga9}\n", "search.algorithm must be one of"),
    ],
)
def test_job_config_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ofa2-edge.yaml"
    path.write_text(text)
    with pytest.raises(SchemaError) as info:
        JobConfig.load(path)
    assert str(path) in str(info.value) and message in str(info.value)


# --------------------------------------------------------------------------- devices.yaml
@FUZZ
@given(data=st.data())
def test_a_damaged_devices_yaml_loads_well_typed_or_is_one_clear_error(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "devices.yaml"
    path.write_bytes(data.draw(file_damage(yaml.safe_load(GOOD_YAML), GOOD_YAML.encode(), yaml_text)))
    inventory = read_or_clear_error(path, Inventory.load)
    if inventory is not None:
        for device in inventory.devices.values():
            _well_typed(device)


# --------------------------------------------------------------------------- surrogate.json
@pytest.fixture(scope="module")
def surrogate_files(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> dict[str, Path]:
    """A fitted linear surrogate and an imported LUT one (two resolutions of OFA's Note10 tables)."""
    folder = tmp_path_factory.mktemp("surrogates")
    archs = SearchSpace().sample(12, np.random.default_rng(0))
    y = np.array([1.0 + a.r / 100 + sum(a.d) / 10 for a in archs])
    LinearSurrogate(features="minimal").fit(archs, y).save(folder / "linear.json", device="pi")
    tables = {r: read_ofa_table(assets_dir / "note10" / f"{r}_lookup_table.yaml") for r in (160, 176)}
    LutSurrogate(tables).save(folder / "lut.json", device="note10")
    return {"linear": folder / "linear.json", "lut": folder / "lut.json"}


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["linear", "lut"]))
def test_a_damaged_surrogate_file_loads_plausible_or_is_one_clear_error(
    surrogate_files: dict[str, Path], tmp_path: Path, data: st.DataObject, kind: str
) -> None:
    raw = surrogate_files[kind].read_bytes()
    path = tmp_path / "surrogate.json"
    path.write_bytes(data.draw(file_damage(json.loads(raw), raw, json_text)))
    model = read_or_clear_error(path, load_surrogate)
    if model is None:
        return
    archs = [Arch.smallest(160, model.width_mult), Arch.largest(176, model.width_mult)]
    try:
        mean = model.predict(archs)
        lo, hi = model.predict_interval(archs, 0.8)
    except InvalidArchError:  # a LUT that lost an entry prices only the archs it covers
        assert kind == "lut"
        return
    assert all(math.isfinite(m) and MIN_PREDICTED_MS <= m <= MAX_PREDICTED_MS for m in mean)
    assert np.all(np.isfinite(lo) & np.isfinite(hi) & (lo <= hi))
