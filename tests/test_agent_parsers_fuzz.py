"""Every agent parser on mutated real tool output: a result or a ParseError, never a traceback.

The inputs are the captures and samples in tests/fixtures/device_outputs/, cut, spliced
and sprinkled with junk (numbers that are not numbers, huge exponents, repeated fields,
control and non-ASCII characters) by hypothesis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_agent_parsers import REPO_FIXTURES, body

from device_agents.parsers.cpu import parse_cpuinfo, parse_lscpu
from device_agents.parsers.jetson import parse_jetson_clocks, parse_nvpmodel
from device_agents.parsers.ort_perf_test import parse_ort_perf_test
from device_agents.parsers.tegrastats import parse_tegrastats
from device_agents.parsers.text import ParseError
from device_agents.parsers.tflite_benchmark import parse_benchmark_model
from device_agents.parsers.thermal import parse_thermal_transcript
from device_agents.parsers.trtexec import parse_trtexec
from device_agents.parsers.vcgencmd import find_clocks, find_temps, find_throttled, parse_clock, parse_temp, parse_volts


def _vcgencmd(text: str) -> Any:
    out: list[Any] = [find_clocks(text), find_temps(text), find_throttled(text)]
    for fn in (parse_clock, parse_temp, parse_volts):
        try:
            out.append(fn(text))
        except ParseError:
            pass
    return out


def _tegrastats(text: str) -> Any:
    rows = parse_tegrastats(text)
    return [r.total_power_mw() for r in rows]  # the energy rule must hold on junk too


# (fixture file, parser): one real capture or written sample per parser and format
CASES: list[tuple[str, Callable[[str], Any]]] = [
    ("trtexec/jetson-agx-xavier_trt8.4.0_meta-tegra-pr952.txt", parse_trtexec),
    ("tflite_benchmark_model/raspberry-pi4_xnnpack_int8_xnnpack-issue999.txt", parse_benchmark_model),
    ("tflite_benchmark_model/written-from-source_benchmark_litert_model_summary.txt", parse_benchmark_model),
    ("tflite_benchmark_model/written-from-docs_tflite2.4_peak-memory-footprint.txt", parse_benchmark_model),
    ("onnxruntime_perf_test/arm-devkit_acl-ep_ort1.3.1_computelibrary-issue850.txt", parse_ort_perf_test),
    ("onnxruntime_perf_test/written-from-source_ort1.2x_average-cost-total.txt", parse_ort_perf_test),
    ("jetson_telemetry/tegrastats_jetson-agx-xavier_jp4.2_gtop-pr7.txt", _tegrastats),
    ("jetson_telemetry/written-from-docs_tegrastats_jetson-agx-orin_jp5_nc-rails.txt", _tegrastats),
    ("jetson_telemetry/nvpmodel-q_jetson-agx-xavier_jp4_fan-mode_orne-box-issue16.txt", parse_nvpmodel),
    ("jetson_telemetry/jetson_clocks-show_jetson-tx1_l4t28.1_hordiales-jetson-tx1-dev.txt", parse_jetson_clocks),
    ("raspberry_pi/lscpu_jetson-agx-orin_12core_vamp-issue20.txt", parse_lscpu),
    ("raspberry_pi/proc_cpuinfo_rpi4-model-b-rev1.5_64bit_fastfetch-issue1529.txt", parse_cpuinfo),
    ("raspberry_pi/vcgencmd_clock-temp-throttled_duckiebot-rpi_duckietown-issue358.txt", _vcgencmd),
    ("sysfs/thermal_jetson-nano_l4t32_types-and-temps_rpi-reporter-mqtt2ha-issue22.txt", parse_thermal_transcript),
]
TEXTS = {rel: body(REPO_FIXTURES, rel) for rel, _ in CASES}

# Tokens a broken or newer tool (or a damaged copy) could put where a number or a name was.
JUNK = st.sampled_from([
    "", " ", "\n", "\t", ":", "=", "@", "%", "/", ",", "[", "]", "(", ")", "#", "-", "+", ".", "..", "e", "E", "1e",
    "1e999", "-1e999", "nan", "inf", "0", "-0", "1.2.3", "0x", "0xZZ", "999999999999999999999999", "mW", "MB", "ms",
    "us", "s", "C", "off", "NC", "NC 0mW/0mW", "VDD_IN", "VDD_IN 1/2", "RAM 1/2MB", "count=", "count=3 min=",
    "Inference (avg):", "========== BENCHMARK RESULTS ==========", "=== Performance summary ===", "min = ms",
    "processor\t:", "throttled=", "temp=", "frequency(", "\x00", "\ufffd", "\u00e9", "\u2028", "\r",
])


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """`text` after 1-6 random edits: delete, insert junk, replace, duplicate or drop a line."""
    for _ in range(draw(st.integers(1, 6))):
        n = len(text)
        op = draw(st.sampled_from(["delete", "insert", "replace", "dup_line", "drop_line", "random"]))
        i = draw(st.integers(0, n))
        if op == "delete":
            text = text[:i] + text[min(n, i + draw(st.integers(1, 40))):]
        elif op == "insert":
            text = text[:i] + draw(JUNK) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(JUNK) + text[i + 1:]
        elif op == "random":
            text = text[:i] + draw(st.text(max_size=12)) + text[i:]
        else:
            lines = text.split("\n")
            k = draw(st.integers(0, len(lines) - 1))
            lines = lines[:k + 1] + lines[k:] if op == "dup_line" else lines[:k] + lines[k + 1:]
            text = "\n".join(lines)
    return text


@pytest.mark.parametrize(("rel", "parser"), CASES, ids=[rel.split("/")[-1][:40] for rel, _ in CASES])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_output_gives_a_result_or_a_parse_error(rel: str, parser: Callable[[str], Any], data: Any) -> None:
    text = data.draw(mutated(TEXTS[rel]))
    try:
        parser(text)
    except ParseError:
        pass


@pytest.mark.parametrize(("rel", "parser"), CASES, ids=[rel.split("/")[-1][:40] for rel, _ in CASES])
def test_every_repo_fixture_parses_unmutated(rel: str, parser: Callable[[str], Any]) -> None:
    assert parser(TEXTS[rel])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_gives_a_result_or_a_parse_error(text: str) -> None:
    for _, parser in CASES:
        try:
            parser(text)
        except ParseError:
            pass
