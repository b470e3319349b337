"""Per-device model bundles: the model, a manifest of every fact about it, and checksums.

A bundle is a folder `<device>-<arch id>/` (and the same as `.tar.gz`) holding the model
in the device's runtime format, `manifest.json`, optional `labels.txt` and `SHA256SUMS`.
The manifest says what the net is (arch, MACs), how accurate it is and by whose account,
how fast it is predicted and (after `--verify`) measured to be on the device, how to feed
it, and where its weights come from: a bundle with random weights is `latency-only`.
Bundles are built in a staging folder and renamed into place, so a failed build leaves
nothing; `check_bundle` re-verifies every file against both the manifest and SHA256SUMS.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporters.records import ExportedModel
from exporters.tensorrt import TensorRTBuildSpec
from ofa2_edge import __version__
from ofa2_edge.space.costs import arch_costs
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import atomic_write_text, check_schema, sha256_file, write_json
from ofa2_edge.space.arch import Arch
from ofa2_edge.core.tarsafe import pack_folder, unpack_folder

MANIFEST_SCHEMA = "ofa2-edge/bundle-manifest"
MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
TENSORRT_SPEC = "tensorrt_build.json"
LABELS = "labels.txt"


@dataclass(frozen=True)
class BundleFacts:
    """What the host knows about a pick beyond the model file itself."""

    device: dict[str, Any]  # key, fingerprint, runtime, runtime_version, threads
    accuracy: dict[str, Any] | None  # top1_pct, source
    predicted_latency: dict[str, Any] | None  # latency_ms, lower_ms, upper_ms, coverage, surrogate
    run: dict[str, Any] | None  # id, path


def bundle_name(device_key: str, arch_id: str) -> str:
    return f"{device_key}-{arch_id}"


def _embed_onnx_facts(src: Path, dest: Path, facts: dict[str, Any]) -> None:
    """Copy an ONNX model, adding the bundle's key facts to its own `metadata_props`."""
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props["ofa2_edge_bundle"] = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    onnx.helper.set_model_props(model, props)
    dest.write_bytes(model.SerializeToString())


def _file_entry(path: Path) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _write_sums(folder: Path, names: list[str]) -> None:
    lines = [f"{sha256_file(folder / n)}  {n}\n" for n in sorted(names)]
    atomic_write_text(folder / SUMS, "".join(lines))


def read_labels(path: str | Path, n_classes: int) -> list[str]:
    """Class names, one per line; their count must match the model's outputs."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if len(lines) != n_classes:
        raise InvalidInputError(f"{path}: {len(lines)} labels, but the model has {n_classes} classes")
    return lines


def build_bundle(
    out_root: str | Path,
    model: ExportedModel,
    facts: BundleFacts,
    tensorrt: TensorRTBuildSpec | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Write the bundle folder and its .tar.gz under `out_root`; return the folder."""
    arch = Arch.from_dict(model.metadata["arch"])
    name = bundle_name(facts.device["key"], arch.id)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_root))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from the rest of the team
    try:
        model_name = f"model{model.path.suffix}"
        key_facts = {
            "device": facts.device["key"],
            "top1_pct": (facts.accuracy or {}).get("top1_pct"),
            "predicted_latency_ms": (facts.predicted_latency or {}).get("latency_ms"),
            "latency_only": model.latency_only,
        }
        if model.format == "onnx":
            _embed_onnx_facts(model.path, staging / model_name, key_facts)
        else:
            shutil.copyfile(model.path, staging / model_name)
        files = [model_name]
        if tensorrt is not None:
            spec = {**tensorrt.to_dict(), "onnx_file": model_name, "onnx_sha256": sha256_file(staging / model_name)}
            atomic_write_text(staging / TENSORRT_SPEC, json.dumps(spec, indent=2) + "\n")
            files.append(TENSORRT_SPEC)
        if labels is not None:
            if len(labels) != model.outputs[0].shape[-1]:
                raise InvalidInputError(f"{len(labels)} labels for a model of {model.outputs[0].shape[-1]} classes")
            atomic_write_text(staging / LABELS, "\n".join(labels) + "\n")
            files.append(LABELS)
        (inp,) = model.inputs
        manifest = {
            "toolkit": {"name": "ofa2-edge", "version": __version__},
            "created_at": datetime.now(timezone.utc).isoformat(),
            "status": "latency-only" if model.latency_only else "deployable",
            "arch": {"id": arch.id, **arch.to_dict(), **arch_costs([arch])[0]},
            "accuracy": facts.accuracy,
            "latency": {"predicted": facts.predicted_latency, "measured": None},
            "device": facts.device,
            "format": model.format,
            "input": inp.to_dict(),
            "output": model.outputs[0].to_dict(),
            "preprocessing": model.metadata["preprocessing"],
            "weights": {
                "source": model.metadata["weights_source"],
                "bn_stats_source": model.metadata["bn_stats_source"],
                "latency_only": model.latency_only,
            },
            "export": {"parity": model.parity, "exporter": model.metadata.get("exporter")},
            "run": facts.run,
            "files": [_file_entry(staging / f) for f in files],
        }
        write_json(staging / MANIFEST, MANIFEST_SCHEMA, MANIFEST_VERSION, manifest)
        _write_sums(staging, [*files, MANIFEST])
        target = out_root / name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pack_folder(target, out_root / f"{name}.tar.gz", arcname=name)
    return target


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SchemaError(f"{folder}: no {MANIFEST}; not an ofa2-edge bundle") from exc
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: not readable JSON ({exc})") from exc
    doc = check_schema(doc, MANIFEST_SCHEMA, [MANIFEST_VERSION], str(path))
    for field in ("arch", "device", "files", "input", "preprocessing", "weights", "latency"):
        if field not in doc:
            raise SchemaError(f"{path}: manifest field {field!r} is missing")
    return doc


def _check_folder(folder: Path) -> dict[str, Any]:
    problems: list[str] = []
    sums_path = folder / SUMS
    if not sums_path.is_file():
        raise SchemaError(f"{folder}: no {SUMS}")
    listed: dict[str, str] = {}
    for i, line in enumerate(sums_path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise SchemaError(f"{sums_path}:{i}: malformed line {line!r}")
        listed[parts[1]] = parts[0]
    manifest = read_manifest(folder)
    for entry in manifest["files"]:
        if listed.get(entry["name"]) != entry["sha256"]:
            problems.append(f"{entry['name']}: manifest and {SUMS} disagree")
    present = {p.name for p in folder.iterdir()} - {SUMS}
    for name in sorted(present - set(listed)):
        problems.append(f"{name}: not listed in {SUMS}")
    for name, expected in sorted(listed.items()):
        path = folder / name
        if "/" in name or not path.is_file():
            problems.append(f"{name}: listed but missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: sha256 mismatch (modified or corrupted)")
    if problems:
        raise SchemaError(f"{folder}: bundle check failed: " + "; ".join(problems))
    return manifest


def check_bundle(path: str | Path) -> dict[str, Any]:
    """Verify a bundle folder or .tar.gz: schema, every checksum, no extra or missing file.

    Archives are unpacked into a temporary folder with member checks (no absolute paths,
    no `..`, no links) before any file is read.
    """
    path = Path(path)
    if path.is_dir():
        return _check_folder(path)
    if path.name.endswith(".tar.gz") and path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            name = unpack_folder(path, tmp)
            return _check_folder(Path(tmp) / name)
    raise InvalidInputError(f"{path}: expected a bundle folder or a .tar.gz")


def record_measurement(folder: str | Path, measured: dict[str, Any]) -> dict[str, Any]:
    """Write an on-device measurement into the manifest, then refresh SHA256SUMS and the archive."""
    folder = Path(folder)
    manifest = _check_folder(folder)  # never bless a bundle that was modified
    manifest["latency"]["measured"] = measured
    payload = {k: v for k, v in manifest.items() if k not in ("schema", "schema_version")}
    write_json(folder / MANIFEST, MANIFEST_SCHEMA, MANIFEST_VERSION, payload)
    _write_sums(folder, [e["name"] for e in manifest["files"]] + [MANIFEST])
    pack_folder(folder, folder.parent / f"{folder.name}.tar.gz", arcname=folder.name)
    return manifest


def model_file(folder: str | Path, manifest: dict[str, Any]) -> Path:
    name = next(e["name"] for e in manifest["files"] if e["name"].startswith("model."))
    return Path(folder) / name
