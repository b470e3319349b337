"""TFLite / LiteRT ``benchmark_model`` output, old and new formats.

New (2020+): ``Inference timings in us: Init: X, First inference: X, Warmup (avg): X,
Inference (avg): X`` plus ``Memory footprint delta ... init=X overall=X``.
Old (2018-2019): ``Average inference timings in us: Warmup: X, Init: X, no stats: X``.
Both print one ``count=N first=X curr=X min=X max=X avg=X std=X`` line per phase (the
warm-up phase first, the timed runs last), in microseconds.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Optional, Tuple

from device_agents.parsers.text import ParseError, clean_lines

_RUN = re.compile(r"^count=(\d+)((?:\s+\w+=[-+0-9.eE]+)+)\s*$")
_KV = re.compile(r"(\w+)=([-+0-9.eE]+)")
_NEW = re.compile(r"^Inference timings in us:\s*(.*)$")
_OLD = re.compile(r"^Average inference timings in us:\s*(.*)$")
_PAIR = re.compile(r"([A-Za-z][A-Za-z ()]*?):\s*([-+0-9.eE]+)")
_INIT_SESSION = re.compile(r"Initialized session in\s*([0-9.]+)\s*ms")
_MEMORY = re.compile(r"Memory footprint delta.*?init=([0-9.]+)\s+overall=([0-9.]+)")
_MODEL_SIZE = re.compile(r"The input model file size \(MB\):\s*([0-9.]+)")
_THREADS = re.compile(r"^Num threads:\s*\[(\d+)\]")


@dataclasses.dataclass(frozen=True)
class RunStats:
    """One ``count=...`` line, converted to milliseconds."""

    count: int
    first_ms: Optional[float]
    curr_ms: Optional[float]
    min_ms: Optional[float]
    max_ms: Optional[float]
    avg_ms: Optional[float]
    std_ms: Optional[float]


@dataclasses.dataclass(frozen=True)
class BenchmarkModelResult:
    format: str  # "new" or "old"
    init_ms: Optional[float]
    first_inference_ms: Optional[float]
    warmup_avg_ms: Optional[float]
    inference_avg_ms: float
    warmup: Optional[RunStats]
    timed: Optional[RunStats]
    num_threads: Optional[int]
    model_size_mb: Optional[float]
    memory_init_mb: Optional[float]
    memory_overall_mb: Optional[float]


def _run_stats(count: int, body: str) -> RunStats:
    kv: Dict[str, float] = {k: float(v) / 1e3 for k, v in _KV.findall(body)}
    return RunStats(count, kv.get("first"), kv.get("curr"), kv.get("min"), kv.get("max"), kv.get("avg"),
                    kv.get("std"))


def parse_benchmark_model(text: str) -> BenchmarkModelResult:
    lines = clean_lines(text)
    runs = []
    summary: Optional[Tuple[str, Dict[str, float]]] = None
    threads = size = mem_init = mem_overall = init_session = None
    for line in lines:
        m = _RUN.match(line)
        if m:
            runs.append(_run_stats(int(m.group(1)), m.group(2)))
            continue
        m = _NEW.match(line) or _OLD.match(line)
        if m:
            pairs = {k.strip().lower(): float(v) / 1e3 for k, v in _PAIR.findall(m.group(1))}
            summary = ("new" if _NEW.match(line) else "old", pairs)
            continue
        m = _INIT_SESSION.search(line)
        if m:
            init_session = float(m.group(1))
        m = _MEMORY.search(line)
        if m:
            mem_init, mem_overall = float(m.group(1)), float(m.group(2))
        m = _MODEL_SIZE.search(line)
        if m:
            size = float(m.group(1))
        m = _THREADS.match(line)
        if m:
            threads = int(m.group(1))
    if summary is None:
        raise ParseError("no 'Inference timings in us' summary in benchmark_model output")
    fmt, pairs = summary
    if fmt == "new":
        inference = pairs.get("inference (avg)")
        warmup_avg = pairs.get("warmup (avg)")
        first = pairs.get("first inference")
    else:
        inference = pairs.get("no stats")
        warmup_avg = pairs.get("warmup")
        first = runs[0].first_ms if runs else None
    if inference is None:
        raise ParseError(f"benchmark_model summary has no average inference time: {pairs}")
    init = pairs.get("init", init_session)
    return BenchmarkModelResult(
        format=fmt,
        init_ms=init,
        first_inference_ms=first,
        warmup_avg_ms=warmup_avg,
        inference_avg_ms=inference,
        warmup=runs[0] if len(runs) >= 2 else None,
        timed=runs[-1] if runs else None,
        num_threads=threads,
        model_size_mb=size,
        memory_init_mb=mem_init,
        memory_overall_mb=mem_overall,
    )
