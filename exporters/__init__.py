"""Subnets to deployable files: ONNX (default), TFLite fp32/int8 (LiteRT), TensorRT build specs.

No device I/O here. Every export is verified numerically against torch before it is
kept, carries its facts (arch, preprocessing, weights and BN sources, versions) and is
cached by content, so calibration never exports the same subnet twice::

    from exporters import export_subnet, ExportCache
    model = export_subnet(arch, "onnx")          # -> ExportedModel(path, sha256, metadata, parity, ...)

The TFLite converters are imported only when a TFLite format is asked for (``[tflite]`` extra).
"""

from exporters.api import LAYER_FORMATS, export_layer, export_module, export_subnet, random_supernet
from exporters.cache import ExportCache
from exporters.formats import ExportFormat, export_format, format_names, register_format
from exporters.records import ExportedModel, TensorSpec, read_sidecar, sidecar_path
from exporters.representative import RepresentativeSet
from exporters.tensorrt import PRECISIONS, TensorRTBuildSpec, build_spec, trtexec_argv

__all__ = [
    "LAYER_FORMATS",
    "PRECISIONS",
    "ExportCache",
    "ExportFormat",
    "ExportedModel",
    "RepresentativeSet",
    "TensorRTBuildSpec",
    "TensorSpec",
    "build_spec",
    "export_format",
    "export_layer",
    "export_module",
    "export_subnet",
    "format_names",
    "random_supernet",
    "register_format",
    "read_sidecar",
    "sidecar_path",
    "trtexec_argv",
]
