"""Health gates on the host: a board whose settings differ from the table's is refused with
the fix; a model measured hot or throttled is measured once more."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from records_factory import probe_report, record_for

from device_agents.records import Flag, MeasureResult, Protocol
from ofa2_edge.calibration.health import (
    recorded_settings,
    settings_mismatches,
    settings_of,
    settled,
)
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.tables.device import DeviceTable, MeasureKey


def with_settings(record: MeasureResult, **changes: object) -> MeasureResult:
    telemetry = dataclasses.replace(probe_report().telemetry, **changes)
    return dataclasses.replace(record, telemetry_before=telemetry)


def test_settings_mismatches_name_the_fact_and_the_fix() -> None:
    base = probe_report().telemetry
    table = settings_of(dataclasses.replace(base, cpu_governor={"cpu0": "performance", "cpu1": "performance"},
                                            jetson_power_mode="MAXN", jetson_power_mode_id=0))  # fmt: skip
    now = settings_of(dataclasses.replace(base, cpu_governor={"cpu0": "powersave", "cpu1": "powersave"},
                                          jetson_power_mode="15W", jetson_power_mode_id=1))  # fmt: skip
    found = {m.fact: m for m in settings_mismatches(table, now)}
    assert set(found) == {"cpu_governor", "jetson_power_mode_id"}  # one mode change, one line
    assert found["cpu_governor"].fix == "sudo cpupower frequency-set -g performance"
    assert found["jetson_power_mode_id"].fix == "sudo nvpmodel -m 0 && sudo jetson_clocks"
    assert "'powersave'" in found["cpu_governor"].describe() and "'performance'" in found["cpu_governor"].describe()
    # a setting one side does not know is no mismatch (a board without cpufreq, an old record)
    unknown = settings_mismatches(table, settings_of(dataclasses.replace(base, cpu_governor={})))
    assert "cpu_governor" not in {m.fact for m in unknown}
    assert settings_mismatches({}, now) == [] and settings_of(None) == {}


def test_recorded_settings_follow_most_records() -> None:
    arch = SearchSpace().sample(3, np.random.default_rng(0))
    recs = [with_settings(record_for(a, 5.0, Protocol()), cpus_online=c) for a, c in zip(arch, ["0-3", "0-3", "0-1"], strict=True)]
    assert recorded_settings(recs)["cpus_online"] == "0-3"


def test_calibrate_refuses_a_board_set_up_otherwise_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table's records were taken with 256 CPUs online (a power mode with every core);
    this machine has fewer: refused before anything is measured, naming the fact and fix."""
    table = DeviceTable(tmp_path / "latency_tables", "local")
    table.bind(probe_report(), "onnxruntime")
    fp = probe_report().fingerprint
    for a in SearchSpace().sample(4, np.random.default_rng(1)):
        table.append(with_settings(record_for(a, 5.0, Protocol(), fingerprint=fp), cpus_online="0-255"))
    before = table.measurements_path.read_bytes()
    capsys.readouterr()
    code = main(["-W", str(tmp_path), "calibrate", "--device", "local", "--budget", "12", "--quick"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE
    assert "cpus_online" in err and "bring CPUs 0-255 online" in err and "--accept-env-change" in err
    assert table.measurements_path.read_bytes() == before and not table.surrogate_path.exists()


def test_a_model_measured_hot_is_measured_once_more(tmp_path: Path) -> None:
    table = DeviceTable(tmp_path / "latency_tables", "local")
    fp = probe_report().fingerprint
    table.bind(probe_report(), "onnxruntime")
    hot, clean, twice = SearchSpace().sample(3, np.random.default_rng(2))
    protocol = Protocol()
    table.append(dataclasses.replace(record_for(hot, 5.0, protocol, fingerprint=fp), flags=(Flag.HOT,)))
    table.append(record_for(clean, 5.0, protocol, fingerprint=fp))
    table.append(dataclasses.replace(record_for(twice, 5.0, protocol, fingerprint=fp), flags=(Flag.THROTTLED,)))
    table.append(dataclasses.replace(record_for(twice, 6.0, protocol, fingerprint=fp), flags=(Flag.THROTTLED,)))
    key = MeasureKey.of(next(table.records()))
    done = settled(table, key)
    assert set(done) == {clean.id, twice.id}  # the hot one is measured again; one re-measure only
    assert done[twice.id].estimate_ms == 6.0
    unstable = SearchSpace().sample(1, np.random.default_rng(3))[0]  # load is the agent's gate, not a re-measure
    table.append(dataclasses.replace(record_for(unstable, 5.0, protocol, fingerprint=fp), flags=(Flag.UNSTABLE,)))
    assert unstable.id in settled(table, key)
