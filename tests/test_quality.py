"""The predictor quality verdict: figures, problems, the cause the records show, and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from device_agents.records import Flag, MeasureResult, Protocol, Telemetry
from ofa2_edge.calibration.calibrate import fit_table
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.space.arch import SearchSpace, archs_of
from ofa2_edge.space.costs import macs_m
from ofa2_edge.tables.device import DeviceTable
from ofa2_edge.tables.quality import QualityRules, assess
from tests.records_factory import probe_report, record_for

SPACE = SearchSpace(resolutions=(160, 192, 224))


def telemetry(load: float, governor: str) -> Telemetry:
    return Telemetry(
        time_unix=0.0, load_avg=(load, load, load), cpu_model=None, cpus_online="0-1", cpu_freq_khz={},
        cpu_governor={"cpu0": governor}, temperatures_c={}, throttle=None, arm_freq_hz=None, devfreq_hz={},
        jetson_power_mode=None, jetson_power_mode_id=None, power_mw={},
    )  # fmt: skip


def table_of(tmp_path: Path, n: int = 40, noise: float = 0.0, flagged_every: int = 0, load: float = 0.1,
             governor: str = "schedutil", timer_used: str | None = None) -> DeviceTable:
    """A bound table of `n` records whose latency is a clean function of MACs (plus `noise`)."""
    ws = Workspace(tmp_path, tmp_path / "cache")
    table = DeviceTable.of(ws, "pi")
    probe = probe_report(cpu_model="Cortex-A72", cpu_cores=2)
    table.bind(probe, "onnxruntime")
    rng = np.random.default_rng(0)
    genomes = SPACE.sample_genomes(n, rng)
    for i, (arch, m) in enumerate(zip(archs_of(genomes, w=1.2), macs_m(genomes, 1.2), strict=True)):
        ms = (2.0 + m / 50.0) * float(np.exp(rng.normal(0, noise)))
        rec: MeasureResult = record_for(arch, ms, Protocol(), fingerprint=probe.fingerprint)
        flags = (Flag.UNSTABLE,) if flagged_every and i % flagged_every == 0 else ()
        table.append(dataclasses.replace(rec, flags=flags, telemetry_before=telemetry(load, governor), timer_used=timer_used))
    return table


def test_a_clean_table_gives_a_good_verdict(tmp_path: Path) -> None:
    table = table_of(tmp_path)
    model, _ = fit_table(table, 1.2, nested=False)
    quality = assess(table, model)
    assert quality.good and quality.problems == ()
    assert quality.figures["flagged_share"] == 0.0 and quality.figures["measurements"] == 40
    assert quality.figures["within_10pct_held_out"] >= 0.8


def test_a_busy_device_is_named_as_the_cause_with_the_fix(tmp_path: Path) -> None:
    table = table_of(tmp_path, noise=0.35, flagged_every=2, load=3.0)
    model, _ = fit_table(table, 1.2, nested=False)
    quality = assess(table, model)
    assert not quality.good
    assert any("50% of 40 measurements are flagged" in p for p in quality.problems)
    assert quality.figures["load_per_cpu_median"] == 1.5 and quality.figures["flags"] == {"unstable": 20}
    assert any("the device was busy" in c for c in quality.causes)
    assert any("--timer thread_cpu" in f for f in quality.fixes)
    assert any("governor schedutil" in c for c in quality.causes)
    assert quality.to_dict()["good"] is False


def test_a_busy_device_already_on_the_cpu_clock_is_not_told_to_use_it(tmp_path: Path) -> None:
    table = table_of(tmp_path, noise=0.35, flagged_every=2, load=3.0, timer_used="thread_cpu")
    model, _ = fit_table(table, 1.2, nested=False)
    quality = assess(table, model)
    assert any("40 of 40 measurements already used the thread-CPU clock" in c for c in quality.causes)
    assert not any("--timer thread_cpu" in f for f in quality.fixes)
    assert any("stop other work" in f for f in quality.fixes)


def test_thresholds_are_the_rules_given(tmp_path: Path) -> None:
    table = table_of(tmp_path, flagged_every=4, governor="performance")  # a quarter flagged, idle
    model, _ = fit_table(table, 1.2, nested=False)
    assert assess(table, model).good  # 25 % flagged is at the default limit
    strict = assess(table, model, QualityRules(max_flagged_share=0.1))
    assert not strict.good and "no load, heat or governor problem" in strict.causes[0]


def test_an_imported_lookup_table_is_not_judged_and_no_predictor_is_an_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, tmp_path / "cache")
    with pytest.raises(InvalidInputError, match="no fitted latency predictor"):
        assess(DeviceTable.of(ws, "nothing"))
