"""Read OFA's JSON network configs (`net.config`, `run.config`) into an `Arch`.

OFA publishes its specialized subnets as a `net.config` (the layer list) and a
`run.config` (the image size). Reading them lets a user start from a released net. Only
MobileNetV3 nets of the w1.0 and w1.2 supernets belong to our space; ProxylessNAS nets
and anything with foreign channels are refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ofa2_edge.core.errors import InvalidArchError
from ofa2_edge.space.arch import EXPAND_CHOICES, MAX_DEPTH, N_STAGES, WIDTH_MULTS, Arch
from ofa2_edge.space.netplan import mid_channels, widths


def _width_of(config: Mapping[str, Any]) -> float:
    stem = config["first_conv"]["out_channels"]
    for w in WIDTH_MULTS:
        wd = widths(w)
        if stem == wd.stem and config["final_expand_layer"]["out_channels"] == wd.final_expand:
            return w
    raise InvalidArchError(
        f"net.config: stem of {stem} channels matches no supported width multiplier "
        f"({', '.join(str(w) for w in WIDTH_MULTS)})"
    )


def arch_from_net_config(config: Mapping[str, Any], image_size: int) -> Arch:
    """The `Arch` of an OFA MobileNetV3 `net.config` dict at `image_size` px."""
    name = config.get("name") if isinstance(config, Mapping) else None
    if name == "ProxylessNASNets":
        raise InvalidArchError(
            "net.config describes a ProxylessNAS network (OFA's ProxylessNAS space); "
            "ofa2-edge works on the OFA-MobileNetV3 space only"
        )
    if name not in ("MobileNetV3", "OFAMobileNetV3"):
        raise InvalidArchError(f"net.config: expected a MobileNetV3 network, got name={name!r}")
    try:
        w = _width_of(config)
        wd = widths(w)
        blocks = [b["mobile_inverted_conv"] for b in config["blocks"][1:]]
        ks: list[int] = []
        e: list[int] = []
        d: list[int] = []
        for stage, out_ch in enumerate(wd.stages):
            stage_blocks = [b for b in blocks if b["out_channels"] == out_ch]
            if not 1 <= len(stage_blocks) <= MAX_DEPTH:
                raise InvalidArchError(f"net.config: stage {stage} has {len(stage_blocks)} blocks of {out_ch} channels")
            d.append(len(stage_blocks))
            for b in stage_blocks:
                expand = _expand_ratio(b)
                ks.append(int(b["kernel_size"]))
                e.append(expand)
            pad = MAX_DEPTH - len(stage_blocks)
            ks += [0] * pad
            e += [0] * pad
        if sum(d) != len(blocks):
            raise InvalidArchError(f"net.config: {len(blocks) - sum(d)} block(s) have channels outside the w{w} space")
    except (KeyError, TypeError) as exc:
        raise InvalidArchError(f"net.config: missing or malformed field {exc}") from exc
    if len(d) != N_STAGES:
        raise InvalidArchError(f"net.config: expected {N_STAGES} stages, found {len(d)}")
    return Arch(ks=tuple(ks), e=tuple(e), d=tuple(d), r=image_size, w=w)


def _expand_ratio(block: Mapping[str, Any]) -> int:
    """The expand ratio of a block; a `mid_channels` that no ratio produces is refused."""
    mid = block.get("mid_channels")
    if mid is None:
        return int(block["expand_ratio"])
    for e in EXPAND_CHOICES:
        if mid_channels(block["in_channels"], e) == mid:
            return e
    raise InvalidArchError(
        f"net.config: block with {block['in_channels']} -> {mid} channels has no expand ratio in "
        f"{', '.join(map(str, EXPAND_CHOICES))}"
    )


def load_net_config(path: str | Path, image_size: int | None = None) -> Arch:
    """Read `net.config` and its sibling `run.config` (for the image size) into an `Arch`."""
    path = Path(path)
    if path.is_dir():
        path = path / "net.config"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArchError(f"{path}: no such file") from exc
    except (OSError, ValueError) as exc:
        raise InvalidArchError(f"{path}: not a readable JSON net.config ({exc})") from exc
    if image_size is None:
        run_config = path.with_name("run.config")
        try:
            image_size = int(json.loads(run_config.read_text())["image_size"])
        except FileNotFoundError as exc:
            raise InvalidArchError(
                f"{path}: no run.config beside it to give the image size; pass the resolution explicitly"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArchError(f"{run_config}: cannot read image_size ({exc})") from exc
    return arch_from_net_config(config, image_size)
