"""A device table holds a predictor per measured quantity: latency, and energy / memory when
the device's records report them; each is fitted, packed, imported and searched on its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from device_agents.records import Energy, MeasureResult, Protocol
from ofa2_edge.calibration.calibrate import fit_table
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.search.objectives import MetricContext, metric_names, resolve_metric
from ofa2_edge.space.arch import SearchSpace, archs_of
from ofa2_edge.space.costs import macs_m
from ofa2_edge.tables.device import DeviceTable
from ofa2_edge.tables.quantities import quantity, quantity_names
from ofa2_edge.tables.transfer import check_table_names, export_table, import_table
from tests.records_factory import probe_report, record_for

SPACE = SearchSpace(resolutions=(160, 192, 224))


def with_energy(record: MeasureResult, mj: float, rss: float) -> MeasureResult:
    energy = Energy("ina3221", ("VDD_IN",), {"VDD_IN": 4000.0}, 4000.0, mj, 12)
    return dataclasses.replace(record, energy=energy, peak_rss_mib=rss)


def powered_table(ws: Workspace, n: int = 40, energy_every: int = 1) -> DeviceTable:
    """A bound table whose records carry latency, and every `energy_every`-th also energy and memory."""
    table = DeviceTable.of(ws, "orin")
    probe = probe_report(cpu_model="Cortex-A78AE")
    table.bind(probe, "onnxruntime")
    rng = np.random.default_rng(0)
    genomes = SPACE.sample_genomes(n, rng)
    for i, (arch, m) in enumerate(zip(archs_of(genomes, w=1.2), macs_m(genomes, 1.2), strict=True)):
        rec = record_for(arch, 2.0 + m / 100.0, Protocol(), fingerprint=probe.fingerprint)
        if i % energy_every == 0:
            rec = with_energy(rec, mj=0.5 + m / 200.0, rss=80.0 + m / 50.0)
        table.append(rec)
    return table


def test_the_registry_lists_the_quantities_and_refuses_an_unknown_one() -> None:
    assert quantity_names()[:3] == ["latency", "energy", "memory"]
    assert quantity("energy").field == "energy_mj"
    with pytest.raises(InvalidInputError, match="unknown quantity 'power'; choose from latency, energy, memory"):
        quantity("power")
    assert {"latency:<device>", "energy:<device>", "memory:<device>"} <= set(metric_names())


def test_an_energy_predictor_lives_beside_the_latency_one_and_is_a_search_objective(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, tmp_path / "cache")
    table = powered_table(ws)
    latency, _ = fit_table(table, 1.2, seed=0, nested=False)
    before = table.surrogate_path.read_bytes()
    energy, report = fit_table(table, 1.2, seed=0, nested=False, quantity="energy")
    assert table.predictor_path("energy").name == "surrogate.energy.json"
    assert table.surrogate_path.read_bytes() == before  # the latency predictor is untouched
    assert report["quantity"] == "energy" and report["table"]["measurements"] == 40
    assert set(table.predictor_paths()) == {"latency", "energy"}
    ctx = MetricContext(ws, SPACE)
    metric = resolve_metric("energy:orin", ctx)
    assert (metric.field, metric.unit) == ("energy_mj:orin", "mJ")
    genomes = SPACE.sample_genomes(5, np.random.default_rng(1))
    pred = metric.evaluate(genomes)
    assert np.allclose(pred, table.surrogate("energy").predict(genomes))
    assert not np.allclose(pred, resolve_metric("latency:orin", ctx).evaluate(genomes))
    with pytest.raises(InvalidInputError, match=r"memory:orin: .*no fitted memory predictor.*--quantity memory"):
        resolve_metric("memory:orin", ctx)


def test_only_records_that_report_a_quantity_are_fitted_and_none_is_a_clear_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, tmp_path / "cache")
    table = powered_table(ws, n=40, energy_every=2)
    archs, values, _ = table.dataset(quantity="memory")
    assert len(archs) == 20 and np.all(values >= 80.0)
    bare = DeviceTable.of(ws, "pi")
    probe = probe_report(cpu_model="Cortex-A72")
    bare.bind(probe, "onnxruntime")
    for r in (160, 224):
        bare.append(record_for(SPACE.smallest(r), 5.0, Protocol(), fingerprint=probe.fingerprint))
    with pytest.raises(InvalidInputError, match="no successful w1.2 measurements that report energy"):
        fit_table(bare, 1.2, quantity="energy")
    assert not bare.predictor_path("energy").exists()


def test_fit_quantity_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace(tmp_path, tmp_path / "cache")
    powered_table(ws)
    assert main(["-W", str(tmp_path), "fit", "-d", "orin", "--width", "1.2", "--quantity", "memory"]) == 0
    assert "surrogate.memory.json" in capsys.readouterr().err
    assert main(["-W", str(tmp_path), "fit", "-d", "orin", "--quantity", "power"]) == InvalidInputError.exit_code
    assert "unknown quantity 'power'" in capsys.readouterr().err
    assert main(["-W", str(tmp_path), "fit", "-d", "orin", "--quantity", "energy", "--prior", "pi"]) == InvalidInputError.exit_code
    assert "--prior transfers a latency predictor" in capsys.readouterr().err


def test_a_packed_table_carries_every_predictor_and_nothing_else(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "field", tmp_path / "cache")
    table = powered_table(ws)
    fit_table(table, 1.2, seed=0, nested=False)
    fit_table(table, 1.2, seed=0, nested=False, quantity="energy")
    archive = export_table(table, tmp_path / "orin.tar.gz")
    home = Workspace(tmp_path / "home", tmp_path / "cache")
    imported = import_table(home, archive)
    assert set(imported.predictor_paths()) == {"latency", "energy"}
    assert imported.predictor_path("energy").read_bytes() == table.predictor_path("energy").read_bytes()
    check_table_names("t.tar.gz", ["surrogate.json", "surrogate.memory.json", "160_lookup_table.yaml"])
    with pytest.raises(SchemaError, match="'surrogate.power.json' is not a latency table file"):
        check_table_names("t.tar.gz", ["surrogate.power.json"])
