"""Arch encodings for accuracy predictors: OFA's 128 slots, and one that covers any resolution.

OFA's encoding (:func:`ofa2_edge.space.arch.predictor_features`) has 8 resolution slots for
112-239 px; a supernet trained on 28 or 32 px images has no slot there. The block encoding
keeps OFA's 120 kernel and expand one-hot slots and adds one slot per resolution of the
table it was fitted on (recorded in the predictor file), so a predictor covers exactly the
sizes it has seen, at any pixel size the network can run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ofa2_edge.core.errors import InvalidArchError, SchemaError
from ofa2_edge.space.arch import (
    E_GENES,
    EXPAND_CHOICES,
    KERNEL_CHOICES,
    KS_GENES,
    N_BLOCKS,
    NETWORK_RESOLUTIONS,
    PREDICTOR_FEATURES,
    PREDICTOR_RESOLUTIONS,
    R_GENE,
    active_mask,
    as_genomes,
    choice_indices,
    predictor_features,
)

OFA_ONEHOT = "ofa-onehot-128"
BLOCKS_R_ONEHOT = "blocks-onehot-r-onehot"
FEATURE_KINDS = (OFA_ONEHOT, BLOCKS_R_ONEHOT)
BLOCK_SLOTS = 2 * 3 * N_BLOCKS


@dataclass(frozen=True)
class FeatureEncoding:
    """How archs become predictor inputs: `kind`, and the resolutions it has slots for
    (the block encoding only; OFA's has its fixed 112-239 px slots)."""

    kind: str = OFA_ONEHOT
    resolutions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise SchemaError(f"unknown accuracy feature encoding {self.kind!r}; known: {', '.join(FEATURE_KINDS)}")
        res = tuple(self.resolutions)
        if any(isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)) for r in res):
            raise SchemaError(f"feature encoding resolutions must be integers, got {str(res)[:60]}")
        res = tuple(sorted({int(r) for r in res}))
        if self.kind == BLOCKS_R_ONEHOT:
            if not res or any(r not in NETWORK_RESOLUTIONS for r in res) or len(res) > 256:
                raise SchemaError(
                    f"the {BLOCKS_R_ONEHOT} encoding needs 1-256 resolutions in "
                    f"{NETWORK_RESOLUTIONS.start}..{NETWORK_RESOLUTIONS.stop - 1}, got {str(res)[:60]}"
                )
        elif res:
            raise SchemaError(f"the {OFA_ONEHOT} encoding has fixed resolution slots; got resolutions {str(res)[:60]}")
        object.__setattr__(self, "resolutions", res)

    @classmethod
    def for_resolutions(cls, resolutions: Sequence[int]) -> "FeatureEncoding":
        """OFA's encoding where every resolution has its slot (112-239 px), else the block encoding."""
        res = sorted({int(r) for r in resolutions})
        if res and all(r in PREDICTOR_RESOLUTIONS for r in res):
            return cls(OFA_ONEHOT)
        return cls(BLOCKS_R_ONEHOT, tuple(res))

    @property
    def n_features(self) -> int:
        return PREDICTOR_FEATURES if self.kind == OFA_ONEHOT else BLOCK_SLOTS + len(self.resolutions)

    def covers(self, r: int) -> bool:
        return r in PREDICTOR_RESOLUTIONS if self.kind == OFA_ONEHOT else r in self.resolutions

    def encode(self, genomes: np.ndarray) -> np.ndarray:
        """(n, n_features) float32 in [0, 1]."""
        if self.kind == OFA_ONEHOT:
            return predictor_features(genomes)
        g = as_genomes(genomes)
        n = g.shape[0]
        active = active_mask(g)
        k_idx = choice_indices(np.where(active, g[:, KS_GENES], KERNEL_CHOICES[0]), KERNEL_CHOICES, "ks")
        e_idx = choice_indices(np.where(active, g[:, E_GENES], EXPAND_CHOICES[0]), EXPAND_CHOICES, "e")
        r = g[:, R_GENE]
        slot = np.searchsorted(self.resolutions, r)
        known = (slot < len(self.resolutions)) & (np.asarray(self.resolutions)[np.minimum(slot, len(self.resolutions) - 1)] == r)
        if not known.all():
            raise InvalidArchError(
                f"r: resolution {int(r[~known][0])} px has no slot in this accuracy predictor "
                f"(it knows {', '.join(map(str, self.resolutions))})"
            )
        feats = np.zeros((n, self.n_features), dtype=np.float32)
        rows, slots = np.nonzero(active)
        feats[rows, slots * 3 + k_idx[rows, slots]] = 1.0
        feats[rows, 3 * N_BLOCKS + slots * 3 + e_idx[rows, slots]] = 1.0
        feats[np.arange(n), BLOCK_SLOTS + slot] = 1.0
        return feats

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "resolutions": list(self.resolutions)}

    @classmethod
    def from_doc(cls, doc: Any) -> "FeatureEncoding":
        """From a predictor file: version 1 wrote the name alone (OFA's), version 2 an object."""
        if doc == OFA_ONEHOT:
            return cls(OFA_ONEHOT)
        if not isinstance(doc, dict) or set(doc) - {"kind", "resolutions"} or not isinstance(doc.get("resolutions", []), list):
            raise SchemaError(f"'features' must be {OFA_ONEHOT!r} or {{kind, resolutions}}, got {str(doc)[:80]}")
        return cls(doc.get("kind"), tuple(doc.get("resolutions", [])))
