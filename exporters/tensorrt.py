"""TensorRT build spec: what the device agent needs to build an engine from an exported ONNX file.

A TensorRT engine is specific to the TensorRT version and the GPU, so it is built on the
device, never here. The exporter's product for TensorRT is the ONNX file plus this spec
(schema ``ofa2-edge/tensorrt-build``, version 1)::

    {"schema": "ofa2-edge/tensorrt-build", "schema_version": 1,
     "arch_id": ..., "arch": {...},
     "onnx": {"file": "net.onnx", "sha256": ..., "bytes": ...},
     "input":  {"name": "input", "shape": [1, 3, r, r], "dtype": "float32", "layout": "NCHW"},
     "output": {"name": "logits", "shape": [1, 1000], "dtype": "float32", "layout": null},
     "precision": "fp32" | "fp16" | "int8", "workspace_mib": 1024, "tf32": true,
     "int8_calibration": null | {"file": ..., "sha256": ...},
     "build_id": "<sha256 of the model sha256 and every build option>",
     "trtexec_reference": {"tensorrt": "10", "argv": ["trtexec", "--onnx=net.onnx", ...]}}

The agent caches engines by (`build_id`, TensorRT version, device fingerprint):
`build_id` covers the ONNX file's sha256 *and* every option that changes the engine, so
two precisions of the same model never share an engine. :func:`trtexec_argv` gives the
exact command line for the device's TensorRT version; the flags differ between versions:

- workspace: ``--workspace=N`` (MiB) before 8.4, ``--memPoolSize=workspace:N`` from 8.4
  (a bare number is MiB in 8.x and 10.x; ``--workspace`` is gone in 10);
- build only: ``--buildOnly`` before 8.6, ``--skipInference`` from 8.6;
- no ``--shapes``/``--optShapes``: the ONNX input is static (batch 1) and trtexec refuses
  explicit shapes for a static model ("Static model does not take explicit shapes");
  no ``--explicitBatch``: implied for ONNX since 8.0 and removed in 10;
- TensorRT 11 removed ``--fp16``/``--int8`` (networks are strongly typed; reduced
  precision comes from an offline ModelOpt conversion), so only fp32 builds there;
- int8: ``--int8 --fp16`` (layers without an int8 kernel fall back to fp16, not fp32) and
  ``--calib=<cache>`` when a calibration cache is given; without one trtexec uses
  placeholder ranges: the engine's latency is real, its outputs are not.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.records import ExportedModel, TensorSpec
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import check_schema, sha256_file, write_json

SPEC_SCHEMA = "ofa2-edge/tensorrt-build"
SPEC_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PRECISION = "fp16"
DEFAULT_WORKSPACE_MIB = 1024
#: The TensorRT version the spec's reference command line is written for.
REFERENCE_TENSORRT = "10"
MIN_TENSORRT = (8, 0)


@dataclass(frozen=True)
class TensorRTBuildSpec:
    """How to build a TensorRT engine from one exported ONNX file (see the module doc)."""

    arch_id: str
    arch: dict[str, Any]
    onnx_file: str
    onnx_sha256: str
    onnx_bytes: int
    input: TensorSpec
    output: TensorSpec
    precision: str = DEFAULT_PRECISION
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    tf32: bool = True
    calibration_file: str | None = None
    calibration_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInputError(
                f"precision {self.precision!r} is not supported; choose from {', '.join(PRECISIONS)}"
            )
        if isinstance(self.workspace_mib, bool) or not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            raise InvalidInputError(f"workspace_mib: expected a positive integer (MiB), got {self.workspace_mib!r}")
        if self.input.shape[0] != 1 or any(d < 1 for d in self.input.shape):
            raise InvalidInputError(f"input shape {self.input.shape}: the spec is for static batch-1 models")
        if self.calibration_file is not None and self.precision != "int8":
            raise InvalidInputError("a calibration cache only applies to int8 builds")
        if (self.calibration_file is None) != (self.calibration_sha256 is None):
            raise InvalidInputError("calibration_file and calibration_sha256 go together")

    @property
    def build_id(self) -> str:
        """sha256 of the model and every option that changes the engine: the agent's engine-cache key
        together with the TensorRT version and the device fingerprint."""
        doc = {
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision,
            "workspace_mib": self.workspace_mib,
            "tf32": self.tf32,
            "calibration_sha256": self.calibration_sha256,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def placeholder_int8_ranges(self) -> bool:
        """An int8 build without a calibration cache: real latency, meaningless outputs."""
        return self.precision == "int8" and self.calibration_file is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch_id": self.arch_id,
            "arch": self.arch,
            "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256, "bytes": self.onnx_bytes},
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "precision": self.precision,
            "workspace_mib": self.workspace_mib,
            "tf32": self.tf32,
            "int8_calibration": (
                None
                if self.calibration_file is None
                else {"file": self.calibration_file, "sha256": self.calibration_sha256}
            ),
            "placeholder_int8_ranges": self.placeholder_int8_ranges,
            "build_id": self.build_id,
            "trtexec_reference": {
                "tensorrt": REFERENCE_TENSORRT,
                "argv": trtexec_argv(self, self.onnx_file, Path(self.onnx_file).stem + ".engine", REFERENCE_TENSORRT),
            },
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "TensorRT build spec") -> TensorRTBuildSpec:
        try:
            calib = doc.get("int8_calibration") or {}
            spec = cls(
                arch_id=str(doc["arch_id"]),
                arch=dict(doc["arch"]),
                onnx_file=str(doc["onnx"]["file"]),
                onnx_sha256=str(doc["onnx"]["sha256"]),
                onnx_bytes=int(doc["onnx"]["bytes"]),
                input=TensorSpec.from_dict(doc["input"]),
                output=TensorSpec.from_dict(doc["output"]),
                precision=str(doc["precision"]),
                workspace_mib=int(doc["workspace_mib"]),
                tf32=bool(doc["tf32"]),
                calibration_file=calib.get("file"),
                calibration_sha256=calib.get("sha256"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: malformed ({type(exc).__name__}: {exc})") from exc
        if doc.get("build_id") not in (None, spec.build_id):
            raise SchemaError(f"{where}: build_id does not match its fields; the spec was edited, regenerate it")
        return spec

    def write(self, path: str | Path) -> Path:
        """Write the spec atomically (versioned JSON)."""
        return write_json(path, SPEC_SCHEMA, SPEC_VERSION, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> TensorRTBuildSpec:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaError(f"{path}: not a readable TensorRT build spec ({exc})") from exc
        return cls.from_dict(check_schema(doc, SPEC_SCHEMA, [SPEC_VERSION], str(path)), str(path))


def build_spec(
    onnx_model: ExportedModel,
    precision: str = DEFAULT_PRECISION,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    tf32: bool = True,
    calibration_cache: str | Path | None = None,
    onnx_file: str | None = None,
) -> TensorRTBuildSpec:
    """The build spec of an exported ONNX model. `onnx_file` is the name the ONNX file will
    have beside the spec (default: its current name); `calibration_cache` an optional
    TensorRT int8 calibration cache file, recorded by name and sha256."""
    if onnx_model.format != "onnx":
        raise InvalidInputError(f"a TensorRT build spec needs an ONNX export, got {onnx_model.format!r}")
    calib_name = calib_sha = None
    if calibration_cache is not None:
        calib_path = Path(calibration_cache)
        if not calib_path.is_file():
            raise InvalidInputError(f"int8 calibration cache {calib_path} does not exist or is not a file")
        calib_name, calib_sha = calib_path.name, sha256_file(calib_path)
    (inp,) = onnx_model.inputs
    (out,) = onnx_model.outputs
    return TensorRTBuildSpec(
        arch_id=onnx_model.metadata["arch_id"],
        arch=onnx_model.metadata["arch"],
        onnx_file=onnx_file or onnx_model.path.name,
        onnx_sha256=onnx_model.sha256,
        onnx_bytes=onnx_model.bytes,
        input=inp,
        output=out,
        precision=precision,
        workspace_mib=workspace_mib,
        tf32=tf32,
        calibration_file=calib_name,
        calibration_sha256=calib_sha,
    )


def parse_tensorrt_version(version: str) -> tuple[int, int]:
    """(major, minor) of ``"8.6.1.6"``, ``"10.3"``, ``"10"``, or trtexec's banner number
    (``"v8601"`` = 8.6.1 in TensorRT 8's major*1000 + minor*100 + patch, ``"v100300"`` =
    10.3.0 in TensorRT 10's major*10000 + minor*100 + patch)."""
    text = str(version).strip()
    banner = re.fullmatch(r"v?(\d{4,6})", text)
    if banner:
        n = int(banner.group(1))
        return (n // 10000, n // 100 % 100) if n >= 100000 else (n // 1000, n // 100 % 10)
    m = re.fullmatch(r"(\d{1,2})(?:\.(\d+))?(?:\.\d+)*", text)
    if not m:
        raise InvalidInputError(f"TensorRT version {version!r} is not a version like 8.6.1, 10.3 or v100300")
    return int(m.group(1)), int(m.group(2) or 0)


def trtexec_argv(
    spec: TensorRTBuildSpec,
    onnx_path: str | Path,
    engine_path: str | Path,
    tensorrt_version: str,
    trtexec: str = "trtexec",
    calibration_path: str | Path | None = None,
    skip_inference: bool = True,
) -> list[str]:
    """The trtexec command line that builds `spec`'s engine with TensorRT `tensorrt_version`.

    `calibration_path` is where the spec's int8 calibration cache lies on the device
    (default: beside the ONNX file, under its recorded name). With `skip_inference` the
    command only builds and saves the engine; timing is the agent's job.
    """
    major, minor = parse_tensorrt_version(tensorrt_version)
    if (major, minor) < MIN_TENSORRT:
        raise InvalidInputError(f"TensorRT {tensorrt_version} is older than 8.0, which these build specs need")
    if major >= 11 and spec.precision != "fp32":
        raise InvalidInputError(
            f"TensorRT {tensorrt_version} removed --{spec.precision} (networks are strongly typed); "
            "build this spec with precision fp32, or quantise the ONNX offline with ModelOpt"
        )
    argv = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if (major, minor) < (8, 4):
        argv.append(f"--workspace={spec.workspace_mib}")
    else:
        argv.append(f"--memPoolSize=workspace:{spec.workspace_mib}")
    if spec.precision == "fp16":
        argv.append("--fp16")
    elif spec.precision == "int8":
        argv += ["--int8", "--fp16"]
        if spec.calibration_file is not None:
            calib = calibration_path or Path(onnx_path).parent / spec.calibration_file
            argv.append(f"--calib={calib}")
    if not spec.tf32:
        argv.append("--noTF32")
    if skip_inference:
        argv.append("--skipInference" if (major, minor) >= (8, 6) else "--buildOnly")
    return argv
