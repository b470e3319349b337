"""The static Pareto plot of a run (matplotlib, Agg backend: no display needed).

Two objectives: one panel, every evaluated arch in grey, the run's front (non-dominated
among all evaluated) as a step line, the final population's front marked. More
objectives: one panel per pair (top-1 against each cost when top-1 is an objective).
Axes are in natural units: top-1 in percent, not the error the search minimises.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ofa2_edge.search.objectives import Objectives

MAX_BACKGROUND = 20_000
MAX_COLUMNS = 4


def _pairs(objectives: Objectives) -> list[tuple[int, int]]:
    names = [m.name for m in objectives.objectives]
    if len(names) == 2:
        return [(0, 1)]
    anchor = names.index("top1") if "top1" in names else 0
    return [(j, anchor) for j in range(len(names)) if j != anchor]


def pareto_plot(
    path: Path,
    objectives: Objectives,
    F: np.ndarray,
    feasible: np.ndarray,
    front_idx: np.ndarray,
    population_front: np.ndarray,
    title: str,
) -> Path:
    """Write the plot as PNG; F are minimised objective values of all evaluated archs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    objs = objectives.objectives
    pairs = _pairs(objectives)
    ncols = min(len(pairs), MAX_COLUMNS)  # many devices: panels wrap onto rows
    nrows = -(-len(pairs) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.5 * nrows), dpi=110, layout="constrained")
    nat = np.column_stack([m.natural(F[:, j]) for j, m in enumerate(objs)]) if len(F) else F
    pop_nat = (
        np.column_stack([m.natural(population_front[:, j]) for j, m in enumerate(objs)]) if len(population_front) else population_front
    )
    rng = np.random.default_rng(0)  # a fixed subsample of the background, for file size only
    bg = np.flatnonzero(feasible)
    if bg.size > MAX_BACKGROUND:
        bg = np.sort(rng.choice(bg, MAX_BACKGROUND, replace=False))
    for k, (x, y) in enumerate(pairs):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        if bg.size:
            ax.scatter(nat[bg, x], nat[bg, y], s=2, c="0.8", label="evaluated (feasible)", rasterized=True)
        if front_idx.size:
            order = np.argsort(nat[front_idx, x])
            fx, fy = nat[front_idx, x][order], nat[front_idx, y][order]
            if len(objs) == 2:
                ax.step(fx, fy, where="post", c="tab:red", lw=1.2, label=f"front ({len(front_idx)} archs)")
            else:
                ax.scatter(fx, fy, s=5, c="tab:red", label=f"front ({len(front_idx)} archs, projected)")
        if len(pop_nat):
            ax.scatter(pop_nat[:, x], pop_nat[:, y], s=10, facecolors="none", edgecolors="tab:blue", label="final population front")
        ax.set_xlabel(f"{objs[x].name} ({objs[x].unit})")
        ax.set_ylabel(f"{objs[y].name} ({objs[y].unit})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
