"""The front verified on a loopback fleet: a device group of SSH boards, its predictor's
intervals and `select --safe` picks judged on measurements of the group's replicas.

Starts `--boards` OpenSSH servers on 127.0.0.1 (each a "board": this machine, the real agent,
its own port, host key and work folder), adds them with `devices add --group fleet`, then,
all through the CLI: `calibrate --group fleet` (the group's table and predictor, with the
replicas' spread in its intervals), `search --objectives top1,latency:fleet`, and
`verify --device fleet --top N/2`, `fit --device fleet` (folds that session's drift into the
group's predictor) and `verify --device fleet --top N` (two sessions, each on the group's
first replica that answers; members kept apart from the calibration data, each judged with
the drift of the other session only). Reports coverage of the 80 % / 90 % intervals against
nominal and the violation rate of `select --safe` picks, as `front_verify.py` does for `local`.
The boards share this machine's cores: this checks the group path end to end, under load.

    OFA2_EDGE_ASSETS=../shared/ofa_assets python benchmarks/fleet_verify.py [--boards 4] [--budget 30] [--top 60]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from benchlib import drift_figures, drift_rows, load1, violation_figures, violation_rows, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from sshd import make_sshd  # noqa: E402

from ofa2_edge.cli.main import main as cli  # noqa: E402


def run_cli(*args: str) -> str:
    """One CLI command; its stdout (a JSON document with --json); a failure stops the benchmark."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(list(args))
    if code != 0:
        raise SystemExit(f"ofa2-edge {' '.join(args)} exited {code}")
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", type=int, default=4)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--top", type=int, default=60)
    ap.add_argument("--pop", type=int, default=60)
    ap.add_argument("--gens", type=int, default=40)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = ["-W", str(root / "ws")]
        servers = [make_sshd(root / "sshd" / f"b{i}") for i in range(args.boards)]
        try:
            for i, s in enumerate(servers):
                run_cli(*ws, "devices", "add", f"board-{i}", "--host", "127.0.0.1", "--port", str(s.port), "--user",
                        s.user, "--key-file", str(s.client_key), "--known-hosts", str(s.known_hosts), "--work-dir",
                        str(root / "remote" / f"b{i}"), "--python", sys.executable, "--group", "fleet")  # fmt: skip
            t = time.perf_counter()
            cal = json.loads(run_cli(*ws, "calibrate", "--group", "fleet", "--budget", str(args.budget),
                                     "--resolutions", "160,192", "--anchors", "2", "--quick", "--json"))  # fmt: skip
            seconds["calibrate"] = time.perf_counter() - t
            run = str(root / "ws" / "runs" / "fleet")
            t = time.perf_counter()
            run_cli(*ws, "search", "--objectives", "top1,latency:fleet", "--resolutions", "160,192", "--pop",
                    str(args.pop), "--gens", str(args.gens), "--seed", "1", "--no-plot", "-o", run)  # fmt: skip
            seconds["search"] = time.perf_counter() - t
            t = time.perf_counter()
            run_cli(*ws, "verify", run, "--device", "fleet", "--top", str(max(1, args.top // 2)), "--quick", "--json")
            run_cli(*ws, "fit", "--device", "fleet", "--width", "1.2", "--json")
            doc = json.loads(run_cli(*ws, "verify", run, "--device", "fleet", "--top", str(args.top), "--quick", "--json"))
            seconds["verify"] = time.perf_counter() - t
        finally:
            for s in servers:
                s.stop()
    cov, vio = doc["coverage"], doc["violations"]
    figures = {"boards": args.boards, "budget": args.budget, "spread_pct": cal.get("spread_pct"),
               "replica": doc.get("replica"), "counts": doc["counts"], "coverage": cov, "violations": violation_figures(vio),
               "drift": drift_figures(doc),
               "error": doc["error"], "test_retest": doc["test_retest"],
               "hypervolume": doc["hypervolume"], "seconds": seconds, "load1_at_end": load1()}  # fmt: skip

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    lines = [
        f"# Front verified on a loopback fleet ({args.boards} SSH boards, group `fleet`)",
        "",
        f"Group calibration budget {args.budget} (160 and 192 px, quick protocol, 2 anchors on every replica; "
        f"part-to-part spread {cal.get('spread_pct', 0):.1f} %); front members verified on replica "
        f"{doc.get('replica')}: {doc['counts']['measured']} measured, {doc['counts']['scored']} scored "
        f"({doc['counts']['in_calibration']} in the calibration data, not scored). Wall time: calibrate "
        f"{seconds['calibrate']:.0f} s, search {seconds['search']:.0f} s, verify (two sessions and the fit between) {seconds['verify']:.0f} s.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| coverage of the 80 % interval | {pct(cov['80']['actual'])} (n={cov['80']['n']}) | 80 % +- 5 points |",
        f"| coverage of the 90 % interval | {pct(cov['90']['actual'])} (n={cov['90']['n']}) | 90 % +- 5 points |",
        f"| MAPE on the front | {doc['error']['mape_pct']:.1f} % | |" if doc["error"]["mape_pct"] is not None else "| MAPE | - | |",
    ]
    lines += violation_rows(figures["violations"], "0.9", "<= 10 %, 0 beyond retest")
    lines += drift_rows(figures["drift"])
    hv = doc["hypervolume"]
    if hv.get("ratio") is not None:
        lines.append(f"| HV of the front, predicted / measured | {hv['predicted']:.4g} / {hv['measured']:.4g} "
                     f"(ratio {hv['ratio']:.3f}) | ratio ~1 |")  # fmt: skip
    lines += ["", f"The boards are this machine (shared cores, other jobs: load at end {figures['load1_at_end']}); "
              "the test-retest difference of the replica: " + f"{doc['test_retest'].get('pct', 0):.1f} %."]  # fmt: skip
    text = "\n".join(lines)
    write_results(args.json, figures, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
