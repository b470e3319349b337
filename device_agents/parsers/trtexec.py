"""trtexec's ``=== Performance summary ===`` (TensorRT 8.x and 10.x).

Each timing line reads ``Name: min = X ms, max = X ms, mean = X ms, median = X ms,
percentile(P%) = X ms, ...``; TensorRT 8.x prints only the 99th percentile, 10.x prints
90/95/99. Lines may carry ``[date] [I]`` prefixes or none (pasted summaries).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Optional, Tuple

from device_agents.parsers.text import ParseError, clean_lines, number

_UNIT_MS = {"ms": 1.0, "us": 1e-3, "s": 1e3}
_VALUE = r"([-+0-9.eE]+)\s*(ms|us|s)\b"
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*" + _VALUE)
_TIMING_LINE = re.compile(r"^([A-Za-z0-9\- ]+?):\s*(min\s*=.*)$")
_THROUGHPUT = re.compile(r"^Throughput:\s*([-+0-9.eE]+)\s*qps")
_TOTAL = re.compile(r"^Total (Host Walltime|GPU Compute Time):\s*" + _VALUE)
_VERSION = re.compile(r"\[TensorRT v(\d+)\]")
_CV = re.compile(r"coefficient of variance\s*=\s*([0-9.]+)%")

_FIELDS = {
    "latency": "latency",
    "end-to-end host latency": "end_to_end_host_latency",
    "enqueue time": "enqueue_time",
    "h2d latency": "h2d_latency",
    "gpu compute time": "gpu_compute_time",
    "d2h latency": "d2h_latency",
}


@dataclasses.dataclass(frozen=True)
class TimingSummary:
    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    percentiles_ms: Dict[str, float]  # "90", "95", "99" -> ms


@dataclasses.dataclass(frozen=True)
class TrtexecSummary:
    trt_version: Optional[str]
    throughput_qps: Optional[float]
    latency: Optional[TimingSummary]
    end_to_end_host_latency: Optional[TimingSummary]
    enqueue_time: Optional[TimingSummary]
    h2d_latency: Optional[TimingSummary]
    gpu_compute_time: Optional[TimingSummary]
    d2h_latency: Optional[TimingSummary]
    total_host_walltime_s: Optional[float]
    total_gpu_compute_time_s: Optional[float]
    gpu_compute_cv_percent: Optional[float]
    warnings: Tuple[str, ...]


def decode_trt_version(code: int) -> str:
    """``[TensorRT v8400]`` -> 8.4.0, ``v101300`` -> 10.13.0 (NV_TENSORRT_VERSION layouts)."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def _timing(body: str) -> TimingSummary:
    values: Dict[str, float] = {}
    pct: Dict[str, float] = {}
    for m in _STAT.finditer(body):
        ms = number(m.group(3), m.group(1)) * _UNIT_MS[m.group(4)]
        if m.group(2) is not None:
            pct[m.group(2)] = ms
        else:
            values[m.group(1)] = ms
    missing = [k for k in ("min", "max", "mean", "median") if k not in values]
    if missing:
        raise ParseError(f"timing line lacks {', '.join(missing)}: {body!r}")
    return TimingSummary(values["min"], values["max"], values["mean"], values["median"], pct)


def parse_trtexec(text: str) -> TrtexecSummary:
    """The performance summary of a trtexec run; raises ParseError when there is none."""
    lines = clean_lines(text)
    try:
        start = next(i for i, ln in enumerate(lines) if "=== Performance summary ===" in ln)
    except StopIteration:
        raise ParseError("no '=== Performance summary ===' block in trtexec output") from None
    version = None
    for m in (_VERSION.search(ln) for ln in lines):
        if m:
            version = decode_trt_version(int(m.group(1)))
    found: Dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(TrtexecSummary))
    warnings = []
    cv = None
    for line in lines[start + 1:]:
        if "=== " in line and "===" in line[4:]:
            break  # the next section (e.g. a later run's report) ends this summary
        m = _THROUGHPUT.match(line)
        if m:
            found["throughput_qps"] = number(m.group(1), "throughput")
            continue
        m = _TOTAL.match(line)
        if m:
            key = "total_host_walltime_s" if m.group(1) == "Host Walltime" else "total_gpu_compute_time_s"
            found[key] = number(m.group(2), m.group(1)) * _UNIT_MS[m.group(3)] / 1e3
            continue
        m = _TIMING_LINE.match(line)
        if m and m.group(1).strip().lower() in _FIELDS:
            found[_FIELDS[m.group(1).strip().lower()]] = _timing(m.group(2))
            continue
        m = _CV.search(line)
        if m:
            cv = number(m.group(1), "coefficient of variance")
        if line.startswith("* "):
            warnings.append(line[2:].strip())
    if found["latency"] is None and found["gpu_compute_time"] is None:
        raise ParseError("trtexec performance summary holds neither Latency nor GPU Compute Time")
    found.update(trt_version=version, gpu_compute_cv_percent=cv, warnings=tuple(warnings))
    return TrtexecSummary(**found)
