"""Build the agent as one deterministic zipapp (``agent.pyz``) and give its sha256.

The same source always gives the same bytes: files in sorted order, fixed timestamps and
permissions, no compression (deflate output may change with the zlib version of the host
that builds). The host compares the sha256 with the remote copy's and skips the upload
when they match. ``python -m device_agents.build -o dist/agent.pyz`` prints the sha256.

Only what the device runs ships: the modules the command line (``cli.py``) imports,
directly or through others, lazily inside functions included (read from the source with
``ast``, nothing is imported). Parsers of vendor tool output that nothing on the device
calls (trtexec, benchmark_model, onnxruntime_perf_test, tegrastats) stay host-side.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import os
import sys
import threading
import zipfile
from typing import List, Optional, Set, Tuple

SHEBANG = b"#!/usr/bin/env python3\n"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_MAIN = b"import sys\n\nfrom device_agents.cli import main\n\nsys.exit(main())\n"
_PACKAGE = "device_agents"
_ENTRY = "device_agents.cli"  # what __main__.py runs


def package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _module_file(root: str, module: str) -> Optional[str]:
    """The source file of `module` (``device_agents.x.y``) under `root`, None when absent."""
    parts = module.split(".")[1:]
    base = os.path.join(root, *parts)
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _imports(path: str, module: str) -> Set[str]:
    """The ``device_agents`` modules the source of `module` imports, anywhere in its body."""
    with open(path, "rb") as fh:
        tree = ast.parse(fh.read(), filename=path)
    is_package = path.endswith("__init__.py")
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if m == _PACKAGE or m.startswith(_PACKAGE + ".")}


def shipped_modules(root: Optional[str] = None) -> List[str]:
    """Every ``device_agents`` module the agent's command line can import, sorted."""
    root = root or package_dir()
    seen: Set[str] = set()
    todo = [_ENTRY]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_file(root, module)
        if path is None:
            continue  # a name imported from a module (a function, a class), not a module
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages it lives in
        todo += sorted(_imports(path, module))
    return sorted(seen)


def source_files(root: Optional[str] = None) -> List[Tuple[str, str]]:
    """(archive name, file path) of every module the agent runs, sorted by archive name."""
    root = root or package_dir()
    out = []
    for module in shipped_modules(root):
        path = _module_file(root, module)
        assert path is not None
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        out.append((f"{_PACKAGE}/{rel}", path))
    return sorted(out)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = (0o100644 & 0xFFFF) << 16
    info.create_system = 3  # Unix, whatever the building OS
    return info


#: One build at a time per process: sessions of a device group open from several threads, and
#: CPython 3.11's `ast.parse` is not safe to run in two threads at once (SystemError).
_BUILD_LOCK = threading.Lock()


def pyz_bytes(root: Optional[str] = None) -> bytes:
    with _BUILD_LOCK:
        return _pyz_bytes(root)


def _pyz_bytes(root: Optional[str]) -> bytes:
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
    # per process and thread: sessions of a device group open at once from one process
    tmp = os.path.join(folder, f".{os.path.basename(out_path)}.{os.getpid()}.{threading.get_ident()}.tmp")
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
