"""Health gates on the host side: the board's settings against the table's, and re-measures.

The agent gates each model itself (:mod:`device_agents.quiet`: it waits, bounded, for low
load, no throttling and no thermal zone at the limit, and flags what it could not wait out).
Two gates need the table, so they live here:

- **settings**: the CPU frequency governor, the Jetson power mode and the CPUs online the
  table's records were taken under (their `telemetry_before`) must be the board's now; a
  board reset to `powersave`, or switched to another `nvpmodel` mode (which parks cores and
  caps clocks), measures another device. `calibrate`, `verify` and `calibrate --group`
  refuse it with the fact and the fix, unless told to accept the change.
- **re-measure**: a model measured while the board was hot, throttled, under-voltage or
  frequency-capped is measured once more by the next calibration (the later record wins).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from device_agents.records import Flag, MeasureResult, ProbeReport, Telemetry
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.tables.device import DeviceTable, MeasureKey

#: Flags that mean the board itself was not in its measured state (heat, power).
HEALTH_FLAGS = frozenset({Flag.THROTTLED, Flag.UNDER_VOLTAGE, Flag.FREQ_CAPPED, Flag.SOFT_TEMP_LIMIT, Flag.HOT})


def settings_of(t: Telemetry | None) -> dict[str, Any]:
    """The settings a measurement depends on, from one telemetry snapshot (None: unknown)."""
    if t is None:
        return {}
    governors = sorted(set(t.cpu_governor.values()))
    out: dict[str, Any] = {
        "cpu_governor": ",".join(governors) if governors else None,
        "jetson_power_mode": t.jetson_power_mode,
        "jetson_power_mode_id": t.jetson_power_mode_id,
        "cpus_online": t.cpus_online,
    }
    return {k: v for k, v in out.items() if v is not None}


def recorded_settings(records: Iterable[MeasureResult]) -> dict[str, Any]:
    """Per setting, the value most of the successful records were taken under."""
    counts: dict[str, Counter[Any]] = {}
    for r in records:
        if r.ok:
            for k, v in settings_of(r.telemetry_before).items():
                counts.setdefault(k, Counter())[v] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


@dataclass(frozen=True)
class Mismatch:
    fact: str
    table: Any
    now: Any
    fix: str

    def describe(self) -> str:
        return f"{self.fact} is {self.now!r}, the table's records were taken with {self.table!r} (fix: {self.fix})"


def _fix(fact: str, table: dict[str, Any]) -> str:
    if fact == "cpu_governor":
        return f"sudo cpupower frequency-set -g {table['cpu_governor'].split(',')[0]}"
    if fact in ("jetson_power_mode", "jetson_power_mode_id"):
        mode = table.get("jetson_power_mode_id")
        return f"sudo nvpmodel -m {mode if mode is not None else '<mode>'} && sudo jetson_clocks"
    return f"bring CPUs {table['cpus_online']} online (the power mode parks cores: sudo nvpmodel -q shows it)"


def settings_mismatches(table_settings: dict[str, Any], now: dict[str, Any]) -> list[Mismatch]:
    """Settings known on both sides that differ (an unknown one is not a mismatch)."""
    found = []
    for fact in ("cpu_governor", "jetson_power_mode_id", "jetson_power_mode", "cpus_online"):
        if fact in table_settings and fact in now and table_settings[fact] != now[fact]:
            if fact == "jetson_power_mode" and any(m.fact == "jetson_power_mode_id" for m in found):
                continue  # one mode change, one line
            found.append(Mismatch(fact, table_settings[fact], now[fact], _fix(fact, table_settings)))
    return found


def check_settings(table: DeviceTable, probe: ProbeReport, device_key: str, accept: bool = False) -> list[Mismatch]:
    """Refuse a board whose settings differ from the ones `table`'s records were taken
    under (InvalidInputError naming each fact and its fix); with `accept`, return them."""
    found = settings_mismatches(recorded_settings(table.records()), settings_of(probe.telemetry))
    if found and not accept:
        raise InvalidInputError(
            f"{device_key} is not set up as when latency_tables/{table.key} was measured: "
            + "; ".join(m.describe() for m in found)
            + ". Restore the settings, or pass --accept-env-change to measure anyway (each record keeps its telemetry)"
        )
    return found


def settled(table: DeviceTable, key: MeasureKey) -> dict[str, MeasureResult]:
    """Successful records under `key` by arch id, without the archs to measure again: an arch
    whose only record was taken hot, throttled, under-voltage or capped (once re-measured,
    the arch is settled whatever the board did)."""
    seen: dict[str, list[MeasureResult]] = {}
    for r in table.records():
        if r.ok and MeasureKey.of(r) == key:
            seen.setdefault(r.arch_id, []).append(r)
    return {a: rs[-1] for a, rs in seen.items() if len(rs) >= 2 or not HEALTH_FLAGS & set(rs[-1].flags)}
