"""Device state before and after each model, board power during the timed runs, and flags.

Everything is read from files under injectable roots (``/sys``, ``/proc``), so tests point
a reader at a fake tree built from real captures. The firmware tools (``vcgencmd``,
``nvpmodel``) are called through an injectable *tool runner*: the default runs the real
binary with a fixed argument list when it is installed and returns None otherwise; tests
pass a function that returns captured output text. Nothing here executes anything a
request names.

Power sources, in the order they are looked for (units as the kernel documents them):
Jetson JetPack 4 INA3221 IIO rails (``in_powerN_input``, mW, label ``rail_nameN``), hwmon
``powerN_input`` (uW, label ``powerN_label``), and hwmon INA3221/INA2xx channels that only
give ``inN_input`` (mV) and ``currN_input`` (mA) (JetPack 5+ on Orin). Which rails make up
the board's power is decided in :mod:`device_agents.rails`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from device_agents.parsers.cpu import parse_cpuinfo
from device_agents.parsers.jetson import parse_nvpmodel
from device_agents.parsers.text import ParseError
from device_agents.parsers.thermal import millidegrees_to_c
from device_agents.parsers.vcgencmd import find_clocks, find_throttled
from device_agents.rails import energy_basis, unique_labels
from device_agents.records import Energy, Flag, Protocol, Telemetry, ThrottleState

ToolRunner = Callable[[Sequence[str]], Optional[str]]

# The only commands telemetry ever runs.
VCGENCMD_THROTTLED = ("vcgencmd", "get_throttled")
VCGENCMD_ARM_CLOCK = ("vcgencmd", "measure_clock", "arm")
NVPMODEL_QUERY = ("nvpmodel", "-q")

# Sensors whose readings are placeholders (PMIC-Die reads 100 C on Jetsons) or powered off
# (-256 C) must not raise the HOT flag.
_IGNORED_FOR_FLAGS = re.compile(r"pmic", re.IGNORECASE)
_MIN_REAL_TEMP_C = -40.0

_THROTTLE_FLAGS = {
    "under_voltage": Flag.UNDER_VOLTAGE, "freq_capped": Flag.FREQ_CAPPED,
    "throttled": Flag.THROTTLED, "soft_temp_limit": Flag.SOFT_TEMP_LIMIT,
}


def run_tool(argv: Sequence[str]) -> Optional[str]:
    """Output of an installed tool (stdout and stderr), None when absent or failing to start."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        done = subprocess.run([exe] + list(argv[1:]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=5, check=False, text=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _natural(path: str) -> List[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


class PowerRail:
    """One power reading: a mW file, a uW file, or a mV and a mA file."""

    def __init__(self, label: str, source: str, files: Tuple[str, ...], scale: float) -> None:
        self.label = label
        self.source = source
        self.files = files
        self.scale = scale

    def read_mw(self) -> Optional[float]:
        values = [_read_int(f) for f in self.files]
        if any(v is None for v in values):
            return None
        product = 1.0
        for v in values:
            product *= v  # type: ignore[operator]
        return product * self.scale


class TelemetryReader:
    """Reads device state; roots and the tool runner are injectable for tests."""

    def __init__(self, sys_root: str = "/sys", proc_root: str = "/proc", tool: ToolRunner = run_tool) -> None:
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.tool = tool
        self._rails: Optional[List[PowerRail]] = None
        self._tool_cache: Dict[Tuple[str, ...], bool] = {}
        self._cpu_model: Optional[str] = None

    def _sys(self, *parts: str) -> str:
        return os.path.join(self.sys_root, *parts)

    def _glob(self, pattern: str) -> List[str]:
        return sorted(glob.glob(self._sys(pattern)), key=_natural)

    # --- power ---------------------------------------------------------------------------
    def power_rails(self) -> List[PowerRail]:
        if self._rails is None:
            self._rails = self._discover_rails()
        return self._rails

    def _discover_rails(self) -> List[PowerRail]:
        rails: List[PowerRail] = []
        seen = set()
        iio = self._glob("bus/i2c/drivers/ina3221*/*/iio:device*/in_power*_input")
        iio += self._glob("bus/iio/devices/iio:device*/in_power*_input")
        for path in iio:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            folder, name = os.path.split(path)
            idx = re.search(r"in_power(\d+)_input", name).group(1)  # type: ignore[union-attr]
            label = _read(os.path.join(folder, f"rail_name_{idx}")) or f"{os.path.basename(folder)}/power{idx}"
            rails.append(PowerRail(label, "iio", (path,), 1.0))
        for hwmon in self._glob("class/hwmon/hwmon*"):
            name = _read(os.path.join(hwmon, "name")) or os.path.basename(hwmon)
            powers = sorted(glob.glob(os.path.join(hwmon, "power*_input")), key=_natural)
            for path in powers:
                idx = re.search(r"power(\d+)_input", os.path.basename(path)).group(1)  # type: ignore[union-attr]
                label = _read(os.path.join(hwmon, f"power{idx}_label")) or f"{name}/power{idx}"
                rails.append(PowerRail(label, f"hwmon:{name}", (path,), 1e-3))
            if powers or not name.lower().startswith("ina"):
                continue
            for volt in sorted(glob.glob(os.path.join(hwmon, "in*_input")), key=_natural):
                idx = re.search(r"in(\d+)_input", os.path.basename(volt)).group(1)  # type: ignore[union-attr]
                curr = os.path.join(hwmon, f"curr{idx}_input")
                if not os.path.exists(curr):
                    continue
                label = _read(os.path.join(hwmon, f"in{idx}_label")) or f"{name}/in{idx}"
                rails.append(PowerRail(label, f"hwmon:{name}", (volt, curr), 1e-3))
        for rail, label in zip(rails, unique_labels(r.label for r in rails)):
            rail.label = label  # two "NC" channels stay two readings
        return rails

    def read_power_mw(self) -> Dict[str, float]:
        out = {}
        for rail in self.power_rails():
            value = rail.read_mw()
            if value is not None:
                out[rail.label] = value
        return out

    # --- snapshot ------------------------------------------------------------------------
    def _tool(self, argv: Tuple[str, ...]) -> Optional[str]:
        if self._tool_cache.get(argv) is False:
            return None
        out = self.tool(argv)
        self._tool_cache[argv] = out is not None
        return out

    def load_avg(self) -> Optional[Tuple[float, float, float]]:
        text = _read(os.path.join(self.proc_root, "loadavg"))
        try:
            parts = text.split() if text else []
            return (float(parts[0]), float(parts[1]), float(parts[2]))
        except (IndexError, ValueError):
            return None

    def cpu_freqs(self) -> Tuple[Dict[str, int], Dict[str, str]]:
        freqs: Dict[str, int] = {}
        govs: Dict[str, str] = {}
        for folder in self._glob("devices/system/cpu/cpu[0-9]*"):
            cpu = os.path.basename(folder)
            cur = _read_int(os.path.join(folder, "cpufreq", "scaling_cur_freq"))
            gov = _read(os.path.join(folder, "cpufreq", "scaling_governor"))
            if cur is not None:
                freqs[cpu] = cur
            if gov:
                govs[cpu] = gov
        return freqs, govs

    def max_freqs(self) -> Dict[str, int]:
        out = {}
        for folder in self._glob("devices/system/cpu/cpu[0-9]*"):
            value = _read_int(os.path.join(folder, "cpufreq", "cpuinfo_max_freq"))
            if value is not None:
                out[os.path.basename(folder)] = value
        return out

    def temperatures(self) -> Dict[str, float]:
        out = {}
        for zone in self._glob("class/thermal/thermal_zone*"):
            raw = _read(os.path.join(zone, "temp"))
            if raw is None:
                continue
            try:
                value = millidegrees_to_c(raw)
            except ValueError:
                continue
            kind = _read(os.path.join(zone, "type")) or "unknown"
            out[f"{os.path.basename(zone)}:{kind}"] = value
        return out

    def throttle(self) -> Optional[ThrottleState]:
        text = self._tool(VCGENCMD_THROTTLED)
        found = find_throttled(text) if text else []
        return found[0] if found else None

    def arm_freq_hz(self) -> Optional[int]:
        text = self._tool(VCGENCMD_ARM_CLOCK)
        found = find_clocks(text) if text else []
        return found[0].hz if found else None

    def jetson_power_mode(self) -> Tuple[Optional[str], Optional[int]]:
        text = self._tool(NVPMODEL_QUERY)
        if not text:
            return None, None
        try:
            mode = parse_nvpmodel(text)
        except ParseError:
            return None, None
        return mode.power_mode, mode.mode_id

    def cpu_model(self) -> Optional[str]:
        if self._cpu_model is None:
            text = _read(os.path.join(self.proc_root, "cpuinfo"))
            try:
                self._cpu_model = (parse_cpuinfo(text).model_name if text else None) or ""
            except ParseError:
                self._cpu_model = ""
        return self._cpu_model or None

    def devfreq(self) -> Dict[str, int]:
        out = {}
        for folder in self._glob("class/devfreq/*"):
            value = _read_int(os.path.join(folder, "cur_freq"))
            if value is not None:
                out[os.path.basename(folder)] = value
        return out

    def snapshot(self) -> Telemetry:
        freqs, govs = self.cpu_freqs()
        mode, mode_id = self.jetson_power_mode()
        return Telemetry(
            time_unix=time.time(),
            load_avg=self.load_avg(),
            cpu_model=self.cpu_model(),
            cpus_online=_read(self._sys("devices", "system", "cpu", "online")),
            cpu_freq_khz=freqs,
            cpu_governor=govs,
            temperatures_c=self.temperatures(),
            throttle=self.throttle(),
            arm_freq_hz=self.arm_freq_hz(),
            devfreq_hz=self.devfreq(),
            jetson_power_mode=mode,
            jetson_power_mode_id=mode_id,
            power_mw=self.read_power_mw(),
        )


#: Seconds the rails are sampled at rest, once per batch, for the idle baseline.
IDLE_WINDOW_S = 0.5


class PowerSampler:
    """Samples every rail on a thread while a timed window is open; integrates energy.

    Energy of a window = mean sampled power x window duration (the sampling interval is
    far shorter than a block, and the rails update every few ms). The basis is the board
    input rail when there is one (it already includes the CPU and GPU rails: summing would
    count them twice), else the sum of the connected branch rails
    (:func:`device_agents.rails.energy_basis`).
    """

    def __init__(self, reader: TelemetryReader, interval_s: float) -> None:
        self.reader = reader
        self.interval_s = interval_s
        self._n_all = 0
        self._energy_mj = 0.0
        self._inferences = 0
        self._rail_sums: Dict[str, float] = {}
        self._basis_sum = 0.0
        self._n = 0
        self.basis: Tuple[str, ...] = energy_basis(r.label for r in reader.power_rails())
        self.sensor = ",".join(sorted({r.source for r in reader.power_rails()}))
        self.idle_mw: Optional[float] = None  # the basis at rest, subtracted for the net energy
        self._duration_s = 0.0

    def _basis_mw(self, samples: List[Dict[str, float]]) -> List[float]:
        return [sum(s.get(b, 0.0) for b in self.basis) for s in samples if all(b in s for b in self.basis)]

    def measure_idle(self, window_s: float = IDLE_WINDOW_S) -> Optional[float]:
        """Sample the basis for `window_s` with nothing running: the board's idle power."""
        samples: List[Dict[str, float]] = []
        end = time.perf_counter() + window_s
        while True:
            samples.append(self.reader.read_power_mw())
            if time.perf_counter() >= end:
                break
            time.sleep(self.interval_s)
        values = self._basis_mw(samples)
        self.idle_mw = sum(values) / len(values) if values else None
        return self.idle_mw

    @property
    def available(self) -> bool:
        return bool(self.basis)

    def measure(self, work: Callable[[], Union[int, Tuple[int, float]]]) -> None:
        """Run `work` while sampling power. `work` returns how many inferences it timed, and
        best also how long they took in seconds: the energy of one inference is then the
        window's mean power x that time, not x the whole window (which also holds untimed
        warm-up runs and the exchange with the worker: on this CPU 1.3-2.4x the inference
        time of a quick-protocol block, most for the fastest models)."""
        samples: List[Dict[str, float]] = []
        stop = threading.Event()

        def loop() -> None:
            while True:
                samples.append(self.reader.read_power_mw())
                if stop.wait(self.interval_s):
                    samples.append(self.reader.read_power_mw())
                    return

        thread = threading.Thread(target=loop, name="power-sampler", daemon=True)
        start = time.perf_counter()
        thread.start()
        try:
            done = work()
        finally:
            stop.set()
            thread.join()
        duration = time.perf_counter() - start
        runs, timed_s = done if isinstance(done, tuple) else (done, duration)
        duration = min(float(timed_s), duration) if timed_s > 0 else duration
        basis_values = self._basis_mw(samples)
        if not basis_values or runs <= 0:
            return
        mean_mw = sum(basis_values) / len(basis_values)
        self._energy_mj += mean_mw * duration  # mW * s = mJ
        self._duration_s += duration
        self._inferences += runs
        self._basis_sum += sum(basis_values)
        self._n += len(basis_values)
        for s in samples:
            for k, v in s.items():
                self._rail_sums[k] = self._rail_sums.get(k, 0.0) + v
        self._n_all += len(samples)

    def result(self) -> Optional[Energy]:
        if self._n == 0 or self._inferences == 0:
            return None
        n_all = self._n_all
        gross = self._energy_mj / self._inferences
        net = None
        if self.idle_mw is not None:
            net = min(gross, max(0.0, (self._energy_mj - self.idle_mw * self._duration_s) / self._inferences))
        return Energy(
            sensor=self.sensor,
            basis=self.basis,
            rails_mw={k: v / n_all for k, v in sorted(self._rail_sums.items())},
            power_mw=self._basis_sum / self._n,
            energy_mj_per_inference=gross,
            n_samples=self._n,
            idle_power_mw=self.idle_mw,
            net_energy_mj_per_inference=net,
        )


def usable_temperatures(temperatures_c: Dict[str, float]) -> Dict[str, float]:
    """The zones that may raise the HOT flag: no placeholder sensors, none powered off."""
    return {k: v for k, v in temperatures_c.items() if not _IGNORED_FOR_FLAGS.search(k) and v > _MIN_REAL_TEMP_C}


def _usable_temps(t: Telemetry) -> List[float]:
    return list(usable_temperatures(t.temperatures_c).values())


def condition_flags(before: Optional[Telemetry], after: Optional[Telemetry], protocol: Protocol) -> List[Flag]:
    """Flags from the device's state: firmware throttling active before or after, a sticky
    throttling bit newly set during the measurement, or a thermal zone at the limit."""
    flags: List[Flag] = []

    def add(flag: Flag) -> None:
        if flag not in flags:
            flags.append(flag)

    states = [t.throttle for t in (before, after) if t is not None and t.throttle is not None]
    for st in states:
        for name in st.now:
            add(_THROTTLE_FLAGS[name])
    if len(states) == 2:
        for name in states[1].since_boot:
            if name not in states[0].since_boot:
                add(_THROTTLE_FLAGS[name])
    for t in (before, after):
        if t is not None and any(v >= protocol.max_temp_c for v in _usable_temps(t)):
            add(Flag.HOT)
    return flags
