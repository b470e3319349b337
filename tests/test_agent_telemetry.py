"""Telemetry on fake sysfs trees built from the real captures, and energy during a real measurement.

The firmware tools are not faked as executables: the reader takes a tool runner, and
these tests hand it the captured output text of vcgencmd / nvpmodel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from agent_models import FAST, conv_net, request, save, spec
from test_agent_parsers import REPO_FIXTURES, body

from device_agents.parsers.jetson import parse_jetson_clocks
from device_agents.parsers.tegrastats import parse_tegrastats
from device_agents.parsers.thermal import parse_thermal_transcript
from device_agents.records import Flag, Protocol
from device_agents.runner import BatchRunner
from device_agents.telemetry import PowerSampler, TelemetryReader, condition_flags, run_tool

NANO_THERMAL = "sysfs/thermal_jetson-nano_l4t32_types-and-temps_rpi-reporter-mqtt2ha-issue22.txt"
NANO_TEGRASTATS = "jetson_telemetry/tegrastats_jetson-nano_jp4.x_jetson-inference-issue1206.txt"
ORIN_CLOCKS = "jetson_telemetry/jetson_clocks-show_agx-orin-devkit_jp5.0-predp_jetson_stats-issue381_partial.txt"
NANO_NVPMODEL = "jetson_telemetry/nvpmodel-q_jetson-nano_jetbot-issue49.txt"
THROTTLED = "raspberry_pi/vcgencmd_get_throttled_rpi3_0x50005_firmware-issue615.txt"
ORIN_TEGRASTATS = "jetson_telemetry/written-from-docs_tegrastats_jetson-agx-orin_jp5_nc-rails.txt"
PI5_CPUINFO = "raspberry_pi/proc_cpuinfo_rpi5-model-b-rev1.0_arm-socs-table-issue96.txt"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def jetson_tree(root: Path, fixtures_dir: Path) -> Path:
    """A /sys with the Nano's thermal zones and INA3221 rails and the Orin's CPU clocks."""
    sysfs = root / "sys"
    for zone, z in parse_thermal_transcript(body(fixtures_dir, NANO_THERMAL)).items():
        write(sysfs / f"class/thermal/thermal_zone{zone}/type", z.type)
        write(sysfs / f"class/thermal/thermal_zone{zone}/temp", str(round(z.temp_c * 1000)))
    for cpu, c in parse_jetson_clocks(body(fixtures_dir, ORIN_CLOCKS)).cpus.items():
        base = sysfs / f"devices/system/cpu/cpu{cpu}/cpufreq"
        write(base / "scaling_governor", c.governor)
        write(base / "scaling_cur_freq", str(c.current_khz))
        write(base / "cpuinfo_max_freq", str(c.max_khz))
    rails = parse_tegrastats(body(fixtures_dir, NANO_TEGRASTATS))[0].rails_mw
    iio = sysfs / "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for i, (name, (current, _avg)) in enumerate(rails.items()):
        write(iio / f"rail_name_{i}", name)
        write(iio / f"in_power{i}_input", str(current))
    # the same IIO device is also reachable under bus/iio: it must be counted once
    (sysfs / "bus/iio/devices").mkdir(parents=True)
    os.symlink(iio, sysfs / "bus/iio/devices/iio:device0")
    write(sysfs / "devices/system/cpu/online", "0-11")
    # the Nano's GPU clock as tegrastats shows it (GR3D_FREQ 86%@921 -> 921.6 MHz devfreq)
    write(sysfs / "class/devfreq/57000000.gpu/cur_freq", "921600000")
    proc = root / "proc"
    write(proc / "loadavg", "0.52 0.58 0.59 1/345 12345")
    write(proc / "cpuinfo", body(fixtures_dir, PI5_CPUINFO))
    return root


def tool_from(fixtures_dir: Path, outputs: dict[Sequence[str], str]):
    table = {tuple(k): body(fixtures_dir, v) for k, v in outputs.items()}

    def tool(argv: Sequence[str]) -> str | None:
        return table.get(tuple(argv))

    return tool


def test_snapshot_of_a_jetson_tree(tmp_path, fixtures_dir):
    root = jetson_tree(tmp_path, fixtures_dir)
    tool = tool_from(fixtures_dir, {("nvpmodel", "-q"): NANO_NVPMODEL, ("vcgencmd", "get_throttled"): THROTTLED})
    reader = TelemetryReader(str(root / "sys"), str(root / "proc"), tool)
    t = reader.snapshot()
    assert t.temperatures_c == {"thermal_zone0:AO-therm": 31.0, "thermal_zone1:CPU-therm": 24.5,
                                "thermal_zone2:GPU-therm": 26.5, "thermal_zone3:PLL-therm": 24.5,
                                "thermal_zone4:PMIC-Die": 100.0, "thermal_zone5:thermal-fan-est": 25.5}
    assert t.cpu_freq_khz["cpu11"] == 1190400 and t.cpu_freq_khz["cpu0"] == 2112000 and len(t.cpu_freq_khz) == 9
    assert set(t.cpu_governor.values()) == {"schedutil"}
    assert t.power_mw == {"POM_5V_IN": 4122.0, "POM_5V_GPU": 109.0, "POM_5V_CPU": 1167.0}
    assert (t.jetson_power_mode, t.jetson_power_mode_id) == ("5W", 1)
    assert t.load_avg == (0.52, 0.58, 0.59)
    assert t.cpus_online == "0-11" and t.cpu_model == "Cortex-A76"
    assert t.devfreq_hz == {"57000000.gpu": 921600000}
    assert t.throttle.raw == 0x50000  # the first answer in the capture
    assert t.arm_freq_hz is None  # no capture given for measure_clock: the tool "is absent"
    assert reader.max_freqs()["cpu3"] == 2201600


def test_condition_flags_ignore_placeholder_sensors(tmp_path, fixtures_dir):
    root = jetson_tree(tmp_path, fixtures_dir)
    reader = TelemetryReader(str(root / "sys"), str(root / "proc"), lambda argv: None)
    t = reader.snapshot()
    # PMIC-Die always reads 100 C on a Nano: it must not flag every measurement as hot
    assert condition_flags(t, t, Protocol(max_temp_c=80.0)) == []
    assert condition_flags(t, t, Protocol(max_temp_c=31.0)) == [Flag.HOT]  # AO-therm reaches 31.0


def test_throttle_flags_now_and_newly_recorded(fixtures_dir, tmp_path):
    text = body(fixtures_dir, THROTTLED)
    before_text, after_text = text.split("\n\n")
    root = jetson_tree(tmp_path, fixtures_dir)

    def snap(capture: str):
        return TelemetryReader(str(root / "sys"), str(root / "proc"),
                               lambda argv: capture if argv[0] == "vcgencmd" else None).snapshot()

    healthy = TelemetryReader(str(root / "sys"), str(root / "proc"),
                              lambda argv: "throttled=0x0" if argv[0] == "vcgencmd" else None).snapshot()
    sticky_only = snap(before_text)  # 0x50000: it happened before, not now
    throttled_now = snap(after_text)  # 0x50005
    assert condition_flags(sticky_only, sticky_only, Protocol()) == []
    assert condition_flags(healthy, sticky_only, Protocol()) == [Flag.UNDER_VOLTAGE, Flag.THROTTLED]
    assert condition_flags(sticky_only, throttled_now, Protocol()) == [Flag.UNDER_VOLTAGE, Flag.THROTTLED]


def test_hwmon_power_sources(tmp_path):
    sysfs = tmp_path / "sys"
    # a generic hwmon power meter in microwatts, with a label
    write(sysfs / "class/hwmon/hwmon0/name", "pac1934")
    write(sysfs / "class/hwmon/hwmon0/power1_input", "2500000")
    write(sysfs / "class/hwmon/hwmon0/power1_label", "VDD_IN")
    # a JetPack 5 INA3221: only bus voltage (mV) and current (mA) per channel
    write(sysfs / "class/hwmon/hwmon1/name", "ina3221")
    write(sysfs / "class/hwmon/hwmon1/in1_label", "VDD_CPU_GPU_CV")
    write(sysfs / "class/hwmon/hwmon1/in1_input", "5000")
    write(sysfs / "class/hwmon/hwmon1/curr1_input", "300")
    write(sysfs / "class/hwmon/hwmon1/in4_input", "12")  # a shunt voltage: no current, not a rail
    # a board sensor voltage that must not become a rail (not an INA chip)
    write(sysfs / "class/hwmon/hwmon2/name", "rpi_volt")
    write(sysfs / "class/hwmon/hwmon2/in0_input", "0")
    reader = TelemetryReader(str(sysfs), str(tmp_path / "proc"), lambda argv: None)
    assert reader.read_power_mw() == {"VDD_IN": 2500.0, "VDD_CPU_GPU_CV": 1500.0}
    assert PowerSampler(reader, 0.01).basis == ("VDD_IN",)


def test_sampler_sums_rails_without_a_total_rail(tmp_path):
    sysfs = tmp_path / "sys"
    write(sysfs / "class/hwmon/hwmon0/name", "meter")
    write(sysfs / "class/hwmon/hwmon0/power1_input", "1000000")
    write(sysfs / "class/hwmon/hwmon0/power2_input", "500000")
    reader = TelemetryReader(str(sysfs), str(tmp_path / "proc"), lambda argv: None)
    sampler = PowerSampler(reader, 0.005)
    assert sampler.basis == ("meter/power1", "meter/power2")

    def work() -> int:
        import time

        time.sleep(0.05)
        return 10

    sampler.measure(work)
    e = sampler.result()
    assert e.power_mw == pytest.approx(1500.0)
    # 1.5 W for >= 50 ms over 10 inferences: >= 7.5 mJ each
    assert 7.5 <= e.energy_mj_per_inference < 7.5 * 3
    assert e.n_samples >= 2


def test_agx_orin_rails_neither_merge_nor_count_twice(tmp_path):
    """An AGX Orin's two INA3221 (JetPack 5 hwmon: mV x mA), rail values from its tegrastats
    line: no input rail, VIN_SYS_5V0 is a branch, the 1V8AO rail hangs below it, NC x2."""
    (line,) = parse_tegrastats(body(REPO_FIXTURES, ORIN_TEGRASTATS))
    sysfs = tmp_path / "sys"
    channels = list(line.rails_mw.items())  # VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, NC, VDDQ_VDD2_1V8AO, NC#2
    for chip, rails in (("hwmon1", channels[:3]), ("hwmon2", channels[3:])):
        write(sysfs / f"class/hwmon/{chip}/name", "ina3221")
        for i, (name, (mw, _avg)) in enumerate(rails, start=1):
            write(sysfs / f"class/hwmon/{chip}/in{i}_label", name.split("#")[0])
            write(sysfs / f"class/hwmon/{chip}/in{i}_input", "1000")  # 1 V, so mA = mW
            write(sysfs / f"class/hwmon/{chip}/curr{i}_input", str(mw))
    reader = TelemetryReader(str(sysfs), str(tmp_path / "proc"), lambda argv: None)
    power = reader.read_power_mw()
    assert list(power) == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO", "NC#2"]
    sampler = PowerSampler(reader, 0.005)
    assert sampler.basis == ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
    sampler.measure(lambda: 5)
    assert sampler.result().power_mw == pytest.approx(9102 + 2385 + 4866)
    assert line.total_power_mw() == 9102 + 2385 + 4866  # the host-side parser agrees


def test_energy_and_flags_in_a_real_measurement(tmp_path, fixtures_dir):
    root = jetson_tree(tmp_path / "dev", fixtures_dir)
    work = tmp_path / "work"
    work.mkdir()
    sha = save(conv_net(16, 3, 32), work / "m.onnx")
    tool = tool_from(fixtures_dir, {("vcgencmd", "get_throttled"): "raspberry_pi/vcgencmd_clock-temp-throttled_"
                                    "duckiebot-rpi_duckietown-issue358.txt"})
    text = body(fixtures_dir, THROTTLED).split("\n\n")[1]  # 0x50005: under-voltage and throttled now

    def throttled_tool(argv):
        return text if tuple(argv) == ("vcgencmd", "get_throttled") else tool(argv)

    reader = TelemetryReader(str(root / "sys"), str(root / "proc"), throttled_tool)
    proto = Protocol(**{**FAST.to_dict(), "block_min_s": 0.1, "power_sample_s": 0.01})
    out = []
    BatchRunner(request(work, [spec("a-energy", "m.onnx", sha, in_shape=(1, 3, 32, 32))], proto), out.append,
                reader=reader, device_fingerprint="f" * 16).run()
    (r,) = out
    assert r.ok, r.error_msg
    assert Flag.THROTTLED in r.flags and Flag.UNDER_VOLTAGE in r.flags
    assert r.telemetry_before.throttle.raw == 0x50005 and r.telemetry_after.temperatures_c
    e = r.energy
    assert e.basis == ("POM_5V_IN",) and e.sensor == "iio"
    assert e.power_mw == pytest.approx(4122.0)
    assert e.rails_mw == {"POM_5V_CPU": pytest.approx(1167.0), "POM_5V_GPU": pytest.approx(109.0),
                          "POM_5V_IN": pytest.approx(4122.0)}
    # energy = power x time of the timed windows / inferences in them: the time per inference it
    # implies lies between the fastest run and the slow tail plus per-block messaging
    implied_ms = e.energy_mj_per_inference / e.power_mw * 1e3
    assert r.stats.min_ms * 0.9 <= implied_ms <= r.stats.p99_ms * 1.5 + 1.0


def test_reader_on_this_machine_and_missing_tools():
    t = TelemetryReader().snapshot()
    assert t.load_avg is not None and len(t.load_avg) == 3
    assert run_tool(("ofa2-edge-no-such-tool-here",)) is None
