"""Calibration wall time of a device group: 8 loopback boards vs 1, the same total budget.

Starts 8 OpenSSH servers on 127.0.0.1 (each a "board": this machine, the real agent, its own
port, host key and work folder), exports the design once (so both runs only ship and
measure), then calibrates the same design (`calibrate_group`, quick protocol) with one board
(no anchors) and with all eight (2 anchors measured on each), and reports both wall times,
their ratio, the models per second, and the part-to-part spread the eight boards report.
On a real fleet the boards are separate machines and the bottleneck, their measurements
overlap and the ratio approaches 8. Here every "board" is this machine: their agents report
one kernel boot id, so `calibrate_group` times them one at a time (at once they would take
each other's cores and the table would price a load no single board sees); the figure then
shows the queue's overhead and the anchors' extra models, not a fleet's speed-up.

    python benchmarks/fleet_scale.py [--budget 24] [--boards 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import load1, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from sshd import make_sshd  # noqa: E402

from exporters import ExportCache, export_subnet  # noqa: E402
from ofa2_edge.calibration.calibrate import design_archs  # noqa: E402
from ofa2_edge.calibration.group import calibrate_group  # noqa: E402
from ofa2_edge.core.workspace import Workspace  # noqa: E402
from ofa2_edge.devices.inventory import Device  # noqa: E402
from ofa2_edge.devices.pipeline import standard_protocol  # noqa: E402
from ofa2_edge.space.arch import SearchSpace  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--boards", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    space = SearchSpace(resolutions=(160, 192))
    protocol = standard_protocol(1, quick=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = Workspace.resolve(root / "ws")
        servers = [make_sshd(root / "sshd" / f"b{i}") for i in range(args.boards)]
        try:
            boards = [
                Device(key=f"board-{i}", transport="ssh", host="127.0.0.1", port=s.port, user=s.user,
                       key_file=str(s.client_key), known_hosts=str(s.known_hosts),
                       work_dir=str(root / "remote" / f"b{i}"), python=sys.executable, group="fleet")
                for i, s in enumerate(servers)
            ]  # fmt: skip
            cache = ExportCache(ws.exports_dir)
            t0 = time.perf_counter()
            for arch in design_archs(args.budget, 0, space):
                export_subnet(arch, "onnx", cache=cache)
            export_s = time.perf_counter() - t0
            runs = {}
            for name, group in (("one", boards[:1]), ("all", boards)):
                t0 = time.perf_counter()
                summary = calibrate_group(f"scale-{name}", group, ws, args.budget, protocol, space=space,
                                          anchors=0 if name == "one" else 2)  # fmt: skip
                runs[name] = {"boards": len(group), "seconds": round(time.perf_counter() - t0, 1),
                              "measured": summary["measured_now"], "spread_pct": summary["spread_pct"],
                              "per_board": {r["key"]: r["measured_now"] for r in summary["replicas"]}}  # fmt: skip
        finally:
            for s in servers:
                s.stop()
    figures = {"budget": args.budget, "boards": args.boards, "export_s": round(export_s, 1), "runs": runs,
               "speedup": runs["one"]["seconds"] / runs["all"]["seconds"],
               "models_per_s_ratio": (runs["all"]["measured"] / runs["all"]["seconds"]) / (runs["one"]["measured"] / runs["one"]["seconds"]),
               "load1_at_end": load1()}  # fmt: skip
    one, everything = runs["one"], runs["all"]
    text = "\n".join([
        "# Device group: 8 loopback boards vs 1",
        "",
        f"Design of {args.budget} subnets (160 and 192 px), quick protocol, exported beforehand ({export_s:.0f} s).",
        "",
        "| boards | wall time | measured | per board |",
        "|---|---|---|---|",
        f"| 1 | {one['seconds']:.0f} s | {one['measured']} | {one['measured']} |",
        f"| {everything['boards']} | {everything['seconds']:.0f} s | {everything['measured']} (with 2 anchors on each) | "
        + ", ".join(str(v) for v in everything["per_board"].values()) + " |",
        "",
        f"Speed-up {figures['speedup']:.2f}x in wall time, {figures['models_per_s_ratio']:.2f}x in models per second. "
        f"Part-to-part spread the {everything['boards']} boards report: {everything['spread_pct']:.1f} % (they are one "
        "machine: this is measurement noise under load). The boards are this machine (one kernel boot id), so "
        "they are timed one at a time: no speed-up is possible here; on boards that are separate machines the "
        f"measurements overlap. Load at end {figures['load1_at_end']}.",
    ])  # fmt: skip
    write_results(args.json, figures, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
