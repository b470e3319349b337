"""TensorRT through its Python API: engine built on the device from the shipped ONNX, cached.

Engines are specific to the TensorRT version and the GPU, so they are built here, on
the device, from the ONNX file and a :class:`~device_agents.records.TensorRTBuild` spec,
and cached under ``<work_dir>/engine_cache`` by (model sha256, build spec, TensorRT
version, device fingerprint). Device memory and copies go through the CUDA runtime library
(``libcudart``) with ctypes, so the agent needs neither pycuda nor cuda-python nor numpy.

One timed inference = host-to-device copy of the inputs, ``execute_async`` and
device-to-host copy of the outputs, then a stream synchronise: the same span trtexec
reports as "Latency". INT8 without a calibration cache uses trtexec's placeholder dynamic
ranges (inputs +-2, every other tensor +-4): right for latency, meaningless for accuracy,
and said so in the result's build spec.

TensorRT cannot be installed on the development machines; everything in this module that
does not touch TensorRT or CUDA (cache keys, file names, flag choice) is unit-tested, the
rest runs under the ``tensorrt`` test marker wherever TensorRT is importable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import random
import re
import struct
import tempfile
from typing import Any, List, Optional, Tuple

from device_agents.records import ModelSpec, Protocol, TensorRTBuild
from device_agents.runtimes import register
from device_agents.runtimes.base import LoadContext, ModelLoadFailed, Runtime, RuntimeUnavailable, Session, Shape

# TensorRT DataType name -> (request dtype, bytes per element, struct format or None)
TRT_DTYPES = {
    "FLOAT": ("float32", 4, "f"), "HALF": ("float16", 2, "e"), "INT8": ("int8", 1, "b"),
    "UINT8": ("uint8", 1, "B"), "INT32": ("int32", 4, "i"), "INT64": ("int64", 8, "q"), "BOOL": ("bool", 1, "?"),
}
_CUDA_MEMCPY_H2D = 1
_CUDA_MEMCPY_D2H = 2
_CUDART_NAMES = ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2")
_CUDART_GLOBS = ("/usr/local/cuda/lib64/libcudart.so*", "/usr/local/cuda/targets/*/lib/libcudart.so*")


def _import() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailable(f"tensorrt is not importable ({exc})") from None
    return tensorrt


def trt_major(version: str) -> int:
    m = re.match(r"^(\d+)", version)
    if not m:
        raise ValueError(f"unreadable TensorRT version {version!r}")
    return int(m.group(1))


def engine_file_name(model_sha256: str, build: TensorRTBuild, trt_version: str, device_fingerprint: str) -> str:
    """The cache file of one engine: everything that makes an engine different is in the name."""
    safe_version = re.sub(r"[^0-9A-Za-z.]", "_", trt_version)
    safe_fp = re.sub(r"[^0-9A-Za-z]", "_", device_fingerprint)
    return f"{model_sha256[:32]}-{build.precision}-ws{build.workspace_mib}-trt{safe_version}-{safe_fp}.engine"


def builder_flag_names(build: TensorRTBuild) -> List[str]:
    """``trt.BuilderFlag`` members a build sets (as trtexec --fp16 / --int8 do)."""
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[build.precision]


def pattern_bytes(dtype_name: str, count: int, seed: int) -> bytes:
    """Deterministic input bytes for `count` elements of a TensorRT DataType, without numpy."""
    _, _, fmt = TRT_DTYPES[dtype_name]
    rng = random.Random(seed)
    if fmt in ("f", "e"):
        values: List[Any] = [rng.gauss(0.0, 1.0) for _ in range(count)]
    elif fmt == "?":
        values = [rng.random() < 0.5 for _ in range(count)]
    else:
        values = [rng.randrange(0, 10) for _ in range(count)]
    return struct.pack(f"<{count}{fmt}", *values)


class _CudaRuntime:
    """The few CUDA runtime calls the session needs, through ctypes."""

    def __init__(self) -> None:
        names = list(_CUDART_NAMES)
        found = ctypes.util.find_library("cudart")
        if found:
            names.insert(0, found)
        # JetPack keeps the CUDA libraries outside the loader's default path
        for pattern in _CUDART_GLOBS:
            names += sorted(glob.glob(pattern), reverse=True)
        self._lib = None
        errors = []
        for name in names:
            try:
                self._lib = ctypes.CDLL(name)
                break
            except OSError as exc:
                errors.append(str(exc))
        if self._lib is None:
            raise RuntimeUnavailable(f"the CUDA runtime library (libcudart) cannot be loaded: {'; '.join(errors)}")
        self._lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed: {self._lib.cudaGetErrorString(rc).decode()}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self._lib.cudaFree(ctypes.c_void_p(ptr))

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def destroy_stream(self, stream: int) -> None:
        self._lib.cudaStreamDestroy(ctypes.c_void_p(stream))

    def copy_async(self, dst: Any, src: Any, nbytes: int, kind: int, stream: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(dst, src, ctypes.c_size_t(nbytes), kind, ctypes.c_void_p(stream)),
                    "cudaMemcpyAsync")

    def sync(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def build_engine(trt: Any, onnx_path: str, build: TensorRTBuild) -> bytes:
    """Parse the ONNX file and build a serialized engine (the slow step: seconds to minutes)."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt.__version__) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadFailed(f"TensorRT's ONNX parser refused the model: {errors}")
    config = builder.create_builder_config()
    workspace = build.workspace_mib << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    for name in builder_flag_names(build):
        config.set_flag(getattr(trt.BuilderFlag, name))
    if build.precision == "int8":
        _set_placeholder_ranges(network)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadFailed(f"TensorRT could not build a {build.precision} engine (see the worker's stderr log)")
    return bytes(serialized)


def _set_placeholder_ranges(network: Any) -> None:
    """trtexec's ranges for --int8 without calibration: inputs +-2, every layer output +-4."""
    for i in range(network.num_inputs):
        network.get_input(i).set_dynamic_range(-2.0, 2.0)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if not tensor.is_shape_tensor:
                tensor.set_dynamic_range(-4.0, 4.0)


def load_or_build_engine(trt: Any, onnx_path: str, spec: ModelSpec, ctx: LoadContext) -> bytes:
    build = spec.tensorrt
    assert build is not None  # ModelSpec guarantees a build spec for runtime "tensorrt"
    os.makedirs(ctx.engine_dir, exist_ok=True)
    path = os.path.join(ctx.engine_dir, engine_file_name(spec.sha256, build, trt.__version__, ctx.device_fingerprint))
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read()
    ctx.on_build("building")
    blob = build_engine(trt, onnx_path, build)
    ctx.on_build("built")
    fd, tmp = tempfile.mkstemp(prefix=".engine.", dir=ctx.engine_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return blob


class TrtSession(Session):
    def __init__(self, trt: Any, blob: bytes, spec: ModelSpec, seed: int) -> None:
        self._cuda = _CudaRuntime()
        self._runtime = trt.Runtime(_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise ModelLoadFailed("TensorRT could not deserialize the engine (version or GPU mismatch)")
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.stream()
        self._v3 = hasattr(self._context, "execute_async_v3")
        tensors = self._tensors()
        self._inputs: List[Tuple[int, Any, int]] = []  # (device ptr, host buffer, nbytes)
        self._outputs: List[Tuple[str, Shape, int, Any, int]] = []  # (name, shape, device ptr, host buf, nbytes)
        self._device: List[int] = []
        self._bindings: List[int] = []
        wanted = list(spec.inputs)
        n_in = 0
        for index, (name, is_input, shape, dtype) in enumerate(tensors):
            if dtype not in TRT_DTYPES:
                raise ModelLoadFailed(f"tensor {name!r} has a data type ({dtype}) this agent cannot feed")
            if is_input:
                if n_in >= len(wanted):
                    raise ModelLoadFailed("the engine has more inputs than the request describes")
                want = wanted[n_in]
                n_in += 1
                if len(shape) != len(want.shape) or any(d > 0 and d != w for d, w in zip(shape, want.shape)):
                    raise ModelLoadFailed(f"input {name!r} has shape {list(shape)} in the engine, "
                                          f"{list(want.shape)} in the request")
                shape = tuple(want.shape)
                self._set_input_shape(name, index, shape)
            else:
                shape = self._output_shape(name, index)
            count = 1
            for d in shape:
                count *= d
            nbytes = count * TRT_DTYPES[dtype][1]
            ptr = self._cuda.malloc(nbytes)
            self._device.append(ptr)
            self._bindings.append(ptr)
            if self._v3:
                self._context.set_tensor_address(name, ptr)
            if is_input:
                host = ctypes.create_string_buffer(pattern_bytes(dtype, count, seed + index), nbytes)
                self._inputs.append((ptr, host, nbytes))
            else:
                self._outputs.append((name, shape, ptr, ctypes.create_string_buffer(nbytes), nbytes))
        if n_in != len(wanted):
            raise ModelLoadFailed(f"the engine has {n_in} input(s), the request describes {len(wanted)}")

    def _tensors(self) -> List[Tuple[str, bool, Shape, str]]:
        eng = self._engine
        out = []
        if hasattr(eng, "num_io_tensors"):  # TensorRT >= 8.5
            import tensorrt as trt

            for i in range(eng.num_io_tensors):
                name = eng.get_tensor_name(i)
                is_input = eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                out.append((name, is_input, tuple(eng.get_tensor_shape(name)), eng.get_tensor_dtype(name).name))
        else:
            for i in range(eng.num_bindings):
                out.append((eng.get_binding_name(i), eng.binding_is_input(i), tuple(eng.get_binding_shape(i)),
                            eng.get_binding_dtype(i).name))
        return out

    def _set_input_shape(self, name: str, index: int, shape: Shape) -> None:
        if self._v3:
            self._context.set_input_shape(name, shape)
        else:
            self._context.set_binding_shape(index, shape)

    def _output_shape(self, name: str, index: int) -> Shape:
        if self._v3:
            return tuple(self._context.get_tensor_shape(name))
        return tuple(self._context.get_binding_shape(index))

    def _run(self, copy_out: bool) -> None:
        for ptr, host, nbytes in self._inputs:
            self._cuda.copy_async(ctypes.c_void_p(ptr), host, nbytes, _CUDA_MEMCPY_H2D, self._stream)
        if self._v3:
            ok = self._context.execute_async_v3(self._stream)
        else:
            ok = self._context.execute_async_v2(self._bindings, self._stream)
        if not ok:
            raise RuntimeError("TensorRT execute_async returned false")
        if copy_out:
            for _, _, ptr, host, nbytes in self._outputs:
                self._cuda.copy_async(host, ctypes.c_void_p(ptr), nbytes, _CUDA_MEMCPY_D2H, self._stream)
        self._cuda.sync(self._stream)

    def infer(self) -> None:
        self._run(copy_out=True)

    def infer_output_shapes(self) -> List[Shape]:
        self._run(copy_out=True)
        return [shape for _, shape, _, _, _ in self._outputs]

    def output_names(self) -> List[Optional[str]]:
        return [name for name, _, _, _, _ in self._outputs]

    def close(self) -> None:
        for ptr in self._device:
            self._cuda.free(ptr)
        self._device = []
        self._cuda.destroy_stream(self._stream)


@register("tensorrt")
class TensorRt(Runtime):
    def version(self) -> str:
        return str(_import().__version__)

    def load(self, model_path: str, spec: ModelSpec, protocol: Protocol, ctx: LoadContext) -> Session:
        trt = _import()
        blob = load_or_build_engine(trt, model_path, spec, ctx)
        return TrtSession(trt, blob, spec, protocol.input_seed)

