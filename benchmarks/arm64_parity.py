"""Cross-architecture parity: OFA subnets on emulated aarch64 boards against host torch.

For each emulated board image (scripts/build-arm64-sysroot: Debian 12 / Python 3.11 and
Debian 11 / Python 3.9, aarch64 wheels of onnxruntime and ai-edge-litert, run by qemu-user),
OFA-min at 160 px and OFA-max at 224 px (random weights, noise-recalibrated BatchNorm: what
`export_subnet` ships for latency work) are exported to ONNX and TFLite, run by the board's
own runtime through the agent (`agent.pyz infer`) on the export's seeded parity inputs, and
compared with torch on the host and with the host's runtime on the same file: max abs diff,
the export's tolerance, top-1 agreement. One short measurement of OFA-min per board, beside the
same on the host, gives the emulation slowdown (why emulated timings are never a latency
source). The board is the `local` transport with the image's launcher as its Python (the
tests drive the same boards over SSH).

    python benchmarks/arm64_parity.py [--images debian12,debian11] [--inputs 3] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import machine_info

from device_agents.records import Protocol
from exporters import export_subnet
from exporters.api import BN_NOISE_IMAGES, BN_NOISE_SEED, random_supernet
from exporters.parity import PARITY_SEED, parity_inputs, top1_agreement, torch_outputs
from ofa2_edge.deploy.verify import host_outputs
from ofa2_edge.devices.inventory import Device
from ofa2_edge.devices.session import DeviceSession, ShippableModel
from ofa2_edge.space.arch import Arch
from ofa2_edge.supernet import noise_batches, recalibrate_bn

NETS = (("OFA-min", "smallest", 160), ("OFA-max", "largest", 224))
FORMATS = ("onnx", "tflite")
SHORT = Protocol(threads=1, warmup_runs=1, warmup_min_s=0.0, blocks=1, runs_per_block=3, block_min_s=0.0,
                 block_warmup_runs=0, interleave=1, cooldown_s=0.0, timeout_s=600.0, remeasure=0, quiet_wait_s=0.0)


def sysroots() -> Path:
    env = os.environ.get("OFA2_EDGE_ARM64_SYSROOTS")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(env) if env else Path(cache) / "ofa2-edge" / "arm64"


def torch_reference(arch: Arch, inputs: np.ndarray) -> np.ndarray:
    """Torch's outputs of the subnet `export_subnet(arch)` exports (same weights and BN statistics)."""
    subnet = random_supernet(arch.w).extract(arch)
    recalibrate_bn(subnet, noise_batches(arch.r, BN_NOISE_SEED, batch_size=BN_NOISE_IMAGES),
                   source=f"noise:{BN_NOISE_SEED}")
    subnet.eval()
    return torch_outputs(subnet, inputs)


def run_image(name: str, n_inputs: int, work: Path) -> dict[str, Any]:
    image = sysroots() / name
    meta = json.loads((image / "sysroot.json").read_text())
    device = Device(key=f"emu-{name}", python=str(image / "bin" / "python3"), work_dir=str(work / name))
    Path(device.work_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    with DeviceSession(device, work / "cache") as session:
        probe = session.probe
        assert probe is not None
        for label, ctor, r in NETS:
            arch = getattr(Arch, ctor)(r)
            inputs = parity_inputs(r, n_inputs)
            reference = torch_reference(arch, inputs)
            for fmt in FORMATS:
                exported = export_subnet(arch, fmt)
                model = ShippableModel.from_export(exported, arch)
                device_out = np.concatenate([s[0] for s in session.outputs(model, inputs)])
                host_out = np.concatenate([host_outputs(model, x[None])[0] for x in inputs])
                rows.append({
                    "net": label, "r": r, "format": fmt, "runtime": model.runtime,
                    "device_runtime_version": session.runtime_version(model.runtime),
                    "max_abs_diff_vs_torch": float(np.max(np.abs(device_out - reference))),
                    "host_max_abs_diff_vs_torch": float(np.max(np.abs(host_out - reference))),
                    "max_abs_diff_vs_host_runtime": float(np.max(np.abs(device_out - host_out))),
                    "reference_max_abs": float(np.max(np.abs(reference))),
                    "tolerance": exported.parity["tolerance"],
                    "top1_agreement": top1_agreement(reference, device_out),
                })
                print(f"{name} {label}@{r} {fmt}: device vs torch {rows[-1]['max_abs_diff_vs_torch']:.2e}, "
                      f"host vs torch {rows[-1]['host_max_abs_diff_vs_torch']:.2e}", file=sys.stderr, flush=True)
        smallest = Arch.smallest(160)
        model = ShippableModel.from_export(export_subnet(smallest, "onnx"), smallest)
        (emulated,) = session.measure([model], SHORT).results
    return {"image": name, "debian": meta["debian_suite"], "python": meta["python_version"],
            "runtimes": meta["runtimes"], "qemu": meta["qemu"], "emulation": probe.emulation.evidence
            if probe.emulation else None, "rows": rows,
            "min160_emulated_ms": emulated.estimate_ms if emulated.ok else None}


def host_min160(work: Path) -> float | None:
    arch = Arch.smallest(160)
    model = ShippableModel.from_export(export_subnet(arch, "onnx"), arch)
    with DeviceSession(Device(key="local"), work / "cache") as session:
        (result,) = session.measure([model], SHORT).results
    return result.estimate_ms if result.ok else None


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# arm64 parity", "",
             f"Parity inputs: {doc['inputs']} seeded N(0,1) images (seed {PARITY_SEED}); random weights with "
             "noise-recalibrated BatchNorm (what `export_subnet` ships for latency work).", "",
             "| board | net | format | device runtime | device vs torch | host vs torch | device vs host runtime "
             "| tolerance | top-1 agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for img in doc["images"]:
        board = f"Debian {img['debian']} / Python {img['python']}"
        for row in img["rows"]:
            lines.append(f"| {board} | {row['net']}@{row['r']} | {row['format']} | {row['device_runtime_version']} | "
                         f"{row['max_abs_diff_vs_torch']:.2e} | {row['host_max_abs_diff_vs_torch']:.2e} | "
                         f"{row['max_abs_diff_vs_host_runtime']:.2e} | {row['tolerance']:.0e} | "
                         f"{row['top1_agreement']:.2f} |")
    lines += ["", "Emulation slowdown (never a latency source; 1 block of 3 runs, minimum-based estimate):", ""]
    host = doc["host_min160_ms"]
    for img in doc["images"]:
        emu = img["min160_emulated_ms"]
        ratio = f"{emu / host:.0f}x" if emu and host else "-"
        lines.append(f"- {img['image']} ({img['qemu']}): OFA-min@160 onnxruntime {emu:.1f} ms emulated vs "
                     f"{host:.2f} ms on the host: {ratio}")
    worst = max(r["max_abs_diff_vs_torch"] / r["tolerance"] for img in doc["images"] for r in img["rows"])
    lines += ["", f"Worst device difference as a share of the export tolerance: {worst:.1%}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="debian12,debian11")
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="arm64-parity-") as tmp:
        work = Path(tmp)
        images = [run_image(name, args.inputs, work) for name in args.images.split(",") if name]
        doc = {"machine": machine_info(), "inputs": args.inputs, "images": images, "host_min160_ms": host_min160(work)}
    text = markdown(doc)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
