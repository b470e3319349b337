"""A tiny real workspace for the ensemble tests: an IDX dataset, a supernet bound to it,
an accuracy table evaluated on it (val and test probabilities), a device latency table
imported from a CSV (with a probed core count written like a probe's facts), and a
subnet search run over the table's predictor whose front is the candidate pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ofa2_edge.accuracy.evaluate import EvaluateSettings, evaluate_table
from ofa2_edge.accuracy.source import open_supernet
from ofa2_edge.accuracy.table import AccuracyTable
from ofa2_edge.cli.main import main
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.data import open_dataset
from ofa2_edge.space import costs
from ofa2_edge.space.arch import SearchSpace, genomes_of
from tests.test_evaluate import trained_stand_in, write_idx_set

RESOLUTIONS = (32, 40)
DEVICE = "lab"
TABLE = "tiny"


def csv_of(archs: list, ms: np.ndarray) -> str:
    lines = ["arch,latency_ms"]
    for a, y in zip(archs, ms, strict=True):
        lines.append('"' + json.dumps(a.to_dict()).replace('"', '""') + f'",{y:.4f}')
    return "\n".join(lines) + "\n"


def build_workspace(root: Path, budget: int = 10, n_classes: int = 4) -> dict[str, Path]:
    """Everything `ofa2-edge ensemble` needs, in `root` (a few seconds)."""
    data = write_idx_set(root / "data", n_train=160, n_test=60, n_classes=n_classes, seed=3)
    ws = root / "ws"
    sn = trained_stand_in(ws / "supernets" / "tiny", data, root / "cache", resolutions=RESOLUTIONS)
    table = AccuracyTable.of(Workspace.resolve(ws), TABLE)
    settings = EvaluateSettings(budget=budget, bn_images=32, batch_size=64)
    evaluate_table(table, open_supernet(sn), open_dataset(data), settings)
    # a device whose latency grows with MACs (30 archs of the space), with 2 probed cores
    space = SearchSpace(resolutions=RESOLUTIONS, w=1.0)
    archs = space.sample(30, np.random.default_rng(7))
    ms = 0.5 + 0.02 * costs.macs_m(genomes_of(archs), 1.0)
    (root / "lab.csv").write_text(csv_of(archs, ms))
    assert main(["-W", str(ws), "tables", "import", str(root / "lab.csv"), "--key", DEVICE]) == 0
    dev = ws / "latency_tables" / DEVICE / "device.json"
    doc = json.loads(dev.read_text())
    doc.setdefault("facts", {})["cpu_cores"] = 2
    dev.write_text(json.dumps(doc))
    return {"ws": ws, "data": data, "supernet": sn}
