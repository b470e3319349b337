"""`ofa2-edge verify`: front members measured on `local` (the real agent), kept apart from the
calibration data, resumed, and scored (coverage, select-pick violations, HV)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from records_factory import probe_report, record_for

from device_agents.records import Protocol
from ofa2_edge.calibration.calibrate import fit_table
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import EXIT_FAILURE, InvalidInputError, SchemaError
from ofa2_edge.deploy.select import non_dominated, price_front
from ofa2_edge.search.runstore import RunFolder
from ofa2_edge.space.arch import SearchSpace
from ofa2_edge.surrogates.group import GroupSurrogate
from ofa2_edge.surrogates.linear import LinearSurrogate
from ofa2_edge.surrogates.lut import LutSurrogate
from ofa2_edge.surrogates.verified import (
    MIN_RESIDUALS,
    SessionResiduals,
    VerifiedSurrogate,
    pooled,
    residual_quantile,
    session_of,
    session_residuals,
    shifts_doc,
    widen,
)
from ofa2_edge.tables.device import DeviceTable, MeasureKey
from ofa2_edge.workflows.verify_front import VerifyRequest, choose_members, judge_picks, retest_difference, score


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    """A `local` table (this machine's fingerprint, Note10-shaped latencies / 4), fitted, and a small run."""
    ws = tmp_path_factory.mktemp("verify-ws")
    lut = LutSurrogate.from_folder(assets_dir / "note10")
    table = DeviceTable(ws / "latency_tables", "local")
    table.bind(probe_report(), "onnxruntime")
    archs = SearchSpace().sample(30, np.random.default_rng(1))
    for arch, ms in zip(archs, lut.predict(archs) / 4, strict=True):
        table.append(record_for(arch, float(ms), Protocol(), fingerprint=probe_report().fingerprint))
    assert main(["-W", str(ws), "fit", "--device", "local"]) == 0
    args = ["-W", str(ws), "search", "--objectives", "top1,latency:local", "--pop", "24", "--gens", "10"]
    assert main([*args, "--seed", "1", "-o", str(ws / "runs" / "demo")]) == 0
    return ws


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_verify_on_local_measures_keeps_apart_and_resumes(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = DeviceTable(workspace / "latency_tables", "local")
    calib_before = table.measurements_path.read_bytes()
    surrogate_before = table.surrogate_path.read_bytes()
    ws = ["-W", str(workspace)]
    capsys.readouterr()
    assert main([*ws, "verify", "demo", "--device", "local", "--top", "3", "--quick", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["counts"]["members"] == 3 and doc["counts"]["measured"] == 3
    assert "verifying 3 front member(s), 0 already verified" in captured.err
    # the records went to verification.jsonl, never into the calibration data or the predictor
    assert lines(table.verification_path) == 3
    assert table.measurements_path.read_bytes() == calib_before
    assert table.surrogate_path.read_bytes() == surrogate_before
    verified = list(table.verification_records())
    assert {r.arch_id for r in verified} == {m["arch_id"] for m in doc["members"]}
    assert all(r.ok and r.device_fingerprint == probe_report().fingerprint for r in verified)
    # per member: measured beside predicted and its intervals; fastest first, spread over the front
    members = doc["members"]
    assert [m["predicted_ms"] for m in members] == sorted(m["predicted_ms"] for m in members)
    for m in members:
        lo80, hi80 = m["interval_80_ms"]
        lo90, hi90 = m["interval_90_ms"]
        assert lo90 <= lo80 <= m["predicted_ms"] <= hi80 <= hi90
        assert m["measured_ms"] > 0 and m["within_80"] == (lo80 <= m["measured_ms"] <= hi80)
    assert doc["coverage"]["80"]["nominal"] == 0.8 and doc["coverage"]["80"]["n"] == 3
    assert set(doc["violations"]) == {"point", "0.8", "0.9", "0.95"}
    assert doc["hypervolume"]["predicted"] > 0 and doc["hypervolume"]["measured"] >= 0
    # the report file is the same document, with its schema
    saved = json.loads((workspace / "runs/demo/verification.local.json").read_text())
    assert saved["schema"] == "ofa2-edge/front-verification" and saved["schema_version"] == 1
    assert saved["members"] == members
    # a rerun measures nothing again (same device, runtime and protocol) and reports the same members
    assert main([*ws, "verify", "demo", "--device", "local", "--top", "3", "--quick", "--json"]) == 0
    captured = capsys.readouterr()
    assert "3 already verified" in captured.err
    assert lines(table.verification_path) == 3
    again = json.loads(captured.out)
    assert [m["measured_ms"] for m in again["members"]] == [m["measured_ms"] for m in members]
    # and the table, verification records included, still reads and lists
    assert main([*ws, "tables", "show", "local", "--json"]) == 0


def test_bad_options_and_damaged_file_write_nothing(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = ["-W", str(workspace)]
    table = DeviceTable(workspace / "latency_tables", "local")
    before = table.verification_path.read_bytes() if table.verification_path.exists() else b""
    capsys.readouterr()
    assert main([*ws, "verify", "demo", "--device", "local", "--top", "2", "--all"]) == EXIT_FAILURE
    assert "exactly one of --top N, --budgets" in capsys.readouterr().err
    assert main([*ws, "verify", "demo", "--device", "local", "--budgets", "10,x"]) == EXIT_FAILURE
    assert "--budgets: expected comma-separated milliseconds" in capsys.readouterr().err
    assert main([*ws, "verify", "demo", "--device", "local", "--budgets", "0.001"]) == EXIT_FAILURE
    assert "no front member is predicted within" in capsys.readouterr().err
    assert main([*ws, "verify", "nope", "--device", "local"]) == EXIT_FAILURE
    assert (table.verification_path.read_bytes() if table.verification_path.exists() else b"") == before
    # a damaged verification file stops before the device is touched, naming file and line
    copy = tmp_path / "ws"
    import shutil

    shutil.copytree(workspace, copy)
    damaged = DeviceTable(copy / "latency_tables", "local").verification_path
    damaged.write_text('{"schema_version": 2, "arch_id": "a-x"}\n' + (before.decode() if before else ""))
    assert main(["-W", str(copy), "verify", "demo", "--device", "local", "--top", "1", "--quick"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "verification.jsonl:1" in err
    assert damaged.read_text().startswith('{"schema_version": 2, "arch_id": "a-x"}\n')


def _copy(workspace: Path, ws: Path) -> tuple[DeviceTable, RunFolder, Any, list]:
    """A copy of the module's workspace without verification records: its table, run,
    predictor and priced front."""
    shutil.copytree(workspace, ws)
    table = DeviceTable(ws / "latency_tables", "local")
    table.verification_path.unlink(missing_ok=True)
    run = RunFolder(ws / "runs" / "demo")
    surrogate = table.predictor()
    return table, run, surrogate, price_front(run, surrogate, table)


def _scored(workspace: Path, tmp_path: Path, factor: float) -> dict:
    """Score every front member against records `factor` x its prediction (no device involved)."""
    table, run, surrogate, cands = _copy(workspace, tmp_path / f"ws-{factor}")
    request = VerifyRequest(all=True)
    members = choose_members(cands, request, surrogate)
    protocol = Protocol()
    fp = probe_report().fingerprint
    for c in members:
        table.append_verification(record_for(c.arch, c.latency_ms * factor, protocol, fingerprint=fp))
    key = MeasureKey.of(next(table.verification_records()))
    return score(run, "local", table, surrogate, cands, members, key, request)


def test_scoring_follows_the_measurements(workspace: Path, tmp_path: Path) -> None:
    exact = _scored(workspace, tmp_path, 1.0)
    assert exact["counts"]["scored"] == exact["counts"]["members"] == exact["front_size"]
    assert exact["coverage"]["80"]["actual"] == 1.0 and exact["coverage"]["90"]["actual"] == 1.0
    assert exact["error"]["mape_pct"] == pytest.approx(0.0, abs=1e-9)
    for level in ("point", "0.8", "0.9", "0.95"):
        v = exact["violations"][level]
        assert v["judged"] > 0 and v["violation_rate"] == 0.0
    assert exact["hypervolume"]["ratio"] == pytest.approx(1.0)
    slow = _scored(workspace, tmp_path, 3.0)  # the device is 3x slower than predicted
    assert slow["coverage"]["80"]["actual"] == 0.0 and slow["coverage"]["80"]["above_share"] == 1.0
    assert slow["error"]["mape_pct"] == pytest.approx(100 * 2 / 3)
    assert slow["violations"]["0.9"]["violation_rate"] == 1.0
    assert slow["hypervolume"]["ratio"] < 1.0


def test_a_member_of_the_calibration_data_is_never_scored(workspace: Path, tmp_path: Path) -> None:
    """A front member that is also in measurements.jsonl (fitted on) is shown, not scored."""
    table, run, surrogate, cands = _copy(workspace, tmp_path / "ws")
    fitted = cands[0]
    fp = probe_report().fingerprint
    table.append(record_for(fitted.arch, fitted.latency_ms, Protocol(), fingerprint=fp))  # now calibration data
    request = VerifyRequest(all=True)
    members = choose_members(cands, request, surrogate)
    for c in members:
        table.append_verification(record_for(c.arch, c.latency_ms * 1.02, Protocol(), fingerprint=fp))
    key = MeasureKey.of(next(table.verification_records()))
    rep = score(run, "local", table, surrogate, cands, members, key, request)
    row = next(m for m in rep["members"] if m["arch_id"] == fitted.arch.id)
    assert row["in_calibration"] and row["measured_ms"] is not None
    assert rep["counts"]["scored"] == len(members) - 1 and rep["counts"]["in_calibration"] == 1
    states = {p["arch_id"]: p["state"] for v in rep["violations"].values() for p in v["picks"]}
    assert states.get(fitted.arch.id, "in calibration") == "in calibration"


def test_judge_picks_and_retest_rules(workspace: Path) -> None:
    table = DeviceTable(workspace / "latency_tables", "local")
    run = RunFolder(workspace / "runs" / "demo")
    surrogate = table.predictor()
    cands = price_front(run, surrogate, table)
    fastest = min(cands, key=lambda c: c.latency_ms)
    limit = fastest.latency_ms * 1.0001
    # the only member within the limit, measured 4 % over it: a violation, beyond a 1 % retest
    out = judge_picks(cands, surrogate.predict_quantile, None, [limit], {fastest.arch.id: limit * 1.04}, set(), 1.0)
    assert out["judged"] == 1 and out["violation_rate"] == 1.0 and out["beyond_retest_rate"] == 1.0
    out = judge_picks(cands, surrogate.predict_quantile, None, [limit], {fastest.arch.id: limit * 1.04}, set(), 5.0)
    assert out["violation_rate"] == 1.0 and out["beyond_retest_rate"] == 0.0
    out = judge_picks(cands, surrogate.predict_quantile, None, [limit], {}, set(), 1.0)
    assert out["judged"] == 0 and out["picks"][0]["state"] == "not verified" and out["violation_rate"] is None
    out = judge_picks(cands, surrogate.predict_quantile, None, [fastest.latency_ms / 2], {}, set(), 1.0)
    assert out["picks"][0]["state"] == "no pick"
    # every member some limit picks, at its tightest limit (its own bound), whatever the limits given
    front = sorted(non_dominated(cands), key=lambda c: c.latency_ms)
    measured = {c.arch.id: c.latency_ms * (1.02 if i % 3 == 0 else 0.99) for i, c in enumerate(front)}
    out = judge_picks(cands, surrogate.predict_quantile, None, [fastest.latency_ms / 2], measured, {front[1].arch.id}, 1.0)
    tight = out["tightest"]
    assert out["judged"] == 0 and tight["judged"] == len(front) - 1 >= 3
    assert {p["arch_id"] for p in tight["picks"]} == {c.arch.id for c in front} - {front[1].arch.id}
    n_over = sum(1 for i in range(len(front)) if i % 3 == 0 and i != 1)
    assert tight["violation_rate"] == pytest.approx(n_over / (len(front) - 1)) and tight["beyond_retest_rate"] == tight["violation_rate"]
    lo, hi = tight["violation_ci95"]
    assert 0 <= lo < tight["violation_rate"] < hi <= 1 and tight["max_excess_pct"] == pytest.approx(2.0)
    safe = judge_picks(cands, surrogate.predict_quantile, 0.9, [], measured, set(), 1.0)["tightest"]
    point = {c.arch.id: c.latency_ms for c in cands}
    assert safe["judged"] >= 1 and all(p["limit_ms"] > point[p["arch_id"]] for p in safe["picks"])  # judged at the 0.9 bound
    # test-retest: calibration vs verification pairs when there are 3+, else the agent's block spread
    fp = probe_report().fingerprint
    recs = {c.arch.id: record_for(c.arch, 10.0, Protocol(), fingerprint=fp) for c in cands[:3]}
    again = {c.arch.id: record_for(c.arch, 11.0, Protocol(), fingerprint=fp) for c in cands[:3]}
    assert retest_difference(again, recs)["pct"] == pytest.approx(10.0) and retest_difference(again, recs)["n"] == 3
    assert retest_difference(again, {})["source"] == "block-minimum spread"


def test_the_dashboard_shows_verified_members_and_their_scores(workspace: Path, tmp_path: Path) -> None:
    """The page's data carries what `verify` measured (aligned with the front) and its scores;
    a damaged report is a note on the page, never a crash or a page showing it."""
    from ofa2_edge.core.workspace import Workspace
    from ofa2_edge.deploy.dashboard import build_data

    run = RunFolder(workspace / "runs" / "demo")
    if run.verification("local") is None:  # this test alone: verify first (the real agent)
        assert main(["-W", str(workspace), "verify", "demo", "--device", "local", "--top", "3", "--quick"]) == 0
    report = run.verification("local")
    assert report is not None
    data = build_data(run, Workspace.resolve(workspace))
    view = data["devices"][0]
    ids = [c["id"] for c in data["candidates"]]
    want = {m["arch_id"]: m["measured_ms"] for m in report["members"]}
    assert [view["verified"][i] for i, a in enumerate(ids) if a in want] == [want[a] for a in ids if a in want]
    assert all(v is None for a, v in zip(ids, view["verified"], strict=True) if a not in want)
    summary = view["verification"]
    assert summary["members"] == len(report["members"]) and summary["measured"] == sum(v is not None for v in want.values())
    assert summary["coverage"]["80"] == {k: report["coverage"]["80"][k] for k in ("nominal", "actual", "n")}
    assert summary["violations"]["0.9"]["judged"] == report["violations"]["0.9"]["judged"]

    # a damaged report: one note naming the file, the page still builds without it
    copy = tmp_path / "demo"
    shutil.copytree(run.path, copy)
    doc = json.loads((copy / "verification.local.json").read_text())
    doc["members"][0]["measured_ms"] = "fast"
    (copy / "verification.local.json").write_text(json.dumps(doc))
    with pytest.raises(SchemaError, match=r"verification\.local\.json: members\[0\]\.measured_ms"):
        RunFolder(copy).verification("local")
    damaged = build_data(RunFolder(copy), Workspace.resolve(workspace))["devices"][0]
    assert damaged["verification"] is None and set(damaged["verified"]) == {None}
    assert any("verification report of local could not be read" in n for n in damaged["notes"])


@pytest.mark.browser
def test_verified_members_in_headless_chromium(chromium: str, workspace: Path, tmp_path: Path) -> None:
    from test_dashboard import offline_page

    run = RunFolder(workspace / "runs" / "demo")
    if run.verification("local") is None:
        assert main(["-W", str(workspace), "verify", "demo", "--device", "local", "--top", "3", "--quick"]) == 0
    report = run.verification("local")
    assert report is not None
    out = tmp_path / "page.html"
    assert main(["-W", str(workspace), "dashboard", "demo", "-o", str(out)]) == 0
    measured = {m["arch_id"]: m["measured_ms"] for m in report["members"] if m["measured_ms"] is not None}
    with offline_page(chromium, out, tmp_path / "profile") as page:
        page.wait_for_function("document.querySelectorAll('#pareto .scatterlayer .point').length > 0")
        trace = page.evaluate("(() => { const t = document.getElementById('pareto').data.find(t => t.meta === 'verified');"
                              " return {ids: t.ids, x: t.x}; })()")  # fmt: skip
        assert dict(zip(trace["ids"], trace["x"], strict=True)) == measured
        line = page.evaluate("document.getElementById('verification').textContent")
        assert page.evaluate("document.getElementById('verification').dataset.state") == "verified"
        assert f"{len(measured)} of {len(report['members'])} members measured" in line
        assert "80 % interval holds" in line and "--safe 0.9" in line
        cells = page.eval_on_selector_all(
            "#candidates tbody tr", "rows => rows.map(r => [r.dataset.id, r.children[6].textContent])"
        )
        shown = {i: float(v) for i, v in cells if v != "\u2013"}
        assert shown == pytest.approx({i: round(v, 2) for i, v in measured.items()}, abs=0.006)


# ---------------------------------------------------------------------------- session drift
def _session_batch(session: int, batch: int = 1) -> str:
    """A batch id of measurement session `session`, as DeviceSession writes them."""
    return f"b-{session:012x}-{batch:08x}"


def test_each_verify_call_is_one_session(workspace: Path, tmp_path: Path) -> None:
    """Batch ids carry the session: one verify call's records share it, the next call's differ."""
    shutil.copytree(workspace, tmp_path / "ws")
    ws = ["-W", str(tmp_path / "ws")]
    table = DeviceTable(tmp_path / "ws" / "latency_tables", "local")
    table.verification_path.unlink(missing_ok=True)
    assert main([*ws, "verify", "demo", "--device", "local", "--top", "2", "--quick"]) == 0
    first = {session_of(r.batch_id) for r in table.verification_records()}
    assert main([*ws, "verify", "demo", "--device", "local", "--top", "4", "--quick"]) == 0
    records = list(table.verification_records())
    sessions = [session_of(r.batch_id) for r in records]
    assert len(first) == 1 and len(set(sessions)) == 2 and sessions[:2] == sorted(first) * 2
    assert all(len(s) == 12 and int(s, 16) >= 0 for s in sessions)
    assert session_of("b-test") == "b-test"  # records older than session ids: each batch its own


def test_session_residuals_and_the_verified_quantiles(workspace: Path) -> None:
    table = DeviceTable(workspace / "latency_tables", "local")
    model = table.predictor()
    archs = SearchSpace().sample(12, np.random.default_rng(5))
    point = model.predict(archs)
    fp = probe_report().fingerprint

    def rec(i: int, factor: float, session: int) -> Any:
        return record_for(archs[i], float(point[i]) * factor, Protocol(), fingerprint=fp, batch_id=_session_batch(session, i))

    recs = [rec(i, 1.10 + 0.01 * i, 1) for i in range(6)] + [rec(i, 0.95, 2) for i in range(6, 9)]
    recs += [rec(9, 3.0, 2), rec(6, 0.90, 2)]  # fitted on (left out); measured again (the latest counts)
    res = session_residuals(recs, model, fitted_on={archs[9].id})
    s1, s2 = session_of(_session_batch(1)), session_of(_session_batch(2))
    assert set(res) == {s1, s2} and len(res[s1]) == 6 and len(res[s2]) == 3
    assert np.allclose(sorted(res[s1].values()), np.log(1.10 + 0.01 * np.arange(6)))
    assert np.allclose(sorted(res[s2].values()), np.log([0.90, 0.95, 0.95]))
    assert res[s2][archs[6].id] == pytest.approx(np.log(0.90))
    assert pooled(res, exclude_session=s1).size == 3 and pooled(res).size == 9
    assert pooled(res, exclude_arch=archs[0].id).size == 8 and np.all(np.diff(pooled(res)) >= 0)
    assert shifts_doc(res)[s1]["shift_pct"] == pytest.approx(12.5, abs=0.01) and shifts_doc(res)[s2]["n"] == 3
    r = np.log(1.10 + 0.01 * np.arange(6))
    assert residual_quantile(r, 0.9) == pytest.approx(r[-1]) and residual_quantile(r, 0.5) == pytest.approx(r[3])
    assert residual_quantile(r, 0.05) == pytest.approx(r[0])  # too few for the rank: the extreme one
    # an upper bound only moves to the safe side: the wider of the predictor's own and the residuals'
    wrapped = VerifiedSurrogate(model.width_mult, model, [pooled(res)])  # one session: conformal
    assert np.allclose(wrapped.predict(archs), point)
    own_hi = model.predict_quantile(archs, 0.9)
    assert np.allclose(wrapped.predict_quantile(archs, 0.9), np.maximum(own_hi, point * 1.15))  # rank 10 of 9: the largest
    # a lower bound is the residuals' where n holds its rank (q=0.1, n=9: rank 1), else the wider of the two
    assert np.allclose(wrapped.predict_quantile(archs, 0.1), point * 0.90)
    own_lo05 = model.predict_quantile(archs, 0.05)
    assert np.allclose(wrapped.predict_quantile(archs, 0.05), np.minimum(own_lo05, point * 0.90))
    shifted = VerifiedSurrogate(model.width_mult, model, [np.log(1.10 + 0.005 * np.arange(10))])  # a session 10-15 % slower
    assert np.allclose(shifted.predict_quantile(archs, 0.1), point * 1.10)  # the interval follows it up
    few = VerifiedSurrogate(model.width_mult, model, [pooled(res, exclude_session=s1)])  # fewer than MIN_RESIDUALS: its own
    assert np.allclose(few.predict_quantile(archs, 0.9), own_hi)
    with pytest.raises(InvalidInputError, match="verified residuals"):
        VerifiedSurrogate(model.width_mult, model, [[0.1, float("nan")]])


@pytest.mark.parametrize("sessions", [2, 3, 5])
def test_drift_between_sessions_is_priced_for_the_next_session(sessions: int) -> None:
    """Sessions shift by their own amount (sd 5 %) around small within-session errors (1 %).
    Judged on a session none of them saw (the truth drawn the same way, 1000 times), the
    drift-priced 80 % interval holds about 80 %; the pooled residuals' conformal interval,
    which treats one session's shift as everyone's, holds far less."""
    rng = np.random.default_rng(sessions)
    inside, pooled_inside, above = 0, 0, 0
    n = 1000
    for _ in range(n):
        shift = rng.normal(0.0, 0.05, sessions + 2)  # [calibration, verified..., the new one]
        groups = [shift[j] - shift[0] + rng.normal(0.0, 0.01, 12) for j in range(1, sessions + 1)]
        new = shift[-1] - shift[0] + rng.normal(0.0, 0.01)  # residuals are relative to the calibration session
        r = SessionResiduals(groups)
        lo, hi = r.quantile(0.1), r.quantile(0.9)
        inside += lo <= new <= hi
        above += new > hi
        p = r.pooled()
        pooled_inside += residual_quantile(p, 0.1) <= new <= residual_quantile(p, 0.9)
    assert r.prices_drift and abs(inside / n - 0.8) <= 0.045 and abs(above / n - 0.1) <= 0.035
    assert pooled_inside / n <= 0.7


def test_drift_pricing_needs_two_sessions_and_follows_their_spread() -> None:
    one = SessionResiduals([np.log(1.10 + 0.005 * np.arange(10))])
    assert not one.prices_drift and one.quantile(0.9) == pytest.approx(residual_quantile(one.pooled(), 0.9))
    close = SessionResiduals([np.log(1.05 + 0.002 * np.arange(8)), np.log(1.06 + 0.002 * np.arange(8))])
    apart = SessionResiduals([np.log(1.05 + 0.002 * np.arange(8)), np.log(1.30 + 0.002 * np.arange(8))])
    assert close.prices_drift and close.shifts()[0] == 0.0 and close.shifts().size == 3
    assert apart.quantile(0.9) > close.quantile(0.9) > close.quantile(0.5) > close.quantile(0.1)
    assert close.quantile(0.1) < 0.0  # the calibration session (shift 0) is one of the sessions a new one resembles
    # an upper bound is never below the pooled residuals' conformal one, whatever the drift model says
    agree = SessionResiduals([np.log([0.90, 1.0, 1.0, 1.0, 1.12]), np.log([0.92, 1.01, 1.01, 1.01, 1.10])])
    assert agree.quantile(0.9) < residual_quantile(agree.pooled(), 0.9)  # the drift model alone is narrower here
    up = widen(np.array([1.0]), np.array([1.0]), agree, 0.9)
    assert up[0] == pytest.approx(np.exp(residual_quantile(agree.pooled(), 0.9)))
    # the same shift every session (no spread): the within-session errors alone, moved by the mean shift
    flat = SessionResiduals([np.zeros(6), np.zeros(6)])
    assert flat.quantile(0.9) == pytest.approx(0.0)
    # a saved predictor keeps the sessions apart; one written before (pooled residuals) reads as one session
    model = LinearSurrogate(features="minimal").fit(SearchSpace().sample(20, np.random.default_rng(1)),
                                                    np.linspace(5.0, 9.0, 20))  # fmt: skip
    wrapped = VerifiedSurrogate(model.width_mult, model, close.groups)
    back = VerifiedSurrogate.from_params(wrapped.params(), model.width_mult)
    assert [g.tolist() for g in back.verified.groups] == [g.tolist() for g in close.groups]
    old = VerifiedSurrogate.from_params({"base": model.to_doc(), "residuals": close.pooled().tolist(), "sessions": 2},
                                        model.width_mult)  # fmt: skip
    assert len(old.verified.groups) == 1 and not old.verified.prices_drift
    with pytest.raises(ValueError, match="session_residuals"):
        VerifiedSurrogate.from_params({"base": model.to_doc(), "session_residuals": [[0.1], [21.0]]}, model.width_mult)


def _two_sessions(workspace: Path, ws: Path) -> tuple[DeviceTable, list, Any]:
    """A copy whose front members were verified in two sessions (alternately), 10-14 % slower
    than predicted, with a function scoring them with the saved predictor."""
    table, run, surrogate, cands = _copy(workspace, ws)
    request = VerifyRequest(all=True)
    members = choose_members(cands, request, surrogate)
    fp = probe_report().fingerprint
    for i, c in enumerate(members):
        factor = 1.10 + 0.01 * (i % 5)
        table.append_verification(
            record_for(c.arch, c.latency_ms * factor, Protocol(), fingerprint=fp, batch_id=_session_batch(1 + i % 2, i))
        )
    key = MeasureKey.of(next(table.verification_records()))

    def scored() -> dict:
        return score(run, "local", table, table.predictor(), cands, members, key, request)

    return table, members, scored


def test_residuals_of_other_sessions_widen_and_fit_folds_them_in(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # one session 12 % slower than predicted: nothing else to learn from, the intervals stay the predictor's
    table, run, surrogate, cands = _copy(workspace, tmp_path / "one")
    members = choose_members(cands, VerifyRequest(all=True), surrogate)
    assert len(members) >= 2 * MIN_RESIDUALS + 2
    fp = probe_report().fingerprint
    for c in members:
        table.append_verification(record_for(c.arch, c.latency_ms * 1.12, Protocol(), fingerprint=fp, batch_id=_session_batch(1)))
    key = MeasureKey.of(next(table.verification_records()))
    one = score(run, "local", table, surrogate, cands, members, key, VerifyRequest(all=True))
    assert one["sessions"]["count"] == 1 and one["sessions"]["in_predictor"] == 0
    assert next(iter(one["sessions"]["shifts"].values()))["shift_pct"] == pytest.approx(12.0)
    assert one["coverage"]["80"]["actual"] == 0.0 and one["violations"]["0.9"]["tightest"]["violation_rate"] == 1.0
    assert one["own_intervals"]["coverage"]["80"] == 0.0
    # two sessions, both 10-14 % slower: each is judged with the other's residuals, and is covered
    table2, members2, scored = _two_sessions(workspace, tmp_path / "two")
    two = scored()
    assert two["sessions"]["count"] == 2 and two["sessions"]["residuals"] == len(members2)
    assert two["coverage"]["80"]["actual"] >= 0.8 and two["coverage"]["90"]["actual"] >= 0.8
    assert two["violations"]["0.9"]["tightest"]["violation_rate"] <= 0.2
    # one other session per member: no drift to price yet, so pooling changes nothing
    assert two["pooled_residuals"]["coverage"]["80"] == two["coverage"]["80"]["actual"]
    # beside it, the judging with the predictor's own intervals: what one calibration session gives
    own = two["own_intervals"]
    assert own["coverage"] == {"80": 0.0, "90": 0.0} and own["safe_0.9_tightest"]["violation_rate"] == 1.0
    # `fit` folds every session's residuals into the saved predictor (select --safe uses it); scoring does not change
    assert main(["-W", str(tmp_path / "two"), "fit", "--device", "local"]) == 0
    saved = table2.predictor()
    assert isinstance(saved, VerifiedSurrogate) and len(saved.verified.groups) == 2 and saved.verified.size == len(members2)
    assert saved.report["verified"]["residuals"] == len(members2)
    capsys.readouterr()
    assert main(["-W", str(tmp_path / "two"), "tables", "show", "local"]) == 0
    shown = capsys.readouterr().out
    assert f"predictor  {saved.name}" in shown and f"verified   {len(members2)} residuals of front members from 2" in shown
    archs = [c.arch for c in members2]
    assert np.all(saved.predict_quantile(archs, 0.9) >= saved.predict(archs) * 1.13)
    again = scored()
    assert again["sessions"]["in_predictor"] == len(members2)
    assert again["coverage"] == two["coverage"] and again["violations"] == two["violations"]


def test_a_refit_keeps_a_groups_spread(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fit --device GROUP` refits the base and keeps the replicas' spread `calibrate --group` measured."""
    table, _, _, _ = _copy(workspace, tmp_path / "ws")
    model, _ = fit_table(table, 1.2, group={"replicas": ["a", "b"], "spread_log": 0.07, "anchors": 6})
    assert isinstance(model, GroupSurrogate) and model.report["group"]["spread_log"] == 0.07
    assert main(["-W", str(tmp_path / "ws"), "fit", "--device", "local"]) == 0
    again = table.predictor()
    assert isinstance(again, GroupSurrogate) and again.spread_log == 0.07 and again.report["group"]["replicas"] == ["a", "b"]
    capsys.readouterr()
    assert main(["-W", str(tmp_path / "ws"), "tables", "show", "local"]) == 0
    assert "replicas   2, part-to-part spread 7.3 %" in capsys.readouterr().out


def test_a_session_drifted_beyond_the_others_is_covered_once_drift_is_priced(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three sessions 2 %, 6 % and 12 % slower than predicted (the board warming up over a
    day): judged with the other two, the 12 % one lies above every residual they hold, so
    their pooled 90 % interval misses it; with the sessions' spread priced it is inside."""
    table, run, surrogate, cands = _copy(workspace, tmp_path / "ws")
    request = VerifyRequest(all=True)
    members = choose_members(cands, request, surrogate)
    assert len(members) >= 3 * MIN_RESIDUALS
    fp = probe_report().fingerprint
    shift = {1: 1.02, 2: 1.06, 3: 1.12}
    for i, c in enumerate(members):
        factor = shift[1 + i % 3] + 0.002 * (i % 4 - 1.5)
        table.append_verification(
            record_for(c.arch, c.latency_ms * factor, Protocol(), fingerprint=fp, batch_id=_session_batch(1 + i % 3, i))
        )
    key = MeasureKey.of(next(table.verification_records()))
    rep = score(run, "local", table, table.predictor(), cands, members, key, request)
    assert rep["sessions"]["count"] == 3 and rep["sessions"]["residuals"] == len(members)
    third = [r for i, r in enumerate(rep["members"]) if i % 3 == 2 and not r["in_calibration"]]
    assert third and all(r["within_90"] for r in third)
    assert rep["coverage"]["90"]["actual"] == 1.0 and rep["pooled_residuals"]["coverage"]["90"] <= 2 / 3
    assert rep["pooled_residuals"]["coverage"]["80"] < rep["coverage"]["80"]["actual"]
    # `fit` folds the three sessions in, and the table's summary says their drift is priced
    assert main(["-W", str(tmp_path / "ws"), "fit", "--device", "local"]) == 0
    saved = table.predictor()
    assert isinstance(saved, VerifiedSurrogate) and saved.verified.prices_drift and len(saved.verified.groups) == 3
    capsys.readouterr()
    assert main(["-W", str(tmp_path / "ws"), "tables", "show", "local"]) == 0
    assert "from 3 verify session(s)" in capsys.readouterr().out.replace("\n", " ")
