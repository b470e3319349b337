"""Agent parsers on every real tool output in ../shared/fixtures/device_outputs/.

Values asserted here were read off the fixture files by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agents.parsers.cpu import parse_cpuinfo, parse_lscpu
from device_agents.parsers.jetson import parse_jetson_clocks, parse_nvpmodel
from device_agents.parsers.ort_perf_test import parse_ort_perf_test
from device_agents.parsers.tegrastats import parse_tegrastats, parse_tegrastats_line
from device_agents.parsers.text import ParseError, clean_lines
from device_agents.parsers.tflite_benchmark import parse_benchmark_model
from device_agents.parsers.thermal import millidegrees_to_c, parse_thermal_transcript
from device_agents.parsers.trtexec import decode_trt_version, parse_trtexec
from device_agents.parsers.vcgencmd import (
    find_clocks,
    find_temps,
    find_throttled,
    parse_clock,
    parse_temp,
    parse_throttled,
    parse_volts,
)

# Copies of the captures the fuzz tests need, and samples of newer vendor wordings (README there).
REPO_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "device_outputs"


@pytest.fixture(scope="session")
def repo_fixtures() -> Path:
    return REPO_FIXTURES


def body(fixtures_dir: Path, rel: str) -> str:
    """The captured output without the fixture's leading '# source:' header block."""
    lines = (fixtures_dir / rel).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines) and lines[i].startswith("# "):
        i += 1
    return "\n".join(lines[i:])


# --- trtexec ---------------------------------------------------------------------------------
def test_trtexec_xavier_trt84(fixtures_dir):
    s = parse_trtexec(body(fixtures_dir, "trtexec/jetson-agx-xavier_trt8.4.0_meta-tegra-pr952.txt"))
    assert s.trt_version == "8.4.0"
    assert s.throughput_qps == 41087.7
    assert s.latency.min_ms == 0.387207 and s.latency.max_ms == 0.447357
    assert s.latency.mean_ms == 0.402238 and s.latency.median_ms == 0.401947
    assert s.latency.percentiles_ms == {"99": 0.420288}
    assert s.gpu_compute_time.mean_ms == 0.388221
    assert s.enqueue_time.median_ms == 0.0871582
    assert s.h2d_latency.percentiles_ms["99"] == 0.0272217
    assert s.d2h_latency.max_ms == 0.00537109
    assert s.end_to_end_host_latency is None
    assert s.total_host_walltime_s == pytest.approx(3.00119)
    assert s.total_gpu_compute_time_s == pytest.approx(2.99202)


def test_trtexec_xavier_nx_end_to_end_line(fixtures_dir):
    s = parse_trtexec(body(fixtures_dir, "trtexec/jetson-xavier-nx_trt8.x_meta-tegra-pr1124.txt"))
    assert s.trt_version is None  # the excerpt has no "[TensorRT v...]" line
    assert s.throughput_qps == 27207
    assert s.latency.mean_ms == 0.573891
    assert s.end_to_end_host_latency.median_ms == 0.585938
    assert s.gpu_compute_time.percentiles_ms["99"] == 0.578552
    assert s.total_gpu_compute_time_s == pytest.approx(2.88214)


def test_trtexec_int8_thread_with_cv_warning(fixtures_dir):
    s = parse_trtexec(body(fixtures_dir, "trtexec/trt8.4.1_int8-thread_tensorrt-issue2158.txt"))
    assert s.throughput_qps == 827.176
    assert s.latency.mean_ms == 2.21508 and s.latency.min_ms == 2.11108
    assert s.gpu_compute_time.median_ms == 1.06393
    assert s.gpu_compute_cv_percent == pytest.approx(5.10254)
    assert s.warnings == ("GPU compute time is unstable, with coefficient of variance = 5.10254%.",)


def test_trtexec_thor_trt10_partial_without_prefixes(fixtures_dir):
    s = parse_trtexec(body(fixtures_dir, "trtexec/jetson-agx-thor_trt10.13_fp16_partial_foundationstereo-issue208.txt"))
    assert s.throughput_qps == 1.55139
    assert s.latency.mean_ms == 644.386 and s.latency.median_ms == 640.024
    assert s.latency.percentiles_ms == {"90": 664.195, "95": 666.219, "99": 684.747}
    assert s.gpu_compute_time is None and s.total_host_walltime_s is None


def test_trtexec_versions_and_missing_summary():
    assert decode_trt_version(8400) == "8.4.0"
    assert decode_trt_version(8601) == "8.6.1"
    assert decode_trt_version(101300) == "10.13.0"
    with pytest.raises(ParseError, match="Performance summary"):
        parse_trtexec("[I] Building engine...\n&&&& FAILED TensorRT.trtexec")


# --- TFLite benchmark_model ------------------------------------------------------------------
def test_benchmark_model_rpi4_xnnpack(fixtures_dir):
    r = parse_benchmark_model(body(fixtures_dir, "tflite_benchmark_model/raspberry-pi4_xnnpack_int8_xnnpack-issue999.txt"))
    assert r.format == "new"
    assert r.init_ms == pytest.approx(18.777)
    assert r.first_inference_ms == pytest.approx(64.791)
    assert r.warmup_avg_ms == pytest.approx(57.7582)
    assert r.inference_avg_ms == pytest.approx(55.0432)
    assert r.timed.count == 50 and r.timed.min_ms == pytest.approx(53.077) and r.timed.std_ms == pytest.approx(1.562)
    assert r.warmup.count == 9 and r.warmup.max_ms == pytest.approx(65.831)
    assert r.num_threads == 4
    assert r.model_size_mb == pytest.approx(3.67827)
    assert (r.memory_init_mb, r.memory_overall_mb) == (pytest.approx(8.97656), pytest.approx(18.7227))


def test_benchmark_model_android_gpu_delegate(fixtures_dir):
    r = parse_benchmark_model(body(fixtures_dir, "tflite_benchmark_model/android-arm_gpu-delegate_tensorflow-issue43541.txt"))
    assert r.format == "new"
    assert r.init_ms == pytest.approx(870.557)
    assert r.inference_avg_ms == pytest.approx(119.375)
    assert r.timed.count == 50 and r.timed.avg_ms == pytest.approx(119.375)
    assert r.num_threads == 4 and r.memory_overall_mb is None


def test_benchmark_model_old_format(fixtures_dir):
    r = parse_benchmark_model(body(fixtures_dir, "tflite_benchmark_model/android-arm64_old-format_yuenshome-issue77.txt"))
    assert r.format == "old"
    assert r.init_ms == pytest.approx(9.933)
    assert r.warmup_avg_ms == pytest.approx(76.6059)
    assert r.inference_avg_ms == pytest.approx(66.7676)
    assert r.first_inference_ms == pytest.approx(127.425)  # the first warm-up run
    assert r.timed.count == 15 and r.timed.std_ms == pytest.approx(0.039)


def test_benchmark_model_peak_memory_footprint_line(repo_fixtures):
    r = parse_benchmark_model(body(repo_fixtures, "tflite_benchmark_model/written-from-docs_tflite2.4_peak-memory-footprint.txt"))
    assert (r.memory_init_mb, r.memory_overall_mb) == (pytest.approx(3.14453), pytest.approx(11.8945))
    assert r.peak_memory_mb == pytest.approx(13.1797)
    assert r.inference_avg_ms == pytest.approx(210.028) and r.timed.count == 50 and r.num_threads == 4


def test_benchmark_litert_model_summary(repo_fixtures):
    r = parse_benchmark_model(body(repo_fixtures, "tflite_benchmark_model/written-from-source_benchmark_litert_model_summary.txt"))
    assert r.format == "litert"
    assert r.init_ms == pytest.approx(21.37) and r.first_inference_ms == pytest.approx(41.02)
    assert r.warmup_avg_ms == pytest.approx(27.85) and r.warmup.count == 12
    assert r.inference_avg_ms == pytest.approx(25.61)
    t = r.timed
    assert (t.count, t.min_ms, t.max_ms, t.std_ms) == (50, pytest.approx(24.90), pytest.approx(28.33), pytest.approx(0.71))
    assert (r.memory_init_mb, r.memory_overall_mb, r.peak_memory_mb) == (
        pytest.approx(9.41), pytest.approx(17.25), pytest.approx(19.06))


def test_benchmark_litert_model_with_absl_prefixes_and_no_memory():
    # absl-style log prefixes and a build without memory reporting (same source as above)
    text = ("I0801 10:00:00.000000  4242 benchmark_litert_model.h:58] \n========== BENCHMARK RESULTS ==========\n"
            "I0801 10:00:00.000001  4242 benchmark_litert_model.h:64] Inference (avg):      3.50 ms (100 runs)\n"
            "I0801 10:00:00.000002  4242 benchmark_litert_model.h:74] No inference runs were performed.\n"
            "I0801 10:00:00.000003  4242 benchmark_litert_model.h:103] ======================================\n"
            "Inference (avg): 99 ms (1 runs)\n")  # after the block: not part of it
    r = parse_benchmark_model(text)
    assert r.inference_avg_ms == pytest.approx(3.5) and r.timed.count == 100 and r.memory_init_mb is None
    with pytest.raises(ParseError, match="Inference \\(avg\\)"):
        parse_benchmark_model("========== BENCHMARK RESULTS ==========\nModel initialization: 2 ms\n=====\n")


def test_benchmark_model_without_summary():
    with pytest.raises(ParseError):
        parse_benchmark_model("STARTING!\nLoaded model x.tflite\n")


# --- onnxruntime_perf_test --------------------------------------------------------------------
def test_ort_perf_acl(fixtures_dir):
    r = parse_ort_perf_test(body(fixtures_dir, "onnxruntime_perf_test/arm-devkit_acl-ep_ort1.3.1_computelibrary-issue850.txt"))
    assert r.session_creation_s == pytest.approx(0.127918)
    assert r.total_inference_s == pytest.approx(1.44871)
    assert r.requests == 10
    assert r.average_ms == pytest.approx(144.871)
    assert r.total_run_s == pytest.approx(1.44916)
    assert r.avg_cpu_percent == 68
    assert r.peak_working_set_bytes == 158171136
    assert r.latency_ms == {} and r.first_inference_ms is None


def test_ort_perf_old_nospace(fixtures_dir):
    r = parse_ort_perf_test(body(fixtures_dir, "onnxruntime_perf_test/windows-trt7-debug_old-nospace-format_onnxruntime-pr2798.txt"))
    assert r.session_creation_s == pytest.approx(1.84149)
    assert r.requests == 1
    assert r.average_ms == pytest.approx(734.606)
    assert r.total_run_s == pytest.approx(0.734761)


def test_ort_perf_latency_is_sec_format(fixtures_dir):
    r = parse_ort_perf_test(body(fixtures_dir, "onnxruntime_perf_test/unspecified-device_old-latency-format_onnxruntime-issue17313.txt"))
    assert r.average_ms == pytest.approx(58.8053)
    assert r.requests == 1000
    assert r.total_run_s == pytest.approx(58.8102)
    assert r.latency_ms["min"] == pytest.approx(55.9777)
    assert r.latency_ms["p50"] == pytest.approx(58.7108)
    assert r.latency_ms["p99"] == pytest.approx(61.9517)
    assert r.latency_ms["p999"] == pytest.approx(62.3472)
    assert r.total_inference_s is None  # "Total time cost: 58.8053" has no unit: not guessed


def test_ort_perf_newest_colon_format():
    # The 1.10+ layout (First inference, P50 Latency: X s), written from the tool's source format.
    text = ("Session creation time cost: 0.0512 s\nFirst inference time cost: 7 ms\n"
            "Total inference time cost: 1.2 s\nTotal inference requests: 200\n"
            "Average inference time cost: 6 ms\nTotal inference run time: 1.21 s\n"
            "Number of inferences per second: 165.3\nP50 Latency: 0.0059 s\nP90 Latency: 0.0064 s\n")
    r = parse_ort_perf_test(text)
    assert r.first_inference_ms == pytest.approx(7) and r.inferences_per_s == pytest.approx(165.3)
    assert r.latency_ms == {"p50": pytest.approx(5.9), "p90": pytest.approx(6.4)}


def test_ort_perf_average_cost_total_wording(repo_fixtures):
    r = parse_ort_perf_test(body(repo_fixtures, "onnxruntime_perf_test/written-from-source_ort1.2x_average-cost-total.txt"))
    assert r.average_ms == pytest.approx(64.006)
    assert r.requests == 20 and r.first_inference_ms == pytest.approx(71)
    assert r.avg_cpu_percent == 49 and r.peak_working_set_bytes == 214175744  # the unit-less repeats change nothing
    assert r.latency_ms["p50"] == pytest.approx(63.8502) and r.inferences_per_s == pytest.approx(15.6163)


# --- tegrastats ----------------------------------------------------------------------------
def test_tegrastats_nano_blockquote(fixtures_dir):
    rows = parse_tegrastats(body(fixtures_dir, "jetson_telemetry/tegrastats_jetson-nano_jp4.x_jetson-inference-issue1206.txt"))
    assert len(rows) == 4
    r = rows[0]
    assert (r.ram_used_mb, r.ram_total_mb) == (1501, 3956)
    assert [c.load_percent for c in r.cpus] == [16, 13, 10, 4]
    assert {c.freq_mhz for c in r.cpus} == {1479}
    assert (r.emc_percent, r.emc_freq_mhz, r.gr3d_percent, r.gr3d_freq_mhz) == (4, 1600, 28, 76)
    assert r.temperatures_c == {"PLL": 39.0, "CPU": 44.0, "PMIC": 100.0, "GPU": 41.5, "AO": 47.5, "thermal": 42.5}
    assert r.rails_mw == {"POM_5V_IN": (4122, 3107), "POM_5V_GPU": (109, 85), "POM_5V_CPU": (1167, 748)}
    assert r.total_power_mw() == 4122
    assert rows[3].rails_mw["POM_5V_IN"] == (4531, 3533)
    assert rows[3].temperatures_c["thermal"] == 43.25


def test_tegrastats_xavier_bare_rails(fixtures_dir):
    (r,) = parse_tegrastats(body(fixtures_dir, "jetson_telemetry/tegrastats_jetson-agx-xavier_jp4.2_gtop-pr7.txt"))
    assert (r.ram_used_mb, r.ram_total_mb, r.swap_used_mb, r.swap_total_mb) == (14700, 15692, 898, 8192)
    assert len(r.cpus) == 8 and all(c.freq_mhz == 1190 and c.load_percent == 0 for c in r.cpus)
    assert (r.emc_percent, r.emc_freq_mhz) == (0, None)
    assert r.rails_mw == {"GPU": (463, 463), "CPU": (618, 618), "SOC": (2936, 2936), "CV": (0, 0),
                          "VDDRQ": (309, 309), "SYS5V": (3306, 3306)}
    assert r.temperatures_c["Tdiode"] == 32.0 and r.temperatures_c["GPU"] == 30.5
    # SYS5V is the 5 V system input beside the CPU/GPU/SOC supplies, not a total (it reads
    # less than GPU+CPU+SOC): an AGX Xavier's power is the sum of its branch rails
    assert r.total_power_mw() == 463 + 618 + 2936 + 0 + 309 + 3306


def test_tegrastats_tx1_legacy_shared_frequency(fixtures_dir):
    rows = parse_tegrastats(body(fixtures_dir, "jetson_telemetry/tegrastats_jetson-tx1_l4t28.1_legacy-format_hordiales-jetson-tx1-dev.txt"))
    assert len(rows) == 2
    assert [c.load_percent for c in rows[1].cpus] == [17, 11, 65, 0]
    assert {c.freq_mhz for c in rows[1].cpus} == {1734}
    assert (rows[0].emc_percent, rows[0].emc_freq_mhz) == (1, 408)
    assert (rows[1].gr3d_percent, rows[1].gr3d_freq_mhz) == (39, 76)
    assert rows[0].rails_mw == {} and rows[0].temperatures_c == {} and rows[0].total_power_mw() is None


def test_tegrastats_tx2_vdd_rails(fixtures_dir):
    (r,) = parse_tegrastats(body(fixtures_dir, "jetson_telemetry/tegrastats_jetson-tx2_tx-utils-issue3.txt"))
    assert len(r.cpus) == 6 and r.cpus[1].load_percent == 21 and r.cpus[1].freq_mhz == 345
    assert r.rails_mw["VDD_IN"] == (3140, 3208) and r.rails_mw["VDD_SYS_DDR"] == (557, 601)
    assert r.temperatures_c["BCPU"] == 42.5 and r.temperatures_c["Tdiode"] == 41.25
    assert r.total_power_mw() == 3140


def test_tegrastats_jetpack5_units_and_offline_cpus():
    # JetPack 5 prints units on rails and "off" for parked cores (format of the L4T R35 docs).
    line = ("08-21-2023 10:10:10 RAM 2510/30536MB (lfb 6590x4MB) SWAP 0/15268MB (cached 0MB) "
            "CPU [2%@729,off,off,1%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] CPU@45.5C "
            "tj@46.1C VDD_GPU_SOC 2389mW/2389mW VDD_CPU_CV 398mW/398mW VIN_SYS_5V0 3128mW/3128mW")
    r = parse_tegrastats_line(line)
    assert [c.online for c in r.cpus] == [True, False, False, True]
    assert r.rails_mw["VIN_SYS_5V0"] == (3128, 3128)
    assert r.temperatures_c["tj"] == 46.1
    assert r.total_power_mw() == 2389 + 398 + 3128  # no input rail on an AGX Orin: the branches' sum
    with pytest.raises(ParseError):
        parse_tegrastats("no stats here")


def test_tegrastats_agx_orin_nc_rails_and_total(repo_fixtures):
    (r,) = parse_tegrastats(body(repo_fixtures, "jetson_telemetry/written-from-docs_tegrastats_jetson-agx-orin_jp5_nc-rails.txt"))
    # the two not-connected channels stay two keys, in the order printed
    assert list(r.rails_mw) == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO", "NC#2"]
    assert r.rails_mw["VDDQ_VDD2_1V8AO"] == (1512, 1498)
    # VIN_SYS_5V0 is a branch, not the total; the 1V8AO rail is fed from it; NC never counts
    assert r.total_power_mw() == 9102 + 2385 + 4866
    assert [c.online for c in r.cpus].count(False) == 4 and r.gr3d_percent == 61


# --- nvpmodel / jetson_clocks --------------------------------------------------------------------
def test_nvpmodel_nano_with_errors(fixtures_dir):
    m = parse_nvpmodel(body(fixtures_dir, "jetson_telemetry/nvpmodel-q_jetson-nano_jetbot-issue49.txt"))
    assert (m.power_mode, m.mode_id, m.fan_mode) == ("5W", 1, None)


def test_nvpmodel_xavier_fan_mode(fixtures_dir):
    m = parse_nvpmodel(body(fixtures_dir, "jetson_telemetry/nvpmodel-q_jetson-agx-xavier_jp4_fan-mode_orne-box-issue16.txt"))
    assert (m.power_mode, m.mode_id, m.fan_mode) == ("MAXN", None, "quiet")


def test_nvpmodel_thor(fixtures_dir):
    m = parse_nvpmodel(body(fixtures_dir, "jetson_telemetry/nvpmodel-q_jetson-agx-thor_jp7_jetpack-nixos-pr460.txt"))
    assert (m.power_mode, m.mode_id) == ("MAXN", 0)
    with pytest.raises(ParseError):
        parse_nvpmodel("NVPM ERROR: Error opening /sys/kernel/nvpmodel_emc_cap/emc_iso_cap: 13")


def test_jetson_clocks_tx1(fixtures_dir):
    c = parse_jetson_clocks(body(fixtures_dir, "jetson_telemetry/jetson_clocks-show_jetson-tx1_l4t28.1_hordiales-jetson-tx1-dev.txt"))
    assert (c.soc_family, c.machine, c.online_cpus) == ("tegra210", "jetson_tx1", "0-3")
    assert sorted(c.cpus) == [0, 1, 2, 3]
    assert c.cpus[2].governor == "interactive" and c.cpus[2].current_khz == 1734000 and c.cpus[2].online is None
    assert (c.gpu.min_hz, c.gpu.max_hz, c.gpu.current_hz) == (998400000, 998400000, 998400000)
    assert (c.emc.min_hz, c.emc.current_hz) == (12750000, 1600000000)
    assert c.fan_speed == 255


def test_jetson_clocks_orin_partial(fixtures_dir):
    c = parse_jetson_clocks(body(fixtures_dir, "jetson_telemetry/jetson_clocks-show_agx-orin-devkit_jp5.0-predp_jetson_stats-issue381_partial.txt"))
    assert c.soc_family == "tegra234" and c.machine == "NVIDIA Orin Jetson-Small Developer Kit"
    assert c.online_cpus == "0-11"
    assert sorted(c.cpus) == [0, 1, 2, 3, 4, 5, 6, 10, 11]
    assert c.cpus[11].current_khz == 1190400 and c.cpus[11].max_khz == 2201600 and c.cpus[11].online is True
    assert c.cpus[0].governor == "schedutil" and c.cpus[0].min_khz == 115200
    assert c.gpu is None and c.power_mode is None


# --- vcgencmd ------------------------------------------------------------------------------
def test_vcgencmd_0x50005_decoded(fixtures_dir):
    text = body(fixtures_dir, "raspberry_pi/vcgencmd_get_throttled_rpi3_0x50005_firmware-issue615.txt")
    first, second = find_throttled(text)
    assert first.raw == 0x50000 and first.now == () and first.since_boot == ("under_voltage", "throttled")
    assert second.raw == 0x50005
    assert second.now == ("under_voltage", "throttled")
    assert second.since_boot == ("under_voltage", "throttled")
    assert find_temps(text) == [39.2, 38.6, 38.6, 38.6]


def test_vcgencmd_healthy_clock_temp(fixtures_dir):
    text = body(fixtures_dir, "raspberry_pi/vcgencmd_clock-temp-throttled_duckiebot-rpi_duckietown-issue358.txt")
    assert parse_throttled(text).raw == 0 and parse_throttled(text).now == ()
    assert parse_temp(text) == 62.3
    clock = parse_clock(text)
    assert (clock.source, clock.index, clock.hz) == (None, 45, 1400000000)


def test_vcgencmd_clock_and_volts(fixtures_dir):
    text = body(fixtures_dir, "raspberry_pi/vcgencmd_measure_clock-arm_measure_volts_rpi2_dietpi-issue3225.txt")
    assert parse_clock(text).hz == 900000000
    assert parse_volts(text) == 1.3
    with pytest.raises(ParseError):
        parse_throttled(text)


def test_vcgencmd_pi5_frequency_zero(fixtures_dir):
    text = body(fixtures_dir, "raspberry_pi/vcgencmd_measure_clock-v3d_rpi5_frequency0_raspberrypi-linux-issue7348.txt")
    assert parse_clock(text).index == 0 and parse_clock(text).hz == 0


def test_vcgencmd_all_clocks_with_tabs(fixtures_dir):
    text = body(fixtures_dir, "raspberry_pi/vcgencmd_measure_clock_all-clocks_openelec_glances-issue1048.txt")
    clocks = {c.source: (c.index, c.hz) for c in find_clocks(text)}
    assert len(clocks) == 12
    assert clocks["arm"] == (45, 600000000) and clocks["core"] == (1, 250000000)
    assert clocks["uart"] == (22, 47999000) and clocks["hdmi"] == (9, 163683000) and clocks["v3d"] == (43, 0)


def test_vcgencmd_temp_beside_thermal_zone(fixtures_dir):
    text = body(fixtures_dir, "raspberry_pi/vcgencmd_measure_temp_and_thermal_zone0_bashtop-issue88.txt")
    assert parse_temp(text) == 52.1


# --- /proc/cpuinfo and lscpu -------------------------------------------------------------------
def test_cpuinfo_pi4_64bit_names_core_from_part(fixtures_dir):
    info = parse_cpuinfo(body(fixtures_dir, "raspberry_pi/proc_cpuinfo_rpi4-model-b-rev1.5_64bit_fastfetch-issue1529.txt"))
    assert info.cores == 4
    assert info.model_name == "Cortex-A72"  # no "model name" line: from implementer 0x41 part 0xd08
    assert info.board_model == "Raspberry Pi 4 Model B Rev 1.5"
    assert info.revision == "d03115" and info.serial == "100000000fe69593" and info.hardware is None
    assert info.processors[3]["CPU part"] == "0xd08"


def test_cpuinfo_pi5_tabs(fixtures_dir):
    info = parse_cpuinfo(body(fixtures_dir, "raspberry_pi/proc_cpuinfo_rpi5-model-b-rev1.0_arm-socs-table-issue96.txt"))
    assert info.cores == 4 and info.model_name == "Cortex-A76"
    assert info.hardware == "BCM2835" and info.revision == "d04170" and info.serial == "48343bbbe3ae743b"
    assert info.board_model == "Raspberry Pi 5 Model B Rev 1.0"
    assert "asimddp" in info.processors[0]["Features"].split()


def test_lscpu_pi4_two_listings(fixtures_dir):
    a32, a64 = parse_lscpu(body(fixtures_dir, "raspberry_pi/lscpu_rpi4_32bit-and-64bit_raspberrypi-linux-issue3991.txt"))
    assert (a32.architecture, a64.architecture) == ("armv7l", "aarch64")
    assert a32.cpus == 4 and a32.model_name == "Cortex-A72"
    assert (a64.max_mhz, a64.min_mhz) == (1500.0, 600.0)
    assert "neon" in a32.flags and a64.flags == ("fp", "asimd", "evtstrm", "crc32", "cpuid")


def test_lscpu_orin_tree_with_wrapped_flags(fixtures_dir):
    (o,) = parse_lscpu(body(fixtures_dir, "raspberry_pi/lscpu_jetson-agx-orin_12core_vamp-issue20.txt"))
    assert o.architecture == "aarch64" and o.cpus == 12 and o.model_name == "Cortex-A78AE"
    assert o.max_mhz == pytest.approx(2201.6001)
    assert o.fields["Cluster(s)"] == "3" and o.fields["L3"] == "6 MiB (3 instances)"
    # the wrapped lines join mid-word: "ilrcp" + "c" is the flag "ilrcpc"
    assert o.flags == ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
                       "asimdhp", "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp", "uscat", "ilrcpc", "flagm",
                       "paca", "pacg")


# --- thermal --------------------------------------------------------------------------------
def test_thermal_nano_types_and_temps(fixtures_dir):
    zones = parse_thermal_transcript(body(fixtures_dir, "sysfs/thermal_jetson-nano_l4t32_types-and-temps_rpi-reporter-mqtt2ha-issue22.txt"))
    assert [(z, zones[z].type, zones[z].temp_c) for z in sorted(zones)] == [
        (0, "AO-therm", 31.0), (1, "CPU-therm", 24.5), (2, "GPU-therm", 26.5), (3, "PLL-therm", 24.5),
        (4, "PMIC-Die", 100.0), (5, "thermal-fan-est", 25.5)]


def test_thermal_nano2gb_listing(fixtures_dir):
    zones = parse_thermal_transcript(body(fixtures_dir, "sysfs/thermal_jetson-nano-2gb_zone-index-to-type_martinmatta-issue2.txt"))
    assert {z: t.type for z, t in zones.items()} == {0: "AO-therm", 1: "CPU-therm", 2: "GPU-therm", 3: "PLL-therm",
                                                     4: "PMIC-Die", 5: "thermal-fan-est"}
    assert all(t.temp_c is None for t in zones.values())


def test_thermal_raspberry_pi(fixtures_dir):
    zones = parse_thermal_transcript(body(fixtures_dir, "sysfs/thermal_raspberry-pi_raspbian-4.19_cpu-thermal_gopsutil-issue766.txt"))
    assert zones == {0: zones[0]} and zones[0].type == "cpu-thermal" and zones[0].temp_c == pytest.approx(44.388)


def test_thermal_orin_read_without_output(fixtures_dir):
    zones = parse_thermal_transcript(body(fixtures_dir, "sysfs/thermal_jetson-agx-orin-64gb_r36.4.7_gpu-thermal_node-exporter-issue29.txt"))
    assert list(zones) == [1] and zones[1].temp_c is None  # the capture shows the read, not its output
    assert millidegrees_to_c("43000") == 43.0  # the value the reporter states for it
    assert millidegrees_to_c("-256000") == -256.0 and millidegrees_to_c("52") == 52.0


def test_clean_lines_strips_prefixes():
    assert clean_lines("> > [03/11/2022-14:57:03] [I] Throughput: 1 qps\n\t  x  ") == ["Throughput: 1 qps", "x"]


# Which parser reads each folder of captures; a new capture must parse without error.
PARSER_OF_FOLDER = {
    "trtexec": parse_trtexec,
    "tflite_benchmark_model": parse_benchmark_model,
    "onnxruntime_perf_test": parse_ort_perf_test,
    "sysfs": parse_thermal_transcript,
}
PARSER_OF_PREFIX = {
    "tegrastats": parse_tegrastats,
    "nvpmodel": parse_nvpmodel,
    "jetson_clocks": parse_jetson_clocks,
    "lscpu": parse_lscpu,
    "proc_cpuinfo": parse_cpuinfo,
    "vcgencmd": lambda text: find_clocks(text) + find_temps(text) + find_throttled(text) or parse_volts(text),
}


def test_every_fixture_file_parses(fixtures_dir):
    files = sorted(fixtures_dir.rglob("*.txt"))
    assert len(files) >= 30, f"expected the full fixture set, found {len(files)} files"
    for path in files:
        rel = str(path.relative_to(fixtures_dir))
        parser = PARSER_OF_FOLDER.get(path.parent.name) or next(
            (fn for prefix, fn in PARSER_OF_PREFIX.items() if path.name.startswith(prefix)), None)
        assert parser is not None, f"no parser for fixture {rel}"
        assert parser(body(fixtures_dir, rel)), f"{rel} parsed to nothing"


def test_throttled_values_in_hex_or_decimal_with_a_leading_zero():
    # found by the fuzz suite: int("01", 0) raised a raw ValueError
    assert [t.raw for t in find_throttled("throttled=0x50005\nthrottled=01\nthrottled=5")] == [0x50005, 1, 5]
