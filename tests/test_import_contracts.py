"""The design's nevers, enforced: which part of the tree may import which.

Every import counts, also one inside a function (a lazy import is still a dependency).
The data flow is space -> supernet -> exporters -> devices/agents -> calibration (tables)
-> surrogates -> search -> deploy; a part never reaches into one downstream of it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _violations(folder: str, forbidden: tuple[str, ...], allow: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in _modules(folder):
        rel = str(path.relative_to(ROOT))
        if any(rel.startswith(a) for a in allow):
            continue
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{rel} imports {name}")
    return bad


# (folder, forbidden import prefixes, files of that folder exempt)
NEVERS = [
    ("device_agents", ("ofa2_edge", "exporters", "torch"), ()),
    ("exporters", ("ofa2_edge.devices", "ofa2_edge.calibration", "ofa2_edge.search", "ofa2_edge.deploy"), ()),
    ("ofa2_edge/search", ("ofa2_edge.devices", "ofa2_edge.calibration", "device_agents", "exporters"), ()),
    ("ofa2_edge/space", ("ofa2_edge.supernet", "torch", "exporters", "ofa2_edge.devices"), ()),
    ("ofa2_edge/core", ("ofa2_edge.space", "ofa2_edge.supernet", "ofa2_edge.devices", "ofa2_edge.search",
                        "ofa2_edge.deploy", "ofa2_edge.calibration", "ofa2_edge.surrogates", "torch"), ()),
    ("ofa2_edge/surrogates", ("ofa2_edge.devices", "ofa2_edge.calibration", "ofa2_edge.search",
                              "ofa2_edge.deploy", "ofa2_edge.supernet", "exporters", "torch"), ()),
    ("ofa2_edge/tables", ("ofa2_edge.devices", "ofa2_edge.calibration", "ofa2_edge.search", "ofa2_edge.deploy",
                          "ofa2_edge.supernet", "exporters", "torch"), ()),
    # entry points: `python -m ofa2_edge` and `torchrun -m ofa2_edge.train` run the CLI
    ("ofa2_edge", ("ofa2_edge.cli",), ("ofa2_edge/cli/", "ofa2_edge/__main__.py", "ofa2_edge/train/__main__.py")),
    ("ofa2_edge", ("ofa2_edge.workflows",), ("ofa2_edge/cli/", "ofa2_edge/workflows/")),
]


@pytest.mark.parametrize("folder,forbidden,allow", NEVERS, ids=[f"{n[0]}-never-{n[1][0]}" for n in NEVERS])
def test_never_imports(folder: str, forbidden: tuple[str, ...], allow: tuple[str, ...]) -> None:
    assert _modules(folder), f"{folder} has no modules: the contract checks nothing"
    assert _violations(folder, forbidden, allow) == []


def test_the_checker_sees_a_lazy_import(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from ofa2_edge.cli import main\n    import torch.nn\n")
    assert {"ofa2_edge.cli", "ofa2_edge.cli.main", "torch.nn"} <= _imports(mod)


@pytest.mark.parametrize(
    "module",
    ["ofa2_edge.space.costs", "ofa2_edge.surrogates.select", "ofa2_edge.tables.device",
     "ofa2_edge.search.archive", "ofa2_edge.search.config", "ofa2_edge.search.runner",
     "ofa2_edge.deploy.select", "ofa2_edge.devices.session"],
)
def test_pure_parts_load_without_torch(module: str) -> None:
    """Importing them (transitively) pulls in neither torch nor the exporters."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'exporters') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
