"""Hostile bundles and archives: every one is a clear error (exit 1), bounded, and checked
against its manifest before a byte is written; a refused archive changes nothing on disk."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from records_factory import probe_report, record_for

from device_agents.records import Protocol
from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import SchemaError
from ofa2_edge.core.persist import sha256_file, write_json
from ofa2_edge.core.tarsafe import ArchiveLimits, _copy_capped, pack_folder
from ofa2_edge.deploy.bundle import MANIFEST, MANIFEST_SCHEMA, MANIFEST_VERSION, SUMS, check_bundle
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.costs import arch_costs
from ofa2_edge.tables.device import DeviceTable


# --------------------------------------------------------------------------- a bundle made by hand
def manifest_payload(files: list[dict]) -> dict:
    arch = Arch.smallest(160)
    return {
        "status": "latency-only",
        "arch": {"id": arch.id, **arch.to_dict(), **arch_costs([arch])[0]},
        "accuracy": None,
        "latency": {"predicted": None, "measured": None},
        "device": {"key": "local"},
        "format": "onnx",
        "input": {"name": "input", "shape": [1, 3, 160, 160], "dtype": "float32"},
        "output": {"name": "logits", "shape": [1, 1000], "dtype": "float32"},
        "preprocessing": {},
        "weights": {"source": "random:0"},
        "files": files,
    }


def write_sums(folder: Path, names: list[str]) -> None:
    (folder / SUMS).write_text("".join(f"{sha256_file(folder / n)}  {n}\n" for n in sorted(names)))


def make_bundle(root: Path, name: str = "local-a-000000000001", payload: dict | None = None) -> Path:
    """A bundle as `build_bundle` writes one (model bytes need not be a real model for `check`)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\x08\x07model" * 100)
    model = folder / "model.onnx"
    entry = {"name": "model.onnx", "sha256": sha256_file(model), "bytes": model.stat().st_size}
    write_json(folder / MANIFEST, MANIFEST_SCHEMA, MANIFEST_VERSION, payload or manifest_payload([entry]))
    write_sums(folder, ["model.onnx", MANIFEST])
    return folder


def rewrite_manifest(folder: Path, change: object) -> None:
    """Edit the manifest and re-sign SHA256SUMS, as a forger (or a careless script) would."""
    doc = json.loads((folder / MANIFEST).read_text())
    change(doc)  # type: ignore[operator]
    (folder / MANIFEST).write_text(json.dumps(doc))
    write_sums(folder, [n for n in ("model.onnx", MANIFEST) if (folder / n).exists()])


def test_a_good_bundle_passes_as_folder_and_archive(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path)
    assert check_bundle(folder)["files"][0]["name"] == "model.onnx"
    archive = pack_folder(folder, tmp_path / f"{folder.name}.tar.gz", arcname=folder.name)
    assert check_bundle(archive)["arch"]["id"] == Arch.smallest(160).id
    assert main(["bundle", "check", str(archive)]) == 0


def _no_model(doc: dict) -> None:
    doc["files"] = []


def _no_sha(doc: dict) -> None:
    del doc["files"][0]["sha256"]


def _files_not_a_list(doc: dict) -> None:
    doc["files"] = {"name": "model.onnx"}


def _measured_junk(doc: dict) -> None:
    doc["latency"]["measured"] = "fast"


def _arch_mismatch(doc: dict) -> None:
    doc["arch"]["r"] = 224


def _shape_junk(doc: dict) -> None:
    doc["input"]["shape"] = [1, "3", 160, 160]


def _no_output(doc: dict) -> None:
    del doc["output"]


def _dtype_junk(doc: dict) -> None:
    doc["output"]["dtype"] = "complex256"


def _format_junk(doc: dict) -> None:
    doc["format"] = "exe"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_shape_junk, "'input.shape' must be a list of 1-8 positive sizes"),
        (_no_output, "manifest field 'output' is missing"),
        (_dtype_junk, "'output.dtype' must be one of"),
        (_format_junk, "'format' must be one of"),
        (_no_model, "exactly one model file"),
        (_no_sha, "sha256 must be 64 hex digits"),
        (_files_not_a_list, "'files' must be a list"),
        (_measured_junk, "latency.measured"),
        (_arch_mismatch, "does not match"),
    ],
)
def test_a_damaged_manifest_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object, message: str
) -> None:
    folder = make_bundle(tmp_path)
    rewrite_manifest(folder, change)
    if change is _no_model:
        (folder / "model.onnx").unlink()
        write_sums(folder, [MANIFEST])
    with pytest.raises(SchemaError, match=message):
        check_bundle(folder)
    capsys.readouterr()
    assert main(["bundle", "check", str(folder)]) == 1
    assert message in capsys.readouterr().err


def test_a_damaged_tensorrt_build_spec_is_a_clear_error(tmp_path: Path) -> None:
    from ofa2_edge.deploy.bundle import TENSORRT_SPEC, read_tensorrt_build

    folder = make_bundle(tmp_path)
    assert read_tensorrt_build(folder) is None
    for text, message in [("[1, 2]", "expected a JSON object"), ('{"precision": "fp16"}', "malformed"), ("{", "not readable JSON")]:
        (folder / TENSORRT_SPEC).write_text(text)
        with pytest.raises(SchemaError, match=message):
            read_tensorrt_build(folder)


def test_sums_that_are_not_utf8_or_malformed_are_clear_errors(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path)
    (folder / SUMS).write_bytes(b"\xff\xfe" + (folder / SUMS).read_bytes())
    with pytest.raises(SchemaError, match="not UTF-8"):
        check_bundle(folder)
    (folder / SUMS).write_text("0" * 64 + "  ../../etc/passwd\n")
    with pytest.raises(SchemaError, match="not a plain file name"):
        check_bundle(folder)
    assert main(["bundle", "check", str(folder)]) == 1


def test_a_model_replaced_by_a_link_is_refused(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((folder / "model.onnx").read_bytes())  # same bytes: the checksum alone passes
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(outside)
    with pytest.raises(SchemaError, match="model.onnx: is a link"):
        check_bundle(folder)
    assert main(["bundle", "check", str(folder)]) == 1


# --------------------------------------------------------------------------- archives
def tar_gz(path: Path, members: list[tuple[str, bytes]], dirs: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def bundle_members(tmp_path: Path) -> list[tuple[str, bytes]]:
    folder = make_bundle(tmp_path / "src")
    return [(f"{folder.name}/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]


@pytest.fixture()
def sandbox_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$TMPDIR for the code under test: what it unpacks lands here, and we can look."""
    sandbox = tmp_path / "tmpdir"
    sandbox.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox))
    return sandbox


def written_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def lying_header_gz(path: Path, name: str, size: int) -> Path:
    """A .tar.gz whose only header declares `size` bytes (a bomb's header; the data is not there)."""
    info = tarfile.TarInfo(name)
    info.size = size
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
    return path


def test_a_bomb_is_refused_at_its_header_with_the_default_limits(tmp_path: Path, sandbox_tmp: Path) -> None:
    archive = lying_header_gz(tmp_path / "bomb.tar.gz", "local-a-000000000001/model.onnx", 1 << 30)
    assert archive.stat().st_size < 1000
    with pytest.raises(SchemaError, match="over the limit"):
        check_bundle(archive)
    assert written_bytes(sandbox_tmp) == 0 and not any(sandbox_tmp.iterdir())


def test_limits_bound_members_member_size_and_total(tmp_path: Path, sandbox_tmp: Path) -> None:
    members = bundle_members(tmp_path)
    top = members[0][0].split("/")[0]
    zeros = tar_gz(tmp_path / "zeros.tar.gz", [*members, (f"{top}/pad.bin", bytes(300_000))])
    with pytest.raises(SchemaError, match="over the limit"):
        check_bundle(zeros, limits=ArchiveLimits(max_member_bytes=100_000))
    with pytest.raises(SchemaError, match="more than 200,000 bytes"):
        check_bundle(zeros, limits=ArchiveLimits(max_total_bytes=200_000))
    many = tar_gz(tmp_path / "many.tar.gz", [*members, *((f"{top}/f{i}", b"") for i in range(20))])
    with pytest.raises(SchemaError, match="more than 10 members"):
        check_bundle(many, limits=ArchiveLimits(max_members=10))
    assert written_bytes(sandbox_tmp) == 0 and not any(sandbox_tmp.iterdir())


def test_extraction_counts_bytes_and_stops_at_the_cap(tmp_path: Path) -> None:
    """A stream that yields more than its header said cannot write past the cap."""
    with pytest.raises(SchemaError, match="more bytes than allowed"):
        _copy_capped(io.BytesIO(bytes(5000)), tmp_path / "out", 1000, "x.tar.gz", "m")
    assert (tmp_path / "out").stat().st_size <= 1000


def test_members_not_in_sha256sums_are_refused_before_extraction(tmp_path: Path, sandbox_tmp: Path) -> None:
    members = bundle_members(tmp_path)
    top = members[0][0].split("/")[0]
    archive = tar_gz(tmp_path / "extra.tar.gz", [*members, (f"{top}/payload.sh", b"echo pwned\n")])
    with pytest.raises(SchemaError, match="'payload.sh' not listed in SHA256SUMS"):
        check_bundle(archive)
    assert not any(sandbox_tmp.iterdir())  # refused before a staging folder was even made
    no_sums = tar_gz(tmp_path / "nosums.tar.gz", [m for m in members if not m[0].endswith(SUMS)])
    with pytest.raises(SchemaError, match="no SHA256SUMS"):
        check_bundle(no_sums)


def test_a_truncated_archive_is_a_clear_error_not_aborted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_bundle(tmp_path / "src")
    (folder / "model.onnx").write_bytes(os.urandom(200_000))  # incompressible, so the cut lands in the data
    archive = pack_folder(folder, tmp_path / "b.tar.gz", arcname=folder.name)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    capsys.readouterr()
    assert main(["bundle", "check", str(cut)]) == 1
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "cut.tar.gz" in err and "Aborted" not in err


def test_a_duplicate_member_names_the_archive(tmp_path: Path, sandbox_tmp: Path) -> None:
    members = bundle_members(tmp_path)
    name, data = members[0]
    archive = tar_gz(tmp_path / "dup.tar.gz", [*members, (name, data + b"x")])
    with pytest.raises(SchemaError, match=r"dup\.tar\.gz: member .* appears twice") as info:
        check_bundle(archive)
    assert str(sandbox_tmp) not in str(info.value)


def test_a_bad_file_in_a_bundle_archive_is_named_in_the_archive(tmp_path: Path, sandbox_tmp: Path) -> None:
    folder = make_bundle(tmp_path / "src")
    (folder / "model.onnx").write_bytes(b"tampered")
    archive = pack_folder(folder, tmp_path / "t.tar.gz", arcname=folder.name)
    with pytest.raises(SchemaError, match=rf"t\.tar\.gz:{folder.name}: bundle check failed") as info:
        check_bundle(archive)
    assert str(sandbox_tmp) not in str(info.value)


# --------------------------------------------------------------------------- tables
def make_table(ws: Path, key: str = "pi") -> DeviceTable:
    table = DeviceTable(ws / "latency_tables", key)
    probe = probe_report(cpu_model="Cortex-A72")
    table.bind(probe, "onnxruntime")
    for r in (160, 224):
        table.append(record_for(Arch.smallest(r), 10.0 + r / 100, Protocol(), fingerprint=probe.fingerprint))
    return table


def test_table_import_refuses_a_bomb_and_unknown_files_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    (ws / "latency_tables").mkdir(parents=True)
    bomb = lying_header_gz(tmp_path / "bomb.tar.gz", "pi/measurements.jsonl", 1 << 30)
    assert main(["-W", str(ws), "tables", "import", str(bomb)]) == 1
    assert "over the limit" in capsys.readouterr().err
    odd = tar_gz(tmp_path / "odd.tar.gz", [("pi/measurements.jsonl", b""), ("pi/run.sh", b"rm -rf ~\n")])
    assert main(["-W", str(ws), "tables", "import", str(odd)]) == 1
    assert "'run.sh' is not a latency table file" in capsys.readouterr().err
    sub = tar_gz(tmp_path / "sub.tar.gz", [("pi/x/measurements.jsonl", b"")], dirs=("pi/x",))
    assert main(["-W", str(ws), "tables", "import", str(sub)]) == 1
    # nothing landed, no staging left (only the table's writer lock file, beside the tables)
    assert [p.name for p in (ws / "latency_tables").iterdir()] in ([], [".pi.lock"])


def test_table_import_of_a_truncated_archive_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    table = make_table(ws)
    for _ in range(30):  # an archive long enough to cut inside its data
        table.append(record_for(Arch.largest(192), 50.0, Protocol(), fingerprint=table.device_info()["fingerprint"]))
    archive = tmp_path / "pi.tar.gz"
    assert main(["-W", str(ws), "tables", "export", "pi", "-o", str(archive)]) == 0
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size - 200])
    capsys.readouterr()
    assert main(["-W", str(tmp_path / "other"), "tables", "import", str(cut)]) == 1
    err = capsys.readouterr().err
    assert "cut.tar.gz" in err and "truncated" in err and "Aborted" not in err


def test_a_validation_error_names_the_archive_not_a_temp_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tar_gz(tmp_path / "bad.tar.gz", [("pi/measurements.jsonl", b'{"schema": "agent.measure_result"}\n')])
    assert main(["-W", str(tmp_path / "ws"), "tables", "import", str(bad)]) != 0
    err = capsys.readouterr().err.replace("\n", "")
    assert "bad.tar.gz:pi/measurements.jsonl" in err and "/.pi." not in err


def test_an_exported_table_with_a_linked_device_json_imports(tmp_path: Path) -> None:
    """Export packs the table's files as plain files (a link would be refused by the receiver)."""
    ws = tmp_path / "ws"
    table = make_table(ws)
    shared = tmp_path / "shared-device.json"
    table.device_path.rename(shared)
    table.device_path.symlink_to(shared)
    (table.folder / ".device.json.0123abcd.tmp").write_text("{")  # a crash leftover: not packed
    archive = tmp_path / "pi.tar.gz"
    assert main(["-W", str(ws), "tables", "export", "pi", "-o", str(archive)]) == 0
    with tarfile.open(archive) as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == ["pi/device.json", "pi/measurements.jsonl"]
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
    other = tmp_path / "other"
    assert main(["-W", str(other), "tables", "import", str(archive)]) == 0
    copy = DeviceTable(other / "latency_tables", "pi")
    assert copy.device_info() == table.device_info()
    assert copy.measurements_path.read_bytes() == table.measurements_path.read_bytes()
