"""The facts every exported model carries: what net it is, how to feed it, where its numbers come from.

The same dict goes into ONNX `metadata_props` (one JSON-encoded value per key, so any
reader can `json.loads` every value), into every sidecar, and later into bundle
manifests. It holds only what the export inputs determine (no timestamps, no host
facts), so the same subnet and weights always give a byte-identical model file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from exporters.records import TensorSpec
from ofa2_edge import __version__
from ofa2_edge.core.errors import SchemaError
from ofa2_edge.supernet import StaticSubnet
from ofa2_edge.supernet.layer import LayerNet

METADATA_VERSION = 1
#: Keys written into every model's metadata, in this order.
METADATA_KEYS = (
    "ofa2_edge_metadata_version",
    "arch_id",
    "arch",
    "resolution",
    "input",
    "output",
    "preprocessing",
    "weights_source",
    "bn_stats_source",
    "latency_only",
    "toolkit",
    "exporter",
)


def model_metadata(
    subnet: StaticSubnet,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    exporter: Mapping[str, Any],
) -> dict[str, Any]:
    """The metadata dict of `subnet` exported with `exporter` (name, versions, options)."""
    (inp,) = inputs
    (out,) = outputs
    return {
        "ofa2_edge_metadata_version": METADATA_VERSION,
        "arch_id": subnet.arch.id,
        "arch": subnet.arch.to_dict(),
        "resolution": subnet.arch.r,
        "input": inp.to_dict(),
        "output": out.to_dict(),
        "preprocessing": subnet.preprocessing.to_dict(),
        "weights_source": subnet.weights_source,
        "bn_stats_source": subnet.bn_stats_source,
        "latency_only": subnet.weights_source.startswith("random:"),
        "toolkit": {"name": "ofa2-edge", "version": __version__},
        "exporter": dict(exporter),
    }


def layer_metadata(
    net: LayerNet,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    exporter: Mapping[str, Any],
) -> dict[str, Any]:
    """The metadata of one exported plan layer (a block-table entry), under the same keys.

    `arch_id` is the layer's id (``l-...``) and `arch` names the layer by its lookup-table
    key; there is no preprocessing (its input is a feature map) and it is latency-only.
    """
    (inp,) = inputs
    (out,) = outputs
    return {
        "ofa2_edge_metadata_version": METADATA_VERSION,
        "arch_id": net.id,
        "arch": {"layer": net.layer.lut_key(), "w": net.w},
        "resolution": None,
        "input": inp.to_dict(),
        "output": out.to_dict(),
        "preprocessing": None,
        "weights_source": net.weights_source,
        "bn_stats_source": net.bn_stats_source,
        "latency_only": True,
        "toolkit": {"name": "ofa2-edge", "version": __version__},
        "exporter": dict(exporter),
    }


def to_props(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Metadata as string key/values (ONNX `metadata_props`): each value JSON-encoded."""
    return {key: json.dumps(metadata[key], sort_keys=True, separators=(",", ":")) for key in METADATA_KEYS}


def from_props(props: Mapping[str, str], where: str) -> dict[str, Any]:
    """Read back what :func:`to_props` wrote; refuse unknown metadata versions."""
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise SchemaError(f"{where}: not an ofa2-edge export (metadata key(s) missing: {', '.join(missing)})")
    try:
        out = {key: json.loads(props[key]) for key in METADATA_KEYS}
    except ValueError as exc:
        raise SchemaError(f"{where}: a metadata value is not valid JSON ({exc})") from exc
    if out["ofa2_edge_metadata_version"] != METADATA_VERSION:
        raise SchemaError(
            f"{where}: metadata version {out['ofa2_edge_metadata_version']!r} is not supported by this ofa2-edge "
            f"(known: {METADATA_VERSION}); upgrade ofa2-edge or export again"
        )
    return out
