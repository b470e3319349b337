"""Property tests over the readers of user input: devices.yaml, arch JSON and genomes, bundle
manifests and SHA256SUMS, and archives (mutated bytes, headers and members).

The property is the same for all: a mutated input gives the same result as the original or
one clear Ofa2EdgeError, never a traceback, and an archive never writes outside the
destination (its staging folder is gone afterwards, whatever happened).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_archives import make_bundle, make_table, write_sums

from ofa2_edge.cli.main import main
from ofa2_edge.core.errors import Ofa2EdgeError
from ofa2_edge.core.tarsafe import unpack_folder
from ofa2_edge.deploy.bundle import MANIFEST, SUMS, check_bundle, model_file
from ofa2_edge.deploy.verify import _shippable
from ofa2_edge.devices.inventory import Device, Inventory
from ofa2_edge.space.arch import Arch
from ofa2_edge.space.archref import resolve_arch
from ofa2_edge.tables.transfer import check_table_names, validate_table

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=20,
)


@st.composite
def text_mutation(draw: st.DrawFn, text: str, keep_first: bool = False) -> str:
    """`text` with a few characters deleted, inserted or replaced."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        lo = 1 if keep_first else 0
        at = draw(st.integers(lo, max(lo, len(chars) - 1)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        new = draw(st.sampled_from(list("{}[]:,\"'-. 0123456789aeNI\n\t\\#&*!|>")))
        if op == "delete" and len(chars) > lo + 1:
            del chars[at]
        elif op == "insert":
            chars.insert(at, new)
        else:
            chars[at] = new
    return "".join(chars)


# --------------------------------------------------------------------------- devices.yaml
GOOD_YAML = """schema_version: 1
devices:
  - key: rpi4
    transport: ssh
    host: 10.0.0.7
    user: pi
    port: 2222
    threads: 4
    connect_timeout_s: 10
"""
FIELDS = sorted(Device.__dataclass_fields__)


def _well_typed(device: Device) -> None:
    assert isinstance(device.port, int) and not isinstance(device.port, bool) and 1 <= device.port <= 65535
    assert isinstance(device.threads, int) and not isinstance(device.threads, bool) and device.threads >= 1
    assert isinstance(device.python, str) and isinstance(device.notes, str) and isinstance(device.extra, dict)
    assert math.isfinite(device.connect_timeout_s) and device.connect_timeout_s > 0
    for name in ("host", "user", "key_file", "known_hosts", "work_dir"):
        assert getattr(device, name) is None or isinstance(getattr(device, name), str)


def _load_or_clear_error(path: Path) -> None:
    try:
        inv = Inventory.load(path)
    except Ofa2EdgeError as exc:
        assert str(path) in str(exc)
        return
    for device in inv.devices.values():
        _well_typed(device)


@FAST
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_devices_yaml_any_field_value(tmp_path: Path, field: str, value: Any) -> None:
    doc = yaml.safe_load(GOOD_YAML)
    doc["devices"][0][field] = value
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(doc))
    _load_or_clear_error(path)


@FAST
@given(text=text_mutation(GOOD_YAML))
def test_devices_yaml_mutated_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    _load_or_clear_error(path)


# --------------------------------------------------------------------------- archs
GOOD_ARCH = Arch.largest(192)


def _resolve_or_clear_error(text: str) -> None:
    try:
        arch = resolve_arch(text)
    except Ofa2EdgeError:
        return
    assert isinstance(arch, Arch) and Arch.from_dict(arch.to_dict()) == arch


@FAST
@given(field=st.sampled_from(["ks", "e", "d", "r", "w", "image_size", "extra"]), value=json_values)
def test_arch_json_any_field_value(field: str, value: Any) -> None:
    doc = {**GOOD_ARCH.to_dict(), field: value}
    _resolve_or_clear_error(json.dumps(doc))


@FAST
@given(text=text_mutation(GOOD_ARCH.canonical_json(), keep_first=True))
def test_arch_json_mutated_text(text: str) -> None:
    _resolve_or_clear_error(text)


@FAST
@given(genes=st.lists(json_scalars, min_size=44, max_size=48), at=st.integers(0, 45))
def test_arch_genome_any_genes(genes: list[Any], at: int) -> None:
    _resolve_or_clear_error(json.dumps(genes))
    good = GOOD_ARCH.to_genome().tolist()
    good[at] = genes[0]
    _resolve_or_clear_error(json.dumps(good))


# --------------------------------------------------------------------------- bundles
@pytest.fixture(scope="module")
def bundle_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle-src"))


@pytest.fixture()
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def _fresh_copy(src: Path, root: Path) -> Path:
    box = Path(tempfile.mkdtemp(dir=root))
    return Path(shutil.copytree(src, box / src.name))


def _check_or_clear_error(path: Path, original: dict[str, Any] | None, forged: bool = False) -> None:
    try:
        manifest = check_bundle(path)
    except Ofa2EdgeError:
        assert main(["bundle", "check", str(path)]) == 1
        return
    if not forged:
        assert manifest == original  # a change the checksums did not catch would be a silent change
    model_file(path, manifest)
    _shippable(path, manifest)  # what `bundle --verify` reads from it: valid, not a KeyError
    assert main(["bundle", "check", str(path)]) == 0


@FAST
@given(data=st.data(), which=st.sampled_from([MANIFEST, SUMS]))
def test_bundle_mutated_manifest_or_sums_bytes(bundle_src: Path, work: Path, data: st.DataObject, which: str) -> None:
    folder = _fresh_copy(bundle_src, work)
    original = check_bundle(folder)
    raw = bytearray((folder / which).read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    (folder / which).write_bytes(bytes(raw))
    _check_or_clear_error(folder, original)


@FAST
@given(path=st.lists(st.sampled_from(["arch", "device", "latency", "files", 0, "name", "sha256", "bytes", "measured", "r", "ks", "input", "output", "shape", "dtype", "format"]), min_size=1, max_size=3), value=json_values)
def test_bundle_forged_manifest_fields(bundle_src: Path, work: Path, path: list[Any], value: Any) -> None:
    """A manifest edited and re-signed (SHA256SUMS recomputed): valid, or a clear error."""
    folder = _fresh_copy(bundle_src, work)
    doc = json.loads((folder / MANIFEST).read_text())
    node: Any = doc
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, dict) and isinstance(path[-1], str):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int) and node:
        node[0] = value
    else:
        return
    (folder / MANIFEST).write_text(json.dumps(doc))
    write_sums(folder, [n for n in ("model.onnx", MANIFEST)])
    _check_or_clear_error(folder, None, forged=True)


# --------------------------------------------------------------------------- archives
def _tar_bytes(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def _no_leftovers(sandbox: Path) -> None:
    assert list(sandbox.iterdir()) == [], "staging left behind"


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    box = tmp_path / "tmpdir"
    box.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(box))
    return box


@FAST
@given(data=st.data())
def test_bundle_archive_mutated_bytes(bundle_src: Path, work: Path, sandbox: Path, data: st.DataObject) -> None:
    raw = bytearray(_tar_bytes(bundle_src))
    original = check_bundle(bundle_src)
    headers = list(range(0, len(raw), 512))
    for _ in range(data.draw(st.integers(1, 3))):
        block = data.draw(st.sampled_from(headers))
        at = block + data.draw(st.integers(0, 511))  # mostly header fields (name, mode, size, type, link)
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    archive = work / "x.tar.gz"
    archive.write_bytes(gzip.compress(bytes(raw[:cut])))
    before = sorted(p.name for p in work.iterdir())
    _check_or_clear_error(archive, original)
    _no_leftovers(sandbox)
    assert sorted(p.name for p in work.iterdir()) == before


member_names = st.one_of(
    st.sampled_from(["../evil", "/etc/evil", "b/../../evil", "b//x", "b/./x", "b/\x00x", "b/x\\..\\y", "C:/x", "b", "b/"]),
    st.text(max_size=20),
)
member_types = st.sampled_from(
    [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
     tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE]
)


@pytest.fixture(scope="module")
def table_members(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    table = make_table(tmp_path_factory.mktemp("table-src"), "b")
    return [(f"b/{p.name}", p.read_bytes()) for p in sorted(table.folder.iterdir())]


@FAST
@given(
    name=member_names,
    kind=member_types,
    size=st.integers(0, 1 << 40),
    link=st.sampled_from(["", "/etc/passwd", "../x", "b/device.json"]),
    where=st.integers(0, 2),
)
def test_table_archive_with_a_hostile_member(
    table_members: list[tuple[str, bytes]], work: Path, sandbox: Path, name: str, kind: bytes, size: int, link: str,
    where: int,
) -> None:
    """A table archive with one extra member of any name, type, size (beyond 2 kB its header
    lies: the data is not there) or link target: imported unchanged, or refused leaving nothing."""
    box = Path(tempfile.mkdtemp(dir=work, prefix="case-"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, (member, content) in enumerate(table_members):
            if i == where:
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = link
                regular = kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
                payload = bytes(min(size, 2048)) if regular else b""
                try:
                    tar.addfile(info, io.BytesIO(payload))
                except (ValueError, tarfile.HeaderError, UnicodeError):
                    return  # tarfile itself cannot write that header
                if regular and size > 2048:  # rewrite the size field: a header that lies
                    info.size = size
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    archive = box / "t.tar.gz"
    archive.write_bytes(gzip.compress(_lie(buf.getvalue(), name, size)))
    dest = box / "latency_tables"
    dest.mkdir()
    try:
        unpack_folder(archive, dest, validate=validate_table, check_names=check_table_names)
    except Ofa2EdgeError:
        assert list(dest.iterdir()) == []
    else:
        assert [p.name for p in dest.iterdir()] == ["b"]
        assert sorted(p.name for p in (dest / "b").iterdir()) == sorted(Path(m).name for m, _ in table_members)
    _no_leftovers(sandbox)
    assert sorted(p.name for p in box.iterdir()) == ["latency_tables", "t.tar.gz"]


def _lie(raw: bytes, name: str, size: int) -> bytes:
    """Put `size` into the size field of the header of `name` (if it is there and exceeds 2 kB)."""
    if size <= 2048:
        return raw
    data = bytearray(raw)
    for off in range(0, len(data), 512):
        block = data[off : off + 512]
        if block[:100].rstrip(b"\0") == name.encode("utf-8", "replace")[:100] and block[156:157] in (b"0", b"\0", b"7"):
            info = tarfile.TarInfo(name)
            info.size = size
            data[off : off + 512] = info.tobuf(format=tarfile.GNU_FORMAT)[:512]
            break
    return bytes(data)
