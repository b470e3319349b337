"""The main job, `ofa2-edge run`: from a fresh clone to a Pareto front and a shipped bundle.

Steps, each timed: probe and calibrate every configured device (one worker thread per
device; a device that fails is reported and the others finish), fit each predictor,
import the reference lookup tables (OFA's Note10), run one OFA² search over accuracy,
latency on every device and MACs, write the dashboard, and bundle a sensible default
pick (the knee of the first device's accuracy/latency front), verified on its device.

With `data:` in the config (your dataset; see `ofa2_edge.workflows.own_data`) the job first
trains (or reuses, or resumes) the elastic supernet on it, evaluates an accuracy table and
fits its top-1 predictor; the devices are calibrated and the search runs in the supernet's
space (its width and resolutions), `top1` is your table's predictor instead of OFA's
ImageNet one, and the bundle is deployable: trained weights, `labels.txt`, the dataset's
preprocessing, held-out images classified on the device and checked against torch.
Without `data:` nothing of this runs and the job is exactly the ImageNet-predictor one.

Host CPU discipline: exports (and the search) use this machine's CPU, so they never run
while the `local` device is being timed: one lock covers every export and every local
measurement batch. Remote boards measure concurrently with anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from device_agents.records import TIMERS, Protocol
from ofa2_edge.calibration.calibrate import CalibrationResult, calibrate
from ofa2_edge.core.assets import ACC_PREDICTOR, NOTE10_TABLES, find_assets
from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.persist import read_json, sha256_file, write_json
from ofa2_edge.core.workspace import DEVICE_KEY_PATTERN, Workspace
from ofa2_edge.devices.inventory import Inventory
from ofa2_edge.devices.pipeline import standard_protocol
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS, NETWORK_RESOLUTIONS, SearchSpace
from ofa2_edge.tables.device import DeviceTable
from ofa2_edge.tables.quality import assess
from ofa2_edge.tables.quantities import quantity_names
from ofa2_edge.tables.transfer import import_lookup_tables
from ofa2_edge.workflows.own_data import OWN_DATA_KEYS, OwnData, parse_own_data

log = logging.getLogger(__name__)

CONFIG_FILE = "ofa2-edge.yaml"
CONFIG_VERSION = 1
PICK_SCHEMA = "ofa2-edge/last-pick"
PICK_VERSION = 1
Event = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class DevicePlan:
    key: str
    budget: int = 40
    format: str | None = None
    timer: str = "wall"
    quick: bool = False


@dataclass(frozen=True)
class JobConfig:
    """What `ofa2-edge run` does; `ofa2-edge.yaml` in the workspace overrides the defaults."""

    devices: tuple[DevicePlan, ...] = (DevicePlan("local"),)
    reference_tables: tuple[str, ...] = ("note10",)
    objectives: tuple[str, ...] | None = None  # default: top1, latency on every device and reference, macs
    resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS
    algorithm: str = "auto"
    pop: int = 100
    gens: int = 300
    seed: int = 1
    run_id: str = "main"
    verify: bool = True
    accept_unstable: bool = False  # ship even when the device's predictor fails its quality check
    own_data: OwnData | None = None  # `data:`: train, evaluate and fit top-1 on your dataset

    @property
    def all_objectives(self) -> tuple[str, ...]:
        if self.objectives:
            return self.objectives
        keys = [d.key for d in self.devices] + [
            k for k in self.reference_tables if k not in {d.key for d in self.devices}
        ]
        return ("top1", *(f"latency:{k}" for k in keys), "macs")

    @classmethod
    def load(cls, path: Path) -> "JobConfig":
        """Read `ofa2-edge.yaml`; unknown keys and bad values are SchemaErrors naming the file and
        the key, with what it should be. Every field is type-checked here, before any work."""
        path = Path(path)
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
            raise SchemaError(f"{path}: not readable YAML ({str(exc)[:300] or type(exc).__name__})") from exc
        doc = {} if doc is None else doc
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or isinstance(version, bool) or not isinstance(version, int) or version != CONFIG_VERSION:
            raise SchemaError(
                f"{path}: expected an ofa2-edge job config (a mapping) with schema_version: {CONFIG_VERSION}, found "
                f"{_short(version) if isinstance(doc, dict) else type(doc).__name__}; see the README for its keys"
            )
        check = _Check(path)
        check.keys(doc, "", CONFIG_KEYS)
        search = check.mapping(doc.get("search", {}), "search")
        check.keys(search, "search ", SEARCH_KEYS)
        raw_devices = doc.get("devices")
        if raw_devices is None or raw_devices == []:
            raw_devices = ["local"]
        if not isinstance(raw_devices, list):
            raise check.fault("devices", raw_devices, "a list of device keys or {key, budget, format, timer, quick}")
        devices = tuple(check.device(entry, i) for i, entry in enumerate(raw_devices))
        if len({d.key for d in devices}) != len(devices):
            raise SchemaError(f"{path}: a device is listed twice")
        objectives = check.texts(doc.get("objectives"), "objectives", allow_none=True)
        if objectives:
            check.objectives(objectives)
        own_data = parse_own_data(doc, check)
        if own_data is not None:
            # The space is the trained supernet's: its width and trained resolutions; OFA's
            # Note10 tables cover ImageNet's 160-224 px only.
            for key, instead in (("resolutions", "train.resolutions"), ("reference_tables", "only your devices")):
                if key in doc:
                    raise SchemaError(
                        f"{path}: {key} does not apply with data: (the search runs in the trained supernet's space; "
                        f"use {instead}); remove {key} from {path.name}"
                    )
        resolutions = check.resolutions(doc.get("resolutions", list(DEFAULT_RESOLUTIONS)))
        references = doc.get("reference_tables", ["note10"] if own_data is None else [])
        return cls(
            devices=devices,
            reference_tables=tuple(
                check.key(k, f"reference_tables[{i}]")
                for i, k in enumerate(check.texts(references, "reference_tables") or ())
            ),
            objectives=objectives or None,
            resolutions=resolutions,
            algorithm=check.algorithm(search.get("algorithm", "auto")),
            pop=check.integer(search.get("pop", 100), "search.pop", 2, 100_000),
            gens=check.integer(search.get("gens", 300), "search.gens", 1, 10_000_000),
            seed=check.integer(search.get("seed", 1), "search.seed", 0, 2**32 - 1),
            run_id=check.run_id(doc.get("run_id", "main")),
            verify=check.boolean(doc.get("verify", True), "verify"),
            own_data=own_data,
        )


CONFIG_KEYS = (
    "schema_version", "devices", "reference_tables", "objectives", "search", "resolutions", "run_id", "verify",
    *OWN_DATA_KEYS,
)  # fmt: skip
SEARCH_KEYS = ("algorithm", "pop", "gens", "seed")
DEVICE_KEYS = ("key", "budget", "format", "timer", "quick")
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: A run folder is `<run_id>-<hash>` under runs/: a plain name, never a path.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _name(key: Any) -> str:
    """A key as written in a message: plain if printable text, else its repr (no terminal escapes)."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 60 else _short(key)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Check:
    """Field checks of one job config file; each failure is a SchemaError naming the file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fault(self, where: str, value: Any, want: str) -> SchemaError:
        return SchemaError(f"{self.path}: {where} must be {want}, got {_short(value)}; fix that key in {self.path.name}")

    def keys(self, doc: dict[Any, Any], where: str, known: tuple[str, ...]) -> None:
        unknown = sorted(_name(k) for k in doc if k not in known)
        if unknown:
            raise SchemaError(f"{self.path}: unknown {where}key(s) {', '.join(unknown)}; known: {', '.join(known)}")

    def mapping(self, value: Any, where: str) -> dict[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fault(where, value, "a mapping")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fault(where, value, f"an integer in {low}..{high}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fault(where, value, "true or false")
        return value

    def key(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not DEVICE_KEY_PATTERN.match(value):
            raise self.fault(where, value, "a device key (lowercase letters, digits, '.', '_', '-')")
        return value

    def texts(self, value: Any, where: str, allow_none: bool = False) -> tuple[str, ...] | None:
        if value is None and allow_none:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fault(where, value, "a list of names")
        return tuple(value)

    def device(self, entry: Any, i: int) -> DevicePlan:
        where = f"devices[{i}]"
        entry = {"key": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            raise self.fault(where, entry, "a device key or a mapping {key, budget, format, timer, quick}")
        extra = sorted(_name(k) for k in entry if k not in DEVICE_KEYS)
        if extra:
            raise SchemaError(
                f"{self.path}: device entry {_short(entry.get('key'))} has unknown key(s) {', '.join(extra)}; "
                f"known: {', '.join(DEVICE_KEYS)}"
            )
        if "key" not in entry:
            raise SchemaError(f"{self.path}: {where} has no 'key' (the device's name in devices.yaml)")
        key = self.key(entry["key"], f"{where}.key")
        fmt = entry.get("format")
        if fmt is not None and not (isinstance(fmt, str) and fmt in _export_formats()):
            raise self.fault(f"{where}.format", fmt, f"null or one of {', '.join(_export_formats())}")
        timer = entry.get("timer", "wall")
        if timer not in TIMERS or not isinstance(timer, str):
            raise self.fault(f"{where}.timer", timer, f"one of {', '.join(TIMERS)}")
        return DevicePlan(
            key=key,
            budget=self.integer(entry.get("budget", 40), f"{where}.budget", 10, 1_000_000),
            format=fmt,
            timer=timer,
            quick=self.boolean(entry.get("quick", False), f"{where}.quick"),
        )

    def objectives(self, names: tuple[str, ...]) -> None:
        from ofa2_edge.search.objectives import metric_kinds, parse_objective_list

        try:
            parse_objective_list(names)
        except InvalidInputError as exc:
            raise SchemaError(f"{self.path}: objectives: {exc}") from exc
        kinds = {k.name: k for k in metric_kinds()}
        for name in names:
            family, _, arg = name.partition(":")
            kind = kinds.get(family)
            if kind is None or bool(kind.arg) != bool(arg):
                raise self.fault(
                    "objectives", name, f"one of {', '.join(k.spelling for k in kinds.values())}"
                )

    def resolutions(self, value: Any) -> tuple[int, ...]:
        want = f"a non-empty list of integers in {NETWORK_RESOLUTIONS.start}..{NETWORK_RESOLUTIONS.stop - 1} (px)"
        if not isinstance(value, list) or not value:
            raise self.fault("resolutions", value, want)
        for r in value:
            if isinstance(r, bool) or not isinstance(r, int) or r not in NETWORK_RESOLUTIONS:
                raise self.fault("resolutions", r, want)
        try:
            return SearchSpace(resolutions=tuple(value)).resolutions
        except InvalidInputError as exc:
            raise SchemaError(f"{self.path}: resolutions: {exc}") from exc

    def algorithm(self, value: Any) -> str:
        from ofa2_edge.search.algorithms import ALGORITHMS, AUTO

        if not isinstance(value, str) or (value != AUTO and value not in ALGORITHMS):
            raise self.fault("search.algorithm", value, f"one of {AUTO}, {', '.join(ALGORITHMS)}")
        return value

    def run_id(self, value: Any) -> str:
        if not isinstance(value, str) or not RUN_ID_PATTERN.match(value):
            raise self.fault("run_id", value, "a plain folder name (letters, digits, '.', '_', '-'; at most 64)")
        return value


def _export_formats() -> tuple[str, ...]:
    from exporters.formats import format_names

    return format_names()


@dataclass
class JobResult:
    seconds: dict[str, float] = field(default_factory=dict)
    calibrations: dict[str, CalibrationResult] = field(default_factory=dict)
    failed_devices: dict[str, str] = field(default_factory=dict)
    run_folder: Path | None = None
    search_status: dict[str, Any] = field(default_factory=dict)
    dashboard: Path | None = None
    bundle: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)  # per device, tables.quality's verdict
    refused: str | None = None  # why no bundle was shipped (a predictor that failed its check)
    pick_change: str | None = None  # how this pick differs from the previous run's, and why
    accuracy: dict[str, Any] = field(default_factory=dict)  # where `top1` came from (OFA's predictor or your table)
    own_data: dict[str, Any] = field(default_factory=dict)  # with `data:`: the supernet, table and predictor steps


class _Timer:
    def __init__(self, result: JobResult, step: str) -> None:
        self.result, self.step = result, step

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.result.seconds[self.step] = round(time.perf_counter() - self.t0, 2)


def import_reference(workspace: Workspace, key: str, assets_dir: Path | None) -> None:
    """Make the reference table `key` (only `note10` ships with OFA) a workspace device."""
    if DeviceTable.of(workspace, key).surrogate_path.exists():
        return
    if key != "note10":
        raise InvalidInputError(f"reference table {key!r}: only OFA's note10 tables ship with the assets")
    paths = find_assets([a.relpath for a in NOTE10_TABLES], assets_dir)
    note = "OFA's Samsung Note10 lookup tables (official assets, sha256-verified)"
    import_lookup_tables(workspace, next(iter(paths.values())).parent, key, replace=True, note=note)


def run_name_inputs(search: Any, workspace: Workspace) -> dict[str, Any]:
    """What a run's name hashes: the search config and the sha256 of every device predictor it
    uses (and of the top-1 predictor when it is not OFA's official one: a refit starts a new run)."""
    from ofa2_edge.accuracy.table import accuracy_source
    from ofa2_edge.search.objectives import OFFICIAL_ACCURACY

    doc: dict[str, Any] = {"search": search.to_dict(), "predictors": {}}
    for name in search.objectives:
        family, _, key = name.partition(":")
        if family in quantity_names():
            path = DeviceTable.of(workspace, key).predictor_path(family)
            doc["predictors"][key if family == "latency" else name] = sha256_file(path)
    if search.accuracy != OFFICIAL_ACCURACY and any(o.startswith("top1") for o in search.objectives):
        doc["predictors"]["top1"] = sha256_file(accuracy_source(search.accuracy, workspace))
    return doc


def run_name(prefix: str, search: Any, workspace: Workspace) -> str:
    """`<prefix>-<hash>` of `run_name_inputs`: a rerun with the same inputs resumes (or reuses)
    its run; a refitted predictor starts a new run beside the old one instead of mixing two."""
    doc = run_name_inputs(search, workspace)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


def knee(top1: np.ndarray, latency: np.ndarray) -> int:
    """Index of the knee of an accuracy/latency front: the point farthest from the line
    joining its two extremes, after scaling both axes to [0, 1]."""
    x = (latency - latency.min()) / max(float(np.ptp(latency)), 1e-12)
    y = (top1 - top1.min()) / max(float(np.ptp(top1)), 1e-12)
    i0, i1 = int(np.argmin(x)), int(np.argmax(x))
    dx, dy = x[i1] - x[i0], y[i1] - y[i0]
    norm = max(float(np.hypot(dx, dy)), 1e-12)
    distance = (dx * (y - y[i0]) - dy * (x - x[i0])) / norm  # above the chord = better than linear
    return int(np.argmax(distance))


def run_job(
    workspace: Workspace,
    config: JobConfig,
    assets_dir: Path | None = None,
    trust_on_first_use: bool = False,
    on_event: Event | None = None,
) -> JobResult:
    """Calibrate, fit, search, dashboard, bundle; see the module docstring."""
    from ofa2_edge.deploy.bundle import read_manifest as read_bundle_manifest
    from ofa2_edge.deploy.dashboard import write_dashboard
    from ofa2_edge.deploy.select import non_dominated
    from ofa2_edge.deploy.verify import verify_bundle
    from ofa2_edge.search.config import SearchConfig
    from ofa2_edge.search.objectives import OFFICIAL_ACCURACY
    from ofa2_edge.search.runner import run_search
    from ofa2_edge.search.runstore import RunFolder
    from ofa2_edge.supernet.checkpoint import find_checkpoint
    from ofa2_edge.workflows.ship import priced_front, ship

    emit = on_event or (lambda event, info: None)
    result = JobResult()
    inventory = Inventory.load(workspace.inventory_path)
    devices = {plan.key: inventory.get(plan.key) for plan in config.devices}  # unknown keys fail before any work
    space = SearchSpace(resolutions=config.resolutions)
    host_cpu = threading.Lock()
    own = config.own_data
    wants_top1 = any(o.startswith("top1") for o in config.all_objectives)

    with _Timer(result, "reference tables"):
        # Every official file a later step reads is looked up now: one error naming all that
        # are missing, before minutes of calibration rather than after them.
        needed = [ACC_PREDICTOR.relpath] if wants_top1 and own is None else []
        needed += [a.relpath for a in NOTE10_TABLES] if config.reference_tables else []
        find_assets(needed, assets_dir)
        for key in config.reference_tables:
            import_reference(workspace, key, assets_dir)

    accuracy = OFFICIAL_ACCURACY
    result.accuracy = {"source": "ofa-imagenet-predictor", "note": "OFA's ImageNet accuracy predictor (official asset)"}
    trained = dataset = None
    if own is not None:
        # Your data first (this machine's CPU, before any device is timed): the supernet, its
        # accuracy table and the table's predictor; the devices are then calibrated in its space.
        from ofa2_edge.workflows import own_data as steps

        with _Timer(result, "train"):
            dataset = steps.open_data(own, workspace)
            result.own_data["dataset"] = {"path": str(own.data.path), "format": dataset.format,
                                          "fingerprint": dataset.fingerprint, "classes": len(dataset.classes),
                                          "sizes": {p: dataset.size(p) for p in ("train", "val", "test")}}  # fmt: skip
            trained, result.own_data["supernet"] = steps.prepare_supernet(workspace, own, dataset, emit)
        with _Timer(result, "evaluate"):
            result.own_data["table"] = steps.measure_table(workspace, own, trained, dataset, emit)
        with _Timer(result, "fit accuracy"):
            accuracy = result.own_data["table"]["name"]
            result.own_data["predictor"] = steps.fit_predictor(workspace, own, accuracy)
        space = steps.supernet_space(trained)
        result.accuracy = {
            "source": "accuracy-table",
            "table": accuracy,
            "supernet": result.own_data["supernet"]["folder"],
            "predictor": result.own_data["predictor"]["path"],
            "held_out_spearman": result.own_data["predictor"]["held_out_spearman"],
            "note": f"your table {accuracy}: {result.own_data['table']['n_evaluated']} subnets of the trained supernet "
            f"evaluated on {own.data.path} (val part)",
        }

    def calibrate_one(plan: DevicePlan) -> CalibrationResult:
        device = devices[plan.key]
        protocol = _protocol(device.threads, plan)
        lock = host_cpu if device.transport == "local" else None
        return calibrate(
            device,
            workspace,
            plan.budget,
            protocol,
            fmt=plan.format,
            space=space,
            seed=config.seed,
            trust_on_first_use=trust_on_first_use,
            export_lock=host_cpu,
            measure_lock=lock,
            progress=lambda event, info, key=plan.key: emit(f"calibrate.{event}", {"device": key, **info}),
        )

    with _Timer(result, "calibrate + fit"):
        with ThreadPoolExecutor(max_workers=len(config.devices), thread_name_prefix="calibrate") as pool:
            futures = {plan.key: pool.submit(calibrate_one, plan) for plan in config.devices}
            for key, future in futures.items():
                try:
                    result.calibrations[key] = future.result()
                except Ofa2EdgeError as exc:
                    result.failed_devices[key] = str(exc)
                    emit("device_failed", {"device": key, "error": str(exc)})
    usable = [p.key for p in config.devices if p.key in result.calibrations]
    if not usable:
        raise InvalidInputError(
            "no device could be calibrated: " + "; ".join(f"{k}: {v}" for k, v in result.failed_devices.items())
        )

    objectives = tuple(
        o
        for o in config.all_objectives
        if not (o.startswith("latency:") and o.split(":", 1)[1] in result.failed_devices)
    )
    search_config = SearchConfig(
        objectives=objectives,
        space=space,
        algorithm=config.algorithm,
        pop_size=config.pop,
        n_gen=config.gens,
        seed=config.seed,
        accuracy=accuracy,
    )
    folder = workspace.runs_dir / run_name(config.run_id, search_config, workspace)
    with _Timer(result, "search"):
        emit("search.start", {"objectives": objectives, "gens": config.gens})
        result.search_status = run_search(
            search_config,
            folder,
            workspace=workspace,
            assets_dir=assets_dir,
            resume=folder.exists(),
            progress=lambda p: emit("search.progress", {"gen": p.gen, "n_gen": p.n_gen, "hv": p.hv}),
        )
    result.run_folder = folder
    run = RunFolder(folder)

    with _Timer(result, "dashboard"):
        result.dashboard = Path(write_dashboard(run, folder / "dashboard.html", workspace)["output"])

    target = usable[0]
    for key in usable:
        model = result.calibrations[key].surrogate
        result.quality[key] = assess(DeviceTable.of(workspace, key), model).to_dict()
    cands = non_dominated(priced_front(workspace, folder, target)[1])
    pick = cands[knee(np.array([c.top1_pct for c in cands]), np.array([c.latency_ms for c in cands]))]
    history = workspace.runs_dir / f"{config.run_id}.last-pick.json"
    result.pick_change = _pick_change(history, folder, pick.arch.id, run_name_inputs(search_config, workspace))
    quality = result.quality[target]
    if not quality["good"] and not config.accept_unstable:
        result.refused = (
            f"no bundle shipped: the {target} predictor is not good enough to price one ("
            + "; ".join(quality["problems"]) + "). Fix the cause and calibrate again, or pass --accept-unstable "
            "to ship anyway (the manifest records it)"
        )
        emit("bundle.refused", {"device": target, "reason": result.refused})
        return result
    with _Timer(result, "bundle"):
        plan = next(p for p in config.devices if p.key == target)
        protocol = _protocol(devices[target].threads, plan) if config.verify else None
        deployable = None
        if own is not None:
            assert trained is not None and dataset is not None
            deployable = {"supernet": find_checkpoint(trained.folder), "data": dataset.spec,
                          "verify_images": own.verify_images if config.verify else 0}  # fmt: skip
        shipped = _reused_bundle(workspace, run, target, pick.arch.id, deployable is not None, config.verify)
        check = None
        if shipped is None:
            built = ship(
                pick,
                run,
                devices[target],
                workspace,
                workspace.bundles_dir,
                verify_protocol=protocol,
                trust_on_first_use=trust_on_first_use,
                host_cpu=host_cpu,
                quality={**quality, "accepted_unstable": not quality["good"]},
                **(deployable or {}),
            )
            # with data: the manifest as the checks left it (measured latency, on-device top-1)
            manifest = built.bundle.manifest if own is None else read_bundle_manifest(built.bundle.folder)
            verification = built.verification
            bundle_folder = built.bundle.folder
            check = built.check.on_device if built.check is not None else None
        else:
            bundle_folder, manifest = shipped
            verification = None
            if protocol is not None and manifest["latency"].get("measured") is None:
                verification = verify_bundle(bundle_folder, devices[target], workspace, protocol, trust_on_first_use)
                manifest = verification.manifest
        result.bundle = {
            "folder": str(bundle_folder),
            "archive": f"{bundle_folder}.tar.gz",
            "pick": pick.to_dict(),
            "device": target,
            "status": manifest["status"],
            "reused": shipped is not None,
        }
        on_device = check or (manifest.get("accuracy") or {}).get("on_device")
        if on_device:
            result.bundle["on_device"] = on_device
        if (manifest.get("accuracy") or {}).get("measured"):
            result.bundle["measured_accuracy"] = manifest["accuracy"]["measured"]
        measured = (manifest["latency"].get("measured") or {})
        if measured:
            result.bundle["measured_ms"] = measured.get("latency_ms")
            result.bundle["within_predicted_interval"] = measured.get("within_predicted_interval")
    _write_pick(history, folder, pick.arch.id, run_name_inputs(search_config, workspace))
    return result


def _reused_bundle(
    workspace: Workspace, run: Any, device_key: str, arch_id: str, deployable: bool = False, verify: bool = False
) -> tuple[Path, dict[str, Any]] | None:
    """The bundle a previous run of the same search shipped for this pick, if it is intact
    and was priced by the same predictor (then it is reused as is: no second export). A job
    on your own data reuses only a deployable bundle, and with `verify` only one whose latency
    and classification were checked on the device (the check needs the build's images)."""
    from ofa2_edge.deploy.bundle import bundle_name, check_bundle

    folder = workspace.bundles_dir / bundle_name(device_key, arch_id)
    if not folder.is_dir() or not Path(f"{folder}.tar.gz").is_file():
        return None
    try:
        manifest = check_bundle(folder)
    except Ofa2EdgeError:
        return None  # damaged or edited: build it again
    predictor = DeviceTable.of(workspace, device_key).surrogate_path
    priced_by = ((manifest.get("latency", {}).get("predicted") or {}).get("surrogate") or {}).get("sha256")
    same_run = (manifest.get("run") or {}).get("id") == run.run_id
    if not same_run or priced_by != sha256_file(predictor):
        return None
    if deployable:
        checked = manifest["latency"].get("measured") is not None and (manifest.get("accuracy") or {}).get("on_device")
        if manifest.get("status") != "deployable" or (verify and not checked):
            return None
    return folder, manifest


def _pick_change(history: Path, folder: Path, arch_id: str, inputs: dict[str, Any]) -> str | None:
    """Why the pick differs from the previous run's (None: same pick, or no previous run)."""
    try:
        last = read_json(history, PICK_SCHEMA, [PICK_VERSION])
    except FileNotFoundError:
        return None
    except Ofa2EdgeError as exc:
        log.warning("%s", exc)
        return None
    if last.get("arch_id") == arch_id:
        return None
    reasons = []
    before, now = last.get("inputs") or {}, inputs
    if before.get("search") != now.get("search"):
        reasons.append("the search settings changed")
    for key in sorted(set(before.get("predictors", {})) | set(now.get("predictors", {}))):
        if before.get("predictors", {}).get(key) != now.get("predictors", {}).get(key):
            reasons.append(f"the {key} predictor changed (it was refitted on new measurements)")
    why = "; ".join(reasons) or "the search was rerun with the same inputs"
    return f"the pick changed from {last.get('arch_id')} (run {last.get('run')}) to {arch_id} (run {folder.name}): {why}"


def _write_pick(history: Path, folder: Path, arch_id: str, inputs: dict[str, Any]) -> None:
    write_json(history, PICK_SCHEMA, PICK_VERSION, {"run": folder.name, "arch_id": arch_id, "inputs": inputs})


def _protocol(threads: int, plan: DevicePlan) -> Protocol:
    return standard_protocol(threads, plan.timer, plan.quick)
