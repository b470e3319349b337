"""`ofa2-edge dashboard`: the data it embeds, its failure modes, and the page in a real browser.

The run is real: the Note10 table imported from the official assets, a second device
("edge2") calibrated from agent records and fitted with `ofa2-edge fit`, and a 4-objective
search over both. After the search, measurements of a few front archs are appended to
edge2's table (what `bundle --verify` does), so the page must show them as measured.
The browser test loads the page in headless Chromium with every non-file request
blocked, moves both sliders and checks the candidates against `front.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO
from records_factory import probe_report, record_for

from device_agents.records import FailureKind, Protocol
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE, InvalidInputError, SchemaError
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.dashboard import build_data, embed_json, render_page
from ofa2_edge.search.algorithms import default_algorithm
from ofa2_edge.search.runstore import RunFolder
from ofa2_edge.space.arch import Arch, SearchSpace
from ofa2_edge.space.costs import arch_costs
from ofa2_edge.surrogates.lut import LutSurrogate
from ofa2_edge.tables.device import DeviceTable

DEVICES = ("note10", "edge2")
MEASURED = 6  # front archs measured on edge2 after the search


def cli(capsys: pytest.CaptureFixture[str], ws: Path, *args: str) -> tuple[int, str, str]:
    code = main(["-W", str(ws), *args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def blob_of(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', page, re.DOTALL)
    assert match, "no data blob in the page"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    """A workspace with two devices, a completed 4-objective run, and measurements on edge2."""
    ws = tmp_path_factory.mktemp("dashboard-ws")
    assert main(["-W", str(ws), "tables", "import", str(assets_dir / "note10"), "--key", "note10"]) == 0
    # edge2: a board whose latency is not the Note10's (a MACs-heavy mix), measured by the agent's records.
    table = DeviceTable(ws / "latency_tables", "edge2")
    table.bind(probe_report(cpu_model="Cortex-A55"), "onnxruntime")
    fingerprint = table.device_info()["fingerprint"]
    lut = LutSurrogate.from_folder(assets_dir / "note10")
    design = SearchSpace().sample(40, np.random.default_rng(0))
    macs = np.array([c["macs_m"] for c in arch_costs(design)])
    for arch, ms in zip(design, 1.5 + 0.02 * macs + 0.1 * lut.predict(design), strict=True):
        table.append(record_for(arch, float(ms), Protocol(), fingerprint=fingerprint))
    assert main(["-W", str(ws), "fit", "--device", "edge2", "--json"]) == 0
    objectives = "top1,latency:note10,latency:edge2,macs"
    args = ["--objectives", objectives, "--pop", "30", "--gens", "20", "--seed", "3", "--no-plot"]
    assert main(["-W", str(ws), "search", *args, "-o", str(ws / "runs" / "two")]) == 0
    rows = json.loads((ws / "runs" / "two" / "front.json").read_text())["rows"]
    # After the search, some front archs get measured on edge2 (as `bundle --verify` would) and one fails.
    picked = rows[:: max(1, len(rows) // MEASURED)][:MEASURED]
    for row in picked:
        table.append(
            record_for(Arch.from_dict(row["arch"]), 1.1 * row["latency_ms:edge2"] + 0.3, Protocol(), fingerprint=fingerprint)
        )
    failed = next(r for r in rows if r not in picked)
    table.append(
        record_for(Arch.from_dict(failed["arch"]), None, Protocol(), error=FailureKind.RUN_TIMEOUT, fingerprint=fingerprint)
    )
    return ws


@pytest.fixture(scope="module")
def front(ws: Path) -> list[dict[str, Any]]:
    return json.loads((ws / "runs" / "two" / "front.json").read_text())["rows"]


def measured_ms(ws: Path) -> dict[str, float]:
    """Latest successful edge2 measurement per arch id, read straight from the JSONL."""
    out: dict[str, float] = {}
    for line in (ws / "latency_tables" / "edge2" / "measurements.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["error_kind"] is None:
            out[rec["arch_id"]] = rec["stats"]["estimate_ms"]
    return out


def copy_run(ws: Path, parent: Path, name: str = "two") -> Path:
    dest = parent / "runs" / name
    shutil.copytree(ws / "runs" / "two", dest)
    return dest


# --------------------------------------------------------------------- the data
def test_blob_holds_the_front_predictions_and_measurements(ws: Path, front: list[dict[str, Any]]) -> None:
    data = build_data(RunFolder(ws / "runs" / "two"), Workspace.resolve(ws))
    assert data["schema"] == "ofa2-edge/dashboard-data" and data["schema_version"] == 1
    assert data["run"]["objectives"] == ["top1", "latency:note10", "latency:edge2", "macs"]
    assert (data["run"]["algorithm"], data["run"]["seed"], data["run"]["n_gen"], data["run"]["state"]) == (
        default_algorithm(4),
        3,
        20,
        "completed",
    )
    assert [c["id"] for c in data["candidates"]] == [r["arch_id"] for r in front]
    assert [c["top1"] for c in data["candidates"]] == [r["top1_pct"] for r in front]
    assert [c["macs"] for c in data["candidates"]] == [r["macs_m"] for r in front]
    assert [d["key"] for d in data["devices"]] == list(DEVICES)
    measured = measured_ms(ws)
    for dev in data["devices"]:
        assert dev["lat"] == [r[f"latency_ms:{dev['key']}"] for r in front]
        assert dev["surrogate"]["same_as_run"] and dev["now"] is None
        lo, hi = np.array(dev["lo"]), np.array(dev["hi"])
        assert (lo <= hi).all() and lo.shape == (len(front),)
    note10, edge2 = data["devices"]
    assert note10["n_measurements"] == 0 and not any(note10["measured"])  # an imported table: nothing measured
    got = {c["id"]: m["ms"] for c, m in zip(data["candidates"], edge2["measured"]) if m}
    assert got == {k: v for k, v in measured.items() if k in got} and len(got) == MEASURED  # the failed one is absent
    # The header counts what the page marks, and says apart how many archs the table holds.
    assert edge2["n_measurements"] == len(measured) > MEASURED
    header = " ".join(render_page(data).split())
    assert (
        f"{MEASURED} of the {len(front)} candidates measured (marked), {len(measured)} archs measured in the table in all"
        in header
    )
    assert data["hypervolume"]["gen"] == list(range(1, 21)) and all(h > 0 for h in data["hypervolume"]["hv"])
    assert data["notes"] == [] and note10["notes"] == [] and edge2["notes"] == []
    # The 2-D front flags are the (top-1, latency) non-dominated rows of each device.
    for dev in data["devices"]:
        lat = dev["lat"]
        for i, flag in enumerate(dev["frontier"]):
            dominated = any(
                front[j]["top1_pct"] >= front[i]["top1_pct"] and lat[j] <= lat[i]
                and (front[j]["top1_pct"] > front[i]["top1_pct"] or lat[j] < lat[i])
                for j in range(len(front))
            )  # fmt: skip
            assert flag == (not dominated)


def test_blob_cannot_close_its_script_element(ws: Path, tmp_path: Path) -> None:
    doc = {"a": "</script><script>alert(1)</script>", "b": "<!-- x -->", "c": "&amp; \u2028"}
    text = embed_json(doc)
    assert json.loads(text) == doc and not set("<>&") & set(text) and "\u2028" not in text
    # A folder name cannot hold '/', but a path can: put "</script><!--" into the run's path.
    parent = tmp_path / "x<" / "script><!--<b>&"
    run = copy_run(ws, parent, "r<i>&amp;")
    page = render_page(build_data(RunFolder(run), Workspace.resolve(ws)))
    assert "</script><!--" in str(run)
    assert page.lower().count("</script>") == 3  # Plotly, the blob, our script: nothing closes early
    blob = blob_of(page)
    assert blob["run"]["path"] == str(run) and blob["run"]["id"] == "r<i>&amp;"
    assert "<title>ofa2-edge dashboard: run r&lt;i&gt;&amp;amp;</title>" in page


# --------------------------------------------------------------------- bad input and degraded runs
def test_bad_input_is_a_clear_error_and_leaves_no_html(
    capsys: pytest.CaptureFixture[str], ws: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    code, _, err = cli(capsys, ws, "dashboard", str(tmp_path), "-o", str(out))
    assert code == EXIT_FAILURE and "no run" in err and "not a run folder" in err and not out.exists()

    run = copy_run(ws, tmp_path)
    front_path = run / "front.json"
    doc = json.loads(front_path.read_text())
    front_path.write_text(json.dumps({**doc, "schema_version": 99}))
    out.write_text("previous page")
    code, _, err = cli(capsys, ws, "dashboard", str(run), "-o", str(out))
    assert code != 0 and "schema_version 99" in err and out.read_text() == "previous page"
    front_path.write_text(json.dumps(doc)[:500])  # torn
    code, _, err = cli(capsys, ws, "dashboard", str(run), "-o", str(out))
    assert code != 0 and "not a readable JSON file" in err and out.read_text() == "previous page"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report.html")]  # no temp files left

    tampered = {**doc, "rows": [{**doc["rows"][0], "arch_id": "a-000000000000"}, *doc["rows"][1:]]}
    front_path.write_text(json.dumps(tampered))
    code, _, err = cli(capsys, ws, "dashboard", str(run), "-o", str(out))
    assert code != 0 and "says arch_id a-000000000000" in err and out.read_text() == "previous page"
    front_path.write_text(json.dumps(doc))
    code, _, err = cli(capsys, ws, "dashboard", str(run), "-o", str(tmp_path))
    assert code == EXIT_FAILURE and "is a folder" in err
    code, _, err = cli(capsys, ws, "dashboard", str(run), "-o", str(out), "--device", "nosuch")
    assert code == EXIT_FAILURE and "unknown device 'nosuch'" in err and out.read_text() == "previous page"


def test_degrades_without_hv_table_or_predictor(ws: Path, tmp_path: Path, front: list[dict[str, Any]]) -> None:
    run = copy_run(ws, tmp_path)
    (run / "hypervolume.json").unlink()
    (run / "checkpoint.json").unlink()
    other = tmp_path / "ws"  # a workspace where note10 has no predictor and edge2 no table at all
    (other / "latency_tables" / "note10").mkdir(parents=True)
    config = json.loads((run / "config.json").read_text())
    config["workspace"] = str(other)
    for name in ("latency:note10", "latency:edge2"):
        config["resolved"]["metrics"][name]["source"]["path"] = str(
            other / "latency_tables" / name[8:] / "surrogate.json"
        )
    (run / "config.json").write_text(json.dumps(config))
    data = build_data(RunFolder(run), Workspace.resolve(other))
    assert data["hypervolume"] is None and any("no hypervolume curve" in n for n in data["notes"])
    note10, edge2 = data["devices"]
    assert note10["lo"] is None and "has no fitted predictor" in " ".join(note10["notes"])
    assert edge2["table"] is None and edge2["lo"] is None and not any(edge2["measured"])
    assert "No latency table for edge2" in " ".join(edge2["notes"])
    assert edge2["lat"] == [r["latency_ms:edge2"] for r in front]  # the run's own values still plot
    page = render_page(data)
    assert "No latency table for edge2" in page and 'id="notes"' in page


def test_a_predictor_refitted_after_the_search_is_flagged(
    ws: Path, tmp_path: Path, front: list[dict[str, Any]]
) -> None:
    other = tmp_path / "ws"
    shutil.copytree(ws / "latency_tables", other / "latency_tables")
    path = other / "latency_tables" / "edge2" / "surrogate.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "meta": {**doc["meta"], "refitted": True}}))
    data = build_data(RunFolder(ws / "runs" / "two"), Workspace.resolve(other))
    note10, edge2 = data["devices"]
    assert note10["surrogate"]["same_as_run"] and note10["now"] is None and note10["notes"] == []
    assert not edge2["surrogate"]["same_as_run"] and edge2["table"] == str(other / "latency_tables" / "edge2")
    assert "changed since the search" in " ".join(edge2["notes"])
    assert edge2["lat"] == [r["latency_ms:edge2"] for r in front] and np.allclose(edge2["now"], edge2["lat"])


def test_interrupted_run_shows_a_provisional_front(ws: Path) -> None:
    from ofa2_edge.search.config import SearchConfig
    from ofa2_edge.search.runner import run_search

    def stop(progress: Any) -> None:
        if progress.gen == 7:
            raise KeyboardInterrupt

    cfg = SearchConfig(objectives=("top1", "latency:edge2"), pop_size=12, n_gen=10, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, ws / "runs" / "cut", workspace=Workspace.resolve(ws), plot=False, progress=stop)
    run = RunFolder(ws / "runs" / "cut")
    data = build_data(run, Workspace.resolve(ws))
    assert data["run"]["state"] == "interrupted" and data["front"]["provisional"]
    notes = " ".join(data["notes"])
    assert "interrupted" in notes and "no final front yet" in notes and "last checkpoint (generation 6)" in notes
    rows = list(run.evaluations())
    assert len(rows) == 12 * 6
    pts = [(r["top1_pct"], r["latency_ms:edge2"]) for r in rows]
    best = {
        r["arch_id"] for r, (a, b) in zip(rows, pts) if not any(x >= a and y <= b and (x, y) != (a, b) for x, y in pts)
    }
    assert {c["id"] for c in data["candidates"]} == best
    assert data["hypervolume"]["gen"] == list(range(1, 7))


def test_device_outside_the_run_is_priced_now_and_run_without_latency_needs_one(ws: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "-W",
                str(ws),
                "search",
                "--objectives",
                "top1,macs",
                "--pop",
                "12",
                "--gens",
                "4",
                "--no-plot",
                "-o",
                str(ws / "runs" / "nolat"),
            ]
        )
        == 0
    )
    run = RunFolder(ws / "runs" / "nolat")
    with pytest.raises(InvalidInputError, match="no latency objective.*--device"):
        build_data(run, Workspace.resolve(ws))
    data = build_data(run, Workspace.resolve(ws), devices=["note10"])
    (dev,) = data["devices"]
    lut = LutSurrogate.from_folder(
        Path(os.environ.get("OFA2_EDGE_ASSETS", REPO.parent / "shared/ofa_assets")) / "note10"
    )
    archs = [
        Arch.from_dict({"ks": c["ks"], "e": c["e"], "d": c["d"], "r": c["r"], "w": c["w"]}) for c in data["candidates"]
    ]
    assert (
        not dev["in_run"]
        and not dev["searched"]
        and np.allclose(dev["lat"], lut.predict(archs))
        and dev["now"] == dev["lat"]
    )
    assert "not a device of this run" in " ".join(dev["notes"])
    with pytest.raises(SchemaError):
        bad = copy_run(ws, tmp_path)
        (bad / "hypervolume.json").write_text(
            json.dumps({"schema": "ofa2-edge/search-hypervolume", "schema_version": 7})
        )
        build_data(RunFolder(bad), Workspace.resolve(ws))


# --------------------------------------------------------------------- the page in a real browser
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


JS_STATE = """() => {
  const gd = document.getElementById("pareto");
  const trace = (meta) => gd.data.find((t) => t.meta === meta);
  return {
    count: document.getElementById("count").textContent,
    rows: [...document.querySelectorAll("#candidates tbody tr")].map((tr) => tr.dataset.id),
    pass: {ids: trace("pass").ids, x: trace("pass").x, y: trace("pass").y},
    rest: trace("rest").ids,
    measured: {ids: trace("measured").ids, x: trace("measured").x},
    maxLat: document.getElementById("max-latency").value,
    maxLatRange: [document.getElementById("max-latency").min, document.getElementById("max-latency").max],
    minTop1: document.getElementById("min-top1").value,
    xTitle: gd.layout.xaxis.title.text,
  };
}"""

SET_SLIDER = """([id, value]) => {
  const input = document.getElementById(id);
  input.value = value;
  input.dispatchEvent(new Event("input", {bubbles: true}));
  input.dispatchEvent(new Event("change", {bubbles: true}));
  return input.value;
}"""


def expected(front: list[dict[str, Any]], device: str, max_lat: float, min_top1: float) -> list[str]:
    """Ids passing both limits, best top-1 first (then lower latency, then id), from front.json."""
    field = f"latency_ms:{device}"
    keep = [r for r in front if r[field] <= max_lat and r["top1_pct"] >= min_top1]
    return [r["arch_id"] for r in sorted(keep, key=lambda r: (-r["top1_pct"], r[field], r["arch_id"]))]


def check_state(page: Any, front: list[dict[str, Any]], device: str, measured: dict[str, float]) -> list[str]:
    state = page.evaluate(JS_STATE)
    want = expected(front, device, float(state["maxLat"]), float(state["minTop1"]))
    by_id = {r["arch_id"]: r for r in front}
    assert state["count"] == f"{len(want)} of {len(front)} candidates pass"
    assert state["rows"] == want  # the table: exactly these, in this order
    assert sorted(state["pass"]["ids"]) == sorted(want)  # the plotted points
    assert state["pass"]["x"] == [by_id[i][f"latency_ms:{device}"] for i in state["pass"]["ids"]]
    assert state["pass"]["y"] == [by_id[i]["top1_pct"] for i in state["pass"]["ids"]]
    assert sorted(state["rest"]) == sorted(set(by_id) - set(want))
    has = [i for i in want if i in measured] if device == "edge2" else []
    assert sorted(state["measured"]["ids"]) == sorted(has)
    assert state["measured"]["x"] == [measured[i] for i in state["measured"]["ids"]]
    assert state["xTitle"] == f"latency on {device} (ms)"
    return want


@contextlib.contextmanager
def offline_page(executable: str, html_file: Path, profile: Path) -> Iterator[Any]:
    """The page in headless Chromium with every request but the file itself aborted.

    Yields the Playwright page; on exit, checks that the page asked for nothing else and
    raised no error (uncaught exception or console error)."""
    from playwright.sync_api import sync_playwright

    url = html_file.resolve().as_uri()
    requests: list[str] = []
    errors: list[str] = []

    def only_the_file(route: Any) -> None:
        requests.append(route.request.url)
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 900}, offline=True,
        )  # fmt: skip
        try:
            context.route("**/*", only_the_file)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url)
            page.wait_for_function("document.getElementById('pareto').data !== undefined")
            yield page
        finally:
            context.close()
    assert requests == [url], f"the page asked for more than its own file: {requests}"
    assert errors == []


@pytest.mark.browser
def test_page_in_headless_chromium(chromium: str, ws: Path, front: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["-W", str(ws), "dashboard", "two", "-o", str(out)]) == 0
    measured = {k: v for k, v in measured_ms(ws).items() if k in {r["arch_id"] for r in front}}
    assert len(measured) == MEASURED
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with offline_page(chromium, out, tmp_path / "profile") as page:
        page.wait_for_function("document.querySelectorAll('#pareto .scatterlayer .point').length > 0")

        # All pass at first; the device selector offers both devices.
        assert check_state(page, front, "note10", measured) == expected(front, "note10", np.inf, -np.inf)
        assert page.eval_on_selector_all("#device option", "os => os.map(o => o.textContent)") == list(DEVICES)
        # 3+ objectives: the hypervolume chart shows the selected device's own 2-D curve
        assert page.evaluate("document.getElementById('hv').dataset.curve") == "2-D hypervolume, note10"

        # Latency slider: a real click 35% along it (the browser fires input/change itself).
        box = page.locator("#max-latency").bounding_box()
        page.mouse.click(box["x"] + 0.35 * box["width"], box["y"] + box["height"] / 2)
        after_latency = check_state(page, front, "note10", measured)
        assert 0 < len(after_latency) < len(front)

        # Accuracy slider: set the value and dispatch input/change, as a user's drag does.
        tops = sorted(r["top1_pct"] for r in front if r["arch_id"] in after_latency)
        page.evaluate(SET_SLIDER, ["min-top1", f"{tops[len(tops) // 2]:.2f}"])
        both = check_state(page, front, "note10", measured)
        assert 0 < len(both) < len(after_latency) and set(both) < set(after_latency)
        page.locator("#min-top1").focus()  # keyboard users too: the arrow keys step it
        before = page.evaluate(JS_STATE)["minTop1"]
        page.keyboard.press("ArrowLeft")
        assert float(page.evaluate(JS_STATE)["minTop1"]) < float(before)
        check_state(page, front, "note10", measured)

        # Switch to edge2: the latency slider's range follows the device, the accuracy limit stays.
        min_top1 = page.evaluate(JS_STATE)["minTop1"]
        page.select_option("#device", "1")
        state = page.evaluate(JS_STATE)
        lats = [r["latency_ms:edge2"] for r in front]
        assert float(state["maxLatRange"][0]) <= min(lats) and float(state["maxLatRange"][1]) >= max(lats)
        assert state["maxLat"] == state["maxLatRange"][1] and state["minTop1"] == min_top1
        check_state(page, front, "edge2", measured)
        assert page.evaluate("document.getElementById('hv').dataset.curve") == "2-D hypervolume, edge2"
        hv_y = page.evaluate("Array.from(document.getElementById('hv').data[0].y)")
        hv_doc = json.loads((ws / "runs" / "two" / "hypervolume.json").read_text())
        assert hv_y == pytest.approx([r["hv_pairs"][1] for r in hv_doc["rows"]])  # edge2 is the second cost
        page.evaluate(SET_SLIDER, ["min-top1", page.evaluate("document.getElementById('min-top1').min")])
        page.evaluate(SET_SLIDER, ["max-latency", f"{sorted(lats)[-2]:.3f}"])
        visible = check_state(page, front, "edge2", measured)
        assert set(measured) & set(visible), "some measured arch should stay visible"

        # Hover a measured candidate: the tooltip carries its measured latency (and a non-measured one says so).
        gd = "document.getElementById('pareto')"
        passing = page.evaluate(f"{gd}.data.find(t => t.meta === 'pass').ids")
        curve = page.evaluate(f"{gd}.data.findIndex(t => t.meta === 'pass')")
        hover = f"([c, p]) => Plotly.Fx.hover({gd}, [{{curveNumber: c, pointNumber: p}}])"
        hover_text = "document.querySelector('#pareto .hoverlayer').textContent"
        hit = next(i for i in passing if i in measured)
        page.evaluate(hover, [curve, passing.index(hit)])
        text = page.evaluate(hover_text)
        assert hit in text and f"measured {measured[hit]:.2f} ms" in text and "80% interval" in text
        page.screenshot(path=str(artifacts / "dashboard-hover.png"))
        if os.environ.get("OFA2_EDGE_DOCS_SCREENSHOT"):  # refresh the README's picture on request
            shutil.copyfile(artifacts / "dashboard-hover.png", REPO / "docs" / "dashboard.png")
        miss = next(i for i in passing if i not in measured)
        page.evaluate(hover, [curve, passing.index(miss)])
        text = page.evaluate(hover_text)
        assert miss in text and "not measured on edge2" in text
        page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    # The guard itself: the same page with one CDN reference added fails it.
    cdn = out.read_text().replace("</body>", '<script src="https://cdn.plot.ly/plotly-3.0.0.min.js"></script></body>')
    (tmp_path / "cdn.html").write_text(cdn)
    with (
        pytest.raises(AssertionError, match="more than its own file"),
        offline_page(chromium, tmp_path / "cdn.html", tmp_path / "pc"),
    ):
        pass


@pytest.mark.browser
def test_degraded_pages_in_headless_chromium(chromium: str, ws: Path, tmp_path: Path) -> None:
    """An interrupted run without HV file, and an infeasible run with an empty front, still render."""
    cut = copy_run(ws, tmp_path)
    for name in ("front.json", "front.csv", "hypervolume.json", "checkpoint.json"):
        (cut / name).unlink()
    status = json.loads((cut / "status.json").read_text())
    (cut / "status.json").write_text(json.dumps({**status, "state": "interrupted", "message": "stopped by a test"}))
    data = build_data(RunFolder(cut), Workspace.resolve(ws))
    assert data["front"]["provisional"] and data["hypervolume"] is None
    (tmp_path / "cut.html").write_text(render_page(data))
    with offline_page(chromium, tmp_path / "cut.html", tmp_path / "p1") as page:
        n = len(data["candidates"])
        assert page.inner_text("#count") == f"{n} of {n} candidates pass" and n > 0
        assert "stopped by a test" in page.inner_text("#notes") and "no final front yet" in page.inner_text("#notes")
        assert page.is_visible("#hv-empty") and not page.is_visible("#hv")

    code = main(["-W", str(ws), "search", "--objectives", "top1,latency:note10", "-c", "top1>=99", "--pop", "8",
                 "--gens", "2", "--no-plot", "-o", str(tmp_path / "runs" / "none")])  # fmt: skip
    assert code != 0
    assert main(["-W", str(ws), "dashboard", str(tmp_path / "runs" / "none"), "-o", str(tmp_path / "none.html")]) == 0
    with offline_page(chromium, tmp_path / "none.html", tmp_path / "p2") as page:
        assert page.inner_text("#count") == "0 of 0 candidates pass"
        assert page.locator("#candidates tbody tr").count() == 0 and page.is_disabled("#max-latency")
        assert "front is empty" in page.inner_text("#notes") and "top1>=99" in page.inner_text("#notes")
        page.screenshot(path=str(REPO / "test-artifacts" / "dashboard-empty.png"), full_page=True)
