"""Load an OFA-MobileNetV3 supernet checkpoint, all or nothing.

OFA's released files (``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``) hold
``{"state_dict": ...}``; a bare state_dict is accepted too, and so is a supernet trained
by ``ofa2-edge train`` (a ``supernets/<NAME>/`` folder or its ``supernet.pth``): the same
layout with a classifier of any size, plus a ``manifest.json`` (see
:mod:`ofa2_edge.supernet.manifest`) that :func:`load_supernet` attaches to the network. They are read with
``torch.load(weights_only=True)``, which never runs pickled code. Files saved before OFA
renamed its blocks' ``mobile_inverted_conv`` to ``conv`` are read under the new names, as
OFA's own `load_state_dict` does. Every key, shape, dtype and value is checked against the
network before anything is built; any mismatch raises one :class:`CheckpointError` that
names what is wrong and what to do, and no partially loaded model ever escapes.
"""

from __future__ import annotations

import hashlib
import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch

from ofa2_edge.core.assets import SUPERNET_W12, search_dirs
from ofa2_edge.core.errors import CheckpointError
from ofa2_edge.space.arch import DEPTH_CHOICES, EXPAND_CHOICES, KERNEL_CHOICES, WIDTH_MULTS
from ofa2_edge.space.netplan import N_CLASSES
from ofa2_edge.supernet.manifest import (
    WEIGHTS_NAME,
    SupernetManifest,
    check_manifest_matches,
    read_manifest,
)
from ofa2_edge.supernet.network import Supernet, check_width_mult

__all__ = ["SupernetManifest", "expected_shapes", "find_checkpoint", "load_supernet", "read_manifest"]
CLASSIFIER_KEY = "classifier.linear.weight"

#: OFA renamed `blocks.N.mobile_inverted_conv.` to `blocks.N.conv.` in 2020; older files use the former.
LEGACY_KEY_RENAMES = ((".mobile_inverted_conv.", ".conv."),)
#: A BN layer's batch counter does not change any output; a file without it is still complete.
OPTIONAL_SUFFIX = ".num_batches_tracked"
_SHOWN = 5
#: OFA's released checkpoint names: given bare, they are also looked up as `ofa_nets/<name>` in
#: the assets folders, where `ofa2-edge assets fetch --supernet` puts the w1.2 one.
OFA_CHECKPOINT_NAME = re.compile(r"ofa_mbv3_d234_e346_k357_w1\.[02]")


@lru_cache(maxsize=None)
def expected_shapes(width_mult: float, n_classes: int = N_CLASSES) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the w`width_mult` supernet with its shape (OFA's names)."""
    return {k: tuple(v.shape) for k, v in Supernet.skeleton(width_mult, n_classes).state_dict().items()}


def _n_classes(state: Mapping[str, Any]) -> int:
    """The class count of a state_dict's classifier (1000 when it cannot tell)."""
    w = state.get(CLASSIFIER_KEY)
    if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[0] >= 2:
        return int(w.shape[0])
    return N_CLASSES


def _network_name(w: float) -> str:
    ks, e, d = ("".join(str(v) for v in c) for c in (KERNEL_CHOICES, EXPAND_CHOICES, DEPTH_CHOICES))
    return f"OFAMobileNetV3 w{w} (ofa_mbv3_d{d}_e{e}_k{ks}_w{w})"


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {title} ({len(items)}): {shown}{more}"


def find_checkpoint(source: str | Path, assets_dir: str | Path | None = None) -> Path:
    """`source` as a path; a bare OFA checkpoint name (``ofa_mbv3_d234_e346_k357_w1.2``) that
    is not a file here is looked up as `ofa_nets/<name>` in --assets, $OFA2_EDGE_ASSETS and
    the user cache, in that order."""
    path = Path(source)
    if path.is_dir() and (path / WEIGHTS_NAME).is_file():
        return path / WEIGHTS_NAME
    if path.exists() or len(path.parts) != 1 or not OFA_CHECKPOINT_NAME.fullmatch(path.name):
        return path
    for _, folder in search_dirs(assets_dir):
        if folder is not None and (folder / "ofa_nets" / path.name).is_file():
            return folder / "ofa_nets" / path.name
    return path


def _not_found(path: Path) -> str:
    if len(path.parts) != 1 or not OFA_CHECKPOINT_NAME.fullmatch(path.name):
        return f"checkpoint {path} not found; pass the path of a downloaded supernet checkpoint"
    looked = "; ".join(f"{label}: {folder / 'ofa_nets' if folder else '(not set)'}" for label, folder in search_dirs())
    fetch = (
        "fetch it with `ofa2-edge assets fetch --supernet --supernet-sha256 SHA256` (OFA publishes no checksum "
        "for its checkpoints: give the sha256 of a copy you trust; nothing unverified is kept), or "
        if path.name == Path(SUPERNET_W12.relpath).name
        else ""
    )
    return (
        f"checkpoint {path} not found: not a file in the current folder, nor in the assets folders ({looked}); "
        f"{fetch}pass the path of a downloaded checkpoint"
    )


def _read_file(path: Path) -> tuple[Any, str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(_not_found(path)) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    source = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unusable"
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            problem = (
                f"it holds Python objects besides tensors (e.g. {found.group(1)}), which are not unpickled "
                "for safety; re-save only the weights, e.g. torch.save({'state_dict': net.state_dict()}, path)"
            )
        else:
            problem = (
                f"it is not a torch checkpoint, or it is truncated or corrupt ({type(exc).__name__}); "
                "download it again and compare its sha256 with the published one"
            )
        raise CheckpointError(f"cannot load checkpoint {path}: {problem}") from exc
    return obj, source


def _state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """A content hash of an in-memory state_dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "state_dict-sha256:" + h.hexdigest()


def _unwrap(obj: Any, where: str) -> dict[str, Any]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where} holds a {type(obj).__name__}, not a state_dict: expected a mapping of parameter names to "
            "tensors, or {'state_dict': ...} as in OFA's released checkpoints"
        )
    state: dict[str, Any] = {}
    for key, value in obj.items():
        name = str(key)
        for old, new in LEGACY_KEY_RENAMES:
            name = name.replace(old, new)
        state[name] = value
    return state


def _problems(state: Mapping[str, Any], width_mult: float) -> list[str]:
    """Every way `state` fails to be a complete w`width_mult` supernet; empty when it fits."""
    expected = expected_shapes(width_mult, _n_classes(state))
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    not_tensor = [
        f"{k} ({type(v).__name__})" for k, v in state.items() if k in expected and not isinstance(v, torch.Tensor)
    ]
    tensors = {k: v for k, v in state.items() if k in expected and isinstance(v, torch.Tensor)}
    shapes = [f"{k} {tuple(v.shape)} vs {expected[k]}" for k, v in tensors.items() if tuple(v.shape) != expected[k]]
    dtypes = [
        f"{k} ({v.dtype})"
        for k, v in tensors.items()
        if (k.endswith(OPTIONAL_SUFFIX) and v.is_floating_point())
        or (not k.endswith(OPTIONAL_SUFFIX) and not v.is_floating_point())
    ]
    nonfinite = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    out = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("values that are not tensors", not_tensor),
        ("shape mismatches (checkpoint vs network)", shapes),
        ("tensors of the wrong dtype", dtypes),
        ("tensors with NaN or infinite values", nonfinite),
    ):
        if items:
            out.append(_listing(title, items))
    return out


def _to_module_tensors(state: Mapping[str, torch.Tensor], width_mult: float, copy: bool) -> dict[str, torch.Tensor]:
    tensors = {}
    for key in expected_shapes(width_mult, _n_classes(state)):
        if key in state:
            t = state[key].detach()
            t = t.to(torch.int64) if key.endswith(OPTIONAL_SUFFIX) else t.to(torch.float32)
            tensors[key] = t.clone(memory_format=torch.contiguous_format) if copy else t.contiguous()
        else:  # only optional keys can be absent here
            tensors[key] = torch.zeros((), dtype=torch.int64)
    return tensors


def load_supernet(source: str | Path | Mapping[str, Any], width_mult: float | None = None) -> Supernet:
    """The supernet of a checkpoint file (path), a trained supernet's folder, or an
    in-memory state_dict, in eval mode.

    Its `weights_source` is ``sha256:<hex of the file>`` for a file and
    ``state_dict-sha256:<hex of the tensors>`` for a mapping. The tensors are copied out of
    a mapping, so changing the mapping later does not change the supernet. The classifier
    may have any number of classes. A trained supernet's manifest is checked against the
    weights (sha256, classes, width) and attached as `net.manifest`; `width_mult` defaults
    to the manifest's, else 1.2.
    """
    manifest: SupernetManifest | None = None
    if isinstance(source, (str, Path)):
        path = find_checkpoint(source)
        try:
            manifest = read_manifest(path) if path.name == WEIGHTS_NAME else None
        except Exception as exc:  # SchemaError: an unreadable manifest makes the folder unusable
            raise CheckpointError(f"{path.parent / 'manifest.json'}: {exc}") from exc
    if width_mult is None:
        width_mult = manifest.width_mult if manifest is not None else 1.2
    w = check_width_mult(width_mult)
    if isinstance(source, (str, Path)):
        obj, weights_source = _read_file(path)
        if manifest is not None:
            check_manifest_matches(manifest, weights_source, path)
        where = f"checkpoint {path}"
        state, copy = _unwrap(obj, where), False
    elif isinstance(source, Mapping):
        where = "the state_dict"
        state, copy = _unwrap(source, where), True
        weights_source = ""
    else:
        raise CheckpointError(f"load_supernet: expected a checkpoint path or a state_dict, got {type(source).__name__}")

    problems = _problems(state, w)
    if problems:
        hint = f"use an official ofa_mbv3_d234_e346_k357_w{w} checkpoint, or a state_dict saved from that network"
        for other in WIDTH_MULTS:
            if other != w and not _problems(state, other):
                hint = f"it is a complete w{other} supernet: load it with width_mult={other}"
        raise CheckpointError(
            f"{where} does not fit {_network_name(w)}:\n" + "\n".join(problems) + f"\nWhat to do: {hint}."
        )
    n_classes = _n_classes(state)
    if manifest is not None and (manifest.n_classes != n_classes or manifest.width_mult != w):
        raise CheckpointError(
            f"{where} has {n_classes} classes at w{w}, its manifest says {manifest.n_classes} classes at "
            f"w{manifest.width_mult}; the folder was changed by hand: retrain, or restore both files together"
        )
    tensors = _to_module_tensors(state, w, copy)
    net = Supernet.skeleton(w, n_classes)
    net.load_state_dict(tensors, strict=True, assign=True)
    net.weights_source = weights_source or _state_hash(tensors)
    net.manifest = manifest
    return net.eval()
