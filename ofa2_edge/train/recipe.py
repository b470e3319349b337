"""OFA's progressive-shrinking recipe as a value: phases, choices, learning rates, steps.

OFA trains the full network first, then lets the kernel size become elastic, then the
depth, then the expand ratio (Cai et al., 2020, section 3.2). Every elastic phase uses the
sandwich rule (the largest, the smallest and random subnets each step, gradients summed)
with in-place knowledge distillation: the largest subnet's output on the same batch is the
soft target of the others. Before the expand phase the middle channels are sorted by
importance (:meth:`Supernet.sort_channels`). OFA runs depth and expand in two stages each
({3,4} then {2,3,4}; {4,6} then {3,4,6}); we run each as one stage with all choices.

A recipe is fixed before the first step (from epochs, or from a time budget and measured
step times) and saved with the training, so a resumed run follows exactly the same plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import (
    DEPTH_CHOICES,
    EXPAND_CHOICES,
    KERNEL_CHOICES,
    NETWORK_RESOLUTIONS,
    SearchSpace,
    genomes_of,
)
from ofa2_edge.space.costs import macs_m

PHASE_NAMES = ("full", "kernel", "depth", "expand")
#: Share of the budget per phase (OFA: 180 full, 120 kernel, 25 + 120 depth, 25 + 120 expand epochs).
PHASE_SHARES = {"full": 0.3, "kernel": 0.2, "depth": 0.25, "expand": 0.25}
#: Learning rate of each phase relative to the full phase (OFA: 2.6 -> 0.96 / 0.08 / 0.24 at batch 2048).
PHASE_LR = {"full": 1.0, "kernel": 0.6, "depth": 0.4, "expand": 0.4}


@dataclass(frozen=True)
class Phase:
    """One stage of progressive shrinking."""

    name: str
    steps: int
    lr: float
    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    n_random: int  # random subnets per step besides the largest and the smallest
    kd_ratio: float  # weight of the distillation loss of the non-largest subnets
    sort_channels: bool

    def space(self, resolutions: tuple[int, ...], w: float) -> SearchSpace:
        return SearchSpace(resolutions=resolutions, ks=self.ks, e=self.e, d=self.d, w=w)

    def step_mmacs(self, resolutions: tuple[int, ...], w: float) -> float:
        """Expected MMACs per image of one step (its subnets' forward passes, over the
        resolutions): the progress ETA weighs steps by it, since a sandwich step costs about
        twice a full one."""
        rng = np.random.default_rng(0)  # its own draws: the training's random streams stay untouched
        total = 0.0
        for r in resolutions:
            space = self.space((r,), w)
            archs = [space.largest(r)]
            if self.name != "full":
                archs.append(space.smallest(r))
            m = macs_m(genomes_of(archs), w)
            total += float(m.sum())
            if self.n_random:
                total += self.n_random * float(macs_m(space.sample_genomes(64, rng), w).mean())
        return total / len(resolutions)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (with the data and the init weights)."""

    width_mult: float
    resolutions: tuple[int, ...]
    batch_size: int  # global: split evenly over the processes of a distributed run
    seed: int
    phases: tuple[Phase, ...]
    steps_per_epoch: int
    momentum: float = 0.9
    weight_decay: float = 3e-5  # not on BN weights and biases (OFA's no_decay_keys "bn#bias")
    label_smoothing: float = 0.1
    augment: bool = True
    checkpoint_every: int = 100

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resolutions"] = list(self.resolutions)
        d["phases"] = [{**asdict(p), "ks": list(p.ks), "e": list(p.e), "d": list(p.d)} for p in self.phases]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        phases = tuple(
            Phase(**{**p, "ks": tuple(p["ks"]), "e": tuple(p["e"]), "d": tuple(p["d"])}) for p in data["phases"]
        )
        return cls(**{**data, "resolutions": tuple(data["resolutions"]), "phases": phases})

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


def check_resolutions(resolutions: tuple[int, ...]) -> tuple[int, ...]:
    """Sorted unique resolutions the network can run (>= 32 px: five stride-2 stages)."""
    out = tuple(sorted(set(int(r) for r in resolutions)))
    if not out:
        raise InvalidInputError("resolutions: give at least one, e.g. --resolutions 32,40,48")
    for r in out:
        if r not in NETWORK_RESOLUTIONS:
            raise InvalidInputError(
                f"resolution {r} px: the OFA-MobileNetV3 space runs {NETWORK_RESOLUTIONS.start}.."
                f"{NETWORK_RESOLUTIONS.stop - 1} px (five stride-2 stages need >= 32 px); small images such as "
                "Fashion-MNIST's 28 px are upsampled, e.g. --resolutions 32,40,48"
            )
    return out


def check_phases(names: tuple[str, ...]) -> tuple[str, ...]:
    """Phases to train, a non-empty subset of PHASE_NAMES in their order: ("full",) trains the
    largest network alone (a static baseline); ("kernel", "depth", "expand") continues a net
    whose full phase ran elsewhere (`--init`)."""
    names = tuple(names)
    if not names or len(set(names)) != len(names) or any(n not in PHASE_NAMES for n in names):
        raise InvalidInputError(f"--phases {','.join(names)}: give some of {','.join(PHASE_NAMES)}, each once")
    if list(names) != sorted(names, key=PHASE_NAMES.index):
        raise InvalidInputError(f"--phases {','.join(names)}: phases run in the order {','.join(PHASE_NAMES)}")
    return names


def phases_for(phase_steps: Mapping[str, int], base_lr: float) -> tuple[Phase, ...]:
    """The phases named in `phase_steps` (in PHASE_NAMES order) with the given step counts."""
    k_all, e_all, d_all = tuple(KERNEL_CHOICES), tuple(EXPAND_CHOICES), tuple(DEPTH_CHOICES)
    kmax, emax, dmax = (max(k_all),), (max(e_all),), (max(d_all),)
    spaces = {
        "full": (kmax, emax, dmax),
        "kernel": (k_all, emax, dmax),
        "depth": (k_all, emax, d_all),
        "expand": (k_all, e_all, d_all),
    }
    out = []
    for name in (n for n in PHASE_NAMES if n in phase_steps):
        ks, e, d = spaces[name]
        elastic = name != "full"
        out.append(
            Phase(
                name=name,
                steps=int(phase_steps[name]),
                lr=base_lr * PHASE_LR[name],
                ks=ks,
                e=e,
                d=d,
                n_random=1 if elastic else 0,
                kd_ratio=1.0 if elastic else 0.0,
                sort_channels=name == "expand",
            )
        )
    return tuple(out)


def split_budget(total: float, phases: tuple[str, ...] = PHASE_NAMES) -> dict[str, float]:
    """`total` (epochs or seconds) shared over `phases` by OFA's proportions."""
    share = sum(PHASE_SHARES[name] for name in phases)
    return {name: total * PHASE_SHARES[name] / share for name in phases}
