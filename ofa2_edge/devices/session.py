"""A measurement session on one device: ship the agent, probe, measure batches, survive drops.

One transport connection is reused for the whole session. The agent zipapp and every model
are uploaded only when the device lacks the same bytes (sha256), so a rerun after a dropped
link sends nothing twice. The agent streams one record per model; each is validated and
handed to `on_result` the moment it arrives (calibration commits it to disk there). The
models of one interleave group finish together, so a link or a host that dies mid-batch
loses at most the group in flight (``protocol.interleave`` models); the agent, started with
``--watch-stdin``, dies with it. The session then reconnects a bounded number of times and
measures only the models that have no record yet.
"""

from __future__ import annotations

import json
import logging
import tempfile
import typing
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from device_agents.build import build_pyz
from device_agents.jsonrecord import to_json
from device_agents.records import (
    BatchEnd,
    FailureKind,
    MeasureRequest,
    MeasureResult,
    ModelSpec,
    ProbeReport,
    Protocol,
    RecordError,
    TensorRTBuild,
    TensorSpec,
    parse_agent_line,
)
from ofa2_edge.core.errors import DeviceUnreachableError, InvalidInputError, MeasurementError
from ofa2_edge.devices.connect import transport_for
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.runtimes import host_runtime, runtime_for_file
from ofa2_edge.devices.transport import Transport, UploadCorruptedError

if TYPE_CHECKING:
    from exporters.records import ExportedModel

log = logging.getLogger(__name__)

AGENT_NAME = "agent.pyz"
PROBE_TIMEOUT_S = 120.0
#: The batch id of records the host makes itself (upload errors).
HOST_BATCH = "host"
BROKEN_AGENT_FIX = (
    "The device's agent or Python is broken or not the one ofa2-edge ships: check the device's `python` "
    "in devices.yaml (`ofa2-edge devices probe <key>`), then measure again; the table keeps only valid records"
)


def _canonical(value: Any) -> str:
    """A JSON value as one canonical string (tuples as lists, sorted keys, 1 != 1.0 != true)."""
    return json.dumps(to_json(value), sort_keys=True, separators=(",", ":"))


class Subject(typing.Protocol):
    """What a model file stands for: an `Arch`, or one layer of a block table. It needs an
    id the agent accepts (``a-...``, ``l-...``) and a JSON description for the records."""

    @property
    def id(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ShippableModel:
    """A model file on the host plus what the agent must know to measure it."""

    arch: Subject
    path: Path
    sha256: str
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tensorrt: TensorRTBuild | None = None

    @property
    def remote_name(self) -> str:
        return f"{self.arch.id}-{self.sha256[:12]}{self.path.suffix}"

    @classmethod
    def from_export(
        cls, model: "ExportedModel", arch: Subject, tensorrt: TensorRTBuild | None = None
    ) -> "ShippableModel":
        """The agent's view of an exported file: onnx runs in onnxruntime (or TensorRT when
        a build is given), tflite in LiteRT."""
        try:
            runtime = runtime_for_file(model.format, engine_build=tensorrt is not None)
        except InvalidInputError as exc:
            raise MeasurementError(f"{model.path}: {exc}") from exc

        def specs(tensors: Sequence[Any]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, tuple(t.shape), t.dtype) for t in tensors)

        return cls(arch, model.path, model.sha256, runtime, specs(model.inputs), specs(model.outputs), tensorrt)

    def spec(self) -> ModelSpec:
        return ModelSpec(
            arch_id=self.arch.id,
            arch=self.arch.to_dict(),
            model_file=self.remote_name,
            sha256=self.sha256,
            runtime=self.runtime,
            inputs=self.inputs,
            outputs=self.outputs,
            tensorrt=self.tensorrt,
        )


@dataclass
class BatchReport:
    """What became of each model of a batch: a record (ok or failed), or nothing (link lost)."""

    results: list[MeasureResult] = field(default_factory=list)
    not_measured: list[Subject] = field(default_factory=list)
    reconnects: int = 0

    @property
    def ok(self) -> list[MeasureResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[MeasureResult]:
        return [r for r in self.results if not r.ok]


class DeviceSession:
    """Open with `with DeviceSession(device, cache_dir) as s:`; then `s.probe` and `s.measure(...)`."""

    def __init__(
        self,
        device: Device,
        cache_dir: Path,
        trust_on_first_use: bool = False,
        reconnects: int = 2,
        cleanup: bool = True,
        check_runtime: bool = True,
    ) -> None:
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.reconnects = reconnects
        self.cleanup = cleanup
        self.check_runtime = check_runtime
        self.transport: Transport = transport_for(
            device, trust_on_first_use=trust_on_first_use, local_dir=self.cache_dir / "devices" / device.key
        )
        self.probe: ProbeReport | None = None
        #: Every batch id of this session carries it (`b-<session>-<batch>`): records taken in
        #: one session are told apart from a later one's (session drift, see surrogates.drift).
        self.session_id = uuid.uuid4().hex[:12]
        self._agent_sha: str | None = None
        self._complete = True

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "DeviceSession":
        self.open()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        finished = exc_type is None and self._complete
        self.close(remove_work_dir=self.cleanup and (finished or not self.transport.reuses_work_folder))

    def open(self) -> None:
        self.transport.open()
        self._ship_agent()
        self.probe = self._probe()
        if self.check_runtime:
            self.runtime_version(self.device.runtime)

    def runtime_version(self, runtime: str) -> str | None:
        """The version of `runtime` on the device; a runtime the probe did not find is an
        error that says what to install (checked on open for the device's own runtime)."""
        assert self.probe is not None, "the session is not open"
        found = self.probe.runtimes.get(runtime)
        if found is None or not found.available:
            raise InvalidInputError(
                f"device {self.device.key} has no {runtime} ({found.detail if found else 'not reported'}); "
                f"install it there (e.g. pip install {host_runtime(runtime).package}), or set the device's runtime"
            )
        return found.version

    def close(self, remove_work_dir: bool = False) -> None:
        try:
            if remove_work_dir:
                self.transport.remove_work_dir()
        except DeviceUnreachableError as exc:
            log.warning("%s: could not clean the work dir (%s)", self.device.key, exc)
        finally:
            self.transport.close()

    def _ship_agent(self) -> None:
        local = self.cache_dir / "agent" / AGENT_NAME
        self._agent_sha = build_pyz(str(local))
        self.transport.upload(local, AGENT_NAME, self._agent_sha)

    def _agent(self, *args: str) -> list[str]:
        return [self.device.python, self.transport.remote_path(AGENT_NAME), *args]

    def _probe(self) -> ProbeReport:
        res = self.transport.run(self._agent("probe", "--work-dir", self.transport.work_dir), PROBE_TIMEOUT_S)
        if res.returncode != 0:
            raise DeviceUnreachableError(
                f"{self.device.key}: the agent's probe failed (exit {res.returncode}): {res.stderr.strip()[-500:]}"
            )
        try:
            return ProbeReport.from_dict(json.loads(res.stdout))
        except (ValueError, RecordError) as exc:
            raise MeasurementError(f"{self.device.key}: the agent's probe report is invalid ({exc})") from exc

    def _reconnect(self) -> None:
        self.transport.close()
        self.transport.open()
        self._ship_agent()

    # ------------------------------------------------------------------ measuring
    def measure(
        self,
        models: Sequence[ShippableModel],
        protocol: Protocol,
        on_result: Callable[[MeasureResult], None] | None = None,
    ) -> BatchReport:
        """Measure `models` under `protocol`; each record reaches `on_result` as it arrives."""
        report = BatchReport()
        pending = {m.spec().arch_id: m for m in models}
        if len(pending) != len(models):
            raise MeasurementError("the same arch appears twice in one batch; measure it once")

        def deliver(result: MeasureResult, batch_id: str = HOST_BATCH) -> None:
            model = pending.get(result.arch_id)
            if model is None:
                raise MeasurementError(
                    f"{self.device.key}: the agent answered for an arch it was not asked (or answered twice): "
                    f"{result.arch_id}; nothing was written for it. {BROKEN_AGENT_FIX}"
                )
            self.check_record(result, model, protocol, batch_id)
            del pending[result.arch_id]
            report.results.append(result)
            if on_result:
                on_result(result)

        while pending:
            try:
                self._run_batch(list(pending.values()), protocol, deliver)
            except DeviceUnreachableError as exc:
                # `reconnects` bounds the reconnects of the whole call; a reconnect that fails
                # is retried while any are left (a board coming back needs more than one try).
                lost = exc
                while report.reconnects < self.reconnects:
                    report.reconnects += 1
                    log.warning(
                        "%s: %s; reconnecting (%d/%d)", self.device.key, lost, report.reconnects, self.reconnects
                    )
                    try:
                        self._reconnect()
                        break
                    except DeviceUnreachableError as again:
                        log.error("%s: reconnect failed (%s)", self.device.key, again)
                        lost = again
                else:
                    log.error("%s: giving up after %d reconnects (%s)", self.device.key, report.reconnects, lost)
                    break
        report.not_measured = [m.arch for m in pending.values()]
        self._complete = not pending
        return report

    def outputs(self, model: ShippableModel, inputs: Any, timeout_s: float = 600.0) -> list[Any]:
        """The device runtime's outputs of `model` for each sample of `inputs` (n, ...), run
        alone at batch 1 (``agent.pyz infer``): one list of numpy arrays per sample.

        The device side of a parity check: the exact shipped file, the device's own runtime
        build (an aarch64 wheel, an older onnxruntime), the host's fixed inputs.
        """
        import numpy as np

        arr = np.ascontiguousarray(inputs)
        with tempfile.TemporaryDirectory(prefix="ofa2-edge-infer-") as tmp:
            local = Path(tmp) / "inputs.npy"
            np.save(local, arr, allow_pickle=False)
            name = f"inputs-{uuid.uuid4().hex[:12]}.npy"
            self.transport.upload(model.path, model.remote_name, model.sha256)
            self.transport.upload(local, name)
        argv = self._agent("infer", "--runtime", model.runtime, "--model", self.transport.remote_path(model.remote_name),
                           "--inputs", self.transport.remote_path(name))
        res = self.transport.run(argv, timeout_s)
        if res.returncode != 0:
            raise MeasurementError(
                f"{self.device.key}: the agent could not run {model.arch.id} on its inputs "
                f"(exit {res.returncode}): {res.stderr.strip()[-500:]}"
            )
        try:
            doc = json.loads(res.stdout.strip().splitlines()[-1])
            if doc.get("schema") != "agent.infer" or doc.get("schema_version") != 1:
                raise ValueError(f"expected schema agent.infer version 1, got {doc.get('schema')!r}")
            out = [[np.asarray(o["values"], dtype=np.float64).reshape(o["shape"]) for o in sample]
                   for sample in doc["outputs"]]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise MeasurementError(f"{self.device.key}: the agent's infer output is invalid ({exc}). "
                                   f"{BROKEN_AGENT_FIX}") from exc
        if len(out) != len(arr):
            raise MeasurementError(f"{self.device.key}: the agent answered {len(out)} sample(s), not {len(arr)}")
        return out

    def unloadable(self, model: ShippableModel) -> str | None:
        """Why the device's onnxruntime cannot load `model` (its ONNX IR version or opset is
        newer than that release reads), or None when it can or the question does not apply."""
        if model.runtime != "onnxruntime" or self.probe is None:
            return None
        found = self.probe.runtimes.get("onnxruntime")
        if found is None or not found.available or not found.version:
            return None
        from exporters.onnx_compat import check_loadable, file_versions
        from ofa2_edge.core.errors import ExportError

        try:
            ir_version, opset = file_versions(model.path)
        except Exception:  # noqa: BLE001 - an unreadable file is the device load's to report
            return None
        try:
            check_loadable(ir_version, opset, found.version, f"{model.path.name} ({model.arch.id})")
        except ExportError as exc:
            return str(exc)
        return None

    def _upload_models(
        self, models: Sequence[ShippableModel], deliver: Callable[[MeasureResult], None], protocol: Protocol
    ) -> list[ShippableModel]:
        shipped = []
        for m in models:
            unloadable = self.unloadable(m)
            if unloadable is not None:  # never shipped: the board's runtime would refuse it
                deliver(self.failure_record(m, protocol, FailureKind.MODEL_LOAD_ERROR, unloadable))
                continue
            try:
                self.transport.upload(m.path, m.remote_name, m.sha256)
            except UploadCorruptedError as exc:  # a bad copy on a live link: record it, go on
                deliver(self.failure_record(m, protocol, FailureKind.UPLOAD_ERROR, str(exc)))
                continue
            shipped.append(m)
        return shipped

    def check_record(self, record: MeasureResult, model: ShippableModel, protocol: Protocol, batch_id: str) -> None:
        """Refuse a record that is not an answer to what was asked, before anyone stores it.

        The one gate between a device and a latency table: the record must be about the
        requested model (arch id, arch, file, sha256, runtime, TensorRT build), taken under
        the requested protocol in this batch, on the probed device (key, fingerprint, agent
        and runtime version). Physics (finite, positive, ordered statistics, the estimate
        inside [min, max], bounded sizes) was checked when the line was parsed
        (:func:`device_agents.records.parse_agent_line`). Raises MeasurementError naming
        the device, the arch and the field; nothing of the record is kept.
        """
        probe = self.probe
        spec = model.spec()
        expected: list[tuple[str, Any, Any]] = [
            ("arch_id", record.arch_id, spec.arch_id),
            ("batch_id", record.batch_id, batch_id),
            ("device_key", record.device_key, self.device.key),
            ("device_fingerprint", record.device_fingerprint, probe.fingerprint if probe else None),
            ("arch", _canonical(record.arch), _canonical(spec.arch)),
            ("model_file", record.model_file, spec.model_file),
            ("model_sha256", record.model_sha256, spec.sha256),
            ("runtime", record.runtime, spec.runtime),
            ("tensorrt", record.tensorrt, spec.tensorrt),
            ("protocol", record.protocol, protocol),
        ]
        if batch_id != HOST_BATCH and probe is not None:
            expected.append(("agent_version", record.agent_version, probe.agent_version))
            runtime = probe.runtimes.get(record.runtime)
            if record.ok:
                expected.append(("runtime_version", record.runtime_version, runtime.version if runtime else None))
        for name, got, want in expected:
            if got != want:
                shown = str(got.to_dict() if isinstance(got, Protocol) else got)
                raise MeasurementError(
                    f"{self.device.key}: the agent's record for {record.arch_id} does not answer the request: "
                    f"field {name} is {shown[:200]!r}, expected {str(want)[:200]!r}; nothing was written for it. "
                    f"{BROKEN_AGENT_FIX}"
                )

    def failure_record(self, m: ShippableModel, protocol: Protocol, kind: FailureKind, msg: str) -> MeasureResult:
        now = datetime.now(timezone.utc).isoformat()
        return MeasureResult.failure(
            kind,
            msg,
            m.spec(),
            protocol,
            batch_id=HOST_BATCH,
            started_at=now,
            finished_at=now,
            device_key=self.device.key,
            device_fingerprint=self.probe.fingerprint if self.probe else None,
        )

    def _run_batch(
        self, models: Sequence[ShippableModel], protocol: Protocol, deliver: Callable[..., None]
    ) -> None:
        models = self._upload_models(models, deliver, protocol)
        if not models:
            return
        batch_id = f"b-{self.session_id}-{uuid.uuid4().hex[:8]}"
        request = MeasureRequest(
            batch_id, self.device.key, self.transport.work_dir, protocol, tuple(m.spec() for m in models)
        )
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / f"request-{batch_id}.json"
            local.write_text(json.dumps(request.to_dict()))
            remote = self.transport.upload(local, local.name)
        ended: list[BatchEnd] = []

        def on_line(line: str) -> None:
            if not line.strip():
                return
            try:
                record = parse_agent_line(line, where=f"{self.device.key} agent")
            except RecordError as exc:
                raise MeasurementError(
                    f"{self.device.key}: the agent sent an invalid record ({exc}); nothing was written for it. "
                    f"{BROKEN_AGENT_FIX}"
                ) from exc
            if isinstance(record, BatchEnd):
                if record.batch_id != batch_id:
                    raise MeasurementError(
                        f"{self.device.key}: the agent ended batch {record.batch_id[:40]!r}, not {batch_id!r}. "
                        f"{BROKEN_AGENT_FIX}"
                    )
                ended.append(record)
            else:
                deliver(record, batch_id)

        res = self.transport.run(
            self._agent("measure", "--watch-stdin", "--request", remote), request.worst_case_s(), on_line
        )
        if res.returncode == 2:
            raise MeasurementError(f"{self.device.key}: the agent refused the request: {res.stderr.strip()[-500:]}")
        if res.timed_out:
            raise MeasurementError(f"{self.device.key}: the agent did not finish within {request.worst_case_s():.0f} s")
        if not ended:
            raise DeviceUnreachableError(
                f"{self.device.key}: the agent stopped before the end of the batch (exit {res.returncode}; "
                f"{res.stderr.strip()[-300:]})"
            )

    # ------------------------------------------------------------------ classifying
    def classify(self, model: ShippableModel, images: Path, threads: int = 1, timeout_s: float = 600.0) -> list[int]:
        """Top-1 labels of the images in `images` (a float32 .npy batch, preprocessed on the
        host) by `model` run on the device through the agent (`agent.pyz classify`).

        Both files travel with their sha256, which the agent checks; the answer must name
        them, the probed agent version and one label per image, else MeasurementError."""
        from ofa2_edge.core.persist import sha256_file

        images_sha = sha256_file(images)
        self.transport.upload(model.path, model.remote_name, model.sha256)
        remote_images = self.transport.upload(images, f"images-{images_sha[:16]}.npy", images_sha)
        argv = self._agent(
            "classify", "--model", self.transport.remote_path(model.remote_name), "--model-sha256", model.sha256,
            "--images", remote_images, "--images-sha256", images_sha, "--runtime", model.runtime,
            "--threads", str(threads),
        )  # fmt: skip
        res = self.transport.run(argv, timeout_s)
        if res.timed_out:
            raise MeasurementError(f"{self.device.key}: classifying the images took longer than {timeout_s:.0f} s")
        if res.returncode != 0:
            raise MeasurementError(
                f"{self.device.key}: the agent could not classify the images (exit {res.returncode}): "
                f"{res.stderr.strip()[-500:]}"
            )
        lines = [line for line in res.stdout.splitlines() if line.strip()]
        try:
            doc = json.loads(lines[-1]) if lines else None
        except ValueError:
            doc = None
        n = _npy_rows(images)
        checks = isinstance(doc, dict) and (
            doc.get("event") == "agent.predictions"
            and doc.get("model_sha256") == model.sha256
            and doc.get("images_sha256") == images_sha
            and (self.probe is None or doc.get("agent_version") == self.probe.agent_version)
            and isinstance(doc.get("top1"), list)
            and len(doc["top1"]) == n
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 20 for v in doc["top1"])
        )
        if not checks:
            raise MeasurementError(
                f"{self.device.key}: the agent's predictions do not answer the request (expected {n} labels for model "
                f"{model.sha256[:12]} and images {images_sha[:12]}). {BROKEN_AGENT_FIX}"
            )
        return list(doc["top1"])  # type: ignore[index]


def _npy_rows(path: Path) -> int:
    """The first dimension of a .npy file, read from its header (never unpickled)."""
    import numpy as np

    return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
