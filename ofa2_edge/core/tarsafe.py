"""Pack a folder into a .tar.gz and unpack one safely (tables from the field, bundles).

Unpacking reads every header first, writing nothing, and refuses the archive unless all of
it is acceptable: exactly one top-level folder; only regular files and folders (no links,
devices or sparse files); plain relative names (no absolute paths, no `..` or `.`, no
duplicates); at most `ArchiveLimits` members, bytes per member and bytes in all; and every
name accepted by the caller's manifest check (a bundle: the names its `SHA256SUMS` lists; a
table: the table's known files). Only then are the files written, streamed with a running
byte count (so a header that lies about its size cannot write past the limits), into a
temporary folder beside the destination; the caller validates the result, and only then is
it renamed into place. A bad archive changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterable

from ofa2_edge.core.errors import InvalidInputError, Ofa2EdgeError, SchemaError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PART = re.compile(r"^[^\x00-\x1f\x7f\\]{1,255}$")  # one path component: no control chars, no backslash
MiB = 1 << 20
_CHUNK = MiB
#: What reading a broken archive raises: tarfile's own errors, a truncated gzip stream
#: (EOFError), a corrupt one (zlib.error, OSError) and bad header numbers (ValueError).
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, UnicodeError)


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one archive may unpack to (a decompression bomb stops at its header).

    The defaults are an order of magnitude above what the toolkit packs: a bundle holds a
    few files, its model at most ~40 MB (the largest w1.2 subnet in float32); a latency
    table holds device.json, two JSON Lines logs (~2.5 kB per record: 100,000 records are
    ~250 MB), a predictor and up to 25 OFA lookup tables. Callers may pass tighter or
    looser limits.
    """

    max_members: int = 1000
    max_member_bytes: int = 512 * MiB
    max_total_bytes: int = 1024 * MiB
    #: A manifest (e.g. SHA256SUMS) read into memory before anything is written.
    max_index_bytes: int = 4 * MiB


DEFAULT_LIMITS = ArchiveLimits()

#: A manifest check: (archive label, member names relative to the top folder, folders with
#: a trailing '/', a reader of one small member) -> None; raises to refuse the archive.
NameCheck = Callable[[str, list[str], Callable[[str], bytes]], None]


def pack_folder(
    folder: str | Path, output: str | Path, arcname: str | None = None, names: Iterable[str] | None = None
) -> Path:
    """Write `folder` as `output` (.tar.gz) with one top-level entry `arcname`, atomically.

    With `names`, exactly those files of `folder` are packed (links followed, so the
    receiver gets regular files); without, every regular file and folder under it.
    """
    folder, output = Path(folder), Path(output)
    top = arcname or folder.name
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            info = tar.gettarinfo(str(folder.resolve()), arcname=top)  # a linked folder is packed as a folder
            info.mode = 0o755
            tar.addfile(info)
            if names is None:
                for path in sorted(folder.rglob("*")):
                    if path.is_file() or path.is_dir():
                        tar.add(path, arcname=f"{top}/{path.relative_to(folder).as_posix()}", recursive=False)
            else:
                for name in sorted(names):
                    path = folder / name
                    info = tar.gettarinfo(str(path), arcname=f"{top}/{name}")
                    if info.issym() or info.islnk():  # pack what the link points at, as a plain file
                        info = tar.gettarinfo(str(path.resolve()), arcname=f"{top}/{name}")
                    if not info.isfile():
                        raise InvalidInputError(f"{path}: not a regular file; cannot pack it")
                    info.mode = 0o644
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def _member_parts(m: tarfile.TarInfo, where: str) -> tuple[str, ...]:
    """The member's path components; raise unless it is a plain relative path."""
    name = m.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or PurePosixPath(name).is_absolute():
        raise SchemaError(f"{where}: refusing member with an absolute path: {name!r}")
    parts = tuple(p for p in name.rstrip("/").split("/"))
    if ".." in parts:
        raise SchemaError(f"{where}: refusing member with a '..' component: {name!r}")
    if not parts or any(p in ("", ".") or not _PART.match(p) for p in parts):
        raise SchemaError(f"{where}: refusing member with an unusual name: {name!r} (empty, '.', control characters)")
    return parts


def check_members(tar: tarfile.TarFile, where: str, limits: ArchiveLimits = DEFAULT_LIMITS) -> str:
    """Read every header (writing nothing); return the single top-level folder's name.

    Raises on any unsafe member and as soon as a limit is passed, so a bomb is refused at
    the first header over a bound and its data is never decompressed past the total limit.
    """
    tops: set[str] = set()
    seen: dict[tuple[str, ...], bool] = {}
    total = count = 0
    while True:
        try:
            m = tar.next()
        except _READ_ERRORS as exc:
            raise SchemaError(f"{where}: not a readable .tar.gz (truncated or corrupt: {exc or type(exc).__name__})") from exc
        if m is None:
            break
        count += 1
        if count > limits.max_members:
            raise SchemaError(f"{where}: more than {limits.max_members} members; refusing it (not one of ours?)")
        parts = _member_parts(m, where)
        if not (m.isdir() or (m.isfile() and not m.issparse())):
            raise SchemaError(f"{where}: refusing member {m.name!r}: only regular files and folders are allowed")
        if parts in seen:
            raise SchemaError(f"{where}: member {m.name!r} appears twice; refusing an ambiguous archive")
        seen[parts] = m.isdir()
        if m.isfile():
            if len(parts) == 1:
                raise SchemaError(f"{where}: {m.name!r} is a file at the top; expected one folder")
            if m.size < 0 or m.size > limits.max_member_bytes:
                raise SchemaError(
                    f"{where}: member {m.name!r} would unpack to {m.size:,} bytes, over the limit of "
                    f"{limits.max_member_bytes:,}; refusing it (a decompression bomb?)"
                )
            total += m.size
            if total > limits.max_total_bytes:
                raise SchemaError(
                    f"{where}: the archive would unpack to more than {limits.max_total_bytes:,} bytes; refusing it"
                )
        tops.add(parts[0])
    for parts in seen:  # a file cannot also be a folder of another member
        for i in range(1, len(parts)):
            if seen.get(parts[:i]) is False:
                raise SchemaError(f"{where}: {'/'.join(parts[:i])!r} is both a file and a folder")
    if len(tops) != 1:
        raise SchemaError(f"{where}: expected one top-level folder, found {sorted(tops) or 'none'}")
    (top,) = tops
    if not _NAME.match(top):
        raise SchemaError(f"{where}: top-level folder {top!r} is not a plain name")
    return top


def _copy_capped(src: IO[bytes], dest: Path, cap: int, where: str, name: str) -> int:
    """Stream `src` into a new file `dest` (never through a link); stop past `cap` bytes."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            block = src.read(_CHUNK)
            if not block:
                return written
            written += len(block)
            if written > cap:
                raise SchemaError(f"{where}: member {name!r} holds more bytes than allowed; refusing the archive")
            out.write(block)


def _extract(tar: tarfile.TarFile, staging: Path, where: str, limits: ArchiveLimits) -> None:
    """Write the checked members under `staging`, counting every byte as it is written."""
    total = 0
    for m in tar.getmembers():
        parts = _member_parts(m, where)
        path = staging.joinpath(*parts)
        if m.isdir():
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        src = tar.extractfile(m)
        if src is None:  # pragma: no cover - check_members admits only files and folders
            raise SchemaError(f"{where}: cannot read member {m.name!r}")
        cap = min(m.size, limits.max_member_bytes, limits.max_total_bytes - total)
        written = _copy_capped(src, path, cap, where, m.name)
        if written != m.size:
            raise SchemaError(f"{where}: member {m.name!r} is truncated ({written} of {m.size} bytes)")
        total += written


def _reader(tar: tarfile.TarFile, top: str, where: str, limits: ArchiveLimits) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        try:
            m = tar.getmember(f"{top}/{name}")
        except KeyError:
            raise SchemaError(f"{where}: no {name} in the archive") from None
        if not m.isfile():
            raise SchemaError(f"{where}: {name} is not a file")
        if m.size > limits.max_index_bytes:
            raise SchemaError(f"{where}: {name} is {m.size:,} bytes, over the limit of {limits.max_index_bytes:,}")
        src = tar.extractfile(m)
        data = src.read(limits.max_index_bytes + 1) if src is not None else b""
        if len(data) != m.size:
            raise SchemaError(f"{where}: {name} is truncated")
        return data

    return read


def _relabel(exc: Ofa2EdgeError, staging: Path, label: str) -> Ofa2EdgeError:
    """The same error with the deleted staging folder's path replaced by the archive's name."""
    text = str(exc).replace(str(staging), label)
    if text == str(exc):
        return exc
    try:
        new = type(exc)(text)
    except Exception:  # noqa: BLE001 - an error class with another constructor
        new = SchemaError(text)
    return new


def unpack_folder(
    archive: str | Path,
    dest_root: str | Path,
    rename_to: str | None = None,
    replace: bool = False,
    validate: Callable[[Path], None] | None = None,
    *,
    check_names: NameCheck,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> str:
    """Unpack `archive`'s single folder into `dest_root` (as `rename_to`); return its name.

    `check_names` is the archive's manifest check, run after every header was read and
    before any byte is written; `validate` then checks the unpacked folder before it lands.
    """
    archive, dest_root = Path(archive), Path(dest_root)
    where = str(archive)
    try:
        tar = tarfile.open(archive, "r:gz")
    except _READ_ERRORS as exc:
        raise SchemaError(f"{where}: not a readable .tar.gz ({exc or type(exc).__name__})") from exc
    with tar:
        top = check_members(tar, where, limits)
        name = rename_to or top
        if not _NAME.match(name):
            raise InvalidInputError(f"{name!r} is not a valid folder name")
        rel = sorted(m.name.rstrip("/")[len(top) + 1 :] + ("/" if m.isdir() else "") for m in tar.getmembers())
        try:
            check_names(where, [r for r in rel if r and r != "/"], _reader(tar, top, where, limits))
        except _READ_ERRORS as exc:
            raise SchemaError(f"{where}: not a readable .tar.gz (truncated or corrupt: {exc})") from exc
        target = dest_root / name
        if target.exists() and not replace:
            raise InvalidInputError(f"{target} exists; pass --replace to overwrite it")
        dest_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest_root))
        try:
            try:
                _extract(tar, staging, where, limits)
            except _READ_ERRORS as exc:
                raise SchemaError(f"{where}: not a readable .tar.gz (truncated or corrupt: {exc})") from exc
            unpacked = staging / top
            unpacked.mkdir(exist_ok=True)  # an archive may omit the folder's own entry
            if validate:
                try:
                    validate(unpacked)
                except Ofa2EdgeError as exc:
                    raise _relabel(exc, unpacked, f"{where}:{top}") from exc
            if target.exists():
                old = dest_root / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(unpacked, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(unpacked, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return name


def is_plain_file(path: Path) -> bool:
    """A regular file that is not a link (bundles and tables hold nothing else)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
