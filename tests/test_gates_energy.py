"""Energy above the idle baseline: the agent's power sampler on real sysfs-layout rail files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from records_factory import record_for

from device_agents.records import Energy, MeasureResult, Protocol
from device_agents.telemetry import PowerSampler, TelemetryReader
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.tables.quantities import quantity


def rail(sys_root: Path, mw: float) -> Path:
    """An INA3221 iio channel as Jetson kernels lay it out, named VDD_IN."""
    folder = sys_root / "bus" / "iio" / "devices" / "iio:device0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rail_name_0").write_text("VDD_IN\n")
    (folder / "in_power0_input").write_text(f"{mw:.0f}\n")
    return folder / "in_power0_input"


def test_idle_baseline_is_subtracted_and_the_rail_named(tmp_path: Path) -> None:
    path = rail(tmp_path, 1000)
    sampler = PowerSampler(TelemetryReader(sys_root=str(tmp_path), proc_root=str(tmp_path)), 0.01)
    assert sampler.available and sampler.basis == ("VDD_IN",)
    assert sampler.measure_idle(0.1) == pytest.approx(1000)

    def work() -> int:
        path.write_text("3000\n")  # the board draws 2 W more while the model runs
        time.sleep(0.3)
        return 10

    sampler.measure(work)
    energy = sampler.result()
    assert energy is not None and energy.basis == ("VDD_IN",) and energy.idle_power_mw == pytest.approx(1000)
    # gross: mean power x duration / runs; net: the 1 W idle taken away over the same time
    ratio = energy.net_energy_mj_per_inference / energy.energy_mj_per_inference
    assert ratio == pytest.approx(1 - 1000 / energy.power_mw, rel=1e-6)
    assert 0.5 < ratio < 0.7  # ~2/3 (the first sample may still read the idle value)


def test_records_without_a_baseline_still_read_and_energy_prefers_net() -> None:
    arch = SearchSpace().sample(1, np.random.default_rng(0))[0]
    base = record_for(arch, 5.0, Protocol())
    old = {"sensor": "iio", "basis": ["VDD_IN"], "rails_mw": {"VDD_IN": 4000.0}, "power_mw": 4000.0,
           "energy_mj_per_inference": 20.0, "n_samples": 12}  # fmt: skip
    doc = base.to_dict()
    doc["energy"] = old
    parsed = MeasureResult.from_dict(doc)
    assert parsed.energy is not None and parsed.energy.idle_power_mw is None
    assert quantity("energy").value(parsed) == 20.0
    doc["energy"] = {**old, "idle_power_mw": 1000.0, "net_energy_mj_per_inference": 15.0}
    assert quantity("energy").value(MeasureResult.from_dict(doc)) == 15.0
    with pytest.raises(ValueError, match="net_energy"):
        Energy("iio", ("VDD_IN",), {}, 1.0, 1.0, 1, 0.0, 2.0)


def test_energy_counts_the_timed_runs_not_the_whole_window(tmp_path: Path) -> None:
    """A window also holds untimed warm-up runs and the exchange with the worker: the energy of
    one inference is the window's power x the timed runs' time, not x the window."""
    rail(tmp_path, 3000)
    sampler = PowerSampler(TelemetryReader(sys_root=str(tmp_path), proc_root=str(tmp_path)), 0.01)
    sampler.idle_mw = 1000.0

    def work() -> tuple[int, float]:
        time.sleep(0.2)
        return 10, 0.05  # 10 inferences of 5 ms in a 200 ms window

    sampler.measure(work)
    e = sampler.result()
    assert e is not None and e.power_mw == pytest.approx(3000)
    assert e.energy_mj_per_inference == pytest.approx(3000 * 0.05 / 10) and e.net_energy_mj_per_inference == pytest.approx(10.0)


def test_the_agent_prices_each_inference_at_its_timed_runs(tmp_path: Path) -> None:
    """The real agent on a real model with a 2 W rail: energy / power is the mean timed run."""
    from agent_models import FAST, conv_net, request, save, spec

    from device_agents.runner import BatchRunner

    rail(tmp_path / "sys", 2000)
    work = tmp_path / "work"
    work.mkdir()
    model = save(conv_net(8, 2, 16), work / "small.onnx")
    out: list[MeasureResult] = []
    reader = TelemetryReader(sys_root=str(tmp_path / "sys"), proc_root=str(tmp_path / "proc"))
    BatchRunner(request(work, [spec("a-small", "small.onnx", model)], FAST), out.append, reader=reader,
                device_fingerprint="0123456789abcdef").run()  # fmt: skip
    (r,) = out
    assert r.ok and r.energy is not None and r.energy.power_mw == pytest.approx(2000)
    per_inference_ms = r.energy.energy_mj_per_inference / 2.0  # mJ / W = ms
    assert r.stats.min_ms <= per_inference_ms <= r.stats.max_ms, (per_inference_ms, r.stats)
    assert r.energy.net_energy_mj_per_inference == pytest.approx(0.0, abs=1e-9)  # the rail never moves: nothing above idle
