"""How big and how responsive the offline dashboard is for a given run.

Prints: the page size split (Plotly's embedded JS vs our data blob), the build time, and in
headless Chromium (network blocked) the time to the first drawn chart and the median time
of a slider update (filter + Plotly.react + table rebuild, measured inside the page).
Timings on a shared machine are noisy: compare them within one run, not across machines.

    python benchmarks/dashboard_page.py RUN_FOLDER [-W WORKSPACE] [--updates 40]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.dashboard import build_data, render_page
from ofa2_edge.search.runstore import RunFolder

FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip

UPDATE = """(n) => {
  const input = document.getElementById("max-latency"), lo = +input.min, hi = +input.max, times = [];
  for (let k = 0; k < n; k++) {
    input.value = String(lo + ((k % 10) + 1) * (hi - lo) / 10);
    const t0 = performance.now();
    input.dispatchEvent(new Event("input", {bubbles: true}));
    times.push(performance.now() - t0);
  }
  return times;
}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("-W", "--workspace", type=Path, default=None)
    parser.add_argument("--updates", type=int, default=40)
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = build_data(RunFolder(args.run).require(), Workspace.resolve(args.workspace))
    t1 = time.perf_counter()
    page = render_page(data)
    t2 = time.perf_counter()
    blob = re.search(r'id="dashboard-data">(.*?)</script>', page, re.DOTALL).group(1)  # type: ignore[union-attr]
    from plotly.offline import get_plotlyjs

    size = len(page.encode())
    print(f"run {data['run']['id']}: {data['front']['n']} candidates, {len(data['devices'])} device(s)")
    print(
        f"page {size / 1e6:.2f} MB: plotly.js {len(get_plotlyjs()) / 1e6:.2f} MB, data blob {len(blob.encode()) / 1e3:.0f} kB"
    )
    print(f"build: data {t1 - t0:.2f} s, render {t2 - t1:.2f} s")

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("no chromium: browser timings skipped")
        return 0
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "page.html"
        path.write_text(page, encoding="utf-8")
        url = path.as_uri()
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(Path(tmp) / "profile"), executable_path=chromium, headless=True, args=FLAGS, offline=True
            )
            ctx.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
            tab = ctx.pages[0] if ctx.pages else ctx.new_page()
            start = time.perf_counter()
            tab.goto(url)
            tab.wait_for_function("document.querySelectorAll('#pareto .scatterlayer .point').length > 0")
            first = time.perf_counter() - start
            times = tab.evaluate(UPDATE, args.updates)
            ctx.close()
    print(
        f"chromium: first chart after {first:.2f} s; slider update median {statistics.median(times):.1f} ms, max {max(times):.1f} ms ({len(times)} updates)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
