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
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from device_agents.records import DTYPES
from exporters.formats import format_names
from exporters.records import ExportedModel
from exporters.tensorrt import TensorRTBuildSpec
from ofa2_edge import __version__
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import atomic_write_text, check_schema, sha256_file, write_json
from ofa2_edge.core.tarsafe import DEFAULT_LIMITS, ArchiveLimits, is_plain_file, pack_folder, unpack_folder
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.costs import arch_costs

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
    ensemble = model.metadata["arch"].get("ensemble") if isinstance(model.metadata["arch"], dict) else None
    if ensemble is not None:  # one model file holding several subnets (`ofa2_edge.ensemble`)
        arch_doc = ensemble_arch_doc(ensemble)
    else:
        arch = Arch.from_dict(model.metadata["arch"])
        arch_doc = {"id": arch.id, **arch.to_dict(), **arch_costs([arch])[0]}
    name = bundle_name(facts.device["key"], arch_doc["id"])
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
            "arch": arch_doc,
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


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
#: Bundle files are small (a model of ~40 MB at most); SHA256SUMS and the manifest smaller still.
MAX_INDEX_BYTES = 4 << 20


def parse_sums(data: bytes, where: str) -> dict[str, str]:
    """`SHA256SUMS` (`<64 hex>  <name>` per line, plain names only) -> {name: sha256}."""
    if len(data) > MAX_INDEX_BYTES:
        raise SchemaError(f"{where}: {len(data):,} bytes; not a bundle's {SUMS}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{where}: not UTF-8 text ({exc}); regenerate the bundle") from exc
    listed: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or not _SHA256.match(parts[0]):
            raise SchemaError(f"{where}:{i}: malformed line {line[:200]!r} (expected '<sha256>  <name>')")
        name = parts[1]
        if not _PLAIN_NAME.match(name):
            raise SchemaError(f"{where}:{i}: {name[:200]!r} is not a plain file name; a bundle has no folders")
        if name in listed:
            raise SchemaError(f"{where}:{i}: {name} is listed twice")
        listed[name] = parts[0]
    if not listed:
        raise SchemaError(f"{where}: lists no file; not a bundle's {SUMS}")
    return listed


def _need(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise SchemaError(f"{where}: {what}; the manifest is damaged (rebuild the bundle)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_tensor(doc: dict[str, Any], where: str, field: str) -> None:
    """An input/output description the agent will be asked to feed or expect."""
    name, shape, dtype = doc.get("name"), doc.get("shape"), doc.get("dtype", "float32")
    _need(name is None or (isinstance(name, str) and len(name) <= 256), where, f"'{field}.name' must be a short text")
    _need(
        isinstance(shape, list)
        and 1 <= len(shape) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 20 for d in shape),
        where,
        f"'{field}.shape' must be a list of 1-8 positive sizes",
    )
    _need(dtype in DTYPES, where, f"'{field}.dtype' must be one of {', '.join(DTYPES)}")


def check_manifest(doc: Any, where: str) -> dict[str, Any]:
    """A parsed manifest, checked field by field (what `bundle check/verify` read from it)."""
    doc = check_schema(doc, MANIFEST_SCHEMA, [MANIFEST_VERSION], where)
    for field in ("arch", "device", "files", "format", "input", "output", "preprocessing", "weights", "latency"):
        if field not in doc:
            raise SchemaError(f"{where}: manifest field {field!r} is missing")
    for field in ("arch", "device", "input", "output", "preprocessing", "weights", "latency"):
        _need(isinstance(doc[field], dict), where, f"{field!r} must be an object")
    _need(doc["format"] in format_names(), where, f"'format' must be one of {', '.join(format_names())}")
    for field in ("input", "output"):
        _check_tensor(doc[field], where, field)
    _need(isinstance(doc.get("status"), str), where, "'status' must be a text")
    _need(isinstance(doc["device"].get("key"), str), where, "'device.key' must be a text")
    arch = doc["arch"]
    _need(isinstance(arch.get("id"), str), where, "'arch.id' must be a text")
    if "ensemble" in arch:
        _check_ensemble(arch, where)
    else:
        try:
            built = Arch.from_dict({k: arch[k] for k in ("ks", "e", "d", "r", "w") if k in arch})
        except InvalidInputError as exc:
            raise SchemaError(f"{where}: 'arch' is not a valid arch ({exc})") from exc
        _need(built.id == arch["id"], where, f"'arch.id' {arch['id']!r} does not match its ks/e/d/r/w ({built.id})")
    _need("measured" in doc["latency"], where, "'latency.measured' is missing")
    measured = doc["latency"]["measured"]
    _need(
        measured is None or (isinstance(measured, dict) and _is_number(measured.get("latency_ms"))),
        where,
        "'latency.measured' must be null or an object with a finite latency_ms",
    )
    files = doc["files"]
    _need(isinstance(files, list), where, "'files' must be a list")
    names: set[str] = set()
    for i, entry in enumerate(files):
        _need(isinstance(entry, dict), where, f"files[{i}] must be an object")
        name, sha, size = entry.get("name"), entry.get("sha256"), entry.get("bytes")
        _need(isinstance(name, str) and bool(_PLAIN_NAME.match(name)), where, f"files[{i}].name must be a plain file name")
        _need(name not in names and name not in (MANIFEST, SUMS), where, f"files[{i}]: {name} is listed twice or reserved")
        _need(isinstance(sha, str) and bool(_SHA256.match(sha)), where, f"files[{i}] ({name}): sha256 must be 64 hex digits")
        _need(isinstance(size, int) and not isinstance(size, bool) and size >= 0, where, f"files[{i}] ({name}): bytes must be a count")
        names.add(name)
    models = [n for n in names if n.startswith("model.")]
    _need(len(models) == 1, where, f"expected exactly one model file (model.onnx, model.tflite) in 'files', found {len(models)}")
    return doc


def ensemble_arch_doc(ensemble: dict[str, Any]) -> dict[str, Any]:
    """A manifest's `arch` for an ensemble: its id, the combination rule, and every member
    (arch id, ks/e/d/r/w, MACs, params); MACs and params are the members' sums."""
    from ofa2_edge.ensemble.pool import ensemble_id

    members = [Arch.from_dict(m) for m in ensemble["members"]]
    costs = arch_costs(members)
    return {
        "id": ensemble_id([a.id for a in members]),
        "ensemble": {
            "rule": ensemble.get("rule"),
            "resize": ensemble.get("resize"),
            "members": [{"id": a.id, **a.to_dict(), **c} for a, c in zip(members, costs)],
        },
        "macs_m": float(sum(c["macs_m"] for c in costs)),
        "params_m": float(sum(c["params_m"] for c in costs)),
    }


def _check_ensemble(arch: dict[str, Any], where: str) -> None:
    from ofa2_edge.ensemble.pool import ensemble_id

    ens = arch["ensemble"]
    _need(isinstance(ens, dict) and isinstance(ens.get("rule"), str), where, "'arch.ensemble' needs its combination 'rule'")
    members = ens.get("members")
    _need(isinstance(members, list) and len(members) >= 1, where, "'arch.ensemble.members' must list the members")
    ids = []
    for i, m in enumerate(members):
        _need(isinstance(m, dict) and isinstance(m.get("id"), str), where, f"'arch.ensemble.members[{i}].id' must be a text")
        try:
            built = Arch.from_dict({k: m[k] for k in ("ks", "e", "d", "r", "w") if k in m})
        except InvalidInputError as exc:
            raise SchemaError(f"{where}: 'arch.ensemble.members[{i}]' is not a valid arch ({exc})") from exc
        _need(built.id == m["id"], where, f"'arch.ensemble.members[{i}].id' {m['id']!r} does not match its ks/e/d/r/w ({built.id})")
        ids.append(built.id)
    _need(ensemble_id(ids) == arch["id"], where, f"'arch.id' {arch['id']!r} is not the id of its members ({ensemble_id(ids)})")


def _read_json(path: Path, what: str) -> Any:
    """A small JSON file of a bundle: a plain file, bounded, strict JSON (no NaN)."""
    if path.is_symlink():
        raise SchemaError(f"{path}: is a link; a bundle holds only plain files")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SchemaError(f"{path.parent}: no {path.name}; not an ofa2-edge bundle") from exc
    except OSError as exc:
        raise SchemaError(f"{path}: not readable ({exc})") from exc
    if len(data) > MAX_INDEX_BYTES:
        raise SchemaError(f"{path}: {len(data):,} bytes; not a bundle {what}")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{path}: not readable JSON ({str(exc)[:200] or type(exc).__name__})") from exc


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    return check_manifest(_read_json(path, "manifest"), str(path))


def read_tensorrt_build(folder: str | Path) -> TensorRTBuildSpec | None:
    """The bundle's TensorRT build spec when it ships one, checked field by field."""
    path = Path(folder) / TENSORRT_SPEC
    if not path.exists() and not path.is_symlink():
        return None
    doc = _read_json(path, "TensorRT build spec")
    if not isinstance(doc, dict):
        raise SchemaError(f"{path}: expected a JSON object; the bundle is damaged (rebuild it)")
    try:
        return TensorRTBuildSpec.from_dict(doc, str(path))
    except InvalidInputError as exc:
        raise SchemaError(f"{path}: {exc}; the bundle is damaged (rebuild it)") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_folder(folder: Path) -> dict[str, Any]:
    problems: list[str] = []
    sums_path = folder / SUMS
    if not is_plain_file(sums_path):
        raise SchemaError(f"{folder}: no {SUMS} (or it is a link)")
    listed = parse_sums(sums_path.read_bytes(), str(sums_path))
    manifest = read_manifest(folder)
    in_manifest = {e["name"]: e for e in manifest["files"]}
    for name, entry in in_manifest.items():
        if listed.get(name) != entry["sha256"]:
            problems.append(f"{name}: manifest and {SUMS} disagree")
    for name in sorted(set(listed) - set(in_manifest) - {MANIFEST}):
        problems.append(f"{name}: listed in {SUMS} but not in the manifest")
    if MANIFEST not in listed:
        problems.append(f"{MANIFEST}: not listed in {SUMS}")
    present = {p.name for p in folder.iterdir()} - {SUMS}
    for name in sorted(present - set(listed)):
        problems.append(f"{name}: not listed in {SUMS}")
    for name, expected in sorted(listed.items()):
        path = folder / name
        if path.is_symlink():
            problems.append(f"{name}: is a link (a bundle holds only plain files)")
        elif not is_plain_file(path):
            problems.append(f"{name}: listed but missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: sha256 mismatch (modified or corrupted)")
        elif name in in_manifest and path.stat().st_size != in_manifest[name]["bytes"]:
            problems.append(f"{name}: size differs from the manifest")
    if problems:
        raise SchemaError(f"{folder}: bundle check failed: " + "; ".join(problems))
    return manifest


def _bundle_names(where: str, names: list[str], read: Callable[[str], bytes]) -> None:
    """An archive's manifest check: every member is a plain file its SHA256SUMS lists."""
    listed = parse_sums(read(SUMS), f"{where}:{SUMS}")
    extra = sorted(set(names) - set(listed) - {SUMS})
    if extra:
        raise SchemaError(
            f"{where}: member(s) {', '.join(repr(n) for n in extra[:5])} not listed in {SUMS}; refusing to unpack"
        )


def check_bundle(path: str | Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Verify a bundle folder or .tar.gz: schema, every checksum, no extra or missing file.

    Archives are checked before any byte is written (member names against the archive's
    own SHA256SUMS, no absolute paths, no `..`, no links, sizes within `limits`), then
    unpacked into a temporary folder and checked like a folder.
    """
    path = Path(path)
    if path.is_dir():
        return _check_folder(path)
    if path.name.endswith(".tar.gz") and path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            name = unpack_folder(path, tmp, check_names=_bundle_names, limits=limits)
            try:
                return _check_folder(Path(tmp) / name)
            except SchemaError as exc:
                raise SchemaError(str(exc).replace(str(Path(tmp) / name), f"{path}:{name}")) from exc
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


def record_on_device_accuracy(folder: str | Path, on_device: dict[str, Any]) -> dict[str, Any]:
    """Write the on-device classification check into `accuracy.on_device`, then refresh
    SHA256SUMS and the archive (the bundle is re-verified first, as for a measurement)."""
    folder = Path(folder)
    manifest = _check_folder(folder)
    manifest["accuracy"] = {**(manifest.get("accuracy") or {}), "on_device": on_device}
    payload = {k: v for k, v in manifest.items() if k not in ("schema", "schema_version")}
    write_json(folder / MANIFEST, MANIFEST_SCHEMA, MANIFEST_VERSION, payload)
    _write_sums(folder, [e["name"] for e in manifest["files"]] + [MANIFEST])
    pack_folder(folder, folder.parent / f"{folder.name}.tar.gz", arcname=folder.name)
    return manifest


def model_file(folder: str | Path, manifest: dict[str, Any]) -> Path:
    name = next(e["name"] for e in manifest["files"] if e["name"].startswith("model."))
    return Path(folder) / name
