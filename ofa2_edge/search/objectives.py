"""What a search optimises and constrains: named metrics, each a vectorised evaluator.

A metric maps a (n, 46) batch of canonical value genomes to one number per arch in its
natural unit, in one call per population:

- ``top1``: predicted top-1 in percent (OFA's official predictor, or a fitted one);
  maximised. pymoo minimises, so the search works on the top-1 *error* ``100 - top1``
  (the OFA² convention; hypervolume reference points are in that space too).
- ``latency:<device>``: that device's fitted latency predictor in ms, read from its
  latency table with `load_surrogate` (any kind); ``energy:<device>`` and
  ``memory:<device>`` likewise, one family per quantity of :mod:`ofa2_edge.tables.quantities`.
- ``macs``, ``params``, ``peak-mem``: analytic costs (millions of MACs / parameters, MB).

Each family is registered with `register_metric` (a new objective is one builder and its
decorator); `metric_names()` lists them. Constraints (``latency:rpi4<=80``, ``macs<=600``, ``top1>=75``) become pymoo inequality
constraints ``G <= 0``. Everything a search needs is resolved and probed in
`build_objectives`, so a bad name, a missing predictor or an impossible bound is one clear
error before any work starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError
from ofa2_edge.core.persist import sha256_file
from ofa2_edge.core.workspace import DEVICE_KEY_PATTERN, Workspace, unknown_device
from ofa2_edge.space import costs
from ofa2_edge.space.arch import SearchSpace, genomes_of
from ofa2_edge.tables.device import DeviceTable
from ofa2_edge.tables.quantities import Quantity, quantity, quantity_names

_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9:_.\-]+?)\s*(<=|>=|<|>|==|=)\s*(\S+)\s*$")
OFFICIAL_ACCURACY = "official"


@dataclass(frozen=True)
class Metric:
    """One evaluable quantity: its name, the record field (with unit) and its evaluator."""

    name: str
    field: str
    unit: str
    maximise: bool
    evaluate: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def minimised(self, values: np.ndarray) -> np.ndarray:
        """The value pymoo minimises: the top-1 error ``100 - top1`` for top1, else the value."""
        return 100.0 - values if self.maximise else values

    def natural(self, minimised: np.ndarray) -> np.ndarray:
        return 100.0 - minimised if self.maximise else minimised

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "field": self.field,
            "unit": self.unit,
            "sense": "max" if self.maximise else "min",
            "minimised_as": "100 - top1 (top-1 error, %)" if self.maximise else "value",
            "source": self.source,
        }


@dataclass(frozen=True)
class Constraint:
    """``metric op bound`` with op ``<=`` or ``>=``; feasible when ``g(values) <= 0``."""

    metric: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def g(self, values: np.ndarray) -> np.ndarray:
        return values - self.bound if self.op == "<=" else self.bound - values


def parse_constraint(text: str) -> Constraint:
    """Read ``latency:rpi4<=80`` / ``macs <= 600`` / ``top1>=75``; anything else is refused."""
    m = _CONSTRAINT.match(text or "")
    if not m:
        raise InvalidInputError(f"malformed constraint {text!r}: expected METRIC<=VALUE or METRIC>=VALUE, e.g. latency:rpi4<=80")
    name, op, raw = m.groups()
    if op not in ("<=", ">="):
        raise InvalidInputError(f"constraint {text!r}: use <= or >= (got {op!r})")
    try:
        bound = float(raw)
    except ValueError as exc:
        raise InvalidInputError(f"constraint {text!r}: bound {raw!r} is not a number") from exc
    if not np.isfinite(bound):
        raise InvalidInputError(f"constraint {text!r}: bound must be finite")
    return Constraint(name, op, bound)


def parse_objective_list(text: str | Sequence[str]) -> list[str]:
    """Split ``top1,latency:note10,macs`` into names; empty entries and repeats are refused."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    if not names or any(not n for n in names):
        raise InvalidInputError(f"objectives {text!r}: give a comma-separated list like top1,latency:note10,macs")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidInputError(f"objective(s) listed twice: {', '.join(dup)}")
    return names


# --------------------------------------------------------------------- resolving metrics
@dataclass
class MetricContext:
    """Where metrics come from: the workspace's latency tables and the accuracy predictor."""

    workspace: Workspace
    space: SearchSpace
    accuracy: str = OFFICIAL_ACCURACY  # "official", a path to a fitted predictor JSON, or an accuracy table name
    assets_dir: Path | None = None
    allow_emulated: bool = False  # a table measured under qemu-user is no latency source unless allowed
    _cache: dict[str, Metric] = field(default_factory=dict)

    def known_devices(self, quantity: str = "latency") -> list[str]:
        """Devices with a fitted predictor of `quantity` in the workspace."""
        return [t.key for t in DeviceTable.all(self.workspace.tables_dir) if t.predictor_path(quantity).is_file()]


MetricBuilder = Callable[[str, MetricContext], Metric]


@dataclass(frozen=True)
class MetricKind:
    """A family of metrics: ``name`` alone, or ``name:<arg>`` when it takes an argument
    (``latency:<device>``). `build(arg, ctx)` loads what the metric needs and returns it."""

    name: str
    arg: str | None
    help: str
    build: MetricBuilder = field(repr=False)

    @property
    def spelling(self) -> str:
        return f"{self.name}:<{self.arg}>" if self.arg else self.name


_METRICS: dict[str, MetricKind] = {}


def register_metric(name: str, *, arg: str | None = None, help: str = "") -> Callable[[MetricBuilder], MetricBuilder]:
    """Register a metric family; a new objective is one builder function and this decorator."""

    def add(build: MetricBuilder) -> MetricBuilder:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        _METRICS[name] = MetricKind(name, arg, help, build)
        return build

    return add


def metric_kinds() -> list[MetricKind]:
    """Every registered metric family, in registration order (for help texts and errors)."""
    return list(_METRICS.values())


def metric_names() -> list[str]:
    return [k.spelling for k in _METRICS.values()]


@register_metric("top1", help="predicted top-1 in percent (OFA's official predictor or a fitted one); maximised")
def _top1(arg: str, ctx: MetricContext) -> Metric:
    from ofa2_edge.accuracy.official import official_predictor
    from ofa2_edge.accuracy.predictor import load_accuracy_predictor
    from ofa2_edge.accuracy.table import accuracy_source

    if ctx.accuracy == OFFICIAL_ACCURACY:
        predictor = official_predictor(ctx.assets_dir)
    else:  # a predictor JSON, or an accuracy table's fitted predictor
        predictor = load_accuracy_predictor(accuracy_source(ctx.accuracy, ctx.workspace))
    predictor.check_resolutions(ctx.space.resolutions)
    return Metric("top1", "top1_pct", "%", True, predictor.predict, predictor.source)


def _device_metric(q: Quantity) -> None:
    """``<quantity>:<device>``: that device's fitted predictor of `q` (latency, energy, ...)."""

    def build(key: str, ctx: MetricContext) -> Metric:
        import ofa2_edge.surrogates.lut  # noqa: F401  (registers the "lut" kind with load_surrogate)
        from ofa2_edge.surrogates.base import load_surrogate

        name = f"{q.name}:{key}"
        if not DEVICE_KEY_PATTERN.match(key):
            raise InvalidInputError(f"{name}: a device key is lowercase letters, digits, '_', '.', '-'")
        table = DeviceTable.of(ctx.workspace, key)
        path = table.predictor_path(q.name)
        if not path.is_file():
            known = ctx.known_devices(q.name)
            have = (f"devices with a fitted {q.name} predictor here: {', '.join(known)}" if known
                    else f"no device has a fitted {q.name} predictor here yet")  # fmt: skip
            if not table.folder.is_dir():  # a typo, most often: the known ones and the closest first
                why = unknown_device(key, known, f"no table {table.folder}")
                raise InvalidInputError(f"{name}: {why} (workspace {ctx.workspace.root})")
            fit = f"ofa2-edge fit --device {key}" + ("" if q.name == "latency" else f" --quantity {q.name}")
            why = f"device {key!r} has a latency table but no fitted {q.name} predictor ({path} is missing); run `{fit}`"
            raise InvalidInputError(f"{name}: {why}; {have} (workspace {ctx.workspace.root})")
        table.check_latency_source(ctx.allow_emulated)
        try:
            surrogate = load_surrogate(path)
        except Ofa2EdgeError as exc:
            raise InvalidInputError(f"{name}: cannot use {path}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{name}: {path} is not a valid {q.name} predictor ({type(exc).__name__}: {exc})") from exc
        if abs(surrogate.width_mult - ctx.space.w) > 1e-9:
            raise InvalidInputError(
                f"{name}: the predictor in {path} is for width multiplier {surrogate.width_mult}, the search space is w{ctx.space.w}"
            )
        source = {"kind": surrogate.kind, "device": key, "path": str(path.resolve()), "sha256": sha256_file(path)}
        return Metric(name, f"{q.field}:{key}", q.unit, False, surrogate.predict, source)

    register_metric(q.name, arg="device", help=f"the device's fitted {q.name} predictor, {q.unit} ({q.help})")(build)


for _q in quantity_names():
    _device_metric(quantity(_q))


def _analytic(name: str, fld: str, unit: str, fn: Callable[[np.ndarray, float], np.ndarray], help: str) -> None:
    def build(arg: str, ctx: MetricContext) -> Metric:
        w = ctx.space.w
        return Metric(name, fld, unit, False, lambda g: fn(g, w), {"kind": "analytic", "module": costs.__name__})

    register_metric(name, help=help)(build)


_analytic("macs", "macs_m", "M", costs.macs_m, "multiply-accumulates, millions")
_analytic("params", "params_m", "M", costs.params_m, "parameters, millions")
_analytic("peak-mem", "peak_mem_mb", "MB", costs.peak_mem_mb, "peak activation memory, MB")


def resolve_metric(name: str, ctx: MetricContext) -> Metric:
    """The metric called `name` (``family`` or ``family:arg``), loaded once per context."""
    if name in ctx._cache:
        return ctx._cache[name]
    family, sep, arg = name.partition(":")
    kind = _METRICS.get(family)
    if kind is None or bool(kind.arg) != bool(sep) or (sep and not arg):
        hint = f" (a {kind.name} objective names its {kind.arg}: {kind.spelling})" if kind and kind.arg else ""
        raise InvalidInputError(f"unknown objective {name!r}{hint}; choose from {', '.join(metric_names())}")
    metric = kind.build(arg, ctx)
    ctx._cache[name] = metric
    return metric


# --------------------------------------------------------------------- the evaluator
@dataclass(frozen=True)
class Evaluation:
    """Natural values of every metric, and pymoo's F (minimised objectives) and G."""

    values: dict[str, np.ndarray]
    F: np.ndarray
    G: np.ndarray


class Objectives:
    """The objectives and constraints of one search, evaluated in one call per population."""

    def __init__(self, objectives: Sequence[Metric], constraints: Sequence[Constraint], metrics: dict[str, Metric]) -> None:
        self.objectives = tuple(objectives)
        self.constraints = tuple(constraints)
        self.metrics = dict(metrics)

    @property
    def n_obj(self) -> int:
        return len(self.objectives)

    @property
    def n_constr(self) -> int:
        return len(self.constraints)

    def evaluate(self, genomes: np.ndarray) -> Evaluation:
        return self.from_values(self.values(genomes))

    def values(self, genomes: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric's natural values for a genome batch."""
        return {name: np.asarray(m.evaluate(genomes), dtype=np.float64) for name, m in self.metrics.items()}

    def from_values(self, values: dict[str, np.ndarray]) -> Evaluation:
        """F and G from every metric's natural values (as `evaluate` computes them)."""
        n = len(next(iter(values.values()))) if values else 0
        F = np.column_stack([m.minimised(values[m.name]) for m in self.objectives]) if self.objectives else np.zeros((n, 0))
        G = np.column_stack([c.g(values[c.metric]) for c in self.constraints]) if self.constraints else np.zeros((n, 0))
        return Evaluation(values, F, G)

    def describe(self) -> dict[str, Any]:
        return {
            "objectives": [m.describe() for m in self.objectives],
            "constraints": [{"metric": c.metric, "op": c.op, "bound": c.bound, "text": c.text} for c in self.constraints],
            "metrics": {name: m.describe() for name, m in self.metrics.items()},
        }


def probe_genomes(space: SearchSpace, n_random: int = 64) -> np.ndarray:
    """The smallest and largest arch at every resolution, plus a fixed random sample."""
    corners = [a for r in space.resolutions for a in (space.smallest(r), space.largest(r))]
    return np.concatenate([genomes_of(corners), space.sample_genomes(n_random, np.random.default_rng(0))])


def build_objectives(
    objectives: Sequence[str],
    constraints: Sequence[str],
    ctx: MetricContext,
    *,
    min_objectives: int = 1,
) -> Objectives:
    """Resolve names and constraint texts, load every predictor, probe them on a few archs.

    Everything that can be wrong with the input is reported here, before any work: an
    unknown metric or device, a device without a fitted predictor, a malformed constraint,
    a predictor file that does not load or does not cover the space, and a cost bound that
    even the smallest (or largest) arch of the space cannot meet.
    """
    names = parse_objective_list(objectives)
    if len(names) < min_objectives:
        raise InvalidInputError(f"this algorithm needs at least {min_objectives} objectives, got {len(names)}: {', '.join(names)}")
    parsed = [parse_constraint(c) for c in constraints]
    metrics: dict[str, Metric] = {}
    for name in [*names, *(c.metric for c in parsed)]:
        metrics[name] = resolve_metric(name, ctx)
    objs = Objectives([metrics[n] for n in names], parsed, metrics)
    probes = probe_genomes(ctx.space)
    try:
        ev = objs.evaluate(probes)
    except Ofa2EdgeError as exc:
        raise InvalidInputError(f"a metric cannot evaluate the search space {ctx.space.to_dict()}: {exc}") from exc
    for name, vals in ev.values.items():
        if not np.isfinite(vals).all():
            raise InvalidInputError(f"{name}: the predictor returns non-finite values on archs of the search space")
    for c in parsed:
        m = metrics[c.metric]
        vals = ev.values[c.metric]
        if m.maximise:
            continue  # accuracy is not monotone in size: no safe early verdict
        if c.op == "<=" and c.bound < vals.min():
            raise InvalidInputError(
                f"constraint {c.text} cannot be met: the smallest arch of the search space already has "
                f"{c.metric} = {vals.min():.4g} {m.unit}; relax the bound or shrink the space's smallest choices"
            )
        if c.op == ">=" and c.bound > vals.max():
            raise InvalidInputError(
                f"constraint {c.text} cannot be met: the largest arch of the search space has {c.metric} = {vals.max():.4g} {m.unit}"
            )
    return objs
