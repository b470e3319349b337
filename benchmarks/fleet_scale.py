"""Calibration wall time of a device group: loopback boards vs 1, the same total budget.

Starts 8 OpenSSH servers on 127.0.0.1 (each a "board": this machine, the real agent, its own
port, host key and work folder), exports the design once (so every run only ships and
measures), then calibrates the same design (`calibrate_group`, quick protocol, 1 thread)
four times, each into a table of its own:

- `one`: one board pinned to CPU 0 (a one-core board; no anchors);
- `cores`: one board per CPU of this machine, each pinned to its own (2 anchors on each):
  boards that are the bottleneck and do not share CPUs, the case a fleet of separate
  machines is; the ideal speed-up is the number of CPUs;
- `pinned`: all 8 boards pinned round-robin to the CPUs (boards on one CPU queue behind
  each other, those on different CPUs overlap);
- `unpinned`: all 8 boards unpinned: one kernel boot id and no CPU sets, so `calibrate_group`
  times them one at a time (at once they would take each other's cores and the table would
  price a load no single board sees); this shows the queue's overhead and the anchors' extra
  models, not a speed-up.

A fleet of 8 separate machines would be `cores` with 8 CPUs; this 2-core host can show 2.

    python benchmarks/fleet_scale.py [--budget 24] [--boards 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
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
            everywhere = sorted(os.sched_getaffinity(0))
            plans = {"one": (boards[:1], [everywhere[:1]]),
                     "cores": (boards[:len(everywhere)], [[c] for c in everywhere]),
                     "pinned": (boards, [[everywhere[i % len(everywhere)]] for i in range(len(boards))]),
                     "unpinned": (boards, [everywhere] * len(boards))}  # fmt: skip
            runs = {}
            for name, (group, cpus) in plans.items():
                for server, own in zip(servers, cpus):
                    assert server.proc is not None
                    os.sched_setaffinity(server.proc.pid, set(own))  # its sessions and agents inherit it
                t0 = time.perf_counter()
                summary = calibrate_group(f"scale-{name}", group, ws, args.budget, protocol, space=space,
                                          anchors=0 if name == "one" else 2)  # fmt: skip
                runs[name] = {"boards": len(group), "seconds": round(time.perf_counter() - t0, 1),
                              "measured": summary["measured_now"], "spread_pct": summary["spread_pct"],
                              "cpus": [r["cpus"] for r in summary["replicas"]],
                              "timed_one_at_a_time": summary["timed_one_at_a_time"],
                              "per_board": {r["key"]: r["measured_now"] for r in summary["replicas"]}}  # fmt: skip
        finally:
            for s in servers:
                s.stop()
    one = runs["one"]
    for run in runs.values():
        run["speedup"] = one["seconds"] / run["seconds"]
        run["models_per_s_ratio"] = (run["measured"] / run["seconds"]) / (one["measured"] / one["seconds"])
    figures = {"budget": args.budget, "boards": args.boards, "cpus": len(everywhere), "export_s": round(export_s, 1),
               "runs": runs, "load1_at_end": load1()}  # fmt: skip
    what = {"one": "1 board on CPU 0", "cores": f"{runs['cores']['boards']} boards, one per CPU",
            "pinned": f"{args.boards} boards pinned round-robin to {len(everywhere)} CPUs",
            "unpinned": f"{args.boards} boards unpinned (one machine: timed one at a time)"}  # fmt: skip
    lines = [
        f"# Device group: {args.boards} loopback boards vs 1",
        "",
        f"Design of {args.budget} subnets (160 and 192 px), quick protocol, 1 thread, exported beforehand "
        f"({export_s:.0f} s); this host has {len(everywhere)} CPUs. Each run measures the whole design into its own "
        "table; the runs with several boards also measure 2 anchors on every board.",
        "",
        "| run | wall time | measured | per board | speed-up (wall) | models per second vs 1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        lines.append(f"| {what[name]} | {run['seconds']:.0f} s | {run['measured']} | "
                     + ", ".join(str(v) for v in run["per_board"].values())
                     + f" | {run['speedup']:.2f}x | {run['models_per_s_ratio']:.2f}x |")  # fmt: skip
    cores = runs["cores"]
    lines += ["",
              f"Boards that do not share CPUs (`cores`): {cores['models_per_s_ratio']:.2f}x the models per second of one "
              f"board, against {cores['boards']}x ideal; a fleet of {args.boards} separate boards is this case with "
              f"{args.boards} of them. Part-to-part spread the pinned boards report: {runs['pinned']['spread_pct']:.1f} % "
              f"(one machine: this is measurement noise and the neighbours' cache and memory traffic). "
              f"Load at end {figures['load1_at_end']}."]  # fmt: skip
    text = "\n".join(lines)
    write_results(args.json, figures, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
