"""`ofa2-edge export`: one subnet to a verified ONNX / TFLite file or a TensorRT build spec."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer

from ofa2_edge.cli.common import JSON_OPTION, emit_json, err_console, out_console, state
from ofa2_edge.core.errors import ExportError, InvalidInputError
from ofa2_edge.space.archref import resolve_arch

TENSORRT_SPEC = "tensorrt-spec"  # a build spec (JSON) beside an ONNX file, for a TensorRT device


def _formats() -> tuple[str, ...]:
    from exporters.formats import format_names

    return (*format_names(), TENSORRT_SPEC)


def _suffix(fmt: str) -> str:
    from exporters.formats import export_format

    return ".json" if fmt == TENSORRT_SPEC else export_format(fmt).suffix


def _check_output(path: Path, fmt: str) -> Path:
    """Refuse an output path that cannot be written *before* minutes go into exporting."""
    if path.is_dir():
        raise InvalidInputError(f"-o {path} is a folder; give a file path, e.g. {path / ('model' + _suffix(fmt))}")
    if path.suffix != _suffix(fmt):
        what = "the build spec (JSON; the ONNX file goes beside it)" if fmt == TENSORRT_SPEC else "the model file"
        raise InvalidInputError(f"-o {path}: {what} of format {fmt} must end in {_suffix(fmt)}")
    parent = path.parent
    if not parent.is_dir():
        kind = "is not a folder" if parent.exists() else "does not exist"
        raise InvalidInputError(f"-o {path}: the output folder {parent} {kind}; create it first")
    try:  # a real probe: permission bits do not tell the whole story (read-only mounts, ACLs, root)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".ofa2-edge-probe-"):
            pass
    except OSError as exc:
        raise InvalidInputError(f"-o {path}: cannot write in {parent} ({exc.strerror or exc})") from exc
    return path


def _copy_beside(src: Path, folder: Path) -> Path:
    """Copy `src` into `folder` (temp file, then rename): the agent finds the calibration cache beside the spec."""
    dest = folder / src.name
    tmp = folder / f".{src.name}.part"
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _summary(doc: dict[str, Any]) -> str:
    parity = doc["parity"]
    if "top1_agreement" in parity:
        check = (
            f"int8 vs fp32: top-1 agreement {parity['top1_agreement']:.0%}, mean cosine {parity['mean_cosine']:.3f} "
            f"on {parity['n_inputs']} inputs"
        )
    else:
        check = f"parity: max abs diff {parity['max_abs_diff']:.2e} (tolerance {parity['tolerance']:.1e})"
    weights = "random weights: latency only" if doc["metadata"]["latency_only"] else doc["metadata"]["weights_source"]
    return (
        f"[bold]{doc['path']}[/]  {doc['format']}  {doc['bytes'] / 1e6:.1f} MB  sha256 {doc['sha256'][:16]}...\n"
        f"  {doc['arch_id']} at {doc['metadata']['resolution']} px; {weights}; BN {doc['metadata']['bn_stats_source']}\n"
        f"  {check}{'  (from the export cache)' if doc['cached'] else ''}"
    )


def export(
    ctx: typer.Context,
    arch: str = typer.Argument(..., help="min, max, min@R, max@R, an arch id, a JSON file or inline JSON."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | tflite | tflite-int8 | tensorrt-spec."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Model file to write (.onnx / .tflite; .json for tensorrt-spec)."
    ),
    supernet: Path | None = typer.Option(
        None,
        "--supernet",
        help="OFA supernet checkpoint: a path, or ofa_mbv3_d234_e346_k357_w1.2 after `assets fetch --supernet` "
        "(default: seeded random weights, for latency work only).",
    ),
    calib_images: Path | None = typer.Option(
        None, "--calib-images", help="tflite-int8: image folder for the representative set (default: seeded noise)."
    ),
    calib_samples: int = typer.Option(32, "--calib-samples", min=1, help="tflite-int8: representative images used."),
    precision: str = typer.Option("fp16", "--precision", help="tensorrt-spec: fp32 | fp16 | int8."),
    workspace_mib: int = typer.Option(1024, "--workspace-mib", min=1, help="tensorrt-spec: builder workspace (MiB)."),
    trt_calib_cache: Path | None = typer.Option(
        None, "--trt-calib-cache", help="tensorrt-spec int8: a TensorRT calibration cache to ship with the spec."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Export one subnet, verified against torch and cached; the file and a .json sidecar are written.

    tensorrt-spec: the ONNX file (and any --trt-calib-cache) go beside the spec; engines are built on the device.
    """
    if fmt not in _formats():
        raise InvalidInputError(f"--format {fmt!r} is not supported; choose from {', '.join(_formats())}")
    if calib_images is not None and fmt != "tflite-int8":
        raise InvalidInputError("--calib-images applies to --format tflite-int8 only")
    if fmt != TENSORRT_SPEC and (trt_calib_cache is not None or precision != "fp16" or workspace_mib != 1024):
        raise InvalidInputError(
            "--precision, --workspace-mib and --trt-calib-cache apply to --format tensorrt-spec only"
        )
    if trt_calib_cache is not None and (precision != "int8" or not trt_calib_cache.is_file()):
        problem = "is not a file" if precision == "int8" else "applies to --precision int8 only"
        raise InvalidInputError(f"--trt-calib-cache {trt_calib_cache} {problem}")
    _check_output(output, fmt)
    workspace = state(ctx).workspace
    target = resolve_arch(arch, workspace)

    # heavy imports here, not at CLI start: every other command stays fast
    from exporters import ExportCache, RepresentativeSet, build_spec, export_subnet, sidecar_path
    from exporters.tensorrt import PRECISIONS

    if fmt == TENSORRT_SPEC and precision not in PRECISIONS:
        raise InvalidInputError(f"--precision {precision!r} is not supported; choose from {', '.join(PRECISIONS)}")
    if fmt.startswith("tflite"):
        from exporters.tflite_export import require_litert

        require_litert()  # before minutes go into loading and converting
    net = None
    if supernet is not None:
        from ofa2_edge.supernet import load_supernet
        from ofa2_edge.supernet.checkpoint import find_checkpoint

        net = load_supernet(find_checkpoint(supernet, state(ctx).assets_dir), width_mult=target.w)
    representative = RepresentativeSet.from_folder(calib_images, calib_samples) if calib_images else None
    if representative is None and fmt == "tflite-int8":
        representative = RepresentativeSet(samples=calib_samples)

    model_fmt = "onnx" if fmt == TENSORRT_SPEC else fmt
    with err_console.status(f"exporting {target.id} to {fmt} ..."):
        model = export_subnet(
            target, model_fmt, supernet=net, cache=ExportCache.default(workspace), representative=representative
        )

    if fmt != TENSORRT_SPEC:
        written = model.copy_to(output)
        doc = {
            "path": str(written.path),
            "cached": model.cached,
            "cache_entry": str(model.path.parent),
            **written.sidecar_doc(),
        }
    else:
        spec = build_spec(
            model,
            precision,
            workspace_mib,
            calibration_cache=trt_calib_cache,
            onnx_file=output.with_suffix(".onnx").name,
        )
        written = model.copy_to(output.with_suffix(".onnx"))
        placed = [written.path, sidecar_path(written.path)]
        try:
            if trt_calib_cache is not None and trt_calib_cache.resolve().parent != output.resolve().parent:
                placed.append(_copy_beside(trt_calib_cache, output.parent))
            spec.write(output)
        except BaseException as exc:
            for path in placed:
                path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise ExportError(f"cannot write the TensorRT spec {output}: {exc}; nothing was written") from exc
            raise
        doc = {
            "path": str(written.path),
            "cached": model.cached,
            "cache_entry": str(model.path.parent),
            **written.sidecar_doc(),
            "tensorrt_build_path": str(output),
            "tensorrt_build": spec.to_dict(),
        }
    if as_json:
        emit_json(doc)
        return
    out_console.print(_summary(doc), highlight=False, soft_wrap=True)
    if fmt == TENSORRT_SPEC:
        argv = " ".join(doc["tensorrt_build"]["trtexec_reference"]["argv"])
        out_console.print(f"  build spec {output}; on TensorRT 10: {argv}", highlight=False, soft_wrap=True)
    for warning in doc["parity"].get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {warning}")
