"""The OFA-MobileNetV3 architecture space: the `Arch` value, its encodings, and search spaces.

An `Arch` is what the supernet can build: 20 block slots (5 stages x up to 4 blocks), each
with a kernel size and an expand ratio, a depth per stage, an input resolution and a width
multiplier. It is immutable and canonical: genes of slots beyond a stage's depth build
nothing, so they are normalised to the smallest choice, and two genomes that build the same
network compare, hash and are identified equally.

A `SearchSpace` is the (possibly smaller) set of archs a search may choose from, e.g. the
resolutions 160..224 step 16 that OFA's accuracy predictor and the Note10 table cover.

Batched functions work on *genome arrays*: integer arrays of shape (n, 46) in the OFA²
value layout (kernel sizes in genes 0-19, expand ratios 20-39, depths 40-44, resolution 45).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ofa2_edge.core.errors import InvalidArchError

KERNEL_CHOICES: tuple[int, ...] = (3, 5, 7)
EXPAND_CHOICES: tuple[int, ...] = (3, 4, 6)
DEPTH_CHOICES: tuple[int, ...] = (2, 3, 4)
WIDTH_MULTS: tuple[float, ...] = (1.0, 1.2)
N_STAGES = 5
MAX_DEPTH = 4
N_BLOCKS = N_STAGES * MAX_DEPTH
N_GENES = 2 * N_BLOCKS + N_STAGES + 1
KS_GENES = slice(0, N_BLOCKS)
E_GENES = slice(N_BLOCKS, 2 * N_BLOCKS)
D_GENES = slice(2 * N_BLOCKS, 2 * N_BLOCKS + N_STAGES)
R_GENE = N_GENES - 1

#: Resolutions the network can run (5 stride-2 layers need >= 32 px).
NETWORK_RESOLUTIONS = range(32, 1025)
#: Resolutions OFA trained the supernet on (elastic resolution, step 4).
OFA_RESOLUTIONS: tuple[int, ...] = tuple(range(128, 225, 4))
#: The default search resolutions: those of the official predictor data and Note10 tables.
DEFAULT_RESOLUTIONS: tuple[int, ...] = (160, 176, 192, 208, 224)
DEFAULT_WIDTH_MULT = 1.2

#: OFA's accuracy-predictor encoding: 60 kernel + 60 expand one-hot slots, 8 resolution slots.
PREDICTOR_FEATURES = 2 * 3 * N_BLOCKS + 8
PREDICTOR_RESOLUTIONS = range(112, 240)

_STAGE_OF_SLOT = np.arange(N_BLOCKS) // MAX_DEPTH
_POS_IN_STAGE = np.arange(N_BLOCKS) % MAX_DEPTH


def _choices_text(choices: Iterable[Any]) -> str:
    return ", ".join(str(c) for c in choices)


def _as_int(value: Any, where: str) -> int:
    """An integer gene; bools, NaN, infinities, floats with a fraction and strings are refused by name."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise InvalidArchError(f"{where}: expected an integer, got {_short(value)}")
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        raise InvalidArchError(f"{where}: expected an integer, got {value!r}")
    if float(value) != int(value):
        raise InvalidArchError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _short(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut short: an error message must not echo a megabyte of input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_list(values: Any, name: str, length: int) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise InvalidArchError(f"{name}: expected a list of {length} integers, got {_short(values)}")
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise InvalidArchError(f"{name}: expected a list of {length} integers, got an array of shape {values.shape}")
    if len(values) != length:
        raise InvalidArchError(f"{name}: expected {length} values, got {len(values)}")
    return [_as_int(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _check_width(w: Any) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)):
        raise InvalidArchError(f"w: expected a width multiplier ({_choices_text(WIDTH_MULTS)}), got {_short(w)}")
    for allowed in WIDTH_MULTS:
        if abs(float(w) - allowed) < 1e-9:
            return allowed
    raise InvalidArchError(f"w: width multiplier {w} is not supported; choose from {_choices_text(WIDTH_MULTS)}")


@dataclass(frozen=True)
class Arch:
    """One subnet of the OFA-MobileNetV3 supernet, in canonical form.

    `ks` and `e` hold one value per block slot (20), `d` one depth per stage (5), `r` the
    input resolution in pixels, `w` the width multiplier of the supernet it comes from.
    """

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int
    w: float = DEFAULT_WIDTH_MULT

    def __post_init__(self) -> None:
        d = _int_list(self.d, "d", N_STAGES)
        for i, depth in enumerate(d):
            if depth not in DEPTH_CHOICES:
                raise InvalidArchError(
                    f"d[{i}]: depth {depth} is not allowed; choose from {_choices_text(DEPTH_CHOICES)}"
                )
        ks = _int_list(self.ks, "ks", N_BLOCKS)
        e = _int_list(self.e, "e", N_BLOCKS)
        for i in range(N_BLOCKS):
            active = i % MAX_DEPTH < d[i // MAX_DEPTH]
            # An inactive slot builds nothing; OFA tools write 0 there, so accept it.
            if ks[i] not in KERNEL_CHOICES and not (ks[i] == 0 and not active):
                raise InvalidArchError(
                    f"ks[{i}]: kernel size {ks[i]} is not allowed; choose from {_choices_text(KERNEL_CHOICES)}"
                )
            if e[i] not in EXPAND_CHOICES and not (e[i] == 0 and not active):
                raise InvalidArchError(
                    f"e[{i}]: expand ratio {e[i]} is not allowed; choose from {_choices_text(EXPAND_CHOICES)}"
                )
            if not active:
                ks[i], e[i] = KERNEL_CHOICES[0], EXPAND_CHOICES[0]
        r = _as_int(self.r, "r")
        if r not in NETWORK_RESOLUTIONS:
            raise InvalidArchError(
                f"r: resolution {r} px is outside what the network can run "
                f"({NETWORK_RESOLUTIONS.start}..{NETWORK_RESOLUTIONS.stop - 1})"
            )
        object.__setattr__(self, "ks", tuple(ks))
        object.__setattr__(self, "e", tuple(e))
        object.__setattr__(self, "d", tuple(d))
        object.__setattr__(self, "r", r)
        object.__setattr__(self, "w", _check_width(self.w))

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], w: float | None = None) -> "Arch":
        """Read OFA's dict form ``{"ks", "e", "d", "r"}`` (also OFA²'s ``"r": [224]`` and
        ``"image_size"``), with an optional ``"w"``; `w` overrides a missing width."""
        if not isinstance(data, Mapping):
            raise InvalidArchError(f"an arch must be a JSON object with ks, e, d, r; got {type(data).__name__}")
        allowed = {"ks", "e", "d", "r", "image_size", "w", "width_mult"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidArchError(f"unknown arch field(s) {', '.join(unknown)}; allowed: ks, e, d, r, w")
        missing = [k for k in ("ks", "e", "d") if k not in data]
        if "r" not in data and "image_size" not in data:
            missing.append("r")
        if missing:
            raise InvalidArchError(f"arch is missing field(s): {', '.join(missing)}")
        r = data["r"] if "r" in data else data["image_size"]
        if isinstance(r, (list, tuple, np.ndarray)):
            if len(r) != 1:
                raise InvalidArchError(f"r: expected one resolution, got {_short(list(r))}")
            r = r[0]
        width = data.get("w", data.get("width_mult", DEFAULT_WIDTH_MULT if w is None else w))
        # The lists go in as given: __post_init__ checks their type and length, then stores tuples.
        return cls(ks=data["ks"], e=data["e"], d=data["d"], r=r, w=width)

    @classmethod
    def from_genome(cls, genome: Sequence[int] | np.ndarray, w: float = DEFAULT_WIDTH_MULT) -> "Arch":
        """Read the OFA² 46-gene value genome (ks 0-19, e 20-39, d 40-44, r 45)."""
        if isinstance(genome, np.ndarray) and genome.shape != (N_GENES,):
            raise InvalidArchError(f"genome: expected {N_GENES} genes, got shape {genome.shape}")
        if isinstance(genome, np.ndarray) and genome.dtype.kind in "iu":
            g = genome.tolist()  # already integers (the search's batches): no per-gene check needed
        else:
            g = _int_list(genome, "genome", N_GENES)
        return cls(ks=tuple(g[KS_GENES]), e=tuple(g[E_GENES]), d=tuple(g[D_GENES]), r=g[R_GENE], w=w)

    @classmethod
    def smallest(cls, r: int, w: float = DEFAULT_WIDTH_MULT) -> "Arch":
        """The min net: kernel 3, expand 3, depth 2 everywhere."""
        return cls(ks=(3,) * N_BLOCKS, e=(3,) * N_BLOCKS, d=(2,) * N_STAGES, r=r, w=w)

    @classmethod
    def largest(cls, r: int, w: float = DEFAULT_WIDTH_MULT) -> "Arch":
        """The max net: kernel 7, expand 6, depth 4 everywhere."""
        return cls(ks=(7,) * N_BLOCKS, e=(6,) * N_BLOCKS, d=(4,) * N_STAGES, r=r, w=w)

    # ----------------------------------------------------------------- views
    def to_dict(self) -> dict[str, Any]:
        """OFA's dict form plus the width multiplier."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r, "w": self.w}

    def to_genome(self) -> np.ndarray:
        """The OFA² 46-gene value genome."""
        return np.array([*self.ks, *self.e, *self.d, self.r], dtype=np.int64)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        """Short stable id: ``a-`` + 12 hex chars of the sha256 of the canonical JSON."""
        return "a-" + hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    @property
    def active_slots(self) -> tuple[int, ...]:
        return tuple(i for i in range(N_BLOCKS) if i % MAX_DEPTH < self.d[i // MAX_DEPTH])

    def __str__(self) -> str:
        return f"{self.id} (r={self.r}, d={'-'.join(map(str, self.d))}, w={self.w})"


# --------------------------------------------------------------------- batch functions
def genomes_of(archs: Iterable[Arch]) -> np.ndarray:
    """Stack archs into a (n, 46) int64 genome array."""
    rows = [a.to_genome() for a in archs]
    return np.stack(rows) if rows else np.zeros((0, N_GENES), dtype=np.int64)


def archs_of(genomes: np.ndarray, w: float = DEFAULT_WIDTH_MULT) -> list[Arch]:
    """Turn a (n, 46) genome array into validated archs."""
    g = as_genomes(genomes)
    return [Arch.from_genome(row, w=w) for row in g]


def as_genomes(genomes: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Check and view input as a (n, 46) int64 genome array (a single genome becomes n=1)."""
    g = np.asarray(genomes)
    if g.ndim == 1:
        g = g[None, :]
    if g.ndim != 2 or g.shape[1] != N_GENES:
        raise InvalidArchError(f"genomes: expected shape (n, {N_GENES}), got {g.shape}")
    return g.astype(np.int64, copy=False)


def active_mask(genomes: np.ndarray) -> np.ndarray:
    """(n, 20) bool: which block slots each genome builds."""
    g = as_genomes(genomes)
    return _POS_IN_STAGE[None, :] < g[:, D_GENES][:, _STAGE_OF_SLOT]


def canonicalize_genomes(genomes: np.ndarray) -> np.ndarray:
    """Vectorised canonical form: inactive slots get the smallest kernel and expand choice."""
    g = as_genomes(genomes).copy()
    inactive = ~active_mask(g)
    g[:, KS_GENES][inactive] = KERNEL_CHOICES[0]
    g[:, E_GENES][inactive] = EXPAND_CHOICES[0]
    return g


@functools.lru_cache(maxsize=64)
def _choice_lut(choices: tuple[int, ...]) -> np.ndarray:
    lut = np.full(max(choices) + 1, -1, dtype=np.int64)
    lut[list(choices)] = np.arange(len(choices))
    lut.flags.writeable = False
    return lut


def choice_indices(values: np.ndarray, choices: Sequence[int], name: str) -> np.ndarray:
    """Map gene values to their index in `choices`; unknown values raise, naming the field."""
    lut = _choice_lut(tuple(int(c) for c in choices))  # the search calls this a few times per population
    v = np.asarray(values, dtype=np.int64)
    if v.size and (v.min() < 0 or v.max() >= lut.size):
        idx = np.full(v.shape, -1, dtype=np.int64)
        inside = (v >= 0) & (v < lut.size)
        idx[inside] = lut[v[inside]]
    else:
        idx = lut[v]
    if (idx < 0).any():
        raise InvalidArchError(
            f"{name}: value {int(v[idx < 0].flat[0])} is not allowed; choose from {_choices_text(choices)}"
        )
    return idx


def predictor_features(genomes: np.ndarray) -> np.ndarray:
    """OFA's accuracy-predictor encoding, (n, 128) float32, without a loop over archs.

    Slots 0-59: one-hot kernel per block (3, 5, 7); 60-119: one-hot expand per block
    (3, 4, 6); 120-127: resolution one-hot at (r - 112) // 16. Inactive blocks are zero.
    """
    g = as_genomes(genomes)
    n = g.shape[0]
    active = active_mask(g)
    ks_canon = np.where(active, g[:, KS_GENES], KERNEL_CHOICES[0])
    e_canon = np.where(active, g[:, E_GENES], EXPAND_CHOICES[0])
    k_idx = choice_indices(ks_canon, KERNEL_CHOICES, "ks")
    e_idx = choice_indices(e_canon, EXPAND_CHOICES, "e")
    r = g[:, R_GENE]
    outside = (r < PREDICTOR_RESOLUTIONS.start) | (r >= PREDICTOR_RESOLUTIONS.stop)
    if outside.any():
        raise InvalidArchError(
            f"r: resolution {int(r[outside][0])} px is outside the accuracy predictor's range "
            f"{PREDICTOR_RESOLUTIONS.start}..{PREDICTOR_RESOLUTIONS.stop - 1}"
        )
    feats = np.zeros((n, PREDICTOR_FEATURES), dtype=np.float32)
    rows, slots = np.nonzero(active)
    feats[rows, slots * 3 + k_idx[rows, slots]] = 1.0
    feats[rows, 3 * N_BLOCKS + slots * 3 + e_idx[rows, slots]] = 1.0
    feats[np.arange(n), 6 * N_BLOCKS + (r - 112) // 16] = 1.0
    return feats


# --------------------------------------------------------------------- search space
@dataclass(frozen=True)
class SearchSpace:
    """The archs a search may choose from; a subset of what the network can build."""

    resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS
    ks: tuple[int, ...] = KERNEL_CHOICES
    e: tuple[int, ...] = EXPAND_CHOICES
    d: tuple[int, ...] = DEPTH_CHOICES
    w: float = DEFAULT_WIDTH_MULT

    def __post_init__(self) -> None:
        for name, values, allowed in (
            ("ks", self.ks, KERNEL_CHOICES),
            ("e", self.e, EXPAND_CHOICES),
            ("d", self.d, DEPTH_CHOICES),
            ("resolutions", self.resolutions, NETWORK_RESOLUTIONS),
        ):
            vals = tuple(sorted({_as_int(v, name) for v in values}))
            if not vals:
                raise InvalidArchError(f"search space: {name} needs at least one choice")
            for v in vals:
                if v not in allowed:
                    allowed_text = (
                        f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range) else _choices_text(allowed)
                    )
                    raise InvalidArchError(f"search space: {name} value {v} is not allowed; choose from {allowed_text}")
            object.__setattr__(self, name, vals)
        object.__setattr__(self, "w", _check_width(self.w))

    def to_dict(self) -> dict[str, Any]:
        return {"resolutions": list(self.resolutions), "ks": list(self.ks), "e": list(self.e), "d": list(self.d), "w": self.w}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        allowed = {"resolutions", "ks", "e", "d", "w"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidArchError(f"search space: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})

    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if the space contains it, else raise naming the first offending field."""
        if arch.w != self.w:
            raise InvalidArchError(f"w: arch has width {arch.w}, the search space is w{self.w}")
        if arch.r not in self.resolutions:
            raise InvalidArchError(
                f"r: resolution {arch.r} is outside the search space; choose from {_choices_text(self.resolutions)}"
            )
        for i, depth in enumerate(arch.d):
            if depth not in self.d:
                raise InvalidArchError(f"d[{i}]: depth {depth} is outside the search space; choose from {_choices_text(self.d)}")
        for i in arch.active_slots:
            if arch.ks[i] not in self.ks:
                raise InvalidArchError(f"ks[{i}]: kernel {arch.ks[i]} is outside the search space; choose from {_choices_text(self.ks)}")
            if arch.e[i] not in self.e:
                raise InvalidArchError(f"e[{i}]: expand {arch.e[i]} is outside the search space; choose from {_choices_text(self.e)}")
        return arch

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except InvalidArchError:
            return False
        return True

    def sample_genomes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` canonical genomes with every gene drawn uniformly from its choices (OFA's sampler)."""
        g = np.empty((n, N_GENES), dtype=np.int64)
        g[:, KS_GENES] = rng.choice(self.ks, size=(n, N_BLOCKS))
        g[:, E_GENES] = rng.choice(self.e, size=(n, N_BLOCKS))
        g[:, D_GENES] = rng.choice(self.d, size=(n, N_STAGES))
        g[:, R_GENE] = rng.choice(self.resolutions, size=n)
        return canonicalize_genomes(g)

    def sample(self, n: int, rng: np.random.Generator) -> list[Arch]:
        return archs_of(self.sample_genomes(n, rng), w=self.w)

    def smallest(self, r: int | None = None) -> Arch:
        """The smallest net of this space (at its lowest resolution unless `r` is given)."""
        res = min(self.resolutions) if r is None else r
        return Arch(ks=(min(self.ks),) * N_BLOCKS, e=(min(self.e),) * N_BLOCKS, d=(min(self.d),) * N_STAGES, r=res, w=self.w)

    def largest(self, r: int | None = None) -> Arch:
        """The largest net of this space (at its highest resolution unless `r` is given)."""
        res = max(self.resolutions) if r is None else r
        return Arch(ks=(max(self.ks),) * N_BLOCKS, e=(max(self.e),) * N_BLOCKS, d=(max(self.d),) * N_STAGES, r=res, w=self.w)
