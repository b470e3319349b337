"""One call from an arch to a verified, cached model file: :func:`export_subnet`.

    model = export_subnet(arch, "onnx")                       # random weights (latency work), user cache
    model = export_subnet(arch, "tflite-int8", supernet=net, cache=ExportCache(tmp))

Without a supernet the weights are ``Supernet.random(arch.w, seed=0)`` (built once per
process and reused), and the subnet's BatchNorm statistics are recalibrated on seeded
noise so its activations are O(1) and the parity checks mean something. With a
checkpoint's supernet the statistics stored in the supernet are kept unless asked
otherwise. A subnet prepared by the caller (e.g. BN recalibrated on an image folder for a
bundle) goes through :func:`export_module`, keyed by a hash of its tensors. One layer of
the plan (an entry of a block latency table) goes through :func:`export_layer`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import torch

from exporters.cache import ExportCache
from exporters.formats import export_format
from exporters.onnx_compat import DEFAULT_TARGET, OnnxTarget
from exporters.records import BuiltModel, ExportedModel
from exporters.representative import RepresentativeSet
from ofa2_edge.core.errors import ExportError, InvalidArchError, InvalidInputError
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.netplan import Layer
from ofa2_edge.supernet import StaticSubnet, Supernet, noise_batches, recalibrate_bn
from ofa2_edge.supernet.layer import extract_layer, layer_id

#: BN statistics recipes of `export_subnet`.
BN_RECIPES = ("auto", "noise", "supernet")
#: Formats a single layer exports to (int8 would need a representative set of feature maps).
LAYER_FORMATS = ("onnx",)
#: Seed and size of the noise batch that recalibrates random-weight subnets.
BN_NOISE_SEED = 0
BN_NOISE_IMAGES = 4
RANDOM_WEIGHTS_SEED = 0


@functools.lru_cache(maxsize=2)
def random_supernet(width_mult: float, seed: int = RANDOM_WEIGHTS_SEED) -> Supernet:
    """`Supernet.random(width_mult, seed)`, built once per process (0.2-0.4 s each time otherwise).

    Export never mutates it (`extract` copies the weights out), so sharing it is safe.
    """
    return Supernet.random(width_mult, seed)


def _check_format(fmt: str) -> str:
    export_format(fmt).require()
    return fmt


def _export(
    subnet_key: dict[str, Any],
    make_subnet: Callable[[], StaticSubnet],
    fmt: str,
    cache: ExportCache,
    representative: RepresentativeSet | None,
    onnx_target: OnnxTarget | None = None,
) -> ExportedModel:
    spec = export_format(fmt)
    if spec.derive is not None and spec.base is not None:
        base = _export(subnet_key, make_subnet, spec.base, cache, None, onnx_target)
        rep = representative or RepresentativeSet()
        key_doc = {
            **subnet_key,
            "format": fmt,
            "from": {spec.base: base.cache_key},
            "representative_set": rep.describe(),
            "versions": spec.versions(),
        }

        def derive() -> BuiltModel:
            data = base.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != base.sha256:
                raise ExportError(f"{base.path} changed after it was verified; export again")
            return spec.derive(data, base.metadata, rep)  # type: ignore[misc]

        return cache.get_or_build(key_doc, derive)

    key_doc = {**subnet_key, "format": fmt, "versions": spec.versions()}
    if fmt == "onnx" and onnx_target is not None and onnx_target != DEFAULT_TARGET:
        # another file for another device's onnxruntime: its own cache entry (the default keeps its old key)
        from exporters.onnx_export import build_onnx

        key_doc["onnx_target"] = onnx_target.to_dict()
        return cache.get_or_build(key_doc, lambda: build_onnx(make_subnet(), onnx_target))
    return cache.get_or_build(key_doc, lambda: spec.build(make_subnet()))  # type: ignore[misc]


def export_subnet(
    arch: Arch,
    fmt: str = "onnx",
    supernet: Supernet | None = None,
    cache: ExportCache | None = None,
    *,
    bn: str = "auto",
    representative: RepresentativeSet | None = None,
    onnx_target: OnnxTarget | None = None,
) -> ExportedModel:
    """Export `arch` to `fmt` (``onnx``, ``tflite``, ``tflite-int8``), from the cache when it is there.

    `onnx_target` (:func:`exporters.onnx_compat.onnx_target` of the device's onnxruntime) sets
    the ONNX IR version and opset; a non-default one is part of the cache key.

    `supernet` None means seeded random weights (``random:0``: latency work only). `bn`
    chooses the BatchNorm statistics: ``noise`` (recalibrated on seeded noise),
    ``supernet`` (as stored in the supernet), or ``auto`` (noise for random weights,
    supernet for a checkpoint). `representative` is the int8 calibration set (seeded noise
    by default). Raises :class:`ExportError` if the export fails its parity check; nothing
    is cached then.
    """
    if not isinstance(arch, Arch):
        raise InvalidArchError(f"export_subnet: expected an Arch, got {type(arch).__name__}")
    _check_format(fmt)
    if bn not in BN_RECIPES:
        raise InvalidInputError(f"bn: {bn!r} is not a BN statistics recipe; choose from {', '.join(BN_RECIPES)}")
    net = supernet if supernet is not None else random_supernet(arch.w)
    if net.width_mult != arch.w:
        raise InvalidArchError(
            f"arch {arch.id} is a w{arch.w} subnet but the supernet is w{net.width_mult}; load a w{arch.w} checkpoint"
        )
    recipe = bn if bn != "auto" else ("noise" if net.weights_source.startswith("random:") else "supernet")
    bn_key: dict[str, Any] = {"recipe": recipe}
    if recipe == "noise":
        bn_key.update(seed=BN_NOISE_SEED, images=BN_NOISE_IMAGES)

    def make_subnet() -> StaticSubnet:
        subnet = net.extract(arch)
        if recipe == "noise":
            recalibrate_bn(
                subnet,
                noise_batches(arch.r, BN_NOISE_SEED, batch_size=BN_NOISE_IMAGES),
                source=f"noise:{BN_NOISE_SEED}",
            )
        return subnet

    subnet_key = {"arch_id": arch.id, "arch": arch.to_dict(), "weights_source": net.weights_source, "bn_stats": bn_key}
    return _export(subnet_key, make_subnet, fmt, cache or ExportCache.default(), representative, onnx_target)


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes, bytes): what its outputs depend on."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_module(
    subnet: StaticSubnet,
    fmt: str = "onnx",
    cache: ExportCache | None = None,
    *,
    representative: RepresentativeSet | None = None,
    onnx_target: OnnxTarget | None = None,
) -> ExportedModel:
    """Export a subnet the caller prepared (e.g. BN recalibrated on images), cached by its tensors' hash.

    Its `weights_source` and `bn_stats_source` are recorded as they are; the cache key
    adds the hash of every tensor, so two differently calibrated copies never collide.
    """
    if not isinstance(subnet, StaticSubnet):
        raise InvalidInputError(f"export_module: expected a StaticSubnet, got {type(subnet).__name__}")
    _check_format(fmt)
    subnet.eval()
    subnet_key = {
        "arch_id": subnet.arch.id,
        "arch": subnet.arch.to_dict(),
        "weights_source": subnet.weights_source,
        "bn_stats": {"recipe": "given", "source": subnet.bn_stats_source},
        "state_sha256": state_digest(subnet),
    }
    return _export(subnet_key, lambda: subnet, fmt, cache or ExportCache.default(), representative, onnx_target)


def export_layer(
    layer: Layer,
    w: float,
    fmt: str = "onnx",
    supernet: Supernet | None = None,
    cache: ExportCache | None = None,
) -> ExportedModel:
    """Export one layer of the w`w` plan on its own (a block lookup-table entry), cached.

    Its weights are the supernet's (seeded random ones by default, as :func:`export_subnet`
    uses), and with random weights its BatchNorm statistics are recalibrated on seeded
    noise *of the layer's input shape*, so its outputs are O(1) and the parity check means
    something. (Latency does not depend on the values, as long as they are finite and not
    denormal; runtimes fold BN into the convolution either way.) Raises
    :class:`ExportError` if the export fails its parity check; nothing is cached then.
    """
    if not isinstance(layer, Layer):
        raise InvalidInputError(f"export_layer: expected a netplan Layer, got {type(layer).__name__}")
    if fmt not in LAYER_FORMATS:
        raise InvalidInputError(
            f"a single layer exports to {', '.join(LAYER_FORMATS)}, not {fmt!r} "
            "(block tables are measured in ONNX runtimes)"
        )
    net = supernet if supernet is not None else random_supernet(w)
    if net.width_mult != w:
        raise InvalidArchError(f"the layer is of the w{w} network but the supernet is w{net.width_mult}")
    recalibrate = net.weights_source.startswith("random:")
    bn_key: dict[str, Any] = {"recipe": "supernet"}
    if recalibrate:
        bn_key = {"recipe": "noise", "seed": BN_NOISE_SEED, "images": BN_NOISE_IMAGES}

    def build() -> BuiltModel:
        from exporters.onnx_export import build_layer_onnx

        model = extract_layer(net, layer)
        if recalibrate and model.has_batch_norm:
            _, channels, size, _ = model.input_shape
            batches = noise_batches(size, BN_NOISE_SEED, batch_size=BN_NOISE_IMAGES, channels=channels)
            recalibrate_bn(model, batches, channels=channels)
            model.bn_stats_source = f"noise:{BN_NOISE_SEED} ({BN_NOISE_IMAGES} maps)"
        return build_layer_onnx(model)

    key_doc = {
        "layer_id": layer_id(layer),
        "layer": layer.lut_key(),
        "w": w,
        "weights_source": net.weights_source,
        "bn_stats": bn_key,
        "format": fmt,
        "versions": export_format(fmt).versions(),
    }
    return (cache or ExportCache.default()).get_or_build(key_doc, build)
