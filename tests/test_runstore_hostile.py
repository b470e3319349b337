"""Run folders under hostile or broken input: every reader of a run file either gives the
same result or one clear `Ofa2EdgeError`, never a traceback, and never changes the folder.

Two small real runs (pop 8 x 3 generations, note10 LUT + the official accuracy predictor)
are made once per module: one completed, one interrupted after its checkpoint at
generation 2. Each test works on a copy. The hypothesis suites mutate one file of a copy
(byte flips, truncation, inserted and deleted bytes; wrong types, NaN/Infinity, huge
numbers, deep nesting, missing and extra keys) and run every consumer on it: the run
store's readers, `runs show`, `select`'s pricing, the dashboard's data, `compare` and a
resume.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import Ofa2EdgeError, SchemaError
from ofa2_edge.core.locks import exclusive
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.deploy.dashboard import build_data
from ofa2_edge.deploy.select import price_front
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.compare import compare_runs
from ofa2_edge.search.config import SearchConfig, stored_config
from ofa2_edge.search.runner import run_search
from ofa2_edge.surrogates.base import load_surrogate
from ofa2_edge.surrogates.lut import LutSurrogate
from ofa2_edge.tables.device import DeviceTable

CONFIG = {"objectives": ("latency:note10", "top1"), "constraints": ("latency:note10<=30",), "pop_size": 8, "n_gen": 3, "seed": 1, "checkpoint_every": 2}
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def ws(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("hostile-ws")
    LutSurrogate.from_folder(assets_dir / "note10").save(root / "latency_tables" / "note10" / "surrogate.json", device="note10")
    workspace = Workspace.resolve(root, root / "cache")
    run_search(SearchConfig(**CONFIG), root / "runs" / "done", workspace=workspace, plot=False)

    def stop(progress: Any) -> None:
        if progress.gen == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(SearchConfig(**{**CONFIG, "n_gen": 4}), root / "runs" / "cut", workspace=workspace, plot=False, progress=stop)
    return workspace


def fresh(ws: Workspace, tmp_path: Path, name: str = "done") -> Path:
    dest = tmp_path / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ws.runs_dir / name, dest)
    return dest


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file of the folder but the lock (a writer rewrites its holder line)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != rs.LOCK_FILE}


def rows_of(folder: Path) -> list[dict[str, Any]]:
    return list(rs.RunFolder(folder).evaluations())


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def resume(ws: Workspace, folder: Path) -> dict[str, Any]:
    return run_search(None, folder, workspace=ws, resume=True, plot=False)


# --------------------------------------------------------------------- issue 16: archive_rows
@pytest.mark.parametrize("rows", [4, 0, -1, 25, 10**8, 10**30, "24", 24.0, None, True])
def test_a_checkpoint_naming_other_rows_is_refused_and_nothing_changes(ws: Workspace, tmp_path: Path, rows: Any) -> None:
    """The probe's finding: archive_rows cut evaluations.jsonl (200 rows to 4, -1 emptied
    it) with exit 0, even on a completed run; 10**8 took 158 s and 1.1 GB."""
    for name in ("done", "cut"):
        folder = fresh(ws, tmp_path, name)
        edit_json(folder / rs.CHECKPOINT_FILE, lambda ck: ck.update(archive_rows=rows))
        before = digest(folder)
        with pytest.raises(SchemaError, match="checkpoint.json") as err:
            resume(ws, folder)
        assert "archive_rows" in str(err.value) and digest(folder) == before


def test_a_finished_run_is_never_truncated(ws: Workspace, tmp_path: Path) -> None:
    folder = fresh(ws, tmp_path)
    before = digest(folder)
    assert resume(ws, folder) == rs.RunFolder(folder).status()
    assert digest(folder) == before
    # rows the checkpoint does not count in a finished run: an error, not a cut
    with open(folder / rs.EVALUATIONS_FILE, "ab") as fh:
        fh.write((json.dumps({**rows_of(folder)[-1], "gen": 4}) + "\n").encode())
    before = digest(folder)
    with pytest.raises(SchemaError, match="holds rows after"):
        resume(ws, folder)
    assert digest(folder) == before


def test_the_checkpoint_must_agree_with_its_rows_and_the_config(ws: Workspace, tmp_path: Path) -> None:
    cases: list[tuple[str, Callable[[Path], None], str]] = [
        ("fewer rows than its generation wrote", lambda f: edit_json(f / rs.CHECKPOINT_FILE, lambda ck: ck.update(archive_rows=8)), "leaves out row 9"),
        ("a generation past the run's", lambda f: edit_json(f / rs.CHECKPOINT_FILE, lambda ck: ck.update(gen=9)), "hv_rows"),
        ("a genome outside the space", lambda f: edit_json(f / rs.CHECKPOINT_FILE, lambda ck: ck["pop"]["X"][0].__setitem__(0, 7)), "outside the run's search space"),
        ("an individual that was never evaluated", lambda f: edit_json(f / rs.CHECKPOINT_FILE, lambda ck: ck["pop"]["X"].__setitem__(0, [1] * 45 + [4])), "not among the 16 rows"),
        ("pop data that would overwrite F", lambda f: edit_json(f / rs.CHECKPOINT_FILE, lambda ck: ck["pop"]["data"].update(F=[0] * 8)), "overwrite"),
        ("an RNG state of another generator", lambda f: edit_json(f / rs.CHECKPOINT_FILE, lambda ck: ck["rng_state"].update(bit_generator="MT19937")), "rng_state"),
        ("a changed config", lambda f: edit_json(f / rs.CONFIG_FILE, lambda c: c.update(seed=9)), "changed since the checkpoint"),
    ]
    for what, change, message in cases:
        folder = fresh(ws, tmp_path, "cut")
        change(folder)
        before = digest(folder)
        with pytest.raises(Ofa2EdgeError, match=message):
            resume(ws, folder)
        assert digest(folder) == before, what
    folder = fresh(ws, tmp_path, "cut")  # untouched, it resumes to the uninterrupted result
    assert resume(ws, folder)["state"] == "completed" and len(rows_of(folder)) > 16


def test_resume_cli_exits_1_naming_the_file(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = fresh(ws, tmp_path)
    edit_json(folder / rs.CHECKPOINT_FILE, lambda ck: ck.update(archive_rows=-1))
    before = digest(folder)
    code = main(["-W", str(ws.root), "search", "--resume", "-o", str(folder), "--no-plot"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "checkpoint.json: archive_rows: expected an integer >= 0, got -1" in err
    assert digest(folder) == before


# --------------------------------------------------------------------- evaluations.jsonl lines
def test_a_malformed_middle_row_is_an_error_and_a_torn_last_line_is_skipped(ws: Workspace, tmp_path: Path) -> None:
    folder = fresh(ws, tmp_path, "cut")
    path = folder / rs.EVALUATIONS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    good = rows_of(folder)
    # a torn last line (a writer killed while appending) is skipped, and a resume drops it
    path.write_bytes(b"".join(lines) + lines[3][:40])
    assert rows_of(folder) == good
    resume(ws, folder)
    assert path.read_bytes().endswith(b"\n")
    for bad, message in (
        (b"garbage\n", ":4: not a JSON row"),
        (b"\n", ":4: not a JSON row"),
        (json.dumps({**good[2], "top1_pct": "x"}).encode() + b"\n", ":4: top1_pct: expected a number"),
        (json.dumps({k: v for k, v in good[2].items() if k != "arch"}).encode() + b"\n", ":4: arch is missing"),
        (json.dumps({**good[2], "arch": {**good[2]["arch"], "ks": [4] * 20}}).encode() + b"\n", ":4: arch is not a valid arch"),
        (json.dumps({**good[2], "arch_id": "a-000000000000"}).encode() + b"\n", ":4: says arch_id a-000000000000"),
        (json.dumps({**good[2], "extra": 1}).encode() + b"\n", ":4: unexpected key"),
        (json.dumps([1, 2]).encode() + b"\n", ":4: expected a JSON object"),
    ):
        folder = fresh(ws, tmp_path, "cut")
        path.write_bytes(b"".join([*lines[:3], bad, *lines[4:]]))
        before = digest(folder)
        with pytest.raises(SchemaError, match=f"evaluations.jsonl{message}"):
            rows_of(folder)
        with pytest.raises(SchemaError, match=f"evaluations.jsonl{message}"):
            resume(ws, folder)
        assert digest(folder) == before


# --------------------------------------------------------------------- front rows, everywhere
FRONT_DAMAGE: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("NaN top-1", lambda d: d["rows"][0].update(top1_pct=float("nan")), "rows[0]: top1_pct: expected a finite number"),
    ("a string top-1", lambda d: d["rows"][1].update(top1_pct="77.1"), "rows[1]: top1_pct: expected a finite number"),
    ("a missing arch", lambda d: d["rows"][2].pop("arch"), "rows[2]: arch is missing"),
    ("rows not a list", lambda d: d.update(rows="x"), "rows: expected a list"),
    ("a huge latency", lambda d: d["rows"][0].update(**{"latency_ms:note10": 1e400}), "rows[0]: latency_ms:note10: expected a finite number"),
    ("an invalid arch", lambda d: d["rows"][0]["arch"].update(r=5000), "rows[0]: arch is not a valid arch"),
]


@pytest.mark.parametrize(("what", "damage", "message"), FRONT_DAMAGE, ids=[d[0] for d in FRONT_DAMAGE])
def test_bad_front_rows_are_one_clear_error_in_every_reader(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, damage: Callable[[dict[str, Any]], None], message: str
) -> None:
    folder = fresh(ws, tmp_path)
    edit_json(folder / rs.FRONT_FILE, damage)
    before = digest(folder)
    out = tmp_path / "page.html"
    for args in (
        ["runs", "show", str(folder)],
        ["runs", "show", str(folder), "--json"],
        ["select", str(folder), "--device", "note10"],
        ["dashboard", str(folder), "-o", str(out)],
        ["runs", "compare", str(folder), str(ws.runs_dir / "done")],
    ):
        code = main(["-W", str(ws.root), *args])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 1, (args, err)
        assert f"{folder / rs.FRONT_FILE}: {message}" in err, (args, err)
    assert not out.exists() and digest(folder) == before


# --------------------------------------------------------------------- one writer at a time
def test_a_second_writer_is_refused_and_writes_nothing(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The probe's finding: two concurrent resumes both exited 0 and left 512,182 rows for
    259,076 archs. The lock is held here as another search would hold it."""
    folder = fresh(ws, tmp_path, "cut")
    before = digest(folder)
    with exclusive(folder / rs.LOCK_FILE, "run cut"):
        code = main(["-W", str(ws.root), "search", "--resume", "-o", str(folder), "--no-plot"])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 1 and "run cut" in err and "is being written by another ofa2-edge process" in err and "pid " in err
        assert digest(folder) == before
        new = tmp_path / "new"
        new.mkdir()
        with exclusive(new / rs.LOCK_FILE, "run new"):
            code = main(["-W", str(ws.root), "search", "--objectives", "top1,latency:note10", "--pop", "8", "--gens", "2", "-o", str(new), "--no-plot"])
            assert code == 1 and "being written by another" in capsys.readouterr().err
            assert [p.name for p in new.iterdir()] == [rs.LOCK_FILE]
        # readers need no lock
        assert main(["-W", str(ws.root), "runs", "show", str(folder), "--json"]) == 0
    capsys.readouterr()
    assert resume(ws, folder)["state"] == "completed"  # the lock died with its holder


def test_a_new_search_into_a_foreign_folder_leaves_no_lock_file(ws: Workspace, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(Ofa2EdgeError, match="already exists and is not empty"):
        run_search(SearchConfig(**CONFIG), mine, workspace=ws, plot=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------- fuzz: any mutation
HUGE, DEEP = "\x00huge\x00", "\x00deep\x00"
JUNK: list[Any] = [float("nan"), float("inf"), float("-inf"), HUGE, DEEP, 10**30, -(2**63), -1, 0, 0.5, "x", "", None, True, False, [], {}, [[1]], {"k": 1}]


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):  # the first few items of long lists stand for the rest
            out += _paths(v, (*prefix, i))
    return out


def _dumps(doc: Any) -> bytes:
    text = json.dumps(doc)
    return text.replace(json.dumps(HUGE), "1e400").replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()


@st.composite
def json_mutation(draw: st.DrawFn, doc: Any) -> bytes:
    """A structural edit of one JSON document: replace a value, drop or add a key."""
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(_paths(doc)[1:]))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    kind = draw(st.sampled_from(["replace", "drop", "extra"]))
    if kind == "replace":
        parent[path[-1]] = draw(st.sampled_from(JUNK))
    elif kind == "drop":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent["extra_" + draw(st.sampled_from(["a", "gen", "rows"]))] = draw(st.sampled_from(JUNK))
    else:
        parent.append(draw(st.sampled_from(JUNK)))
    return _dumps(doc)


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    i = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    return data[:i] + data[i + draw(st.integers(1, 32)) :]


FILES = (rs.CONFIG_FILE, rs.STATUS_FILE, rs.FRONT_FILE, rs.HV_FILE, rs.TIMINGS_FILE, rs.CHECKPOINT_FILE, rs.EVALUATIONS_FILE)


@st.composite
def mutated_file(draw: st.DrawFn, folder: Path, names: tuple[str, ...] = FILES) -> tuple[str, bytes]:
    name = draw(st.sampled_from(names))
    data = (folder / name).read_bytes()
    if draw(st.booleans()):
        return name, draw(byte_mutation(data))
    if name == rs.EVALUATIONS_FILE:
        lines = data.splitlines(keepends=True)
        i = draw(st.integers(0, len(lines) - 1))
        return name, b"".join([*lines[:i], draw(json_mutation(json.loads(lines[i]))) + b"\n", *lines[i + 1 :]])
    return name, draw(json_mutation(json.loads(data)))


def only_clear_errors(call: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, result) or (False, the Ofa2EdgeError); any other exception fails the test."""
    try:
        return True, call()
    except Ofa2EdgeError as exc:
        assert str(exc).strip() and "Traceback" not in str(exc)
        return False, exc


@pytest.fixture(scope="module")
def done_dir(ws: Workspace) -> Path:
    return ws.runs_dir / "done"


@given(data=st.data())
@FUZZ
def test_fuzz_every_reader_of_a_completed_run(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str], done_dir: Path, data: st.DataObject) -> None:
    name, mutated = data.draw(mutated_file(done_dir))
    folder = fresh(ws, tmp_path)
    (folder / name).write_bytes(mutated)
    before = digest(folder)
    run = rs.RunFolder(folder)
    surrogate = load_surrogate(ws.tables_dir / "note10" / "surrogate.json")
    original = rs.RunFolder(done_dir)
    readers: dict[str, Callable[[], Any]] = {
        "config": run.config,
        "stored_config": lambda: stored_config(run),
        "status": run.status,
        "front": run.front,
        "hypervolume": run.hypervolume,
        "timings": run.timings,
        "checkpoint": run.checkpoint,
        "evaluations": lambda: list(run.evaluations()),
        "archive": lambda: run.read_archive(["latency_ms:note10", "top1_pct"], 24, 3),
        "select": lambda: price_front(run, surrogate, DeviceTable.of(ws, "note10")),
        "dashboard": lambda: build_data(run, ws),
        "compare": lambda: compare_runs(run, original),
    }
    for what, call in readers.items():
        only_clear_errors(call)
        assert digest(folder) == before, what
    for args in (["runs", "show", str(folder)], ["runs", "show", str(folder), "--json"], ["runs", "list"]):
        assert main(["-W", str(ws.root), *args]) in (0, 1)
        capsys.readouterr()
    # a resume of a completed run does nothing (or refuses); a status that says otherwise
    # makes it finish the run again, to the same rows and front
    ok, _ = only_clear_errors(lambda: resume(ws, folder))
    if not ok or digest(folder) == before:
        assert digest(folder) == before
    else:
        assert name == rs.STATUS_FILE
        assert rows_of(folder) == rows_of(done_dir) and run.front()["rows"] == original.front()["rows"]


@given(data=st.data())
@FUZZ
def test_fuzz_resume_of_an_interrupted_run(ws: Workspace, tmp_path: Path, data: st.DataObject) -> None:
    """A damaged checkpoint or evaluations.jsonl: a clear error that leaves the folder as it
    was, or a resume that keeps every row the checkpoint counted (never a silent cut). A
    value edited into another valid number is not detectable and is carried on."""
    cut = ws.runs_dir / "cut"
    name, mutated = data.draw(mutated_file(cut, (rs.CHECKPOINT_FILE, rs.EVALUATIONS_FILE, rs.STATUS_FILE)))
    folder = fresh(ws, tmp_path, "cut")
    (folder / name).write_bytes(mutated)
    before = digest(folder)
    kept = rows_of(cut)
    ok, _ = only_clear_errors(lambda: resume(ws, folder))
    if not ok:
        assert digest(folder) == before
    else:
        assert [r["arch_id"] for r in rows_of(folder)[: len(kept)]] == [r["arch_id"] for r in kept]


@pytest.mark.parametrize("extra", [[7] * 8, [True] * 8, [0.5] * 8])
def test_a_checkpoint_with_an_unknown_population_field_resumes_and_checkpoints(ws: Workspace, tmp_path: Path, extra: list[Any]) -> None:
    """The fuzzer's finding: a pop.data field that only the restored individuals carry came
    back from numpy as a mix of numpy scalars and None, and the next checkpoint raised
    TypeError (not JSON serializable). A field every individual has survives; one the
    offspring lack is dropped, and the run finishes."""
    folder = fresh(ws, tmp_path, "cut")
    ck = json.loads((folder / rs.CHECKPOINT_FILE).read_text())
    n = len(ck["pop"]["X"])
    edit_json(folder / rs.CHECKPOINT_FILE, lambda doc: doc["pop"]["data"].update(zz=(extra * n)[:n]))
    ok, result = only_clear_errors(lambda: resume(ws, folder))
    assert ok, result
    assert rs.RunFolder(folder).status()["state"] == "completed"
