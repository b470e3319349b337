"""`ofa2-edge train`: the elastic supernet trained on your data (also `torchrun ... -m ofa2_edge.train`)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text

from ofa2_edge.cli.common import JSON_OPTION, err_console, parse_ints
from ofa2_edge.core.errors import Ofa2EdgeError


def _fmt_s(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Progress:
    """One line per few seconds on stderr: phase, epoch, step, loss, speed, ETA; every evaluation."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "start":
            phases = ", ".join(f"{n} {s}" for n, s in ev["phases"])
            again = f", resuming at step {ev['resumed_from_step']}" if ev["resumed_from_step"] else ""
            err_console.print(f"training {ev['total_steps']} steps ({phases}) on {ev['world_size']} process(es){again}")
        elif kind == "eval":
            err_console.print(
                f"  [{ev['phase']}] step {ev['step']}: val top-1 largest {ev['largest_top1']:.2f} %, "
                f"smallest {ev['smallest_top1']:.2f} % (r={ev['r']})",
                markup=False,
                highlight=False,
            )
        elif kind == "step" and (time.monotonic() - self.last > 5 or ev["step"] == ev["total_steps"]):
            self.last = time.monotonic()
            err_console.print(
                f"  [{ev['phase']}] epoch {ev['epoch']} step {ev['step']}/{ev['total_steps']} loss {ev['loss']:.4f} "
                f"lr {ev['lr']:.4f} {ev['images_per_s']:.0f} img/s ETA {_fmt_s(ev['eta_s'])}",
                highlight=False,
                markup=False,
            )


def train(
    data: Path = typer.Option(
        ..., "--data", help="Dataset folder: MNIST-style IDX files, or one sub-folder per class."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Supernet folder to write, e.g. supernets/NAME."),
    width: float = typer.Option(1.2, "--width", help="Width multiplier of the supernet (1.0 or 1.2)."),
    init: Optional[str] = typer.Option(
        None,
        "--init",
        help="Start from these supernet weights (OFA's ImageNet checkpoint); the classifier is replaced.",
    ),
    resolutions: Optional[str] = typer.Option(
        None, "--resolutions", help="Trained input sizes, e.g. 32,40,48 (>= 32; default 32,40,48 for images < 64 px)."
    ),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs over the train part, shared by the phases."),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", help="Instead of --epochs: plan the phases to fit this many minutes (measured steps)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the data split, order, augmentation and subnet sampling."),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch (split over torchrun's processes)."),
    lr: float = typer.Option(0.05, "--lr", help="Full-phase SGD learning rate at batch 64 (scaled with the batch)."),
    phases: Optional[str] = typer.Option(
        None,
        "--phases",
        help="Train only these phases, in order (default full,kernel,depth,expand). 'full' alone trains the "
        "largest network by itself: a static baseline whose other subnets are untrained.",
    ),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between resume checkpoints."),
    eval_images: int = typer.Option(1000, "--eval-images", help="Validation images for the progress accuracy."),
    recal_images: int = typer.Option(
        500, "--recal-images", help="Train images for BN recalibration before each evaluation."
    ),
    data_format: Optional[str] = typer.Option(None, "--format", help="idx or imagefolder (detected when omitted)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Train the elastic OFA supernet on your data: full net, then elastic kernel, depth, expand
    (sandwich rule, in-place distillation). Rerun the same command to continue after a crash."""
    from ofa2_edge.data import DataSpec
    from ofa2_edge.train import TrainConfig
    from ofa2_edge.train import train as run_training

    spec = DataSpec(data, format=data_format, seed=seed)
    cfg = TrainConfig(
        data=spec,
        output=output,
        width_mult=width,
        init=init,
        resolutions=parse_ints(resolutions, "--resolutions"),
        epochs=epochs,
        max_minutes=max_minutes,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        **({"phases": tuple(p.strip() for p in phases.split(","))} if phases else {}),
        checkpoint_every=checkpoint_every,
        eval_images=eval_images,
        recal_images=recal_images,
        progress=_Progress(),
    )
    summary = run_training(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        err_console.print(
            f"supernet written to {summary['output']} ({summary['steps']} steps); val top-1 largest "
            f"{summary['largest_val_top1']:.2f} %, smallest {summary['smallest_val_top1']:.2f} %"
        )


def run_standalone(argv: list[str] | None = None) -> int:
    """`python -m ofa2_edge.train`: the train command alone, with the CLI's exit codes."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    try:
        typer.main.get_command(app)(args=argv if argv is not None else sys.argv[1:], prog_name="ofa2_edge.train")
    except Ofa2EdgeError as exc:
        err_console.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
