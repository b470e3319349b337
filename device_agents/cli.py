"""Command line of the agent: ``probe``, ``measure --request FILE``, ``classify`` (top-1 labels
of an image batch), ``infer`` (outputs for a parity check), and the internal ``worker``.

stdout carries data only (the probe document, or one JSON line per result and a final
``agent.batch_end`` line); progress and logs go to stderr. Exit status: 0 when the batch
ran (failed models are records, not errors), 2 for an invalid request or arguments, 3
when ``measure --watch-stdin`` saw its stdin close (the host died or the link dropped:
the workers are killed at once, results not yet printed are lost).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from device_agents import AGENT_VERSION
from device_agents.records import BatchEnd, MeasureRequest, MeasureResult, RecordError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _err(message: str) -> None:
    print(f"[agent] {message}", file=sys.stderr, flush=True)


def load_request(path: str) -> MeasureRequest:
    """Read and validate a request; a relative work_dir is taken relative to the request file."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: not a readable JSON file ({exc})") from None
    request = MeasureRequest.from_dict(doc, where=os.path.basename(path))
    work_dir = request.work_dir
    if not os.path.isabs(work_dir):
        work_dir = os.path.join(os.path.dirname(os.path.abspath(path)), work_dir)
    if not os.path.isdir(work_dir):
        raise RecordError(f"{path}: work_dir {work_dir} is not a directory on this device")
    affinity = request.protocol.cpu_affinity
    if affinity is not None and hasattr(os, "sched_getaffinity"):
        allowed = os.sched_getaffinity(0)
        outside = sorted(set(affinity) - allowed)
        if outside:
            raise RecordError(f"{path}: protocol.cpu_affinity names CPU(s) {outside} this process may not use "
                              f"(allowed: {sorted(allowed)})")
    return dataclasses.replace(request, work_dir=os.path.abspath(work_dir))


def _progress(total: int) -> Any:
    done = {"n": 0}

    def hook(name: str, info: Dict[str, Any]) -> None:
        if name == "result":
            done["n"] += 1
            state = "ok" if info["ok"] else info["error_kind"]
            _err(f"[{done['n']}/{total}] {info['arch_id']}: {state}")
        elif name == "start":
            _err(f"{info['arch_id']}: loading {info['model_file']}")
        elif name == "building":
            _err(f"{info['arch_id']}: building a TensorRT engine (cached for the next run)")
        elif name == "remeasure":
            _err(f"unstable, measuring again (attempt {info['attempt']}): {', '.join(info['arch_ids'])}")
        elif name == "quiet" and not info["quiet"]:
            _err(f"the device is not quiet after waiting {info['waited_s']:.1f} s ({'; '.join(info['reasons'])}); "
                 "measuring anyway, the records say so")

    return hook


def _reader(args: argparse.Namespace) -> Any:
    from device_agents.telemetry import TelemetryReader

    return TelemetryReader(sys_root=args.sys_root, proc_root=args.proc_root)


def cmd_probe(args: argparse.Namespace) -> int:
    from device_agents.probe import probe

    report = probe(args.work_dir, _reader(args))
    print(json.dumps(report.to_dict(), allow_nan=False), flush=True)
    return EXIT_OK


def cmd_measure(args: argparse.Namespace) -> int:
    from device_agents.runner import BatchRunner, exit_when_host_gone

    if args.watch_stdin:
        exit_when_host_gone(sys.stdin.buffer)
    try:
        request = load_request(args.request)
    except RecordError as exc:
        _err(f"invalid request: {exc}")
        return EXIT_USAGE
    t0 = time.monotonic()
    _err(f"agent {AGENT_VERSION}: measuring {len(request.models)} model(s) in {request.work_dir}")

    def emit(result: MeasureResult) -> None:
        sys.stdout.write(result.to_json_line() + "\n")
        sys.stdout.flush()

    runner = BatchRunner(request, emit, reader=_reader(args), on_event=_progress(len(request.models)))
    results = runner.run()
    n_ok = sum(1 for r in results if r.ok)
    end = BatchEnd(request.batch_id, len(results), n_ok, len(results) - n_ok, round(time.monotonic() - t0, 3))
    sys.stdout.write(json.dumps(end.to_dict(), separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    from device_agents.classify import main as classify_main

    return classify_main(args)


def cmd_infer(args: argparse.Namespace) -> int:
    from device_agents.infer import dumps, infer
    from device_agents.runtimes.base import ModelLoadFailed, RuntimeUnavailable

    try:
        doc = infer(args.runtime, args.model, args.inputs, args.threads)
    except (RuntimeUnavailable, ModelLoadFailed, ValueError, OSError, KeyError) as exc:
        _err(f"infer failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    print(dumps(doc), flush=True)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from device_agents.worker import main as worker_main

    return worker_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent.pyz", description="ofa2-edge on-device measurement agent")
    parser.add_argument("--version", action="version", version=AGENT_VERSION)
    sub = parser.add_subparsers(dest="command")
    roots = argparse.ArgumentParser(add_help=False)
    roots.add_argument("--sys-root", default="/sys", help="sysfs root (tests point it at a fake tree)")
    roots.add_argument("--proc-root", default="/proc", help="procfs root")
    p = sub.add_parser("probe", parents=[roots], help="describe this device as one JSON document")
    p.add_argument("--work-dir", default=".", help="folder whose free disk space is reported")
    p.set_defaults(func=cmd_probe)
    m = sub.add_parser("measure", parents=[roots], help="measure the models of a request, one JSON line each")
    m.add_argument("--request", required=True, help="request JSON (schema agent.measure_request)")
    m.add_argument("--watch-stdin", action="store_true",
                   help="exit, killing the workers, when stdin reaches end of file (the host holds it open "
                        "while it lives)")
    m.set_defaults(func=cmd_measure)
    c = sub.add_parser("classify", help="top-1 label of each image of a .npy batch, as one JSON document")
    c.add_argument("--model", required=True, help="model file in the work dir")
    c.add_argument("--model-sha256", required=True, help="sha256 the host sent")
    c.add_argument("--images", required=True, help="float32 .npy (N, C, H, W), preprocessed by the host")
    c.add_argument("--images-sha256", required=True, help="sha256 the host sent")
    c.add_argument("--runtime", default="onnxruntime", help="runtime that runs the model")
    c.add_argument("--threads", type=int, default=1, help="intra-op threads")
    c.set_defaults(func=cmd_classify)
    i = sub.add_parser("infer", help="run a model on the samples of a .npy file, print its outputs as JSON")
    i.add_argument("--runtime", required=True, help="onnxruntime or litert")
    i.add_argument("--model", required=True, help="model file")
    i.add_argument("--inputs", required=True, help=".npy array (n, ...): n samples, each run alone (batch 1)")
    i.add_argument("--threads", type=int, default=1)
    i.set_defaults(func=cmd_infer)
    w = sub.add_parser("worker", help=argparse.SUPPRESS)
    w.set_defaults(func=cmd_worker)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(args.func(args))
