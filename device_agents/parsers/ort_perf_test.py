"""``onnxruntime_perf_test`` summaries, three generations.

* early 2020: ``Session creation time cost:1.84149 s`` (no space after the colon);
* 1.x: ``Session creation time cost: 0.127918 s`` ... ``Avg CPU usage: 68 %``,
  ``Peak working set size: 158171136 bytes``; newer builds add ``First inference time
  cost: X ms``, ``Number of inferences per second: X`` and ``P50 Latency: X s`` lines;
* recent builds name the average ``Average inference time cost total: X ms`` (still the
  mean per inference) and repeat some fields without units (``Runs:10``);
* the stats-only form: ``Total time cost: X`` / ``Average time cost: X ms`` and
  ``P90 Latency is X sec``.

Values are converted to milliseconds / seconds as the field names say. A "Total time
cost" printed without a unit is left out: its unit cannot be known from the text.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Optional

from device_agents.parsers.text import ParseError, clean_lines, number

_TO_S = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6}
_NUM = r"([-+0-9.eE]+)"
_LINE = re.compile(r"^([A-Za-z][A-Za-z ]*?)\s*:\s*" + _NUM + r"\s*(s|sec|ms|us|%|bytes)?\s*$")
_AVERAGE = ("average inference time cost", "average inference time cost total", "average time cost")
_UNITLESS = ("total inference requests", "total iterations", "runs", "number of inferences per second")
_LATENCY = re.compile(r"^(Min|Max|P\d+)\s+Latency(?:\s+is|:)\s*" + _NUM + r"\s*(s|sec|ms|us)\b")


@dataclasses.dataclass(frozen=True)
class OrtPerfSummary:
    session_creation_s: Optional[float]
    first_inference_ms: Optional[float]
    total_inference_s: Optional[float]
    requests: Optional[int]
    average_ms: float
    total_run_s: Optional[float]
    inferences_per_s: Optional[float]
    avg_cpu_percent: Optional[float]
    peak_working_set_bytes: Optional[int]
    latency_ms: Dict[str, float]  # "min", "max", "p50", "p90", "p95", "p99", "p999"


def parse_ort_perf_test(text: str) -> OrtPerfSummary:
    values: Dict[str, float] = {}
    latency: Dict[str, float] = {}
    for line in clean_lines(text):
        m = _LATENCY.match(line)
        if m:
            latency[m.group(1).lower()] = number(m.group(2), "latency") * _TO_S[m.group(3)] * 1e3
            continue
        m = _LINE.match(line)
        if not m:
            continue
        key, value, unit = m.group(1).lower(), number(m.group(2), m.group(1)), m.group(3)
        if key in values:
            continue  # a repeated field (recent builds print some twice, the second without a unit)
        if unit in _TO_S:
            values[key] = value * _TO_S[unit]  # seconds
        elif unit is None and key in _UNITLESS or unit in ("%", "bytes"):
            values[key] = value
    average_s = next((values[k] for k in _AVERAGE if k in values), None)
    if average_s is None:
        raise ParseError("no 'Average inference time cost' / 'Average time cost' line in onnxruntime_perf_test output")
    requests = next((values[k] for k in ("total inference requests", "total iterations", "runs") if k in values), None)
    working_set = values.get("peak working set size")
    first = values.get("first inference time cost")
    return OrtPerfSummary(
        session_creation_s=values.get("session creation time cost"),
        first_inference_ms=first * 1e3 if first is not None else None,
        total_inference_s=values.get("total inference time cost"),
        requests=int(requests) if requests is not None else None,
        average_ms=average_s * 1e3,
        total_run_s=values.get("total inference run time", values.get("total run time")),
        inferences_per_s=values.get("number of inferences per second"),
        avg_cpu_percent=values.get("avg cpu usage"),
        peak_working_set_bytes=int(working_set) if working_set is not None else None,
        latency_ms=latency,
    )
