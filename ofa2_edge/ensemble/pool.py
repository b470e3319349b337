"""The candidates of an ensemble search and the exact soft-vote score of any set of them.

A candidate pool is a search run's front: its subnets, each with the class probabilities
an accuracy table stores for it (`probs/{val,test}/<arch id>.npy`), its predicted latency on
one device and its MACs. An ensemble is a set of candidates; its prediction is the soft
vote (the mean of the members' softmax probabilities, then argmax; OFA³'s rule), so its
top-1 on a split follows exactly from the stored probabilities, without running a net.

Split hygiene: the pool keeps the `val` (selection) and `test` (report) probabilities in
two `Split` objects; the search is handed `pool.val` only, and test figures are computed
for rows already chosen. `tests/test_ensemble.py` checks that changing every test
probability changes no choice.

Predicted latency of an ensemble run as one model on a device:
- `sequential`: the members one after another: the sum of their predicted latencies;
- `parallel`: the members on concurrent threads: with k members on c cores, at least the
  slowest member and at least the total work spread over the cores,
  ``max(max_i t_i, sum_i t_i / c)``; with k <= c that is the slowest member (OFA³'s max). The
  core count is the device's probed one (`device.json` facts), so a parallel prediction is
  never more optimistic than the board's cores allow.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ofa2_edge.accuracy.table import AccuracyTable
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.space import costs
from ofa2_edge.space.arch import Arch, SearchSpace, genomes_of

if TYPE_CHECKING:
    from ofa2_edge.data import DataSpec

log = logging.getLogger(__name__)

RULE = "soft-vote"
RULE_TEXT = "mean of the members' softmax probabilities, then argmax"
MODES = ("sequential", "parallel")
_CHUNK = 32  # ensembles scored per array pass (bounds memory: chunk x images x classes floats)


def ensemble_id(member_ids: Sequence[str]) -> str:
    """The short id of a set of members (order-free): ``e-`` + 12 hex of their sorted ids."""
    ids = sorted(set(member_ids))
    if not ids:
        raise InvalidInputError("an ensemble needs at least one member")
    return "e-" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Split:
    """One split's stored probabilities of every candidate, (members, images, classes) float32,
    and its labels."""

    name: str
    probs: np.ndarray
    labels: np.ndarray

    def correct(self, masks: np.ndarray) -> np.ndarray:
        """(ensembles, images) bool: whether each ensemble's soft vote is right on each image."""
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        if masks.shape[1] != self.probs.shape[0]:
            raise InvalidInputError(f"masks name {masks.shape[1]} candidates, the pool has {self.probs.shape[0]}")
        out = np.zeros((masks.shape[0], self.labels.size), dtype=bool)
        for start in range(0, masks.shape[0], _CHUNK):
            m = masks[start : start + _CHUNK].astype(np.float32)
            votes = np.tensordot(m, self.probs, axes=(1, 0))  # (chunk, images, classes): sums, same argmax as means
            out[start : start + _CHUNK] = votes.argmax(axis=2) == self.labels[None, :]
        return out

    def top1_pct(self, masks: np.ndarray) -> np.ndarray:
        """Top-1 (percent) of each ensemble's soft vote on this split."""
        return 100.0 * self.correct(masks).mean(axis=1)


@dataclass
class MemberPool:
    """The candidates of one ensemble search (see the module docstring)."""

    archs: tuple[Arch, ...]
    latency_ms: np.ndarray  # predicted on `device`, per candidate
    macs_m: np.ndarray
    val: Split
    test: Split | None
    device: str
    cores: int | None
    table: str
    single_val_top1_pct: np.ndarray
    single_test_top1_pct: np.ndarray | None
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.archs)

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.archs]

    def masks_of(self, members: Sequence[Sequence[str]]) -> np.ndarray:
        """Inclusion masks of ensembles given as lists of member arch ids."""
        index = {a: i for i, a in enumerate(self.ids)}
        out = np.zeros((len(members), self.size), dtype=bool)
        for row, ids in enumerate(members):
            for a in ids:
                if a not in index:
                    raise InvalidInputError(f"{a} is not a candidate of this pool (table {self.table})")
                out[row, index[a]] = True
        return out

    def members_of(self, mask: np.ndarray) -> list[str]:
        return [self.ids[i] for i in np.flatnonzero(mask)]

    def predicted_latency_ms(self, masks: np.ndarray, mode: str) -> np.ndarray:
        """Predicted latency of each ensemble run as one model (sum, or the parallel bound)."""
        return predicted_latency_ms(self.latency_ms, masks, mode, self.cores)

    def macs(self, masks: np.ndarray) -> np.ndarray:
        return np.asarray(masks, dtype=np.float64) @ self.macs_m

    def describe(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "device": self.device,
            "cores": self.cores,
            "candidates": self.size,
            "n_val": int(self.val.labels.size),
            "n_test": int(self.test.labels.size) if self.test is not None else 0,
            "rule": RULE,
            "rule_text": RULE_TEXT,
            **self.sources,
        }


def predicted_latency_ms(member_ms: np.ndarray, masks: np.ndarray, mode: str, cores: int | None) -> np.ndarray:
    """`sequential`: sum of the members' latencies; `parallel`: max(slowest, sum / cores)."""
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    lat = np.asarray(member_ms, dtype=np.float64)
    total = masks.astype(np.float64) @ lat
    if mode == "sequential":
        return total
    if mode != "parallel":
        raise InvalidInputError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not cores or cores < 1:
        raise InvalidInputError("a parallel ensemble's latency needs the device's core count (probe the device, or give --cores)")
    slowest = np.where(masks, lat[None, :], 0.0).max(axis=1)
    return np.maximum(slowest, total / cores)


def front_archs(run: str | Path) -> list[Arch]:
    """The subnets of a search run's front (`front.json`), in its order."""
    from ofa2_edge.search.runstore import RunFolder

    folder = RunFolder(Path(run)).require()
    rows = folder.front()["rows"]
    if not rows:
        raise InvalidInputError(f"{folder.path}: the run's front is empty; nothing to build ensembles from")
    return list({a.id: a for a in (Arch.from_dict(r["arch"]) for r in rows)}.values())


def device_cores(workspace: Workspace, device: str) -> int | None:
    """The device's probed logical core count (`device.json` facts), None when not known."""
    from ofa2_edge.tables.device import DeviceTable

    info = DeviceTable.of(workspace, device).device_info() or {}
    cores = (info.get("facts") or {}).get("cpu_cores")
    return int(cores) if isinstance(cores, int) and not isinstance(cores, bool) and cores > 0 else None


def table_dataset(table: AccuracyTable, data: str | Path | None) -> DataSpec:
    """The table's dataset, split as its `table.json` records (`DataSpec.like`), at `data`
    or the recorded folder (an error asking for --data where it records none)."""
    from ofa2_edge.data import DataSpec

    info = table.require().info() or {}
    return DataSpec.like(data, (info.get("meta") or {}).get("dataset"), f"accuracy table {table.name}")


def ensure_evaluated(
    table: AccuracyTable,
    archs: Sequence[Arch],
    supernet: str | Path | None,
    data: str | Path | None,
    on_row: Callable[..., None] | None = None,
) -> list[str]:
    """Evaluate the members of `archs` that `table` lacks into it (the `evaluate` machinery:
    same BN recalibration and splits); returns their ids."""
    missing = [a for a in archs if a.id not in table.measured(0)]
    if not missing:
        return []
    if supernet is None:
        raise InvalidInputError(
            f"accuracy table {table.name} lacks {len(missing)} of the {len(archs)} front subnets "
            f"(e.g. {missing[0].id}); give --supernet supernets/NAME (the table's supernet) to evaluate them into it"
        )
    from ofa2_edge.accuracy.evaluate import EvaluateSettings, evaluate_table
    from ofa2_edge.accuracy.source import open_supernet
    from ofa2_edge.data import open_dataset

    data = table_dataset(table, data)
    settings = EvaluateSettings.bound_to(table, budget=len(missing))
    trained = open_supernet(supernet)
    ds = open_dataset(data)
    report = evaluate_table(table, trained, ds, settings, on_row, archs=missing)
    return report.evaluated


def load_pool(
    workspace: Workspace,
    archs: Sequence[Arch],
    table: AccuracyTable,
    device: str,
    *,
    data: str | Path | None = None,
    cores: int | None = None,
    allow_emulated: bool = False,
    test: bool = True,
) -> MemberPool:
    """Build the pool: stored probabilities (val, and test unless `test` is False), labels
    from the dataset (checked against the table's fingerprint), predicted latency and MACs."""
    from ofa2_edge.data import open_dataset
    from ofa2_edge.search.objectives import MetricContext, resolve_metric

    archs = list({a.id: a for a in archs}.values())
    if not archs:
        raise InvalidInputError("an ensemble search needs at least one candidate subnet")
    binding = table.binding()
    rows = table.measured(0)
    missing = [a.id for a in archs if a.id not in rows]
    if missing:
        raise InvalidInputError(
            f"accuracy table {table.name} has no evaluation of {len(missing)} candidate(s) (e.g. {missing[0]}); "
            "evaluate them first (`ofa2-edge ensemble ... --supernet supernets/NAME` does it)"
        )
    data = table_dataset(table, data)
    ds = open_dataset(data)
    if ds.fingerprint != binding.dataset_fingerprint:
        raise InvalidInputError(
            f"--data {data} is dataset {ds.fingerprint[:16]}..., accuracy table {table.name} was evaluated on "
            f"{binding.dataset_fingerprint[:16]}...; give the dataset the table was made with"
        )

    def split(part: str) -> Split:
        probs = np.stack([table.probabilities(a.id, part).astype(np.float32) for a in archs])
        return Split(part, probs, np.asarray(ds.labels(part), dtype=np.int64))

    val = split("val")
    has_test = test and binding.n_test > 0 and all("test" in rows[a.id].probs_sha256 for a in archs)
    test_split = split("test") if has_test else None
    space = SearchSpace(resolutions=tuple(sorted({a.r for a in archs})), w=archs[0].w)
    metric = resolve_metric(f"latency:{device}", MetricContext(workspace, space, allow_emulated=allow_emulated))
    genomes = genomes_of(archs)
    latency = np.asarray(metric.evaluate(genomes), dtype=np.float64)
    if not np.all(np.isfinite(latency)) or (latency <= 0).any():
        raise InvalidInputError(f"latency:{device}: the predictor gave a non-positive or non-finite latency")
    probed = device_cores(workspace, device)
    return MemberPool(
        archs=tuple(archs),
        latency_ms=latency,
        macs_m=np.asarray(costs.macs_m(genomes, archs[0].w), dtype=np.float64),
        val=val,
        test=test_split,
        device=device,
        cores=cores or probed,
        table=table.name,
        single_val_top1_pct=np.array([rows[a.id].val.top1_pct for a in archs]),
        single_test_top1_pct=np.array([rows[a.id].test.top1_pct for a in archs]) if has_test else None,  # type: ignore[union-attr]
        sources={
            "latency_predictor": metric.source,
            "cores_source": "given" if cores else ("probe" if probed else None),
            "dataset_fingerprint": ds.fingerprint,
            "supernet_sha256": binding.supernet_sha256,
        },
    )
