"""Build the agent as one deterministic zipapp (``agent.pyz``) and give its sha256.

The same source always gives the same bytes: files in sorted order, fixed timestamps and
permissions, no compression (deflate output may change with the zlib version of the host
that builds). The host compares the sha256 with the remote copy's and skips the upload
when they match. ``python -m device_agents.build -o dist/agent.pyz`` prints the sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import zipfile
from typing import List, Optional, Tuple

SHEBANG = b"#!/usr/bin/env python3\n"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_MAIN = b"import sys\n\nfrom device_agents.cli import main\n\nsys.exit(main())\n"
_HOST_ONLY = {"build.py"}  # the builder runs on the host; the device does not need it


def package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def source_files(root: Optional[str] = None) -> List[Tuple[str, str]]:
    """(archive name, file path) of every module of the agent, sorted by archive name."""
    root = root or package_dir()
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel in _HOST_ONLY:
                continue
            out.append(("device_agents/" + rel, path))
    return sorted(out)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = (0o100644 & 0xFFFF) << 16
    info.create_system = 3  # Unix, whatever the building OS
    return info


def pyz_bytes(root: Optional[str] = None) -> bytes:
    buf = io.BytesIO()
    buf.write(SHEBANG)  # as zipapp does: the archive follows the interpreter line
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(_entry("__main__.py"), _MAIN)
        for arcname, path in source_files(root):
            with open(path, "rb") as fh:
                zf.writestr(_entry(arcname), fh.read())
    return buf.getvalue()


def build_pyz(out_path: str, root: Optional[str] = None) -> str:
    """Write the zipapp to `out_path` (atomically, executable) and return its sha256."""
    data = pyz_bytes(root)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(out_path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o755)
    os.replace(tmp, out_path)
    return hashlib.sha256(data).hexdigest()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_agents.build", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="agent.pyz")
    args = parser.parse_args(argv)
    print(build_pyz(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
