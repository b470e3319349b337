"""OFA-format block latency lookup tables, and the LUT-sum predictor built on them.

OFA prices a subnet by summing the measured latency of each of its layers, looked up by a
key that spells the layer's shape (`expanded_conv-input:28x28x48-output:...-kernel:5-...`).
One YAML file per resolution (`<r>_lookup_table.yaml`) maps keys to `{count, mean, std}` in
ms. Importing OFA's own tables (e.g. the Samsung Note10 ones) must reproduce OFA's sums
exactly; our block-mode calibration writes tables in the same format.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml
from scipy.stats import norm

from ofa2_edge.core.errors import InvalidArchError, SchemaError
from ofa2_edge.core.persist import atomic_write_text
from ofa2_edge.space.arch import EXPAND_CHOICES, KERNEL_CHOICES, N_BLOCKS, NETWORK_RESOLUTIONS, WIDTH_MULTS, Arch
from ofa2_edge.space.netplan import Layer, layer_plan, slot_layer, stem_layers, tail_layers
from ofa2_edge.space.slotcost import SlotTable, build_slot_table, evaluate
from ofa2_edge.surrogates.base import MAX_PREDICTED_MS, ArchBatch, LatencySurrogate, register_surrogate

TABLE_NAME = re.compile(r"^(\d+)_lookup_table\.yaml$")
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class LayerStat:
    """Measured latency of one layer shape: mean and std in ms over `count` runs."""

    mean: float
    std: float
    count: int


Table = dict[str, LayerStat]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stat(value: Any, key: str, where: str) -> LayerStat:
    if not isinstance(value, Mapping) or "mean" not in value:
        raise SchemaError(f"{where}: entry {key!r} must be a mapping with count, mean, std")
    mean, std, count = value["mean"], value.get("std", 0.0), value.get("count", 1)
    if not (_number(mean) and _number(std)) or isinstance(count, bool) or not isinstance(count, int):
        raise SchemaError(
            f"{where}: entry {key!r} has a non-numeric value (mean and std are numbers of ms, count an integer; "
            f"got mean={_short(mean)}, std={_short(std)}, count={_short(count)})"
        )
    mean, std = _as_float(mean), _as_float(std)
    if not (
        math.isfinite(mean) and 0 <= mean <= MAX_PREDICTED_MS and math.isfinite(std) and 0 <= std <= MAX_PREDICTED_MS
        and count >= 1
    ):
        raise SchemaError(
            f"{where}: entry {key!r} needs mean >= 0, std >= 0 (both finite, at most {MAX_PREDICTED_MS:.0f} ms), "
            f"count >= 1 (got mean={mean!r}, std={std!r}, count={_short(count)})"
        )
    return LayerStat(mean, std, count)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: refused as out of range
        return math.inf


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _TableLoader(_SAFE_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader, refusing a key given twice (YAML would silently keep the last one)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # resolve `<<` merge keys first, as the base constructor does
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base constructor says so
                break
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {_short(key)} is given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def read_ofa_table(path: str | Path) -> Table:
    """Read one `<r>_lookup_table.yaml`; malformed files raise `SchemaError` naming the entry."""
    path = Path(path)
    fix = "restore the file from its source, or measure it again (`ofa2-edge calibrate --blocks`)"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 text ({exc}); {fix}") from exc
    except OSError as exc:
        raise SchemaError(f"{path}: cannot be read ({exc.strerror or exc}); {fix}") from exc
    try:
        doc = yaml.load(text, Loader=_TableLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise SchemaError(f"{path}: not valid YAML ({str(exc)[:300] or type(exc).__name__}); {fix}") from exc
    if not isinstance(doc, Mapping) or not doc:
        raise SchemaError(f"{path}: expected a mapping of layer keys to {{count, mean, std}}")
    bad = next((k for k in doc if not isinstance(k, str)), None)
    if bad is not None:
        raise SchemaError(f"{path}: layer key {_short(bad)} is not a text (keys look like 'Conv-input:...'); {fix}")
    return {k: _stat(v, k, str(path)) for k, v in doc.items()}


def write_ofa_table(path: str | Path, table: Mapping[str, LayerStat]) -> Path:
    """Write a table in OFA's YAML format (atomically)."""
    doc = {k: {"count": s.count, "mean": s.mean, "std": s.std} for k, s in sorted(table.items())}
    return atomic_write_text(path, yaml.safe_dump(doc, sort_keys=True))


def read_ofa_tables(folder: str | Path) -> dict[int, Table]:
    """Read every `<r>_lookup_table.yaml` in `folder`, keyed by resolution.

    Each file is checked entry by entry (`read_ofa_table`); its name must spell a resolution
    the network runs (no leading zeros: two files never give the same one), every table must
    hold the first conv of one supported width, the same in all, and the LUT-sum of the
    min and max nets must be a plausible latency. Errors name the file (or the folder)."""
    folder = Path(folder)
    tables: dict[int, Table] = {}
    widths: dict[float, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = TABLE_NAME.match(path.name)
        if not m:
            continue
        digits = m.group(1)
        if not (digits.isascii() and len(digits) <= 4 and str(int(digits)) == digits and int(digits) in NETWORK_RESOLUTIONS):
            raise SchemaError(
                f"{path}: {digits!r} is not a resolution the network runs ({NETWORK_RESOLUTIONS.start}.."
                f"{NETWORK_RESOLUTIONS.stop - 1} px, without leading zeros); rename or remove that file"
            )
        r = int(digits)
        tables[r] = read_ofa_table(path)
        w = next((w for w in WIDTH_MULTS if stem_layers(r, w)[0].lut_key() in tables[r]), None)
        if w is None:
            raise SchemaError(
                f"{path}: no entry for the first conv of a supported width (w {', '.join(map(str, WIDTH_MULTS))}: "
                f"{stem_layers(r, WIDTH_MULTS[-1])[0].lut_key()!r} ...); not a lookup table of this network"
            )
        widths.setdefault(w, path)
    if not tables:
        raise SchemaError(f"{folder}: no <r>_lookup_table.yaml files found")
    if len(widths) > 1:
        raise SchemaError(
            f"{folder}: tables of different network widths ({'; '.join(f'w{w}: {p.name}' for w, p in widths.items())}); "
            "keep the tables of one network in a folder"
        )
    LutSurrogate(tables).check_loaded(str(folder))
    return tables


def _width_of(tables: Mapping[int, Table]) -> float:
    r, table = next(iter(tables.items()))
    for w in WIDTH_MULTS:
        if stem_layers(r, w)[0].lut_key() in table:
            return w
    raise SchemaError(f"lookup table at {r} px has no first-conv entry of a supported width ({WIDTH_MULTS})")


@register_surrogate("lut")
class LutSurrogate(LatencySurrogate):
    """OFA's LUT-sum: a subnet's latency is the sum of its layers' table means.

    Its quantiles assume independent Gaussian layer noise (variance = sum of std^2): the
    table's own measurement spread, not the error of summing layers, which the hybrid
    surrogate learns on top.
    """

    def __init__(self, tables: Mapping[int, Table], width_mult: float | None = None) -> None:
        if not tables:
            raise SchemaError("a lookup-table predictor needs at least one resolution")
        super().__init__(width_mult if width_mult is not None else _width_of(tables))
        self.tables = {int(r): dict(t) for r, t in sorted(tables.items())}

    @classmethod
    def from_folder(cls, folder: str | Path) -> "LutSurrogate":
        return cls(read_ofa_tables(folder))

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.tables)

    def _price(self, layer: Layer, r: int, field: str) -> float:
        stat = self.tables[r].get(layer.lut_key())
        if stat is None:
            return math.nan
        return stat.mean if field == "mean" else stat.std**2

    @cached_property
    def _mean_tables(self) -> dict[int, SlotTable]:
        return {r: build_slot_table(lambda layer, r=r: self._price(layer, r, "mean"), r, self.width_mult) for r in self.tables}

    @cached_property
    def _var_tables(self) -> dict[int, SlotTable]:
        return {r: build_slot_table(lambda layer, r=r: self._price(layer, r, "var"), r, self.width_mult) for r in self.tables}

    def _table_of(self, tables: Mapping[int, SlotTable]) -> Any:
        def get(r: int) -> SlotTable:
            if r not in tables:
                raise InvalidArchError(
                    f"r: the lookup table covers resolutions {', '.join(map(str, self.resolutions))}, not {r}"
                )
            return tables[r]

        return get

    def _checked(self, g: np.ndarray, values: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            arch = Arch.from_genome(g[bad[0]], w=self.width_mult)
            missing = next((l.lut_key() for l in layer_plan(arch) if l.lut_key() not in self.tables[arch.r]), None)
            if missing is None:
                raise InvalidArchError(f"{arch.id}: the lookup table at {arch.r} px sums to {values[bad[0]]!r} ms")
            raise InvalidArchError(f"{arch.id}: the lookup table at {arch.r} px has no entry for {missing}")
        return values

    def predict(self, archs: ArchBatch) -> np.ndarray:
        g = self.genomes(archs)
        return self._checked(g, evaluate(g, self._table_of(self._mean_tables)))

    def predict_quantile(self, archs: ArchBatch, q: float) -> np.ndarray:
        g = self.genomes(archs)
        mean = self.predict(g)
        std = np.sqrt(evaluate(g, self._table_of(self._var_tables)))
        return mean + norm.ppf(q) * std

    def fit(self, archs: ArchBatch, latencies_ms: np.ndarray) -> "LutSurrogate":
        """A lookup table is measured, not fitted: nothing to learn from end-to-end pairs."""
        return self

    def covers(self, r: int) -> bool:
        """Whether every layer an arch at `r` px can use has an entry."""
        if r not in self.tables:
            return False
        w = self.width_mult
        fixed = (*stem_layers(r, w), *tail_layers(r, w))
        slots = (
            slot_layer(r, w, i, k, e) for i in range(N_BLOCKS) for k in KERNEL_CHOICES for e in EXPAND_CHOICES
        )
        return all(layer.lut_key() in self.tables[r] for layer in (*fixed, *slots))

    def params(self) -> dict[str, Any]:
        return {
            "tables": {
                str(r): {k: [s.mean, s.std, s.count] for k, s in sorted(t.items())} for r, t in self.tables.items()
            }
        }

    @classmethod
    def from_params(cls, params: dict[str, Any], width_mult: float) -> "LutSurrogate":
        """Rebuild from `params()`: resolutions the network runs, entries [mean >= 0, std >= 0,
        count >= 1], all finite (SchemaError naming the entry otherwise)."""
        raw = params["tables"]
        if not isinstance(raw, dict) or not raw:
            raise ValueError("params.tables must be a non-empty object of resolution -> table")
        tables: dict[int, Table] = {}
        for r, t in raw.items():
            if not (isinstance(r, str) and r.isdigit() and int(r) in NETWORK_RESOLUTIONS) or not isinstance(t, dict):
                raise ValueError(f"params.tables: {str(r)[:20]!r} is not a resolution with a table of entries")
            entries = {}
            for k, v in t.items():
                if not isinstance(v, list) or len(v) != 3:
                    raise ValueError(f"params.tables.{r}.{str(k)[:80]}: expected [mean, std, count]")
                entries[k] = _stat({"mean": v[0], "std": v[1], "count": v[2]}, k, f"params.tables.{r}")
            tables[int(r)] = entries
        return cls(tables, width_mult)

    def check_resolutions(self) -> tuple[int, ...]:
        return tuple(r for r in self.resolutions if self.covers(r))


def lut_latency(arch: Arch, table: Mapping[str, LayerStat]) -> float:
    """Reference LUT sum of one arch, layer by layer (as OFA's own estimator computes it)."""
    return float(sum(table[layer.lut_key()].mean for layer in layer_plan(arch)))

