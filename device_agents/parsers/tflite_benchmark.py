"""TFLite / LiteRT ``benchmark_model`` output, old and new formats, and LiteRT's newer tool.

New (2020+): ``Inference timings in us: Init: X, First inference: X, Warmup (avg): X,
Inference (avg): X`` plus ``Memory footprint delta ... init=X overall=X`` (older 2.x
builds: ``Peak memory footprint (MB): init=X overall=X``) and ``Overall peak memory
footprint (MB) via periodic monitoring: X``.
Old (2018-2019): ``Average inference timings in us: Warmup: X, Init: X, no stats: X``.
Both print one ``count=N first=X curr=X min=X max=X avg=X std=X`` line per phase (the
warm-up phase first, the timed runs last), in microseconds.
LiteRT (``benchmark_litert_model``, CompiledModel API, 2025+) prints a block in
milliseconds instead: ``========== BENCHMARK RESULTS ==========``, ``Model
initialization: X ms``, ``Warmup (first): X ms``, ``Warmup (avg): X ms (N runs)``,
``Inference (avg|min|max): X ms``, ``Inference (std): X``, then ``Init footprint: X MB``,
``Overall footprint: X MB``, ``Peak memory: X MB``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from device_agents.parsers.text import ParseError, clean_lines, number

_RUN = re.compile(r"^count=(\d+)((?:\s+\w+=[-+0-9.eE]+)+)\s*$")
_KV = re.compile(r"(\w+)=([-+0-9.eE]+)")
_NEW = re.compile(r"^Inference timings in us:\s*(.*)$")
_OLD = re.compile(r"^Average inference timings in us:\s*(.*)$")
_PAIR = re.compile(r"([A-Za-z][A-Za-z ()]*?):\s*([-+0-9.eE]+)")
_INIT_SESSION = re.compile(r"Initialized session in\s*([0-9.]+)\s*ms")
_MEMORY = re.compile(r"(?:Memory footprint delta|Peak memory footprint \(MB\):).*?init=([0-9.]+)\s+overall=([0-9.]+)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\)[^:]*:\s*([0-9.]+)")
# LiteRT's block; its lines may carry a log prefix: "INFO: ", "[file.cc:12] " or absl's
# "I0529 12:34:56.789012  1234 file.cc:12] ".
_LITERT_START = re.compile(r"=+ BENCHMARK RESULTS =+")
_LITERT_PREFIX = re.compile(r"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [^\]\s]+\]\s*)?(?:[A-Z]+:\s*)?(?:\[[^\]]*\]\s*)?")
_LITERT_LINE = re.compile(r"^(Model initialization|Warmup \(first\)|Warmup \(avg\)|Inference \((?:avg|min|max|std)\)|"
                          r"Init footprint|Overall footprint|Peak memory):\s*([-+0-9.eE]+)\s*(?:ms|MB)?"
                          r"(?:\s*\((\d+) runs\))?\s*$")
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
    peak_memory_mb: Optional[float] = None


def _run_stats(count: int, body: str) -> RunStats:
    kv: Dict[str, float] = {k: number(v, k) / 1e3 for k, v in _KV.findall(body)}
    return RunStats(count, kv.get("first"), kv.get("curr"), kv.get("min"), kv.get("max"), kv.get("avg"),
                    kv.get("std"))


def _parse_litert(lines: List[str], start: int, size: Optional[float],
                  threads: Optional[int]) -> BenchmarkModelResult:
    """The ``BENCHMARK RESULTS`` block of LiteRT's benchmark tool (values already in ms)."""
    v: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    for line in lines[start + 1:]:
        line = _LITERT_PREFIX.sub("", line, count=1)
        if line.startswith("====="):
            break
        m = _LITERT_LINE.match(line)
        if m:
            v[m.group(1)] = number(m.group(2), m.group(1))
            if m.group(3):
                counts[m.group(1)] = int(m.group(3))
    avg = v.get("Inference (avg)")
    if avg is None:
        raise ParseError("LiteRT benchmark results hold no 'Inference (avg)' line")
    timed = RunStats(counts.get("Inference (avg)", 0), None, None, v.get("Inference (min)"), v.get("Inference (max)"),
                     avg, v.get("Inference (std)"))
    warmup = None
    if "Warmup (avg)" in v:
        warmup = RunStats(counts.get("Warmup (avg)", 0), v.get("Warmup (first)"), None, None, None, v["Warmup (avg)"],
                          None)
    return BenchmarkModelResult(
        format="litert", init_ms=v.get("Model initialization"), first_inference_ms=v.get("Warmup (first)"),
        warmup_avg_ms=v.get("Warmup (avg)"), inference_avg_ms=avg, warmup=warmup, timed=timed, num_threads=threads,
        model_size_mb=size, memory_init_mb=v.get("Init footprint"), memory_overall_mb=v.get("Overall footprint"),
        peak_memory_mb=v.get("Peak memory"),
    )


def parse_benchmark_model(text: str) -> BenchmarkModelResult:
    """The summary of a benchmark_model / benchmark_litert_model run; ParseError when there is none."""
    lines = clean_lines(text)
    runs = []
    summary: Optional[Tuple[str, Dict[str, float]]] = None
    threads = size = mem_init = mem_overall = init_session = peak = None
    litert_start = None
    for i, line in enumerate(lines):
        if _LITERT_START.search(line) and litert_start is None:
            litert_start = i
            continue
        m = _RUN.match(line)
        if m:
            runs.append(_run_stats(int(m.group(1)), m.group(2)))
            continue
        m = _NEW.match(line) or _OLD.match(line)
        if m:
            pairs = {k.strip().lower(): number(v, k) / 1e3 for k, v in _PAIR.findall(m.group(1))}
            summary = ("new" if _NEW.match(line) else "old", pairs)
            continue
        m = _INIT_SESSION.search(line)
        if m:
            init_session = number(m.group(1), "session init time")
        m = _MEMORY.search(line)
        if m:
            mem_init, mem_overall = number(m.group(1), "init memory"), number(m.group(2), "overall memory")
        m = _PEAK.search(line)
        if m:
            peak = number(m.group(1), "peak memory")
        m = _MODEL_SIZE.search(line)
        if m:
            size = number(m.group(1), "model size")
        m = _THREADS.match(line)
        if m:
            threads = int(m.group(1))
    if summary is None and litert_start is not None:
        return _parse_litert(lines, litert_start, size, threads)
    if summary is None:
        raise ParseError("no 'Inference timings in us' summary or LiteRT 'BENCHMARK RESULTS' block in benchmark_model "
                         "output")
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
        peak_memory_mb=peak,
    )
