"""The search's genome: one choice index per gene, over the choices a `SearchSpace` allows.

pymoo sees 46 integer variables, gene j in ``0 .. n_choices[j] - 1``: kernel indices for
the 20 block slots, expand indices for the 20 slots, depth indices for the 5 stages and a
resolution index. Indexing the space's own choices (rather than OFA²'s raw values) keeps
every offspring of every operator inside the space: arch-level constraints (allowed
resolutions, kernel/expand/depth subsets) hold by construction, with no repair step.

Two index genomes build the same network when they differ only in slots beyond a stage's
depth; `canonical` maps them to one representative (inactive slots at index 0) so that
duplicate elimination and the run's archive work on networks, not on genomes.
"""

from __future__ import annotations

import numpy as np

from ofa2_edge.core.errors import InvalidArchError
from ofa2_edge.space.arch import (
    D_GENES,
    E_GENES,
    KS_GENES,
    MAX_DEPTH,
    N_BLOCKS,
    N_GENES,
    N_STAGES,
    R_GENE,
    Arch,
    SearchSpace,
    canonicalize_genomes,
    choice_indices,
)

_STAGE_OF_SLOT = np.arange(N_BLOCKS) // MAX_DEPTH
_POS_IN_STAGE = np.arange(N_BLOCKS) % MAX_DEPTH


class GenomeCodec:
    """Maps (n, 46) index genomes of one `SearchSpace` to value genomes and back."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        per_gene = [space.ks] * N_BLOCKS + [space.e] * N_BLOCKS + [space.d] * N_STAGES + [space.resolutions]
        self.n_choices = np.array([len(c) for c in per_gene], dtype=np.int64)
        self.table = np.zeros((N_GENES, int(self.n_choices.max())), dtype=np.int64)
        for j, choices in enumerate(per_gene):
            self.table[j, : len(choices)] = choices
        self._genes = np.arange(N_GENES)[None, :]
        self._depths = np.asarray(space.d, dtype=np.int64)

    @property
    def n_var(self) -> int:
        return N_GENES

    def active(self, idx: np.ndarray) -> np.ndarray:
        """(n, 20) bool: which block slots each index genome builds."""
        depth = self._depths[idx[:, D_GENES]]
        return _POS_IN_STAGE[None, :] < depth[:, _STAGE_OF_SLOT]

    def canonical(self, idx: np.ndarray) -> np.ndarray:
        """Index genomes with inactive slots at index 0 (one representative per network)."""
        out = np.array(idx, dtype=np.int64, copy=True)
        inactive = ~self.active(out)
        out[:, KS_GENES][inactive] = 0
        out[:, E_GENES][inactive] = 0
        return out

    def decode(self, idx: np.ndarray) -> np.ndarray:
        """Canonical (n, 46) value genomes (`space.canonicalize_genomes` form) of index genomes."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim != 2 or idx.shape[1] != N_GENES:
            raise InvalidArchError(f"index genomes: expected shape (n, {N_GENES}), got {idx.shape}")
        if ((idx < 0) | (idx >= self.n_choices[None, :])).any():
            raise InvalidArchError("index genome outside the search space's choices")
        return canonicalize_genomes(self.table[self._genes, idx])

    def encode(self, genomes: np.ndarray) -> np.ndarray:
        """Index genomes of (n, 46) value genomes; values outside the space raise, naming the gene."""
        g = np.asarray(genomes, dtype=np.int64)
        inactive = ~(_POS_IN_STAGE[None, :] < g[:, D_GENES][:, _STAGE_OF_SLOT])
        idx = np.empty_like(g)
        ks = np.where(inactive, self.space.ks[0], g[:, KS_GENES])
        e = np.where(inactive, self.space.e[0], g[:, E_GENES])
        idx[:, KS_GENES] = choice_indices(ks, self.space.ks, "ks")
        idx[:, E_GENES] = choice_indices(e, self.space.e, "e")
        idx[:, D_GENES] = choice_indices(g[:, D_GENES], self.space.d, "d")
        idx[:, R_GENE] = choice_indices(g[:, R_GENE], self.space.resolutions, "r")
        return idx

    def archs(self, idx: np.ndarray) -> list[Arch]:
        return [Arch.from_genome(row, w=self.space.w) for row in self.decode(idx)]
