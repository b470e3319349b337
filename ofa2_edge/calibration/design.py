"""Which subnets to measure: designs that spread evenly over resolution and network size.

Sampling every gene uniformly (OFA's sampler) concentrates on mid-size nets: the sum of 20
independent choices has a narrow distribution, so the smallest and largest nets a Pareto
front spans are almost never measured and a surrogate must extrapolate there. This design
draws, per resolution, a stratified "size level" t in [0, 1] for each arch and tilts every
kernel, expand and depth choice towards the small (t near 0) or large (t near 1) end, so
the measured set covers the size range evenly; the min and max nets at every resolution
are always included.
"""

from __future__ import annotations

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import (
    D_GENES,
    E_GENES,
    KS_GENES,
    N_BLOCKS,
    N_GENES,
    N_STAGES,
    R_GENE,
    SearchSpace,
    canonicalize_genomes,
)

#: How strongly the size level tilts each choice (t=0: ~98 % smallest choice, t=0.5: uniform).
_TILT = 4.0
#: Per-arch jitter of the size level between kernel, expand and depth genes, for diversity.
_JITTER = 0.15

#: Subnets calibration measures end to end when no budget is given.
DEFAULT_BUDGET = 60


def _tilted_choice(choices: tuple[int, ...], t: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size) draws from `choices`, each row tilted towards large values by its t."""
    idx = np.arange(len(choices), dtype=np.float64)
    logits = _TILT * (2.0 * t[:, None] - 1.0) * (idx[None, :] - idx.mean())
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    u = rng.random((t.size, size))
    pick = (u[:, :, None] > cdf[:, None, :-1]).sum(axis=2)
    return np.asarray(choices, dtype=np.int64)[pick]


def size_stratified_genomes(
    n: int, rng: np.random.Generator, space: SearchSpace | None = None, include_extremes: bool = True
) -> np.ndarray:
    """`n` canonical genomes spread evenly over the space's resolutions and network sizes.

    Resolutions are assigned round-robin (so each gets n / len(resolutions) archs), and within
    a resolution the size levels form a stratified sample of [0, 1]. With `include_extremes`,
    the first rows are the min and max nets of every resolution (needs n >= 2 * resolutions).
    """
    space = space or SearchSpace()
    res = np.asarray(space.resolutions, dtype=np.int64)
    n_fixed = 2 * res.size if include_extremes else 0
    if n < n_fixed:
        raise InvalidInputError(
            f"a design with the min and max nets of {res.size} resolutions needs n >= {n_fixed}, got {n}"
        )
    m = n - n_fixed
    r = res[rng.permutation(np.arange(m) % res.size)]
    t = np.empty(m)
    for value in res:
        rows = np.flatnonzero(r == value)
        t[rows] = (rng.permutation(rows.size) + rng.random(rows.size)) / max(rows.size, 1)
    g = np.empty((m, N_GENES), dtype=np.int64)
    jitter = lambda: np.clip(t + rng.normal(0.0, _JITTER, m), 0.0, 1.0)
    g[:, KS_GENES] = _tilted_choice(space.ks, jitter(), N_BLOCKS, rng)
    g[:, E_GENES] = _tilted_choice(space.e, jitter(), N_BLOCKS, rng)
    g[:, D_GENES] = _tilted_choice(space.d, jitter(), N_STAGES, rng)
    g[:, R_GENE] = r
    if include_extremes:
        ext = np.array(
            [a.to_genome() for value in res for a in (space.smallest(int(value)), space.largest(int(value)))],
            dtype=np.int64,
        ).reshape(n_fixed, N_GENES)
        g = np.concatenate([ext, g])
    return canonicalize_genomes(g)
