"""Latencies vendor tools measured, imported into a table apart from the agent's records.

Field teams often already have `trtexec`, TFLite `benchmark_model` or
`onnxruntime_perf_test` logs. `ofa2-edge tables import-log --device KEY --arch ARCH FILE`
parses one with the parsers in :mod:`device_agents.parsers` and appends one row to
`latency_tables/<key>/imported.jsonl` (this module is that file's one reader and writer):
the arch, the tool, its version and the settings it ran with (the protocol of that number),
the latency and the statistics the tool printed, and the log's name and sha256. Such a row
is not an agent record (no fingerprint, no protocol of ours, no telemetry), so it never
enters `measurements.jsonl` or a fit; it is shown beside the predictor's price for the arch.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from device_agents.parsers.ort_perf_test import parse_ort_perf_test
from device_agents.parsers.text import ParseError
from device_agents.parsers.tflite_benchmark import parse_benchmark_model
from device_agents.parsers.trtexec import parse_trtexec
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import append_jsonl, iter_jsonl_numbered
from ofa2_edge.space.arch import Arch
from ofa2_edge.tables.device import IMPORTED, DeviceTable

SCHEMA = "ofa2-edge/imported-measurement"
VERSION = 1
#: A log larger than this is not a benchmark tool's output.
MAX_LOG_BYTES = 16 * 1024 * 1024
MAX_LINE = 1 << 20


@dataclass(frozen=True)
class ParsedLog:
    """What one tool log says about one model: the central latency and the rest."""

    tool: str
    tool_version: str | None
    latency_ms: float
    statistic: str  # which of the tool's figures `latency_ms` is
    stats: dict[str, float]
    settings: dict[str, Any]


def _command(text: str, tool: str) -> str | None:
    """The tool's command line, when the log shows it."""
    m = re.search(rf"((?:\S*/)?{tool}\s+--\S.*)$", text, re.MULTILINE)
    return m.group(1).strip()[:2000] if m else None


def _trtexec(text: str) -> ParsedLog:
    s = parse_trtexec(text)
    timing, name = (s.latency, "latency") if s.latency is not None else (s.gpu_compute_time, "gpu_compute_time")
    if timing is None:
        raise ParseError("no latency or GPU compute time summary")
    stats = {"min_ms": timing.min_ms, "max_ms": timing.max_ms, "mean_ms": timing.mean_ms, "median_ms": timing.median_ms,
             **{f"p{k}_ms": v for k, v in timing.percentiles_ms.items()}}  # fmt: skip
    settings = {"command": _command(text, "trtexec"), "summary": name}
    return ParsedLog("trtexec", s.trt_version, timing.median_ms, f"{name} median", stats, settings)


def _benchmark_model(text: str) -> ParsedLog:
    r = parse_benchmark_model(text)
    stats = {k: v for k, v in asdict(r.timed).items() if k.endswith("_ms") and v is not None} if r.timed else {}
    settings = {"command": _command(text, "benchmark_model"), "num_threads": r.num_threads, "format": r.format}
    return ParsedLog("benchmark_model", None, r.inference_avg_ms, "inference average", stats, settings)


def _ort_perf_test(text: str) -> ParsedLog:
    r = parse_ort_perf_test(text)
    stats = {f"{k}_ms": v for k, v in r.latency_ms.items()}
    stats["average_ms"] = r.average_ms
    p50 = r.latency_ms.get("p50")
    settings = {"command": _command(text, "onnxruntime_perf_test"), "requests": r.requests}
    value, statistic = (p50, "p50") if p50 is not None else (r.average_ms, "average")
    return ParsedLog("onnxruntime_perf_test", None, value, statistic, stats, settings)


PARSERS: dict[str, Callable[[str], ParsedLog]] = {
    "trtexec": _trtexec,
    "benchmark_model": _benchmark_model,
    "onnxruntime_perf_test": _ort_perf_test,
}


def parse_log(path: Path, tool: str = "auto") -> ParsedLog:
    """Parse a tool log (`tool`, or whichever one parser reads it); errors name the file."""
    if tool != "auto" and tool not in PARSERS:
        raise InvalidInputError(f"--tool {tool}: choose auto or one of {', '.join(PARSERS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the log ({exc.strerror or exc})") from exc
    if len(data) > MAX_LOG_BYTES:
        raise InvalidInputError(f"{path}: {len(data)} bytes is not a benchmark tool's log (limit {MAX_LOG_BYTES})")
    text = data.decode("utf-8", errors="replace")
    tried = [tool] if tool != "auto" else list(PARSERS)
    found, why = [], []
    for name in tried:
        try:
            found.append(PARSERS[name](text))
        except ParseError as exc:
            why.append(f"{name}: {exc}")
    if not found:
        raise InvalidInputError(f"{path}: not a log of {' or '.join(tried)} ({'; '.join(why)}); nothing imported")
    if len(found) > 1:
        raise InvalidInputError(f"{path}: readable as {', '.join(p.tool for p in found)}; name the tool with --tool")
    parsed = found[0]
    if not (math.isfinite(parsed.latency_ms) and parsed.latency_ms > 0):
        raise InvalidInputError(f"{path}: the {parsed.tool} latency {parsed.latency_ms!r} ms is not a positive number")
    return parsed


def imported_path(table: DeviceTable) -> Path:
    return table.folder / IMPORTED


def import_log(table: DeviceTable, arch: Arch, path: Path, tool: str = "auto") -> tuple[dict[str, Any], bool]:
    """Append the row of `path` for `arch` (False: the same log was already imported for it)."""
    parsed = parse_log(path, tool)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for row in read_imported(table):
        if row["arch_id"] == arch.id and row["source"]["sha256"] == sha:
            return row, False
    row = {
        "schema": SCHEMA,
        "schema_version": VERSION,
        "arch_id": arch.id,
        "arch": arch.to_dict(),
        "tool": parsed.tool,
        "tool_version": parsed.tool_version,
        "settings": {k: v for k, v in parsed.settings.items() if v is not None},
        "latency_ms": parsed.latency_ms,
        "statistic": parsed.statistic,
        "stats": parsed.stats,
        "source": {"file": path.name, "sha256": sha},
        "imported_at": datetime.now(timezone.utc).isoformat(),
    }
    table.folder.mkdir(parents=True, exist_ok=True)
    append_jsonl(imported_path(table), row)
    return row, True


def read_imported(table: DeviceTable) -> Iterator[dict[str, Any]]:
    """Every imported row, checked; a bad one is an error naming file and line."""
    path = imported_path(table)
    if not path.exists():
        return
    for lineno, row in iter_jsonl_numbered(path, MAX_LINE):
        where = f"{path}:{lineno}"
        fix = "fix or remove that line (nothing was changed)"
        if row.get("schema") != SCHEMA or row.get("schema_version") != VERSION:
            raise SchemaError(f"{where}: not an {SCHEMA} row of version {VERSION}; {fix}")
        if row.get("tool") not in PARSERS:
            raise SchemaError(f"{where}: field tool {row.get('tool')!r} is not one of {', '.join(PARSERS)}; {fix}")
        lat = row.get("latency_ms")
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not (math.isfinite(lat) and lat > 0):
            raise SchemaError(f"{where}: field latency_ms must be a positive number, got {lat!r}; {fix}")
        source = row.get("source")
        if not isinstance(source, dict) or not isinstance(source.get("sha256"), str):
            raise SchemaError(f"{where}: field source must hold the log's sha256; {fix}")
        try:
            arch_id = Arch.from_dict(row.get("arch")).id
        except Exception as exc:  # noqa: BLE001 - any malformed arch is this row's error
            raise SchemaError(f"{where}: field arch is not a valid arch ({exc}); {fix}") from exc
        if arch_id != row.get("arch_id"):
            raise SchemaError(f"{where}: field arch is {arch_id}, not {row.get('arch_id')!r}; {fix}")
        yield row
