"""The main job on your own data: `data:` in `ofa2-edge.yaml`.

With a dataset named, `ofa2-edge run` does before any calibration: open and fingerprint the
data; train the elastic supernet on it (`ofa2_edge.train`), or reuse one; evaluate an
accuracy table on it (`ofa2_edge.accuracy.evaluate`); fit the table's top-1 predictor
(`ofa2_edge.accuracy.fit`). The devices are then calibrated on the supernet's space (its
width and trained resolutions), the search prices `top1` with the table's predictor, and
the bundle carries the trained weights (`deployable`, `labels.txt`, classified on the device).

Each step is owned by its library; this module only names things and decides what to reuse:

- the supernet folder is `supernets/<data folder>-<hash>`, the hash covering the dataset's
  fingerprint and every training setting, so other settings train beside it (never mixed).
  A complete one whose manifest matches is reused as is; an incomplete one resumes (the
  train loop continues from its `train_state.pt`).
- the accuracy table is `accuracy_tables/<supernet>-<hash>`, the hash covering the
  supernet's sha256 and the evaluation settings its rows share; a rerun evaluates only
  what it lacks (nothing, with the same budget).
- the predictor is refitted only when the table's rows changed (`fit_table_predictor(reuse=True)`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ofa2_edge.accuracy.evaluate import DEFAULT_BATCH, DEFAULT_BN_IMAGES, DEFAULT_BUDGET, EvaluateSettings
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.workspace import Workspace

if TYPE_CHECKING:
    from ofa2_edge.accuracy.source import TrainedSupernet
    from ofa2_edge.data import Dataset, DataSpec
    from ofa2_edge.space.arch import SearchSpace

Event = Callable[[str, dict[str, Any]], None]

DATA_KEYS = ("path", "format", "seed", "val_fraction", "test_fraction")
TRAIN_KEYS = (
    "width", "resolutions", "epochs", "max_minutes", "seed", "batch_size", "lr", "init", "eval_images", "recal_images",
)  # fmt: skip
EVALUATE_KEYS = ("budget", "bn_images", "batch_size", "repeat_fraction", "seed", "models")
BUNDLE_KEYS = ("verify_images",)
#: top-level keys that only mean something with `data:`
OWN_DATA_KEYS = ("data", "train", "supernet", "evaluate", "bundle")
DEFAULT_VERIFY_IMAGES = 200
PREDICTOR_MODELS = ("ridge", "mlp")
SUPERNETS_DIR = "supernets"


@dataclass(frozen=True)
class TrainPlan:
    """`train:` of the job config: what `ofa2-edge train` would be given."""

    width: float = 1.2
    resolutions: tuple[int, ...] | None = None  # None: the train loop's default for the images' size
    epochs: float | None = None
    max_minutes: float | None = None
    seed: int = 0
    batch_size: int = 64
    lr: float = 0.05
    init: str | None = None
    eval_images: int = 1000  # val images of the progress evaluation at each phase end
    recal_images: int = 500  # train images its BN statistics are recalibrated on

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resolutions"] = list(self.resolutions) if self.resolutions else None
        return d


@dataclass(frozen=True)
class OwnData:
    """Everything `data:` (and its companion keys) ask of the main job."""

    data: "DataSpec"
    train: TrainPlan | None = None
    supernet: Path | None = None  # an already trained supernet folder instead of `train:`
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    models: tuple[str, ...] = PREDICTOR_MODELS
    verify_images: int = DEFAULT_VERIFY_IMAGES


# ---------------------------------------------------------------- the config keys


def parse_own_data(doc: dict[Any, Any], check: Any) -> OwnData | None:
    """`data:`, `train:`, `supernet:`, `evaluate:`, `bundle:` of a job config `doc`, checked with
    the config's `_Check` (every fault a SchemaError naming the key and the file). Relative
    paths are relative to the config file's folder. None without `data:`."""
    from ofa2_edge.data import DataSpec
    from ofa2_edge.data.dataset import FORMATS

    path: Path = check.path
    if "data" not in doc:
        stray = [k for k in OWN_DATA_KEYS if k in doc]
        if stray:
            raise SchemaError(
                f"{path}: {', '.join(stray)} only apply to a job on your own data; add data: {{path: ..., format: "
                f"imagefolder|idx}} or remove {'them' if len(stray) > 1 else 'it'} from {path.name}"
            )
        return None
    raw = doc["data"]
    if not isinstance(raw, dict):
        raise check.fault("data", raw, "a mapping {path, format} (the dataset to train and evaluate on)")
    check.keys(raw, "data ", DATA_KEYS)
    if "path" not in raw:
        raise SchemaError(f"{path}: data has no 'path' (the dataset folder: IDX files, or one sub-folder per class)")
    folder = _path(check, raw["path"], "data.path")
    if not folder.is_dir():
        raise check.fault("data.path", raw["path"], f"an existing dataset folder (looked for {folder})")
    fmt = raw.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
        raise check.fault("data.format", fmt, f"one of {', '.join(FORMATS)} (or left out: detected)")
    split_seed = check.integer(raw.get("seed", 0), "data.seed", 0, 2**32 - 1)
    fractions = {}
    for key in ("val_fraction", "test_fraction"):
        if key in raw:
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 0.5:
                raise check.fault(f"data.{key}", v, "a number in (0, 0.5)")
            fractions[key] = float(v)
    spec = DataSpec(folder, format=fmt, seed=split_seed, **fractions)

    train_raw, supernet_raw = doc.get("train"), doc.get("supernet")
    if train_raw is not None and supernet_raw is not None:
        raise SchemaError(
            f"{path}: give train: (train a supernet on the data) or supernet: PATH (reuse a trained one), not both"
        )
    plan = supernet = None
    if supernet_raw is not None:
        supernet = _path(check, supernet_raw, "supernet")
        if not (supernet / "supernet.pth").is_file():
            raise check.fault("supernet", supernet_raw, "a trained supernet folder holding supernet.pth (from `ofa2-edge train`)")
    else:
        plan = _train_plan(check, check.mapping(train_raw, "train"))

    ev = check.mapping(doc.get("evaluate"), "evaluate")
    check.keys(ev, "evaluate ", EVALUATE_KEYS)
    repeat = ev.get("repeat_fraction", 0.0)
    if isinstance(repeat, bool) or not isinstance(repeat, (int, float)) or not 0.0 <= float(repeat) <= 1.0:
        raise check.fault("evaluate.repeat_fraction", repeat, "a number in 0..1")
    settings = EvaluateSettings(
        budget=check.integer(ev.get("budget", DEFAULT_BUDGET), "evaluate.budget", 10, 100_000),
        seed=check.integer(ev.get("seed", 0), "evaluate.seed", 0, 2**32 - 1),
        bn_images=check.integer(ev.get("bn_images", DEFAULT_BN_IMAGES), "evaluate.bn_images", 1, 10_000_000),
        batch_size=check.integer(ev.get("batch_size", DEFAULT_BATCH), "evaluate.batch_size", 1, 100_000),
        repeat_fraction=float(repeat),
    )
    models = ev.get("models", list(PREDICTOR_MODELS))
    if not isinstance(models, list) or not models or any(m not in PREDICTOR_MODELS for m in models):
        raise check.fault("evaluate.models", models, f"a non-empty list of {', '.join(PREDICTOR_MODELS)}")
    bundle = check.mapping(doc.get("bundle"), "bundle")
    check.keys(bundle, "bundle ", BUNDLE_KEYS)
    verify_images = check.integer(bundle.get("verify_images", DEFAULT_VERIFY_IMAGES), "bundle.verify_images", 0, 100_000)
    return OwnData(spec, plan, supernet, settings, tuple(models), verify_images)


def _path(check: Any, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise check.fault(where, value, "a path (relative paths are relative to the config file's folder)")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (check.path.parent / p).resolve()


def _number(check: Any, value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < float(value) <= high:
        raise check.fault(where, value, f"a number in ({low:g}, {high:g}]")
    return float(value)


def _train_plan(check: Any, raw: dict[Any, Any]) -> TrainPlan:
    from ofa2_edge.space.arch import WIDTH_MULTS
    from ofa2_edge.train.recipe import check_resolutions

    check.keys(raw, "train ", TRAIN_KEYS)
    if ("epochs" in raw) == ("max_minutes" in raw):
        raise SchemaError(
            f"{check.path}: train needs its budget: epochs: N or max_minutes: M (one of them), e.g. "
            f"train: {{epochs: 10}}; or name a trained supernet with supernet: PATH"
        )
    width = raw.get("width", 1.2)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or float(width) not in WIDTH_MULTS:
        raise check.fault("train.width", width, f"one of {', '.join(str(w) for w in WIDTH_MULTS)}")
    resolutions = raw.get("resolutions")
    if resolutions is not None:
        if not isinstance(resolutions, list) or not resolutions or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in resolutions
        ):
            raise check.fault("train.resolutions", resolutions, "a non-empty list of input sizes in px, e.g. [32, 40, 48]")
        try:
            resolutions = tuple(check_resolutions(tuple(resolutions)))
        except InvalidInputError as exc:
            raise SchemaError(f"{check.path}: train.resolutions: {exc}") from exc
    init = raw.get("init")
    if init is not None and (not isinstance(init, str) or not init):
        raise check.fault("train.init", init, "a checkpoint path or OFA checkpoint name")
    return TrainPlan(
        width=float(width),
        resolutions=resolutions,
        epochs=_number(check, raw["epochs"], "train.epochs", 0, 10_000) if "epochs" in raw else None,
        max_minutes=_number(check, raw["max_minutes"], "train.max_minutes", 0, 1e6) if "max_minutes" in raw else None,
        seed=check.integer(raw.get("seed", 0), "train.seed", 0, 2**32 - 1),
        batch_size=check.integer(raw.get("batch_size", 64), "train.batch_size", 1, 1_000_000),
        lr=_number(check, raw.get("lr", 0.05), "train.lr", 0, 100),
        init=init,
        eval_images=check.integer(raw.get("eval_images", 1000), "train.eval_images", 1, 10_000_000),
        recal_images=check.integer(raw.get("recal_images", 500), "train.recal_images", 1, 10_000_000),
    )


# ---------------------------------------------------------------- the steps


@dataclass
class OwnDataResult:
    """What the own-data steps did (the job's JSON summary shows it)."""

    dataset: dict[str, Any] = field(default_factory=dict)
    supernet: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] = field(default_factory=dict)
    predictor: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "supernet": self.supernet, "table": self.table, "predictor": self.predictor}


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return (s or "data")[:40]


def open_data(own: OwnData, workspace: Workspace) -> "Dataset":
    """The dataset, validated and fingerprinted (a bad one fails here, before anything else)."""
    from ofa2_edge.data import open_dataset

    return open_dataset(own.data, cache_dir=workspace.cache_dir)


def supernet_folder(workspace: Workspace, own: OwnData, ds: "Dataset") -> Path:
    """Where the job trains this data with these settings: `supernets/<data folder>-<hash>`."""
    assert own.train is not None
    key = {"dataset_fingerprint": ds.fingerprint, "train": own.train.to_dict()}
    return workspace.root / SUPERNETS_DIR / f"{_slug(own.data.path.name)}-{_digest(key)}"


def _matches(manifest: Any, ds: "Dataset", plan: TrainPlan) -> bool:
    """A complete supernet trained on this data with these settings."""
    recipe = manifest.recipe or {}
    return bool(
        manifest.complete
        and manifest.dataset_fingerprint == ds.fingerprint
        and float(manifest.width_mult) == plan.width
        and (plan.resolutions is None or tuple(manifest.resolutions) == tuple(plan.resolutions))
        and recipe.get("seed") == plan.seed
        and recipe.get("batch_size") == plan.batch_size
    )


def prepare_supernet(
    workspace: Workspace, own: OwnData, ds: "Dataset", emit: Event
) -> tuple["TrainedSupernet", dict[str, Any]]:
    """The trained supernet the job uses: given, reused, resumed or trained now."""
    from ofa2_edge.accuracy.evaluate import check_pair
    from ofa2_edge.accuracy.source import open_supernet
    from ofa2_edge.supernet.manifest import read_manifest
    from ofa2_edge.train import STATE_NAME, TrainConfig, train

    if own.supernet is not None:
        trained = open_supernet(own.supernet)
        if trained.manifest is None or not trained.manifest.complete:
            raise InvalidInputError(
                f"supernet {own.supernet}: not a complete trained supernet (no manifest, or its training has not "
                f"finished); finish it with `ofa2-edge train ... -o {own.supernet}` or use train: in the job config"
            )
        check_pair(trained, ds)
        return trained, {"folder": str(trained.folder), "status": "given", "sha256": trained.sha256}
    assert own.train is not None
    folder = supernet_folder(workspace, own, ds)
    manifest = read_manifest(folder) if (folder / "manifest.json").is_file() else None
    if manifest is not None and _matches(manifest, ds, own.train):
        trained = open_supernet(folder)
        emit("train.reused", {"folder": str(folder)})
        return trained, {"folder": str(folder), "status": "reused", "sha256": trained.sha256}
    resuming = (folder / STATE_NAME).is_file()
    plan = own.train
    summary = train(
        TrainConfig(
            data=own.data,
            output=folder,
            width_mult=plan.width,
            init=plan.init,
            resolutions=plan.resolutions,
            epochs=plan.epochs,
            max_minutes=plan.max_minutes,
            seed=plan.seed,
            batch_size=plan.batch_size,
            lr=plan.lr,
            eval_images=plan.eval_images,
            recal_images=plan.recal_images,
            cache_dir=workspace.cache_dir,
            progress=lambda ev: emit(f"train.{ev['event']}", ev),
        )
    )
    trained = open_supernet(folder)
    info = {
        "folder": str(folder),
        "status": "resumed" if resuming else "trained",
        "sha256": trained.sha256,
        "steps": summary.get("steps"),
        "resumed_from_step": summary.get("resumed_from_step"),
        "images_per_s": summary.get("images_per_s"),
        "largest_val_top1_pct": summary.get("largest_val_top1"),
        "smallest_val_top1_pct": summary.get("smallest_val_top1"),
    }
    return trained, info


def table_name(trained: "TrainedSupernet", settings: EvaluateSettings) -> str:
    """`<supernet folder>-<hash>` of the supernet's sha256 and the settings its rows share."""
    return f"{_slug(trained.folder.name)}-{_digest({'supernet_sha256': trained.sha256, **settings.bound()})}"


def measure_table(
    workspace: Workspace, own: OwnData, trained: "TrainedSupernet", ds: "Dataset", emit: Event
) -> dict[str, Any]:
    """Evaluate the design into the supernet's accuracy table (resumable; a rerun adds nothing)."""
    from ofa2_edge.accuracy.evaluate import evaluate_table
    from ofa2_edge.accuracy.table import AccuracyTable

    name = table_name(trained, own.evaluate)
    table = AccuracyTable.of(workspace, name)
    report = evaluate_table(
        table, trained, ds, own.evaluate,
        lambda row, done, total: emit("evaluate.row", {"arch_id": row.arch_id, "top1_pct": row.val.top1_pct,
                                                       "repeat": row.repeat, "done": done, "total": total}),
    )  # fmt: skip
    doc = report.to_dict(table)
    summary = doc["summary"]
    return {
        "name": name,
        "folder": doc["folder"],
        "evaluated_now": doc["evaluated"],
        "repeated_now": doc["repeated"],
        "already_in_table": doc["skipped_already_in_table"],
        "n_evaluated": summary.get("n_evaluated"),
        "val_top1_pct_range": summary.get("val_top1_pct_range"),
        "noise_floor": summary.get("noise_floor"),
        "subnets_per_minute": doc["subnets_per_minute"],
    }


def fit_predictor(workspace: Workspace, own: OwnData, name: str) -> dict[str, Any]:
    """The table's top-1 predictor: refitted only when the table's rows changed."""
    from ofa2_edge.accuracy.fit import fit_table_predictor
    from ofa2_edge.accuracy.table import AccuracyTable
    from ofa2_edge.core.persist import sha256_file

    table = AccuracyTable.of(workspace, name).require()
    predictor, path, fitted = fit_table_predictor(table, seed=own.evaluate.seed, kinds=own.models, reuse=True)
    held = predictor.report.get("held_out") or {}
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "refitted": fitted,
        "model": predictor.report.get("model"),
        "n_pairs": predictor.report.get("n_pairs"),
        "held_out_spearman": held.get("spearman"),
        "held_out_kendall_tau": held.get("kendall_tau"),
        "held_out_rmse_pct": held.get("rmse_pct"),
        "share_of_noise_floor": predictor.report.get("share_of_noise_floor"),
    }


def supernet_space(trained: "TrainedSupernet") -> "SearchSpace":
    """The space calibration and search share: the supernet's width and trained resolutions."""
    from ofa2_edge.space.arch import SearchSpace

    return SearchSpace(resolutions=trained.resolutions, w=trained.width_mult)
