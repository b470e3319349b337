"""Pack a folder into a .tar.gz and unpack one safely (tables from the field, bundles).

Unpacking refuses, before anything is written, members with absolute paths or `..`
components, links and special files, and archives that are not exactly one top-level
folder. It extracts into a temporary folder beside the destination, lets the caller
validate the result, and only then renames it into place: a bad archive changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable

from ofa2_edge.core.errors import InvalidInputError, SchemaError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def pack_folder(folder: str | Path, output: str | Path, arcname: str | None = None) -> Path:
    """Write `folder` as `output` (.tar.gz) with one top-level entry `arcname`, atomically."""
    folder, output = Path(folder), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(folder, arcname=arcname or folder.name, recursive=False)
            for path in sorted(folder.rglob("*")):
                if path.is_file() or path.is_dir():
                    tar.add(
                        path, arcname=f"{arcname or folder.name}/{path.relative_to(folder).as_posix()}", recursive=False
                    )
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def check_members(tar: tarfile.TarFile, where: str) -> str:
    """The archive's single top-level folder name; raise on any unsafe member."""
    tops = set()
    for m in tar.getmembers():
        path = PurePosixPath(m.name)
        if m.name.startswith("/") or path.is_absolute() or re.match(r"^[A-Za-z]:", m.name):
            raise SchemaError(f"{where}: refusing member with an absolute path: {m.name!r}")
        if ".." in path.parts:
            raise SchemaError(f"{where}: refusing member with a '..' component: {m.name!r}")
        if not (m.isfile() or m.isdir()):
            raise SchemaError(f"{where}: refusing member {m.name!r}: only regular files and folders are allowed")
        tops.add(path.parts[0])
    if len(tops) != 1:
        raise SchemaError(f"{where}: expected one top-level folder, found {sorted(tops) or 'none'}")
    (top,) = tops
    if not _NAME.match(top):
        raise SchemaError(f"{where}: top-level folder {top!r} is not a plain name")
    return top


def unpack_folder(
    archive: str | Path,
    dest_root: str | Path,
    rename_to: str | None = None,
    replace: bool = False,
    validate: Callable[[Path], None] | None = None,
) -> str:
    """Unpack `archive`'s single folder into `dest_root` (as `rename_to`); return its name."""
    archive, dest_root = Path(archive), Path(dest_root)
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise SchemaError(f"{archive}: not a readable .tar.gz ({exc})") from exc
    with tar:
        top = check_members(tar, str(archive))
        name = rename_to or top
        if not _NAME.match(name):
            raise InvalidInputError(f"{name!r} is not a valid folder name")
        target = dest_root / name
        if target.exists() and not replace:
            raise InvalidInputError(f"{target} exists; pass --replace to overwrite it")
        dest_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest_root))
        try:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, **kwargs)  # members were checked above; the filter is a second guard
            unpacked = staging / top
            if validate:
                validate(unpacked)
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
