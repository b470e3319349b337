"""The records that cross the host/device boundary, after Apache TVM's autotvm measure records.

A request names models (:class:`ModelSpec`) and one frozen :class:`Protocol`; the agent
answers with one :class:`MeasureResult` per model, success or failure alike: failures are
data (:class:`FailureKind`), kept with the arch id so calibration can go on and learn from
them. Every top-level document carries ``schema`` and ``schema_version``; readers refuse
versions they do not know. The host imports this module to validate what it receives, so
it must stay standard-library only and Python 3.8 compatible.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from device_agents.jsonrecord import RecordError, check_envelope, from_json, to_json

#: Envelope versions. Results and requests are at 2 (quiet gate, interference, the
#: timer behind the estimate); readers still accept 1, whose records mean the old protocol.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
PROTOCOL_VERSION = 2
#: A version-1 protocol in version-2 terms: no quiet gate, no thread-CPU fallback.
PROTOCOL_V1_VALUES: Dict[str, Any] = {"quiet_wait_s": 0.0, "quiet_max_busy": 1.0, "max_wall_excess": 1.0,
                                      "cpu_fallback": False}

REQUEST_SCHEMA = "agent.measure_request"
RESULT_SCHEMA = "agent.measure_result"
BATCH_END_SCHEMA = "agent.batch_end"
PROBE_SCHEMA = "agent.probe"

RUNTIME_NAMES = ("onnxruntime", "litert", "tensorrt", "onnxruntime-parallel")
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool")
ESTIMATORS = ("block_min_median", "p10", "min", "median")
TRT_PRECISIONS = ("fp32", "fp16", "int8")
TIMERS = ("wall", "thread_cpu")
#: Runtimes that compute on the calling thread (with one thread): thread-CPU time is their latency.
CPU_RUNTIMES = ("onnxruntime", "litert")

#: Bounds on what a result line may hold, so a broken or hostile agent cannot make the host
#: store (or hold in memory) what no measurement needs. A record with every sample kept
#: (``keep_samples``) of a fast model stays well below a MiB.
MAX_LINE_CHARS = 4 * 1024 * 1024
MAX_DEPTH = 8
MAX_STRING_CHARS = 64 * 1024
MAX_KEY_CHARS = 256
MAX_LIST_ITEMS = 1_000_000
MAX_DICT_KEYS = 4096
MAX_INT = 2 ** 63
#: No inference through a runtime takes less than 100 ns; a smaller time is a broken timer.
MIN_LATENCY_MS = 1e-4
#: Relative slack of the ordering checks (percentiles are interpolated in floating point).
_ORDER_TOL = 1e-9

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")

__all__ = [
    "BatchEnd",
    "Energy",
    "FailureKind",
    "Flag",
    "MeasureRequest",
    "MeasureResult",
    "ModelSpec",
    "ProbeReport",
    "Interference",
    "Protocol",
    "QuietCheck",
    "RecordError",
    "RuntimeInfo",
    "Stats",
    "Telemetry",
    "TensorRTBuild",
    "TensorSpec",
    "ThrottleState",
    "check_json_bounds",
    "thread_cpu_valid",
    "fingerprint_of",
    "parse_agent_line",
]


class FailureKind(str, enum.Enum):
    """Why a model has no latency. The first two happen on the host, the rest on the device."""

    EXPORT_ERROR = "export_error"
    UPLOAD_ERROR = "upload_error"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    RUNTIME_MISSING = "runtime_missing"
    MODEL_LOAD_ERROR = "model_load_error"
    RUN_ERROR = "run_error"
    RUN_TIMEOUT = "run_timeout"
    CRASH = "crash"
    WRONG_OUTPUT_SHAPE = "wrong_output_shape"


class Flag(str, enum.Enum):
    """Why a successful measurement must not be mixed silently with clean ones."""

    UNSTABLE = "unstable"  # CV or block-minimum spread above the protocol limits, after re-measures
    THROTTLED = "throttled"  # firmware throttling active, or newly recorded during the measurement
    UNDER_VOLTAGE = "under_voltage"
    FREQ_CAPPED = "freq_capped"
    SOFT_TEMP_LIMIT = "soft_temp_limit"
    HOT = "hot"  # a thermal zone at or above protocol.max_temp_c


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def check_json_bounds(doc: Any, where: str) -> None:
    """Refuse a parsed JSON value that is deeper, longer or wider than any record needs.

    Raises :class:`RecordError` naming the path of the first oversized value.
    """
    stack = [(doc, where, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > MAX_STRING_CHARS:
                raise RecordError(f"{path}: a string of {len(value)} characters (at most {MAX_STRING_CHARS})")
            continue
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
            raise RecordError(f"{path}: an integer beyond 64 bits")
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_DEPTH:
            raise RecordError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            if len(value) > MAX_DICT_KEYS:
                raise RecordError(f"{path}: an object of {len(value)} keys (at most {MAX_DICT_KEYS})")
            for k, v in value.items():
                if not isinstance(k, str) or len(k) > MAX_KEY_CHARS:
                    raise RecordError(f"{path}: a key of more than {MAX_KEY_CHARS} characters")
                stack.append((v, f"{path}.{k}", depth + 1))
        else:
            if len(value) > MAX_LIST_ITEMS:
                raise RecordError(f"{path}: a list of {len(value)} items (at most {MAX_LIST_ITEMS})")
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a model is timed; stored with every result so tables never mix protocols.

    Defaults follow TFLite ``benchmark_model`` (>= 50 timed runs and >= 1 s, warm-up first)
    and trtexec (warm-up by time), reshaped for interference: the timed runs come in
    `blocks` separated in time, models of a batch are interleaved block by block
    (`interleave` models at once, round-robin), and the primary estimate is the median of
    the block minima (see :mod:`device_agents.stats` for why). `timer` "thread_cpu" times
    each run by the calling thread's CPU time instead of the wall clock: with one thread it
    is the model's own compute time, immune to other processes on a shared host.

    Version 2 adds the quiet gate and the interference check: before each interleave group
    the agent waits (at most `quiet_wait_s` in all per batch) until other processes keep at
    most `quiet_max_busy` of all CPUs busy and nothing throttles; each run is timed on both
    clocks, and with `cpu_fallback` a single-threaded CPU runtime whose wall clock is
    disturbed (unstable, or its estimate more than `max_wall_excess` above the thread-CPU
    one) gets the thread-CPU estimate. Version 1 means `PROTOCOL_V1_VALUES`.
    """

    version: int = PROTOCOL_VERSION
    warmup_runs: int = 10
    warmup_min_s: float = 0.5
    blocks: int = 5
    runs_per_block: int = 10
    block_min_s: float = 0.2
    block_warmup_runs: int = 2
    estimator: str = "block_min_median"
    outlier_z: float = 3.5
    threads: int = 1
    cpu_affinity: Optional[Tuple[int, ...]] = None
    interleave: int = 4
    cooldown_s: float = 1.0
    timeout_s: float = 300.0
    build_timeout_s: float = 1800.0
    max_cv: float = 0.10
    max_block_spread: float = 0.05
    remeasure: int = 1
    max_temp_c: float = 80.0
    power_sample_s: float = 0.05
    keep_samples: bool = False
    input_seed: int = 0
    timer: str = "wall"
    quiet_wait_s: float = 10.0
    quiet_max_busy: float = 0.10
    max_wall_excess: float = 0.03
    cpu_fallback: bool = True

    def __post_init__(self) -> None:
        _need(self.version in (1, PROTOCOL_VERSION), f"protocol version {self.version} is not known "
              f"(this agent speaks protocol versions 1 and {PROTOCOL_VERSION})")
        if self.version == 1:
            for name, value in PROTOCOL_V1_VALUES.items():
                _need(getattr(self, name) == value, f"a version 1 protocol has {name} {value!r} "
                      "(no quiet gate, no thread-CPU fallback); use version 2")
        _need(self.warmup_runs >= 1, "warmup_runs must be >= 1 (never time a cold model)")
        _need(self.blocks >= 1 and self.runs_per_block >= 1, "blocks and runs_per_block must be >= 1")
        _need(self.blocks * self.runs_per_block >= 2, "need at least 2 timed runs (never one run)")
        _need(self.block_warmup_runs >= 0 and self.remeasure >= 0, "counts must be >= 0")
        for name in ("warmup_min_s", "block_min_s", "cooldown_s", "quiet_wait_s"):
            _need(getattr(self, name) >= 0, f"{name} must be >= 0")
        _need(0 < self.quiet_max_busy <= 1, "quiet_max_busy is a share of all CPUs: > 0 and <= 1")
        for name in ("timeout_s", "build_timeout_s", "outlier_z", "max_cv", "max_block_spread",
                     "power_sample_s", "max_wall_excess"):
            _need(getattr(self, name) > 0, f"{name} must be > 0")
        _need(self.estimator in ESTIMATORS, f"estimator {self.estimator!r} is not one of {', '.join(ESTIMATORS)}")
        _need(self.timer in TIMERS, f"timer {self.timer!r} is not one of {', '.join(TIMERS)}")
        _need(self.timer == "wall" or self.threads == 1,
              "timer 'thread_cpu' needs threads == 1 (other threads' work would not be counted)")
        _need(1 <= self.threads <= 1024, "threads must be between 1 and 1024")
        _need(self.interleave >= 1, "interleave must be >= 1 (1 = one model at a time)")
        if self.cpu_affinity is not None:
            _need(len(self.cpu_affinity) > 0, "cpu_affinity must name at least one CPU (or be null)")
            _need(all(c >= 0 for c in self.cpu_affinity), "cpu_affinity holds CPU numbers >= 0")

    @property
    def min_timed_runs(self) -> int:
        return self.blocks * self.runs_per_block

    def to_dict(self) -> Dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "protocol") -> Protocol:
        return from_json(cls, doc, where)

    @staticmethod
    def upgrade_json(doc: Any) -> Any:
        """A stored version-1 protocol lacks the version-2 fields: fill in what version 1 meant."""
        if isinstance(doc, dict) and doc.get("version") == 1:
            return {**PROTOCOL_V1_VALUES, **doc}
        return doc


def thread_cpu_valid(protocol: Protocol, runtime: str) -> bool:
    """True when the runtime thread's CPU time is the model's latency (one thread, CPU runtime)."""
    return protocol.threads == 1 and runtime in CPU_RUNTIMES


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """An input the agent must feed, or an output shape it must see (name optional)."""

    name: Optional[str]
    shape: Tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        _need(all(d >= 1 for d in self.shape), f"shape {list(self.shape)} must hold positive sizes")
        _need(self.dtype in DTYPES, f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class TensorRTBuild:
    """How the agent builds a TensorRT engine from the shipped ONNX file (on the device)."""

    precision: str = "fp16"
    workspace_mib: int = 1024

    def __post_init__(self) -> None:
        _need(self.precision in TRT_PRECISIONS, f"precision {self.precision!r} is not one of "
              f"{', '.join(TRT_PRECISIONS)}")
        _need(self.workspace_mib >= 1, "workspace_mib must be >= 1")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model to measure (autotvm's MeasureInput): a file in the work dir and what to expect."""

    arch_id: str
    arch: Optional[Dict[str, Any]]
    model_file: str
    sha256: str
    runtime: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    tensorrt: Optional[TensorRTBuild] = None

    def __post_init__(self) -> None:
        _need(bool(_SAFE_ID.match(self.arch_id)), f"arch_id {self.arch_id!r} must be 1-128 characters "
              "of letters, digits and ._:@+-")
        _need(bool(_SAFE_FILE.match(self.model_file)) and ".." not in self.model_file,
              f"model_file {self.model_file!r} must be a plain file name in the work dir "
              "(letters, digits, ._+-; no folders, no '..')")
        _need(bool(_SHA256.match(self.sha256)), f"sha256 {self.sha256!r} must be 64 lowercase hex digits")
        _need(self.runtime in RUNTIME_NAMES, f"runtime {self.runtime!r} is not one of {', '.join(RUNTIME_NAMES)}")
        _need(len(self.inputs) >= 1 and len(self.outputs) >= 1, "a model needs at least one input and one output")
        if self.runtime == "tensorrt":
            _need(self.tensorrt is not None, "runtime 'tensorrt' needs a tensorrt build spec")
        else:
            _need(self.tensorrt is None, f"a tensorrt build spec makes no sense for runtime {self.runtime!r}")


@dataclasses.dataclass(frozen=True)
class MeasureRequest:
    """A batch: models in a work dir, measured under one protocol (``measure --request``)."""

    batch_id: str
    device_key: Optional[str]
    work_dir: str
    protocol: Protocol
    models: Tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        _need(bool(_SAFE_ID.match(self.batch_id)), f"batch_id {self.batch_id!r} must be 1-128 safe characters")
        _need(bool(self.work_dir), "work_dir must not be empty")
        _need(len(self.models) >= 1, "a request needs at least one model")
        seen = set()
        for m in self.models:
            _need(self.protocol.timer == "wall" or m.runtime != "tensorrt",
                  "timer 'thread_cpu' cannot time TensorRT (the GPU works asynchronously); use 'wall'")
            key = (m.arch_id, m.model_file, m.runtime)
            _need(key not in seen, f"model {key} appears twice in the request")
            seen.add(key)

    def worst_case_s(self) -> float:
        """An upper bound of the batch's wall time, for the host's outer timeout.

        Each model's own command time is capped by ``timeout_s`` (an engine build by
        ``build_timeout_s``) over all its attempts; 30 s per attempt covers starting and
        stopping its worker and two telemetry snapshots (each tool call is capped at 5 s);
        the quiet gate takes a look of at least a cooldown (or 0.5 s) before each group,
        plus the batch's ``quiet_wait_s``, and 5 s of tool calls per look.
        """
        p = self.protocol
        attempts = 1 + p.remeasure
        groups = attempts * -(-len(self.models) // p.interleave)
        builds = sum(1 for m in self.models if m.runtime == "tensorrt")
        gate = groups * (max(p.cooldown_s, 0.5) + 5.0) + p.quiet_wait_s + 5.5
        return len(self.models) * (p.timeout_s + 30.0 * attempts) + builds * p.build_timeout_s + gate

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": REQUEST_SCHEMA, "schema_version": SCHEMA_VERSION, **to_json(self)}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "request") -> MeasureRequest:
        return from_json(cls, check_envelope(doc, REQUEST_SCHEMA, SCHEMA_VERSIONS, where), where)


@dataclasses.dataclass(frozen=True)
class Stats:
    """Statistics of the timed runs of one model, in milliseconds.

    Order statistics (min, p10, median, p90, p99, max) are over all `n_total` timed runs;
    mean, std and cv are over the `n` runs left after upward outlier rejection (moments are
    what a few interference spikes distort). `estimate_ms` is the protocol's estimator.
    They cover the last attempt, or the blocks of every attempt when all were unstable.
    """

    estimate_ms: float
    n: int
    n_total: int
    n_outliers: int
    min_ms: float
    p10_ms: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float
    block_min_ms: Tuple[float, ...]
    block_median_ms: Tuple[float, ...]
    block_min_median_ms: float
    block_min_spread: float
    samples_ms: Optional[Tuple[Tuple[float, ...], ...]]

    def __post_init__(self) -> None:
        """Physics: positive times, ordered order statistics, every summary inside [min, max]."""
        _need(self.n_total >= self.n >= 1 and self.n_outliers == self.n_total - self.n,
              f"inconsistent counts (n {self.n}, n_total {self.n_total}, n_outliers {self.n_outliers})")
        _need(len(self.block_min_ms) == len(self.block_median_ms) >= 1, "one minimum and median per block")
        _need(len(self.block_min_ms) <= self.n_total, "more blocks than timed runs")
        _need(self.min_ms >= MIN_LATENCY_MS, f"min_ms {self.min_ms!r} is below {MIN_LATENCY_MS} ms "
              "(no inference is that fast: a broken timer)")
        order = (("min_ms", self.min_ms), ("p10_ms", self.p10_ms), ("median_ms", self.median_ms),
                 ("p90_ms", self.p90_ms), ("p99_ms", self.p99_ms), ("max_ms", self.max_ms))
        for (lo_name, lo), (hi_name, hi) in zip(order, order[1:]):
            _need(lo <= hi * (1 + _ORDER_TOL), f"{lo_name} ({lo!r}) > {hi_name} ({hi!r}): "
                  "need min <= p10 <= median <= p90 <= p99 <= max")
        inside = [("estimate_ms", self.estimate_ms), ("mean_ms", self.mean_ms),
                  ("block_min_median_ms", self.block_min_median_ms)]
        inside += [(f"block_min_ms[{i}]", v) for i, v in enumerate(self.block_min_ms)]
        inside += [(f"block_median_ms[{i}]", v) for i, v in enumerate(self.block_median_ms)]
        low, high = self.min_ms * (1 - _ORDER_TOL), self.max_ms * (1 + _ORDER_TOL)
        for name, v in inside:
            _need(low <= v <= high, f"{name} ({v!r}) is outside [min_ms, max_ms] = [{self.min_ms!r}, {self.max_ms!r}]")
        _need(self.std_ms >= 0 and self.cv >= 0, "std and cv must be >= 0")
        _need(self.block_min_spread >= 0, "block_min_spread must be >= 0")
        if self.samples_ms is not None:
            _need(len(self.samples_ms) == len(self.block_min_ms), "samples_ms needs one list per block")
            _need(sum(len(b) for b in self.samples_ms) == self.n_total, "samples_ms must hold n_total samples")

    def estimator_value(self, estimator: str) -> float:
        """The statistic a protocol's `estimator` names."""
        return {"block_min_median": self.block_min_median_ms, "min": self.min_ms, "p10": self.p10_ms,
                "median": self.median_ms}[estimator]


_THROTTLE_BITS = (
    (0, "under_voltage"), (1, "freq_capped"), (2, "throttled"), (3, "soft_temp_limit"),
)


@dataclasses.dataclass(frozen=True)
class ThrottleState:
    """Raspberry Pi firmware throttling bits (``vcgencmd get_throttled``), decoded.

    Bits 0-3 are the state now (under-voltage, ARM frequency capped, throttled, soft
    temperature limit); bits 16-19 are sticky: the same events have occurred since boot.
    """

    raw: int
    now: Tuple[str, ...]
    since_boot: Tuple[str, ...]

    def __post_init__(self) -> None:
        _need(self.raw >= 0, "raw throttle bits must be >= 0")
        expected = ThrottleState.decode(self.raw)
        _need((self.now, self.since_boot) == expected, f"throttle bits 0x{self.raw:x} decode to {expected}, "
              f"not {(self.now, self.since_boot)}")

    @staticmethod
    def decode(raw: int) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        now = tuple(name for bit, name in _THROTTLE_BITS if raw >> bit & 1)
        since = tuple(name for bit, name in _THROTTLE_BITS if raw >> (bit + 16) & 1)
        return now, since

    @classmethod
    def from_raw(cls, raw: int) -> ThrottleState:
        now, since = cls.decode(raw)
        return cls(raw=raw, now=now, since_boot=since)


@dataclasses.dataclass(frozen=True)
class Telemetry:
    """What the device looked like at one moment (before or after a model)."""

    time_unix: float
    load_avg: Optional[Tuple[float, float, float]]
    cpu_model: Optional[str]
    cpus_online: Optional[str]  # kernel list syntax, e.g. "0-3"; Jetson power modes park cores
    cpu_freq_khz: Dict[str, int]
    cpu_governor: Dict[str, str]
    temperatures_c: Dict[str, float]
    throttle: Optional[ThrottleState]
    arm_freq_hz: Optional[int]
    devfreq_hz: Dict[str, int]  # /sys/class/devfreq: GPU and memory clocks (Jetson, Mali boards)
    jetson_power_mode: Optional[str]
    jetson_power_mode_id: Optional[int]
    power_mw: Dict[str, float]


@dataclasses.dataclass(frozen=True)
class Energy:
    """Board power sampled during the timed runs, and the energy of one inference."""

    sensor: str
    basis: Tuple[str, ...]
    rails_mw: Dict[str, float]
    power_mw: float
    energy_mj_per_inference: float
    n_samples: int
    # The same rails at rest (sampled before the batch's first model, the board quiet), and the
    # energy of one inference above that baseline: what running the model costs. None where
    # no baseline was taken (older agents).
    idle_power_mw: Optional[float] = None
    net_energy_mj_per_inference: Optional[float] = None

    def __post_init__(self) -> None:
        _need(self.n_samples >= 1 and len(self.basis) >= 1, "energy needs at least one sample and one rail")
        _need(self.power_mw >= 0 and self.energy_mj_per_inference >= 0, "power and energy must be >= 0")
        _need(self.idle_power_mw is None or self.idle_power_mw >= 0, "idle_power_mw must be >= 0")
        _need(self.net_energy_mj_per_inference is None
              or 0 <= self.net_energy_mj_per_inference <= self.energy_mj_per_inference,
              "net_energy_mj_per_inference must lie in [0, energy_mj_per_inference]")

    @staticmethod
    def upgrade_json(doc: Any) -> Any:
        """An energy record of an agent without the idle baseline: no baseline."""
        if isinstance(doc, dict) and "idle_power_mw" not in doc and "net_energy_mj_per_inference" not in doc:
            return {**doc, "idle_power_mw": None, "net_energy_mj_per_inference": None}
        return doc


@dataclasses.dataclass(frozen=True)
class QuietCheck:
    """The quiet gate before a model's last attempt: was the device quiet, and why not; and
    how long the agent waited for quiet before its attempts (see :mod:`device_agents.quiet`)."""

    quiet: bool
    waited_s: float  # seconds waited before this model's attempts (a batch waits <= quiet_wait_s)
    busy_share: Optional[float]  # share of all CPUs other processes kept busy (None: /proc/stat unreadable)
    reasons: Tuple[str, ...]  # why it was not quiet; empty when quiet
    notes: Tuple[str, ...]  # what waiting cannot change (a frequency-scaling governor, unknown load)

    def __post_init__(self) -> None:
        _need(self.waited_s >= 0, "waited_s must be >= 0")
        _need(self.busy_share is None or 0 <= self.busy_share <= 1, "busy_share must lie in [0, 1]")
        _need(self.quiet == (not self.reasons), "quiet must be true exactly when there are no reasons")


@dataclasses.dataclass(frozen=True)
class Interference:
    """How much other work disturbed a model's timed runs, on both clocks.

    `off_cpu_share` is the share of the timed wall time the runtime thread was not on a CPU
    (1 - thread-CPU / wall, summed over the runs). The thread-CPU fields are null where that
    clock is not the model's latency (several threads, TensorRT). `wall_trusted` /
    `cpu_trusted`: stable within the protocol's limits, and for the wall clock an estimate at
    most ``max_wall_excess`` above the thread-CPU one.
    """

    wall_estimate_ms: float
    cpu_estimate_ms: Optional[float]
    off_cpu_share: Optional[float]
    wall_cv: float
    cpu_cv: Optional[float]
    wall_block_min_spread: float
    cpu_block_min_spread: Optional[float]
    wall_trusted: bool
    cpu_trusted: bool
    reason: str

    def __post_init__(self) -> None:
        cpu = (self.cpu_estimate_ms, self.off_cpu_share, self.cpu_cv, self.cpu_block_min_spread)
        _need(all(v is None for v in cpu) or all(v is not None for v in cpu),
              "the thread-CPU fields are all set or all null")
        _need(self.cpu_estimate_ms is not None or not self.cpu_trusted, "cpu_trusted needs a thread-CPU estimate")
        for name in ("wall_estimate_ms", "cpu_estimate_ms"):
            value = getattr(self, name)
            _need(value is None or value >= MIN_LATENCY_MS, f"{name} ({value!r}) is below {MIN_LATENCY_MS} ms")
        _need(self.off_cpu_share is None or 0 <= self.off_cpu_share <= 1, "off_cpu_share must lie in [0, 1]")
        for name in ("wall_cv", "cpu_cv", "wall_block_min_spread", "cpu_block_min_spread"):
            value = getattr(self, name)
            _need(value is None or value >= 0, f"{name} must be >= 0")

    def estimate_of(self, timer: str) -> Optional[float]:
        return self.wall_estimate_ms if timer == "wall" else self.cpu_estimate_ms


@dataclasses.dataclass(frozen=True)
class MeasureResult:
    """One model's outcome (autotvm's MeasureResult): statistics, or a failure kind and message."""

    batch_id: str
    device_key: Optional[str]
    device_fingerprint: Optional[str]
    agent_version: Optional[str]
    arch_id: str
    arch: Optional[Dict[str, Any]]
    model_file: str
    model_sha256: str
    runtime: str
    runtime_version: Optional[str]
    tensorrt: Optional[TensorRTBuild]
    protocol: Protocol
    error_kind: Optional[FailureKind]
    error_msg: Optional[str]
    flags: Tuple[Flag, ...]
    attempts: int
    stats: Optional[Stats]
    session_init_ms: Optional[float]
    first_inference_ms: Optional[float]
    peak_rss_mib: Optional[float]
    output_shapes: Optional[Tuple[Tuple[int, ...], ...]]
    cpu_affinity_used: Optional[Tuple[int, ...]]
    energy: Optional[Energy]
    telemetry_before: Optional[Telemetry]
    telemetry_after: Optional[Telemetry]
    started_at: str
    finished_at: str
    # Schema 2. `timer_used`: the clock behind stats (and estimate_ms): the protocol's timer,
    # or "thread_cpu" where the wall clock was disturbed. Null on failures and host records.
    timer_used: Optional[str] = None
    interference: Optional[Interference] = None
    quiet_check: Optional[QuietCheck] = None

    def __post_init__(self) -> None:
        if self.error_kind is None:
            _need(self.stats is not None, "a result without error_kind needs stats")
            _need(self.error_msg is None, "a successful result has no error_msg")
        else:
            _need(self.stats is None, f"a failed result ({self.error_kind.value}) carries no stats")
            _need(bool(self.error_msg), f"a failed result ({self.error_kind.value}) needs an error_msg")
        _need(self.attempts >= 0, "attempts must be >= 0")
        _need(len(set(self.flags)) == len(self.flags), "flags must not repeat")
        _need(bool(_SAFE_ID.match(self.arch_id)), f"arch_id {self.arch_id!r} must be 1-128 characters "
              "of letters, digits and ._:@+-")
        for name in ("session_init_ms", "first_inference_ms", "peak_rss_mib"):
            value = getattr(self, name)
            _need(value is None or value >= 0, f"{name} must be >= 0, got {value!r}")
        if self.stats is not None:
            # Each model's runs fit in its timeout, so no single run can take longer.
            limit_ms = self.protocol.timeout_s * 1000.0
            _need(self.stats.max_ms <= limit_ms, f"stats.max_ms ({self.stats.max_ms!r}) exceeds the protocol's "
                  f"timeout_s ({self.protocol.timeout_s} s): no timed run can take that long")
            expected = self.stats.estimator_value(self.protocol.estimator)
            _need(self.stats.estimate_ms == expected, f"stats.estimate_ms ({self.stats.estimate_ms!r}) is not the "
                  f"protocol's estimator {self.protocol.estimator!r} ({expected!r})")
        self._check_timer()

    def _check_timer(self) -> None:
        """The timer behind the estimate is one the protocol and runtime allow, and agrees
        with the interference figures."""
        if self.timer_used is None:
            _need(self.interference is None, "interference figures need timer_used")
            return
        _need(self.stats is not None, "timer_used is set only with stats")
        _need(self.timer_used in TIMERS, f"timer_used {self.timer_used!r} is not one of {', '.join(TIMERS)}")
        if self.timer_used == "thread_cpu":
            _need(thread_cpu_valid(self.protocol, self.runtime), f"timer_used 'thread_cpu' needs one thread and a "
                  f"CPU runtime ({', '.join(CPU_RUNTIMES)}), not {self.protocol.threads} thread(s) of {self.runtime}")
        fallback = self.protocol.timer == "wall" and self.protocol.cpu_fallback and self.timer_used == "thread_cpu"
        _need(self.timer_used == self.protocol.timer or fallback, f"timer_used {self.timer_used!r} is neither the "
              f"protocol's timer {self.protocol.timer!r} nor its thread-CPU fallback")
        if self.interference is not None and self.stats is not None:
            chosen = self.interference.estimate_of(self.timer_used)
            _need(chosen == self.stats.estimate_ms, f"stats.estimate_ms ({self.stats.estimate_ms!r}) is not the "
                  f"interference figures' {self.timer_used} estimate ({chosen!r})")

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def estimate_ms(self) -> Optional[float]:
        return self.stats.estimate_ms if self.stats is not None else None

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": RESULT_SCHEMA, "schema_version": SCHEMA_VERSION, **to_json(self)}

    def to_json_line(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "result") -> MeasureResult:
        check_json_bounds(doc, where)
        body = check_envelope(doc, RESULT_SCHEMA, SCHEMA_VERSIONS, where)
        if doc.get("schema_version") == 1:
            body = _result_v1(body, where)
        return from_json(cls, body, where)

    @classmethod
    def failure(
        cls,
        kind: FailureKind,
        message: str,
        spec: ModelSpec,
        protocol: Protocol,
        *,
        batch_id: str,
        started_at: str,
        finished_at: str,
        device_key: Optional[str] = None,
        device_fingerprint: Optional[str] = None,
        agent_version: Optional[str] = None,
        runtime_version: Optional[str] = None,
        telemetry_before: Optional[Telemetry] = None,
        telemetry_after: Optional[Telemetry] = None,
        session_init_ms: Optional[float] = None,
        output_shapes: Optional[Tuple[Tuple[int, ...], ...]] = None,
        quiet_check: Optional[QuietCheck] = None,
    ) -> MeasureResult:
        """A failure record; the host uses it too, for export and upload errors."""
        return cls(
            batch_id=batch_id, device_key=device_key, device_fingerprint=device_fingerprint,
            agent_version=agent_version, arch_id=spec.arch_id, arch=spec.arch, model_file=spec.model_file,
            model_sha256=spec.sha256, runtime=spec.runtime, runtime_version=runtime_version,
            tensorrt=spec.tensorrt, protocol=protocol, error_kind=kind, error_msg=message, flags=(),
            attempts=0, stats=None, session_init_ms=session_init_ms, first_inference_ms=None,
            peak_rss_mib=None, output_shapes=output_shapes, cpu_affinity_used=None, energy=None,
            telemetry_before=telemetry_before, telemetry_after=telemetry_after,
            started_at=started_at, finished_at=finished_at, quiet_check=quiet_check,
        )


_RESULT_V2_FIELDS = ("timer_used", "interference", "quiet_check")


def _result_v1(body: Dict[str, Any], where: str) -> Dict[str, Any]:
    """A schema-1 result in schema-2 terms: its estimate came from the protocol's timer."""
    extra = [k for k in _RESULT_V2_FIELDS if k in body]
    if extra:
        raise RecordError(f"{where}: field(s) {', '.join(extra)} are not part of schema_version 1")
    protocol = body.get("protocol")
    timer = protocol.get("timer", "wall") if isinstance(protocol, dict) else None
    ok = body.get("error_kind") is None and body.get("stats") is not None
    return {**body, "timer_used": timer if ok else None, "interference": None, "quiet_check": None}


@dataclasses.dataclass(frozen=True)
class BatchEnd:
    """The last line of a ``measure`` run: the host knows the batch finished (not a dropped link)."""

    batch_id: str
    n_models: int
    n_ok: int
    n_failed: int
    wall_s: float

    def __post_init__(self) -> None:
        _need(self.n_ok + self.n_failed == self.n_models, "n_ok + n_failed must equal n_models")

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": BATCH_END_SCHEMA, "schema_version": SCHEMA_VERSION, **to_json(self)}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "batch_end") -> BatchEnd:
        return from_json(cls, check_envelope(doc, BATCH_END_SCHEMA, SCHEMA_VERSIONS, where), where)


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    available: bool
    version: Optional[str]
    detail: Optional[str]


@dataclasses.dataclass(frozen=True)
class Emulation:
    """Evidence that the agent's interpreter runs under user-mode emulation (qemu-user).

    `host_machine` is the machine that really executes it (the kernel's architecture);
    `emulator` the emulator's program name when it could be read; `evidence` says what was
    seen, in words. Timings taken under emulation say nothing about the board it imitates.
    """

    emulator: Optional[str]
    host_machine: str
    evidence: List[str]

    def __post_init__(self) -> None:
        _need(bool(self.host_machine), "emulation.host_machine must not be empty")
        _need(len(self.evidence) > 0, "emulation.evidence must name at least one observation")


def fingerprint_of(facts: Dict[str, Any]) -> str:
    """The device fingerprint: sha256 of the canonical JSON of the stable facts, 16 hex digits."""
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    """What ``agent.pyz probe`` prints: the device, its runtimes, and its fingerprint.

    `fingerprint_facts` holds only facts that stay put between measurements (architecture,
    CPU model and core count, maximum CPU frequencies, board model, memory size, Jetson
    power mode); load, temperatures, current frequencies and free disk are not in it.
    """

    agent_version: str
    python_version: str
    python_implementation: str
    python_executable: str
    os_name: str
    os_release: str
    os_version: str
    os_pretty_name: Optional[str]
    machine: str
    cpu_model: Optional[str]
    cpu_cores: int
    cpu_max_freq_khz: Dict[str, int]
    board_model: Optional[str]
    mem_total_mib: Optional[int]
    mem_available_mib: Optional[int]
    work_dir: str
    disk_free_mib: Optional[int]
    runtimes: Dict[str, RuntimeInfo]
    jetson_power_mode: Optional[str]
    telemetry: Telemetry
    fingerprint_facts: Dict[str, Any]
    fingerprint: str
    emulation: Optional[Emulation] = None
    boot_id: Optional[str] = None  # the running kernel's boot id: equal on agents that share one machine
    cpus: Optional[List[int]] = None  # the CPUs the agent may run on (its affinity); None: unknown

    def __post_init__(self) -> None:
        _need(self.fingerprint == fingerprint_of(self.fingerprint_facts),
              "fingerprint does not match fingerprint_facts")
        emulated_on = self.fingerprint_facts.get("emulated_on")
        _need(emulated_on == (self.emulation.host_machine if self.emulation else None),
              "fingerprint_facts.emulated_on must be the emulation's host_machine (and absent without emulation)")

    @staticmethod
    def upgrade_json(doc: Any) -> Any:
        """A probe from an agent before emulation detection has no `emulation` field (none
        seen), one before machine sharing was detected no `boot_id` (unknown), one before CPU
        sets were reported no `cpus` (unknown: the whole machine)."""
        if isinstance(doc, dict):
            return {"emulation": None, "boot_id": None, "cpus": None, **doc}
        return doc

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": PROBE_SCHEMA, "schema_version": SCHEMA_VERSION, **to_json(self)}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "probe") -> ProbeReport:
        check_json_bounds(doc, where)
        return from_json(cls, check_envelope(doc, PROBE_SCHEMA, SCHEMA_VERSIONS, where), where)


def parse_agent_line(line: str, where: str = "agent output") -> Any:
    """One stdout line of ``measure`` -> :class:`MeasureResult` or :class:`BatchEnd`.

    Raises :class:`RecordError` for anything else (a torn line, another schema, bad fields,
    a line longer than :data:`MAX_LINE_CHARS`); its message names the record's arch id when
    the line has a readable one, and the offending field.
    """
    if len(line) > MAX_LINE_CHARS:
        raise RecordError(f"{where}: a line of {len(line)} characters (at most {MAX_LINE_CHARS}): {line[:120]!r}")
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"{where}: not a JSON line ({type(exc).__name__}: {str(exc)[:200]}): {line[:120]!r}") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema == RESULT_SCHEMA:
        arch_id = doc.get("arch_id")
        if isinstance(arch_id, str) and _SAFE_ID.match(arch_id):
            where = f"{where} record for {arch_id}"
        return MeasureResult.from_dict(doc, where)
    if schema == BATCH_END_SCHEMA:
        check_json_bounds(doc, where)
        return BatchEnd.from_dict(doc, where)
    raise RecordError(f"{where}: expected a {RESULT_SCHEMA!r} or {BATCH_END_SCHEMA!r} line, found {schema!r}")
