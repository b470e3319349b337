"""The offline dashboard: one self-contained HTML page to choose a trade-off from a run.

An embedded engineer opens it on a laptop without network, drags two sliders (maximum
latency on the chosen device, minimum top-1) and sees which subnets of the run's front
remain, with predicted latency (and the predictor's interval) beside what was measured on
the device. The page is Plotly (its JS embedded, so it works offline) plus a small
hand-written script (`dashboard_page/page.js`) that reads ONE JSON blob built here; the
blob is escaped so no value can close its ``<script>`` element.

What the blob holds (`ofa2-edge/dashboard-data`, version 1) is built once, at build time:
the front's candidates, per device their latencies (the run's values), the current
predictor's interval, the latest successful measurement from the device's table and what
`ofa2-edge verify` measured of the front (with its coverage and violation rates), the
hypervolume curve (and, for runs of 3+ objectives, each device's 2-D hypervolume curve),
and the run's config. Every array is as long as the front, which the search bounds
(`runner.FRONT_MAX_ROWS`; a still-running run's provisional front is bounded the same way). Anything auxiliary that is missing (no HV file,
a device without table or predictor, a run still running) becomes a note on the page;
what the page cannot exist without (the run's config, a readable front) is an error.
Every run file is read through the run store (`runstore.RunFolder`), which validates it:
a bad value is one error naming the file and row, never a page showing it.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ofa2_edge import __version__
from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError
from ofa2_edge.core.persist import atomic_write_text, sha256_file
from ofa2_edge.core.workspace import Workspace, unknown_device
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.indicators import nondominated
from ofa2_edge.search.perdevice import bounded_front, pairs_of
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.costs import arch_costs
from ofa2_edge.surrogates.base import LatencySurrogate, load_surrogate
from ofa2_edge.tables.device import DeviceTable

log = logging.getLogger(__name__)

DATA_SCHEMA = "ofa2-edge/dashboard-data"
DATA_VERSION = 1
TOP1_FIELD = "top1_pct"
LATENCY_PREFIX = "latency_ms:"
PAGE_FILES = ("page.html", "page.css", "page.js")


# --------------------------------------------------------------------- small helpers
def _num(value: Any) -> float | None:
    """A finite float for JSON, or None (JSON has no NaN)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _nums(values: Sequence[Any]) -> list[float | None]:
    return [_num(v) for v in values]


def embed_json(doc: Any) -> str:
    """JSON text safe inside a ``<script type="application/json">`` element.

    ``<``, ``>`` and ``&`` become ``\\u003c`` etc., so no value (a run folder named
    ``</script>``...) can end the element or open a comment; U+2028/2029 are escaped too.
    `JSON.parse` reads the text back unchanged."""
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _inline_script(js: str) -> str:
    """JS text safe inside a ``<script>`` element (``</script`` written as ``<\\/script``)."""
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)


# --------------------------------------------------------------------- the front
def _objective_meta(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(config.get("resolved", {}).get("objectives", []))


def _provisional_front(run: rs.RunFolder, config: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Non-dominated feasible archs among those evaluated so far (a run without front.json).

    The same selection `finish` makes (bounded as it bounds it), on the rows written up to
    the last checkpoint."""
    if not run.file(rs.EVALUATIONS_FILE).is_file():
        return [], 0
    rows = list(run.evaluations())
    objectives = _objective_meta(config)
    if not rows or not objectives:
        return [], len(rows)
    feasible = [r for r in rows if r.get("feasible", True)]
    if not feasible:
        return [], len(rows)
    try:
        F = np.column_stack(
            [
                np.array([-r[m["field"]] if m["sense"] == "max" else r[m["field"]] for r in feasible], dtype=np.float64)
                for m in objectives
            ]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"{run.file(rs.EVALUATIONS_FILE)}: a row lacks an objective value ({exc!r})") from exc
    idx, _ = bounded_front(F, nondominated(F), pairs_of(F.shape[1]) if F.shape[1] >= 3 else [])
    return [feasible[i] for i in idx], len(rows)


def _load_front(
    run: rs.RunFolder, config: dict[str, Any], state: str, notes: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = run.file(rs.FRONT_FILE)
    if path.is_file():
        front = run.front()  # the run store validates it: schema, types, every row's values and arch
        return front["rows"], {
            "source": str(path),
            "selection": front["selection"],
            "hv": front["hv"],
            "provisional": False,
        }
    rows, n_evaluated = _provisional_front(run, config)
    notes.append(
        f"The run is {state} and has no final front yet: showing the non-dominated feasible archs among the "
        f"{n_evaluated} evaluated so far (up to its last checkpoint). Rebuild the dashboard when it completes."
    )
    source = str(run.file(rs.EVALUATIONS_FILE))
    return rows, {
        "source": source,
        "selection": "provisional: non-dominated feasible archs evaluated so far",
        "hv": None,
        "provisional": True,
    }


def _candidates(rows: list[dict[str, Any]], where: str) -> tuple[list[dict[str, Any]], list[Arch]]:
    """The page's candidates from rows the run store validated (front.json or evaluations.jsonl)."""
    archs: list[Arch] = []
    for i, row in enumerate(rows):
        archs.append(Arch.from_dict(row["arch"]))
        if row.get(TOP1_FIELD) is None:
            raise SchemaError(f"{where}: row {i} ({row['arch_id']}) has no {TOP1_FIELD}")
    costs = arch_costs(archs)
    out = []
    for row, arch, cost in zip(rows, archs, costs, strict=True):
        out.append(
            {
                "id": arch.id,
                "r": arch.r,
                "d": list(arch.d),
                "ks": list(arch.ks),
                "e": list(arch.e),
                "w": arch.w,
                "top1": _num(row[TOP1_FIELD]),
                "macs": _num(row.get("macs_m", cost["macs_m"])),
                "params": _num(row.get("params_m", cost["params_m"])),
                "gen": row.get("gen"),
            }
        )
    return out, archs


# --------------------------------------------------------------------- devices
def _table_for(key: str, workspace: Workspace, config: dict[str, Any]) -> DeviceTable | None:
    """The device's table: in the given workspace, else where the run read its predictor."""
    folders = [workspace.tables_dir]
    recorded = config.get("resolved", {}).get("metrics", {}).get(f"latency:{key}", {}).get("source", {}).get("path")
    if recorded:
        folders.append(Path(recorded).parent.parent)
    if config.get("workspace"):
        folders.append(Path(config["workspace"]) / "latency_tables")
    for folder in folders:
        table = DeviceTable(folder, key)
        if table.exists():
            return table
    return None


def _frontier(top1: list[float | None], lat: list[float | None]) -> list[bool]:
    """Whether each candidate is on this device's 2-D (top-1, latency) front."""
    ok = [i for i, (a, b) in enumerate(zip(top1, lat)) if a is not None and b is not None]
    flags = [False] * len(top1)
    if ok:
        F = np.array([[-top1[i], lat[i]] for i in ok], dtype=np.float64)
        for j in nondominated(F):
            flags[ok[j]] = True
    return flags


def _predictor(table: DeviceTable, notes: list[str]) -> LatencySurrogate | None:
    if not table.surrogate_path.is_file():
        notes.append(
            f"{table.folder} has no fitted predictor: no prediction interval (run `ofa2-edge fit --device {table.key}`)."
        )
        return None
    try:
        return load_surrogate(table.surrogate_path)
    except Ofa2EdgeError as exc:
        notes.append(f"The predictor {table.surrogate_path} could not be read ({exc}): no prediction interval.")
        return None


def _measured(table: DeviceTable, archs: list[Arch], notes: list[str]) -> tuple[list[dict[str, Any] | None], int]:
    """The latest successful measurement of each arch on the device (None where there is none),
    and how many distinct archs the table has measured (most of them not on this front)."""
    try:
        _, _, records = table.dataset()
    except Ofa2EdgeError as exc:
        notes.append(f"The measurements of {table.key} could not be read ({exc}): no measured latency.")
        return [None] * len(archs), 0
    by_id = {r.arch_id: r for r in records}
    out: list[dict[str, Any] | None] = []
    for arch in archs:
        r = by_id.get(arch.id)
        out.append(
            None
            if r is None or r.stats is None
            else {
                "ms": _num(r.stats.estimate_ms),
                "median_ms": _num(r.stats.median_ms),
                "runtime": r.runtime,
                "at": r.finished_at,
                "flags": [getattr(f, "value", str(f)) for f in r.flags],
            }
        )
    return out, len(by_id)


def _device_view(
    key: str,
    rows: list[dict[str, Any]],
    archs: list[Arch],
    workspace: Workspace,
    config: dict[str, Any],
    coverage: float,
) -> dict[str, Any]:
    """One device's columns (aligned with the candidates) and where each came from.

    A device of the run (objective or constraint) keeps the run's latencies; another one
    (`--device`) is priced now by its predictor, and says so."""
    field = LATENCY_PREFIX + key
    in_run = field in rows[0] if rows else key in run_devices(config)
    notes: list[str] = []
    view: dict[str, Any] = {
        "key": key,
        "field": field,
        "in_run": in_run,
        "searched": f"latency:{key}" in config.get("objectives", []),
        "table": None,
        "surrogate": None,
        "coverage": coverage,
        "lat": _nums([row.get(field) for row in rows]) if in_run else None,
        "lo": None,
        "hi": None,
        "now": None,
        "measured": [None] * len(rows),
        "n_measurements": 0,
        "notes": notes,
    }
    table = _table_for(key, workspace, config)
    if table is None and not in_run:  # a typo, most often
        tables = [t.key for t in DeviceTable.all(workspace.tables_dir)]
        raise InvalidInputError(unknown_device(key, [*run_devices(config), *tables], "not in the run, no latency table"))
    if table is None:
        notes.append(
            f"No latency table for {key} in {workspace.tables_dir} (nor where the run read it): "
            "no prediction interval, no measured latency."
        )
    else:
        view["table"] = str(table.folder)
        view["measured"], view["n_measurements"] = _measured(table, archs, notes)
    model = _predictor(table, notes) if table is not None else None
    if table is None or model is None:
        if not in_run:
            raise InvalidInputError(
                f"device {key}: the run has no latency for it and no fitted predictor was found to price its front; "
                f"choose among the run's devices ({', '.join(run_devices(config)) or 'none'}) or fit one with "
                f"`ofa2-edge fit --device {key}`"
            )
        return view
    sha = sha256_file(table.surrogate_path)
    metric = config.get("resolved", {}).get("metrics", {}).get(f"latency:{key}", {})
    same = metric.get("source", {}).get("sha256") == sha
    view["surrogate"] = {"kind": model.kind, "path": str(table.surrogate_path), "sha256": sha, "same_as_run": same}
    try:
        now = model.predict(archs) if archs else np.zeros(0)
        lo, hi = model.predict_interval(archs, coverage) if archs else (np.zeros(0), np.zeros(0))
    except Ofa2EdgeError as exc:
        if not in_run:
            raise InvalidInputError(f"device {key}: its predictor cannot price this run's archs ({exc})") from exc
        notes.append(f"The predictor of {key} cannot price these archs ({exc}): no prediction interval.")
        return view
    view["lo"], view["hi"] = _nums(lo), _nums(hi)
    if not in_run:
        view["lat"] = view["now"] = _nums(now)
        notes.append(
            f"{key} is not a device of this run: its latencies are predicted now by its predictor; "
            "the front was not searched for it."
        )
    elif not same:
        view["now"] = _nums(now)
        notes.append(
            f"The predictor of {key} changed since the search (its sha256 differs from the run's): points show the "
            "run's latencies; the interval and 'current predictor' come from the predictor as it is now."
        )
    return view


def _verification(
    run: rs.RunFolder, key: str, archs: list[Arch], notes: list[str]
) -> tuple[list[float | None], dict[str, Any] | None]:
    """What `ofa2-edge verify` measured of this front on the device (aligned with the
    candidates) and its scores: interval coverage, `select` violation rates, HV ratio."""
    try:
        doc = run.verification(key)
    except Ofa2EdgeError as exc:
        notes.append(f"The verification report of {key} could not be read ({exc}).")
        return [None] * len(archs), None
    if doc is None:
        return [None] * len(archs), None
    by_id = {m["arch_id"]: m["measured_ms"] for m in doc["members"]}
    summary = {
        "created_at": doc.get("created_at"),
        "replica": doc.get("replica"),
        "members": len(doc["members"]),
        "measured": sum(m["measured_ms"] is not None for m in doc["members"]),
        "coverage": {k: {"nominal": v["nominal"], "actual": v["actual"], "n": v["n"]} for k, v in doc["coverage"].items()},
        "violations": {k: {"judged": v["judged"], "rate": v["violation_rate"]} for k, v in doc["violations"].items()},
        "hv_ratio": _num(doc["hypervolume"].get("ratio")),
    }
    return [_num(by_id.get(a.id)) for a in archs], summary


# --------------------------------------------------------------------- hypervolume
def _hypervolume(run: rs.RunFolder, notes: list[str]) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = []
    ref: Any = None
    source = None
    kind, pairs = "hypervolume", None
    if run.file(rs.HV_FILE).is_file():
        doc = run.hypervolume()
        rows, ref, source = doc["rows"], doc["reference_point"], str(run.file(rs.HV_FILE))
        kind, pairs = doc.get("indicator_kind", kind), doc.get("pairs")
    elif run.file(rs.CHECKPOINT_FILE).is_file():
        doc = run.checkpoint()
        rows, source = doc["hv_rows"], str(run.file(rs.CHECKPOINT_FILE))
        notes.append(
            f"No {rs.HV_FILE} yet: the hypervolume curve stops at the last checkpoint (generation {doc['gen']})."
        )
    else:
        notes.append(f"No hypervolume data ({rs.HV_FILE} is missing): no hypervolume curve.")
        return None
    # Per device, the 2-D hypervolume (top-1, its latency) per generation, where the run
    # recorded it (runs of 3+ objectives since the many-device search; rows' `hv_pairs`).
    per_device: dict[str, list[float | None]] = {}
    if pairs and rows and all(isinstance(r.get("hv_pairs"), list) and len(r["hv_pairs"]) == len(pairs) for r in rows):
        for k, (_, cost) in enumerate(pairs):
            if isinstance(cost, str) and cost.startswith("latency:"):
                per_device[cost.split(":", 1)[1]] = _nums([r["hv_pairs"][k] for r in rows])
    return {
        "source": source,
        "reference_point": ref,
        "indicator": kind,
        "gen": [r.get("gen") for r in rows],
        "n_evals": [r.get("n_evals") for r in rows],
        "hv": _nums([r.get("hv") for r in rows]),
        "per_device": per_device,
        "front_size": [r.get("front_size") for r in rows],
    }


# --------------------------------------------------------------------- the blob
def run_devices(config: dict[str, Any]) -> list[str]:
    """Device keys of the run's latency objectives and constraints, in config order."""
    metrics = config.get("resolved", {}).get("metrics", {})
    names = [*config.get("objectives", []), *metrics]
    return list(dict.fromkeys(n.split(":", 1)[1] for n in names if n.startswith("latency:")))


def _ensemble_view(run: rs.RunFolder, ensemble: Path | None, notes: list[str]) -> dict[str, Any] | None:
    """The ensemble front (`ofa2-edge ensemble`) shown beside the run's: `ensemble`, or the
    run's sibling `<run id>-ens` when there is one. Its (top-1, latency) front, each row with
    val top-1 (what it was chosen on), test top-1, predicted and (where `--measure` ran)
    measured latency."""
    from ofa2_edge.ensemble.measure import MEASURED_FILE, read_measured
    from ofa2_edge.ensemble.search import EnsembleRunFolder

    folder = EnsembleRunFolder(ensemble if ensemble is not None else run.path.parent / f"{run.run_id}-ens")
    if not folder.exists():
        if ensemble is not None:
            raise InvalidInputError(f"{ensemble}: not an ensemble run folder (no ensemble.json); run `ofa2-edge ensemble` first")
        return None
    if not folder.file("front.json").is_file():
        notes.append(f"The ensemble run {folder.path} has no front yet (still running or interrupted): not shown.")
        return None
    settings = folder.settings()
    front = folder.front()
    measured: dict[str, float] = {}
    for r in read_measured(folder.file(MEASURED_FILE)):
        if r["mode"] == settings.mode and r["ok"]:
            measured[r["ensemble_id"]] = r["estimate_ms"]
    rows = [
        {"id": r["ensemble_id"], "members": r["members"], "n": r["n_members"], "top1": r["val_top1_pct"],
         "test": r.get("test_top1_pct"), "lat": r["latency_ms"], "macs": r["macs_m"], "measured_ms": measured.get(r["ensemble_id"])}
        for r in front["front_2d"]
    ]  # fmt: skip
    notes.append(
        f"Ensembles ({folder.path}): {len(rows)} on their top-1/latency front, {settings.mode} on {settings.device}, soft vote; "
        "their top-1 is the exact val top-1 of the soft vote (the subnets' is the run's accuracy objective)."
    )
    return {"run": folder.run_id, "path": str(folder.path.resolve()), "device": settings.device, "mode": settings.mode,
            "rule": front.get("rule"), "rows": rows}  # fmt: skip


def build_data(
    run: rs.RunFolder,
    workspace: Workspace,
    devices: Sequence[str] = (),
    coverage: float = 0.8,
    ensemble: Path | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able document (see the module docstring)."""
    if not 0 < coverage < 1:
        raise InvalidInputError(f"coverage {coverage} must be between 0 and 1 (e.g. 0.8)")
    config = run.config()  # refuses a folder that is not a run, or an unknown schema version
    status = run.status()
    state = str(status.get("state", "unknown"))
    notes: list[str] = []
    if state == "running":
        notes.append(
            f"The run is still running (generation {status.get('gen')} of {status.get('n_gen')} at {status.get('updated_at')})."
        )
    elif state == "interrupted":
        notes.append(f"The run was interrupted: {status.get('message') or 'resume it with --resume'}.")
    elif state == "infeasible":
        notes.append(f"No evaluated arch met the constraints: {status.get('message')}")
    elif state == "unknown":
        notes.append(f"The run has no {rs.STATUS_FILE}: its state is unknown.")
    rows, front_meta = _load_front(run, config, state, notes)
    if rows and TOP1_FIELD not in rows[0]:
        raise InvalidInputError(
            f"run {run.run_id} has no top-1 objective ({', '.join(config.get('objectives', []))}); the dashboard plots "
            "accuracy against latency: search with top1 among the objectives"
        )
    candidates, archs = _candidates(rows, front_meta["source"])
    known = run_devices(config)
    keys = list(dict.fromkeys(devices)) or known
    if not keys:
        raise InvalidInputError(
            f"run {run.run_id} has no latency objective ({', '.join(config.get('objectives', []))}); pass --device KEY "
            "to price its front on a device with a fitted predictor"
        )
    top1 = [c["top1"] for c in candidates]
    views = [_device_view(k, rows, archs, workspace, config, coverage) for k in keys]
    for view in views:
        view["frontier"] = _frontier(top1, view["lat"])
        view["verified"], view["verification"] = _verification(run, view["key"], archs, view["notes"])
    hv = _hypervolume(run, notes)
    ensembles = _ensemble_view(run, ensemble, notes)
    if not candidates:
        notes.append("The front is empty: there is nothing to choose from yet.")
    return {
        "schema": DATA_SCHEMA,
        "schema_version": DATA_VERSION,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        "run": {
            "id": run.run_id,
            "path": str(run.path.resolve()),
            "state": state,
            "gen": status.get("gen"),
            "n_gen": status.get("n_gen", config.get("n_gen")),
            "n_evals": status.get("n_evals"),
            "updated_at": status.get("updated_at"),
            "created_at": config.get("created_at"),
            "algorithm": config.get("algorithm"),
            "pop_size": config.get("pop_size"),
            "seed": config.get("seed"),
            "objectives": config.get("objectives", []),
            "constraints": config.get("constraints", []),
            "space": config.get("space"),
            "accuracy": config.get("resolved", {}).get("metrics", {}).get("top1", {}).get("source"),
        },
        "front": {**front_meta, "n": len(candidates)},
        "candidates": candidates,
        "devices": views,
        "hypervolume": hv,
        "ensembles": ensembles,
        "notes": notes,
    }


# --------------------------------------------------------------------- the page
def _page_file(name: str) -> str:
    return resources.files("ofa2_edge.deploy").joinpath("dashboard_page", name).read_text(encoding="utf-8")


def _header_html(data: dict[str, Any]) -> str:
    """The run's facts and the notes, rendered here so they read even without JS."""
    run, esc = data["run"], html.escape
    acc = run.get("accuracy") or {}
    facts = [
        (
            "state",
            f"{run['state']} (generation {run.get('gen')} of {run.get('n_gen')}, {run.get('n_evals')} evaluations)",
        ),
        (
            "objectives",
            ", ".join(run["objectives"])
            + (f"; constraints {', '.join(run['constraints'])}" if run["constraints"] else ""),
        ),
        (
            "search",
            f"{run.get('algorithm')}, population {run.get('pop_size')}, {run.get('n_gen')} generations, seed {run.get('seed')}",
        ),
        ("run folder", run["path"]),
        ("front", f"{data['front']['n']} candidates from {data['front']['source']}"),
        ("accuracy", f"{acc.get('name') or acc.get('kind', '?')} ({acc.get('path', 'no file')})"),
    ]
    for dev in data["devices"]:
        sur = dev["surrogate"]
        pred = "no predictor"
        if sur:
            same = "the one the search used" if sur["same_as_run"] else "changed since the search"
            pred = f"predictor {sur['kind']} {sur['path']} ({same})"
        # What the page marks is the candidates measured; the table's other archs (its
        # calibration design) are said apart, so the count matches the marks.
        marked = sum(m is not None for m in dev["measured"])
        facts.append(
            (
                f"device {dev['key']}",
                f"table {dev['table'] or 'not found'}; {pred}; {marked} of the {len(dev['measured'])} candidates "
                f"measured (marked), {dev['n_measurements']} archs measured in the table in all",
            )
        )
    hv = data["hypervolume"]
    facts.append(("hypervolume", hv["source"] if hv else "none"))
    ens = data.get("ensembles")
    if ens:
        facts.append(("ensembles", f"{len(ens['rows'])} ensembles ({ens['rule']}, {ens['mode']} on {ens['device']}) from {ens['path']}"))
    facts.append(("built", f"{data['built_at']} by ofa2-edge {data['toolkit_version']}"))
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts)
    notes = [*data["notes"], *(n for d in data["devices"] for n in d["notes"])]
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    title = f"<h1>ofa2-edge dashboard: run {esc(run['id'])}</h1>"
    return (
        title
        + f'<table class="facts">{rows}</table>'
        + (f'<ul id="notes" class="notes">{note_html}</ul>' if notes else "")
    )


def render_page(data: dict[str, Any]) -> str:
    """The self-contained HTML page: Plotly's JS, our CSS and JS, and the data blob inline."""
    from plotly.offline import get_plotlyjs

    template = _page_file("page.html")
    parts = {
        "TITLE": html.escape(f"ofa2-edge dashboard: run {data['run']['id']}"),
        "HEADER": _header_html(data),
        "CSS": _page_file("page.css"),
        "PLOTLY": _inline_script(get_plotlyjs()),
        "DATA": embed_json(data),
        "JS": _inline_script(_page_file("page.js")),
    }
    # Split on the markers once, so inserted text (the data, Plotly) is never searched again.
    pieces = re.split(r"<!--@([A-Z]+)@-->", template)
    names = pieces[1::2]
    if sorted(names) != sorted(parts):
        raise RuntimeError(f"dashboard template markers {names} do not match {sorted(parts)}")
    return "".join(p if i % 2 == 0 else parts[p] for i, p in enumerate(pieces))


def write_dashboard(
    run: rs.RunFolder,
    output: str | Path,
    workspace: Workspace,
    devices: Sequence[str] = (),
    coverage: float = 0.8,
    ensemble: Path | None = None,
) -> dict[str, Any]:
    """Build the page and write it atomically (a failure leaves no partial file)."""
    output = Path(output)
    if output.is_dir():
        raise InvalidInputError(f"{output} is a folder; give the HTML file to write, e.g. {output / 'dashboard.html'}")
    data = build_data(run, workspace, devices, coverage, ensemble)
    page = render_page(data)
    atomic_write_text(output, page)
    return {
        "output": str(output.resolve()),
        "bytes": len(page.encode("utf-8")),
        "run_id": data["run"]["id"],
        "state": data["run"]["state"],
        "candidates": data["front"]["n"],
        "provisional_front": data["front"]["provisional"],
        "devices": [
            {
                "key": d["key"],
                "in_run": d["in_run"],
                "searched": d["searched"],
                "predictor": (d["surrogate"] or {}).get("kind"),
                "measured_candidates": sum(m is not None for m in d["measured"]),
            }
            for d in data["devices"]
        ],
        "hypervolume_points": len(data["hypervolume"]["gen"]) if data["hypervolume"] else 0,
        "ensembles": len(data["ensembles"]["rows"]) if data["ensembles"] else 0,
        "notes": [*data["notes"], *(n for d in data["devices"] for n in d["notes"])],
    }
