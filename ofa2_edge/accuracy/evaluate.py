"""`ofa2-edge evaluate`: measure subnets' accuracy on the user's data into an accuracy table.

A space-filling design of subnets (the calibration design: even over resolutions and sizes,
the min and max nets at every resolution) is extracted from a trained supernet; each
subnet's BatchNorm statistics are re-estimated on a fixed, seeded subset of the `train`
part (OFA's `set_running_statistics`), then it classifies the `val` part (the selection
split: top-1, top-5, loss and the class probabilities kept for ensembles) and the `test`
part (only reported). Each finished subnet is committed at once, so an interrupted run
loses at most the subnet in flight, and a rerun skips what the table holds.

The noise floor: a share (`repeat_fraction`) of the design is evaluated a second time with
BN statistics from a different train subset of the same size; Spearman between the two
evaluations and their mean |delta top-1| say how far apart two subnets must be to be told
apart by this table.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ofa2_edge.accuracy.source import TrainedSupernet
from ofa2_edge.accuracy.table import AccuracyRow, AccuracyTable, PartScores, TableBinding
from ofa2_edge.calibration.design import size_stratified_genomes
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.space.arch import Arch, SearchSpace, archs_of
from ofa2_edge.supernet.calibration import recalibrate_bn
from ofa2_edge.supernet.network import channels_last

if TYPE_CHECKING:
    from ofa2_edge.data import Dataset

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 60
DEFAULT_BN_IMAGES = 2000
DEFAULT_BATCH = 250


@dataclass(frozen=True)
class EvaluateSettings:
    """How a table is measured. `bn_seed`, `bn_images` and `batch_size` are bound to the
    table (its rows must be comparable); `budget`, `seed` and `resolutions` choose archs.
    `test`: also score the test part (only reported, never chosen on); without it a subnet
    costs about half (Fashion-MNIST: 8,000 images instead of 18,000), for tables that only
    feed predictors."""

    budget: int = DEFAULT_BUDGET
    resolutions: tuple[int, ...] | None = None  # None: the supernet's trained resolutions
    seed: int = 0
    bn_seed: int = 0
    bn_images: int = DEFAULT_BN_IMAGES
    batch_size: int = DEFAULT_BATCH
    repeat_fraction: float = 0.0
    test: bool = True

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise InvalidInputError(f"--budget {self.budget}: evaluate at least one subnet")
        if self.bn_images < 1 or self.batch_size < 1:
            raise InvalidInputError("--bn-images and --batch-size must be positive")
        if not 0.0 <= self.repeat_fraction <= 1.0 or not math.isfinite(self.repeat_fraction):
            raise InvalidInputError(f"--repeat-fraction {self.repeat_fraction} must be in 0..1")
        if min(self.seed, self.bn_seed) < 0:
            raise InvalidInputError("seeds must be non-negative integers")

    def bound(self) -> dict[str, Any]:
        """The settings every row of one table shares."""
        return {"bn_part": "train", "bn_seed": self.bn_seed, "bn_images": self.bn_images, "batch_size": self.batch_size}

    @classmethod
    def bound_to(cls, table: AccuracyTable, budget: int = DEFAULT_BUDGET) -> "EvaluateSettings":
        """Settings that evaluate (or recalibrate) like `table`'s rows: its bound BN seed,
        BN images and batch size (the defaults where the table records none)."""
        bound = (table.require().info() or {}).get("evaluation") or {}
        return cls(
            budget=budget,
            bn_seed=int(bound.get("bn_seed", 0)),
            bn_images=int(bound.get("bn_images", DEFAULT_BN_IMAGES)),
            batch_size=int(bound.get("batch_size", DEFAULT_BATCH)),
        )


@dataclass
class EvaluateReport:
    """What one `evaluate` call did."""

    table: str
    design: list[str]
    evaluated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self, table: AccuracyTable) -> dict[str, Any]:
        n = len(self.evaluated) + len(self.repeated)
        return {
            "table": self.table,
            "folder": str(table.folder),
            "design_size": len(self.design),
            "evaluated": len(self.evaluated),
            "repeated": len(self.repeated),
            "skipped_already_in_table": len(self.skipped),
            "seconds": round(self.seconds, 3),
            "subnets_per_minute": round(60.0 * n / self.seconds, 3) if n and self.seconds > 0 else None,
            "summary": table.summary(),
        }


def design(space: SearchSpace, budget: int, seed: int) -> list[Arch]:
    """The archs `evaluate` measures: `budget` distinct archs of the calibration design over
    `space` (min and max nets first). A design may draw one network twice (a small space, a
    small resolution set): it is then drawn a little larger, deterministically, until it holds
    `budget` distinct ones (or the space has no more)."""
    found: list[Arch] = []
    for extra in range(0, 4 * budget + 1):
        archs = archs_of(size_stratified_genomes(budget + extra, np.random.default_rng(seed), space), w=space.w)
        found = list({a.id: a for a in archs}.values())
        if len(found) >= budget:
            return found[:budget]
    return found


def repeat_subset(archs: list[Arch], fraction: float, seed: int) -> list[Arch]:
    """The share of the design evaluated twice (a seeded choice, the same on every rerun)."""
    k = int(math.ceil(fraction * len(archs))) if fraction > 0 else 0
    if k == 0:
        return []
    pick = np.random.default_rng([seed, 1]).permutation(len(archs))[:k]
    return [archs[i] for i in sorted(pick)]


def bn_subset(ds: "Dataset", n_images: int, seed: int) -> np.ndarray:
    """Indices of the train images BN statistics are estimated on (seeded, sorted)."""
    n_train = ds.size("train")
    if n_train < 1:
        raise InvalidInputError(f"{ds.spec.path}: the train part is empty; BN statistics need training images")
    k = min(n_images, n_train)
    return np.sort(np.random.default_rng([seed, 0]).choice(n_train, size=k, replace=False))


class _Batches:
    """Preprocessed batches cached per (part, resolution, subset): every subnet at a resolution
    sees the same tensors, and images are decoded and resized once."""

    def __init__(self, ds: "Dataset", batch_size: int) -> None:
        self.ds = ds
        self.batch_size = batch_size
        self._cache: dict[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def get(self, part: str, r: int, indices: np.ndarray | None = None, key: Any = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from ofa2_edge.data import batches

        k = (part, r, key)
        if k not in self._cache:
            self._cache[k] = [(channels_last(x), y) for x, y in batches(self.ds, part, r, self.batch_size, indices=indices)]
        return self._cache[k]


def score(model: torch.nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], n_classes: int) -> tuple[PartScores, np.ndarray]:
    """Top-1, top-5, mean cross-entropy and the (n, classes) float32 softmax of `model` on `data`."""
    probs: list[np.ndarray] = []
    top1 = top5 = 0
    loss = 0.0
    n = 0
    k = min(5, n_classes)
    model.eval()
    with torch.no_grad():
        for x, y in data:
            logits = model(x).float()
            if logits.shape != (x.shape[0], n_classes):
                raise InvalidInputError(
                    f"the subnet answers {tuple(logits.shape[1:])} outputs per image, the dataset has {n_classes} classes"
                )
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == y).sum())
            top5 += int((best == y[:, None]).any(dim=1).sum())
            n += int(x.shape[0])
            probs.append(torch.softmax(logits, dim=1).numpy())
    if n == 0:
        raise InvalidInputError("nothing to evaluate on: the part is empty")
    return PartScores(100.0 * top1 / n, 100.0 * top5 / n, loss / n, n), np.concatenate(probs)


def binding_of(trained: TrainedSupernet, ds: "Dataset") -> TableBinding:
    return TableBinding(
        supernet_sha256=trained.sha256,
        width_mult=trained.width_mult,
        dataset_fingerprint=ds.fingerprint,
        classes=tuple(ds.classes),
        n_val=ds.size("val"),
        n_test=ds.size("test"),
    )


def check_pair(trained: TrainedSupernet, ds: "Dataset") -> None:
    """A supernet trained on one dataset is evaluated on that dataset only (same fingerprint
    and classes when its manifest says which), and its classifier must fit the classes."""
    if trained.dataset_fingerprint is not None and trained.dataset_fingerprint != ds.fingerprint:
        raise InvalidInputError(
            f"{trained.folder} was trained on dataset {trained.dataset_fingerprint[:16]}..., --data {ds.spec.path} is "
            f"{ds.fingerprint[:16]}... (another file list, labelling or split); evaluate with the data it was trained on"
        )
    if trained.n_classes != len(ds.classes):
        raise InvalidInputError(
            f"{trained.folder} classifies {trained.n_classes} classes, --data {ds.spec.path} has {len(ds.classes)}; "
            "evaluate a supernet trained on this dataset"
        )


def evaluate_table(
    table: AccuracyTable,
    trained: TrainedSupernet,
    ds: "Dataset",
    settings: EvaluateSettings,
    on_row: Callable[[AccuracyRow, int, int], None] | None = None,
    archs: Sequence[Arch] | None = None,
) -> EvaluateReport:
    """Evaluate the design into `table` (bound to `trained` and `ds`), resumably; holds the lock.

    `archs` replaces the design by given subnets (e.g. the members of a search front that
    the ensemble search needs and the table lacks); they are evaluated exactly like it."""
    check_pair(trained, ds)
    if ds.size("val") < 1:
        raise InvalidInputError(f"{ds.spec.path}: the val part is empty; accuracy is measured on it")
    if archs is not None:
        archs = list({a.id: a for a in archs}.values())
        if not archs:
            raise InvalidInputError("no subnets to evaluate")
        wrong = [a.id for a in archs if a.w != trained.width_mult]
        if wrong:
            raise InvalidInputError(f"{wrong[0]} is not a w{trained.width_mult} subnet; it cannot come from {trained.folder}")
        resolutions = tuple(sorted({a.r for a in archs}))
    else:
        resolutions = tuple(settings.resolutions or trained.resolutions)
    space = SearchSpace(resolutions=resolutions, w=trained.width_mult)
    archs = list(archs) if archs is not None else design(space, settings.budget, settings.seed)
    repeats = repeat_subset(archs, settings.repeat_fraction, settings.seed)
    report = EvaluateReport(table.name, [a.id for a in archs])
    t_start = time.perf_counter()
    with table.lock():
        table.bind(
            binding_of(trained, ds),
            space.resolutions,
            settings.bound(),
            {"supernet": trained.describe(), "dataset": _describe(ds)},
        )
        done, done_again = table.measured(0), table.measured(1)
        todo = [(a, 0) for a in archs if a.id not in done] + [(a, 1) for a in repeats if a.id not in done_again]
        report.skipped = [a.id for a in archs if a.id in done]
        cache = _Batches(ds, settings.batch_size)
        n_classes = len(ds.classes)
        for i, (arch, repeat) in enumerate(todo):
            seed = settings.bn_seed + repeat
            t0 = time.perf_counter()
            subnet = channels_last(trained.net.extract(arch))
            idx = bn_subset(ds, settings.bn_images, seed)
            recalibrate_bn(
                subnet, (x for x, _ in cache.get("train", arch.r, idx, ("bn", seed))), source=f"train subset seed {seed}"
            )
            val, p_val = score(subnet, cache.get("val", arch.r), n_classes)
            test, p_test = (None, None)
            if repeat == 0 and settings.test and ds.size("test") > 0:
                test, p_test = score(subnet, cache.get("test", arch.r), n_classes)
            probs = {"val": p_val, **({"test": p_test} if p_test is not None else {})} if repeat == 0 else None
            row = AccuracyRow(
                arch=arch,
                repeat=repeat,
                bn_seed=seed,
                bn_images=int(idx.size),
                val=val,
                test=test,
                probs_sha256={},
                elapsed_s=round(time.perf_counter() - t0, 4),
                evaluated_at=datetime.now(timezone.utc).isoformat(),
            )
            row = table.append(row, probs)
            (report.evaluated if repeat == 0 else report.repeated).append(arch.id)
            log.info("%s r=%d: val top-1 %.2f %% (%s)", arch.id, arch.r, val.top1_pct, "repeat" if repeat else "first")
            if on_row is not None:
                on_row(row, i + 1, len(todo))
    report.seconds = time.perf_counter() - t_start
    return report


def _describe(ds: "Dataset") -> dict[str, Any]:
    """The dataset facts a table keeps (its folder only as given: no other path of this host)."""
    try:
        d = ds.describe()
    except Exception:  # noqa: BLE001 - describe() is a convenience; the binding already holds the facts
        d = {}
    keep = ("format", "path", "fingerprint", "sizes", "mean", "std", "seed")
    return {k: d[k] for k in keep if k in d}

