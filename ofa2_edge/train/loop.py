"""Train the elastic supernet on a dataset: OFA's recipe, resumable, one or many processes.

Determinism and resume: the data order, the resolution of each step, the augmentation and
the subnets sampled are pure functions of ``(seed, global step)`` (numpy generators seeded
with ``[seed, purpose, step]``), so the position in the data is just the step counter.
The training state (``train_state.pt``: weights, optimizer with its momentum buffers, LR
scheduler, phase, step, torch's RNG state, elapsed time, evaluation history) is written
atomically every ``checkpoint_every`` steps and at every phase boundary; ``kill -9`` at
any moment and the same command continues from the last one. On CPU with a fixed seed and
the same thread count, the resumed run ends with bit-identical weights (tested).

The output folder holds ``supernet.pth`` + ``manifest.json`` (the product, rewritten at
every phase end, ``complete: true`` at the end), ``train_state.pt`` (resume),
``train_log.jsonl`` (one record per step: losses of each sandwich subnet, lr, resolution)
and ``.lock`` (one training per folder; only rank 0 writes anything).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ofa2_edge.core.errors import CheckpointError, InvalidInputError
from ofa2_edge.core.locks import exclusive
from ofa2_edge.core.persist import append_jsonl, atomic_write_bytes, atomic_write_text, iter_jsonl
from ofa2_edge.data.dataset import Dataset, DataSpec, apply_augment, augment_params, open_dataset
from ofa2_edge.space.arch import Arch
from ofa2_edge.supernet.calibration import recalibrate_bn
from ofa2_edge.supernet.checkpoint import load_supernet
from ofa2_edge.supernet.manifest import SupernetManifest, dataset_preprocessing, write_trained
from ofa2_edge.supernet.network import Supernet, channels_last, check_width_mult
from ofa2_edge.train.distributed import DistEnv, SandwichLoss, init_from_env, sync_bn_converter
from ofa2_edge.train.recipe import PHASE_NAMES, Phase, Recipe, check_phases, check_resolutions, phases_for, split_budget

log = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"
LOG_NAME = "train_log.jsonl"
STATE_SCHEMA, STATE_VERSION = "ofa2-edge.train-state", 1
DEFAULT_RESOLUTIONS_SMALL = (32, 40, 48)
DEFAULT_RESOLUTIONS = (128, 160, 192, 224)


@dataclass
class TrainConfig:
    """What `ofa2-edge train` takes. `lr` is the full phase's SGD learning rate at batch 64
    (scaled linearly with the batch size)."""

    data: DataSpec | str | Path
    output: Path
    width_mult: float = 1.2
    init: str | Path | None = None
    resolutions: tuple[int, ...] | None = None
    epochs: float | None = None
    max_minutes: float | None = None
    seed: int = 0
    batch_size: int = 64
    lr: float = 0.05
    phases: tuple[str, ...] = PHASE_NAMES
    checkpoint_every: int = 100
    eval_images: int = 1000
    recal_images: int = 500
    cache_dir: Path | None = None
    progress: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)


def _no_decay(name: str) -> bool:
    return ".bn." in name or name.endswith("bias")


def _optimizer(net: nn.Module, phase: Phase, recipe: Recipe) -> tuple[torch.optim.Optimizer, Any]:
    decay = [p for n, p in net.named_parameters() if not _no_decay(n)]
    plain = [p for n, p in net.named_parameters() if _no_decay(n)]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=phase.lr,
        momentum=recipe.momentum,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, phase.steps))
    return opt, sched


def _archs(phase: Phase, recipe: Recipe, r: int, rng: np.random.Generator) -> list[Arch]:
    space = phase.space((r,), recipe.width_mult)
    archs = [space.largest(r)]
    if phase.name != "full":
        archs.append(space.smallest(r))
        archs += space.sample(phase.n_random, rng)
    return archs


def _step_inputs(
    ds: Dataset, recipe: Recipe, g: int, env: DistEnv
) -> tuple[torch.Tensor, torch.Tensor, int, np.random.Generator]:
    """This rank's shard of global batch `g`, preprocessed and augmented; its resolution and rng."""
    epoch, b = divmod(g, recipe.steps_per_epoch)
    perm = np.random.default_rng([recipe.seed, 1, epoch]).permutation(ds.size("train"))
    idx = perm[b * recipe.batch_size : (b + 1) * recipe.batch_size]
    rng = np.random.default_rng([recipe.seed, 2, g])
    r = int(rng.choice(recipe.resolutions))
    local = recipe.batch_size // env.world_size
    lo, hi = env.rank * local, (env.rank + 1) * local
    x = ds.preprocessed("train", idx[lo:hi], r)
    if recipe.augment:
        offsets, flips = augment_params(recipe.batch_size, r, rng)
        x = apply_augment(x, offsets[lo:hi], flips[lo:hi])
    y = torch.from_numpy(ds.labels("train")[idx[lo:hi]].copy())
    return channels_last(x.to(env.device)), y.to(env.device), r, rng


def evaluate_subnet(net: Supernet, arch: Arch, ds: Dataset, recal: np.ndarray, val: np.ndarray) -> float:
    """Top-1 (%) of `arch` on the `val` items after BN recalibration on the `recal` train items."""
    sub = channels_last(net.extract(arch).cpu())
    recal_batches = (channels_last(ds.preprocessed("train", recal[i : i + 128], arch.r)) for i in range(0, len(recal), 128))
    recalibrate_bn(sub, recal_batches)
    correct = 0
    labels = ds.labels("val")
    with torch.no_grad():
        for i in range(0, len(val), 256):
            part = val[i : i + 256]
            pred = sub(channels_last(ds.preprocessed("val", part, arch.r))).argmax(1).numpy()
            correct += int((pred == labels[part]).sum())
    return 100.0 * correct / max(1, len(val))


def _plain_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The net's weights as written to disk: on the CPU, contiguous (NCHW whatever it trained in)."""
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def _state_bytes(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: all mean "unusable"
        raise CheckpointError(
            f"cannot read the training state {path} ({type(exc).__name__}); it is not from this ofa2-edge, "
            "or was damaged outside it: remove it to start the training again"
        ) from exc
    if (
        not isinstance(state, dict)
        or state.get("schema") != STATE_SCHEMA
        or state.get("schema_version") != STATE_VERSION
    ):
        raise CheckpointError(
            f"{path}: not a training state of schema {STATE_SCHEMA} v{STATE_VERSION}; remove it to start again"
        )
    return state


class _Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        self.cfg, self.env = cfg, env
        self.out = Path(cfg.output)
        spec = cfg.data if isinstance(cfg.data, DataSpec) else DataSpec(Path(cfg.data))
        self.ds = open_dataset(spec, cache_dir=cfg.cache_dir)
        w = check_width_mult(cfg.width_mult)
        default = DEFAULT_RESOLUTIONS_SMALL if (self.ds.native_size or (224, 224))[0] < 64 else DEFAULT_RESOLUTIONS
        self.resolutions = check_resolutions(tuple(cfg.resolutions or default))
        self.phases = check_phases(cfg.phases)
        if cfg.batch_size < 1 or cfg.batch_size % env.world_size:
            raise InvalidInputError(
                f"--batch-size {cfg.batch_size}: the global batch must be a positive multiple of the "
                f"{env.world_size} processes"
            )
        if (cfg.epochs is None) == (cfg.max_minutes is None):
            raise InvalidInputError("give exactly one of --epochs N or --max-minutes M")
        if (cfg.epochs is not None and cfg.epochs <= 0) or (cfg.max_minutes is not None and cfg.max_minutes <= 0):
            raise InvalidInputError("--epochs / --max-minutes must be positive")
        self.steps_per_epoch = self.ds.size("train") // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise InvalidInputError(
                f"--batch-size {cfg.batch_size} is larger than the train part ({self.ds.size('train')} images)"
            )
        self.w = w
        self.init_source: str | None = None
        n_val = min(cfg.eval_images, self.ds.size("val"))
        self.val_idx = np.arange(n_val)
        n_rec = min(cfg.recal_images, self.ds.size("train"))
        self.recal_idx = np.sort(
            np.random.default_rng([cfg.seed, 5]).choice(self.ds.size("train"), n_rec, replace=False)
        )

    # ---------------------------------------------------------- setup
    def request(self) -> dict[str, Any]:
        """What must be the same for a rerun to continue this training."""
        c = self.cfg
        return {
            "dataset_fingerprint": self.ds.fingerprint,
            "width_mult": self.w,
            "init": self.init_source,
            "resolutions": list(self.resolutions),
            "batch_size": c.batch_size,
            "seed": c.seed,
            "epochs": c.epochs,
            "max_minutes": c.max_minutes,
            "lr": c.lr,
            # only when not all four, so trainings started before --phases existed still resume
            **({"phases": list(self.phases)} if self.phases != PHASE_NAMES else {}),
        }

    def fresh_net(self) -> Supernet:
        n = len(self.ds.classes)
        if self.cfg.init is None:
            return Supernet.random(self.w, seed=self.cfg.seed, n_classes=n)
        net = load_supernet(self.cfg.init, width_mult=self.w)
        if net.n_classes != n or (net.manifest and tuple(net.manifest.classes) != self.ds.classes):
            net.replace_classifier(n, torch.Generator().manual_seed(self.cfg.seed))
        net.manifest = None
        return net

    def plan(self, net: Supernet) -> Recipe:
        c = self.cfg
        base_lr = c.lr * c.batch_size / 64
        draft = Recipe(
            self.w,
            self.resolutions,
            c.batch_size,
            c.seed,
            phases_for(dict.fromkeys(self.phases, 1), base_lr),
            self.steps_per_epoch,
            checkpoint_every=c.checkpoint_every,
        )
        if c.epochs is not None:
            steps = {k: max(1, round(v * self.steps_per_epoch)) for k, v in split_budget(c.epochs, self.phases).items()}
        else:
            per = self.time_steps(net, draft)
            steps = {k: max(1, int(v / per[k])) for k, v in split_budget(c.max_minutes * 60.0 * 0.9, self.phases).items()}
        return Recipe(**{**draft.__dict__, "phases": phases_for(steps, base_lr)})

    def time_steps(self, net: Supernet, draft: Recipe) -> dict[str, float]:
        """Seconds per step of each phase, measured on a copy (the plan of a --max-minutes run)."""
        probe = channels_last(copy.deepcopy(net)).train()
        model = SandwichLoss(probe)
        out = {}
        for phase in draft.phases:
            times = []
            for g in range(3):
                t0 = time.perf_counter()
                x, y, r, rng = _step_inputs(self.ds, draft, g, self.env)
                loss, _ = model(x, y, _archs(phase, draft, r, rng), phase.kd_ratio, draft.label_smoothing)
                loss.backward()
                probe.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
            out[phase.name] = float(np.median(times[1:])) * 1.1  # + evaluation and checkpoints
        return out

    # ---------------------------------------------------------- persistence (rank 0)
    def save_state(
        self, net: Supernet, recipe: Recipe, pi: int, ps: int, g: int, opt, sched, history: list, elapsed: float
    ) -> None:
        if not self.env.is_main:
            return
        payload = {
            "schema": STATE_SCHEMA,
            "schema_version": STATE_VERSION,
            "request": json.dumps(self.request()),
            "recipe": json.dumps(recipe.to_dict()),
            "phase_index": pi,
            "phase_step": ps,
            "global_step": g,
            "elapsed_s": elapsed,
            "model": _plain_state(net),
            "optimizer": opt.state_dict() if opt is not None else {},
            "scheduler": sched.state_dict() if sched is not None else {},
            "torch_rng": torch.get_rng_state(),
            "history": json.dumps(history),
        }
        atomic_write_bytes(self.out / STATE_NAME, _state_bytes(payload))

    def publish(self, net: Supernet, recipe: Recipe, phase: str, g: int, complete: bool) -> SupernetManifest:
        ds = self.ds
        m = SupernetManifest(
            width_mult=self.w,
            classes=ds.classes,
            dataset_fingerprint=ds.fingerprint,
            preprocessing=dataset_preprocessing(ds.mean, ds.std, ds.crop_pct, self.resolutions),
            resolutions=self.resolutions,
            recipe=recipe.to_dict(),
            phase=phase,
            step=g,
            complete=complete,
            sha256="",
            dataset=ds.describe(),
            init=self.init_source,
        )
        if not self.env.is_main:
            return m
        return write_trained(self.out, _plain_state(net), m)

    def emit(self, event: dict[str, Any]) -> None:
        if self.env.is_main and self.cfg.progress is not None:
            self.cfg.progress(event)

    # ---------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        env = self.env
        state: dict[str, Any] | None = None
        if env.is_main and (self.out / STATE_NAME).is_file():
            state = _read_state(self.out / STATE_NAME)
        if env.distributed:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        net = self.fresh_net() if state is None else None
        if net is not None and self.cfg.init is not None:
            self.init_source = net.weights_source
        if state is not None:
            stored = json.loads(state["request"])
            self.init_source = stored.get("init")
            stored_mismatch = (self.cfg.init is None) != (stored.get("init") is None)
            mine = self.request()
            diff = sorted(k for k in set(mine) | set(stored) if k != "init" and mine.get(k) != stored.get(k))
            if diff or stored_mismatch:
                what = ", ".join(f"{k}: {stored.get(k)!r} there, {mine.get(k)!r} now" for k in diff) or "--init differs"
                raise InvalidInputError(
                    f"{self.out} holds a training with other settings ({what}); rerun with the same options to "
                    "continue it, or choose another -o folder"
                )
            recipe = Recipe.from_dict(json.loads(state["recipe"]))
            net = Supernet.skeleton(self.w, len(self.ds.classes)).to_empty(device="cpu")
            net.load_state_dict(state["model"])
            torch.set_rng_state(state["torch_rng"])
            pi, ps, g = int(state["phase_index"]), int(state["phase_step"]), int(state["global_step"])
            history = json.loads(state["history"])
            elapsed = float(state["elapsed_s"])
        else:
            assert net is not None
            recipe = self.plan(net)
            if env.distributed:
                box = [recipe.to_dict()]
                dist.broadcast_object_list(box, src=0)
                recipe = Recipe.from_dict(box[0])
            pi = ps = g = 0
            history, elapsed = [], 0.0
        assert net is not None
        net = channels_last(net.to(env.device)).train()
        net.weights_source = "training"
        net.bn_convert = sync_bn_converter(env)
        resumed_from = g
        if env.is_main:
            self._trim_log(g)
        self.emit(
            {
                "event": "start",
                "resumed_from_step": g,
                "total_steps": recipe.total_steps,
                "phases": [(p.name, p.steps) for p in recipe.phases],
                "world_size": env.world_size,
            }
        )
        model: nn.Module = SandwichLoss(net)
        if env.distributed:
            model = nn.parallel.DistributedDataParallel(
                model,
                find_unused_parameters=True,
                broadcast_buffers=False,
                device_ids=[env.local_rank] if env.device.startswith("cuda") else None,
            )
        t_start = time.monotonic() - elapsed
        images_done = 0
        t_run = time.monotonic()
        # The ETA weighs the steps left by their phase's MACs (a sandwich step costs ~2 full ones).
        step_work = [p.step_mmacs(recipe.resolutions, recipe.width_mult) for p in recipe.phases]
        work_done = 0.0
        while pi < len(recipe.phases):
            phase = recipe.phases[pi]
            opt, sched = _optimizer(net, phase, recipe)
            if ps == 0:
                if phase.sort_channels:
                    net.sort_channels()
            else:
                opt.load_state_dict(state["optimizer"])  # type: ignore[index]
                sched.load_state_dict(state["scheduler"])  # type: ignore[index]
            while ps < phase.steps:
                x, y, r, rng = _step_inputs(self.ds, recipe, g, env)
                archs = _archs(phase, recipe, r, rng)
                loss, parts = model(x, y, archs, phase.kd_ratio, recipe.label_smoothing)
                opt.zero_grad(set_to_none=False)
                loss.backward()
                for p in net.parameters():  # one rule for every parameter, used or not (OFA zeroes grads)
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                lr = float(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
                if env.distributed:
                    dist.all_reduce(parts)
                    parts = parts / env.world_size
                ps += 1
                g += 1
                images_done += recipe.batch_size
                losses = [float(v) for v in parts]
                if env.is_main:
                    append_jsonl(
                        self.out / LOG_NAME, {"step": g, "phase": phase.name, "r": r, "lr": lr, "loss": losses}
                    )
                elapsed = time.monotonic() - t_start
                work_done += step_work[pi]
                run_s = max(1e-9, time.monotonic() - t_run)
                rate = images_done / run_s
                work_left = (phase.steps - ps) * step_work[pi] + sum(
                    p.steps * w for p, w in zip(recipe.phases[pi + 1 :], step_work[pi + 1 :])
                )
                self.emit(
                    {
                        "event": "step",
                        "phase": phase.name,
                        "epoch": (g - 1) // recipe.steps_per_epoch + 1,
                        "step": g,
                        "total_steps": recipe.total_steps,
                        "loss": sum(losses),
                        "lr": lr,
                        "images_per_s": rate,
                        "eta_s": work_left * run_s / work_done,
                    }
                )
                at_epoch_end = g % recipe.steps_per_epoch == 0
                if ps == phase.steps:
                    break
                if at_epoch_end:
                    history.append(self.evaluate(net, phase.name, g, recipe))
                if g % recipe.checkpoint_every == 0:
                    self.save_state(net, recipe, pi, ps, g, opt, sched, history, elapsed)
            history.append(self.evaluate(net, phase.name, g, recipe))
            pi, ps = pi + 1, 0
            manifest = self.publish(net, recipe, phase.name, g, complete=pi == len(recipe.phases))
            self.save_state(net, recipe, pi, ps, g, None, None, history, time.monotonic() - t_start)
        if env.distributed:
            dist.barrier()
        last = history[-1] if history else {}
        rate = images_done / max(1e-9, time.monotonic() - t_run) if images_done else None
        from ofa2_edge.supernet.manifest import read_manifest

        manifest = read_manifest(self.out) if env.is_main else None
        return {
            "output": str(self.out),
            "complete": True,
            "steps": g,
            "resumed_from_step": resumed_from,
            "phases": [{"name": p.name, "steps": p.steps, "lr": p.lr} for p in recipe.phases],
            "elapsed_s": time.monotonic() - t_start,
            "images_per_s": rate,
            "world_size": env.world_size,
            "largest_val_top1": last.get("largest_top1"),
            "smallest_val_top1": last.get("smallest_top1"),
            "history": history,
            "dataset_fingerprint": self.ds.fingerprint,
            "sha256": manifest.sha256 if manifest else None,
        }

    def evaluate(self, net: Supernet, phase: str, g: int, recipe: Recipe) -> dict[str, Any]:
        r = max(recipe.resolutions)
        rec: dict[str, Any] = {"phase": phase, "step": g, "r": r}
        if self.env.is_main:
            was = net.bn_convert
            net.bn_convert = None
            space = recipe.phases[-1].space((r,), self.w)
            for name, arch in (("largest", space.largest(r)), ("smallest", space.smallest(r))):
                rec[f"{name}_top1"] = evaluate_subnet(net, arch, self.ds, self.recal_idx, self.val_idx)
            net.bn_convert = was
            self.emit({"event": "eval", **rec})
        return rec

    def _trim_log(self, g: int) -> None:
        """Drop log records of steps after the checkpoint we resume from (they are redone)."""
        path = self.out / LOG_NAME
        if not path.is_file():
            return
        keep = [r for r in iter_jsonl(path) if int(r.get("step", 0)) <= g]
        atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in keep))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or continue training) a supernet into `cfg.output`; returns a JSON-able summary.

    Under torchrun the process group is joined from the environment; only rank 0 writes.
    """
    env = init_from_env()
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"-o {out} is a file; give a folder, e.g. supernets/NAME")
    trainer = _Trainer(cfg, env)  # opens and validates the data before anything is written
    lock = exclusive(out / ".lock", f"supernet folder {out}") if env.is_main else contextlib.nullcontext()
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    with lock:
        return trainer.run()


__all__ = ["LOG_NAME", "STATE_NAME", "TrainConfig", "evaluate_subnet", "train"]
