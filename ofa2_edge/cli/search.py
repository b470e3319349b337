"""`ofa2-edge search` (one multi-objective search into a run folder) and `fit-accuracy`."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ofa2_edge.cli.common import (
    ALLOW_EMULATED_OPTION,
    JSON_OPTION,
    command_name,
    emit_json,
    out_console,
    parse_ints,
    state,
    step_progress,
)
from ofa2_edge.core.errors import InvalidInputError
from ofa2_edge.search import runstore as rs
from ofa2_edge.search.algorithms import ALGORITHMS, AUTO, DEDUPES, MUTATIONS, REFINE_ANCHORS, SAMPLINGS, OperatorConfig
from ofa2_edge.search.config import SearchConfig, stored_config
from ofa2_edge.search.indicators import PAIR_MEAN
from ofa2_edge.search.runner import run_search
from ofa2_edge.space.arch import DEFAULT_RESOLUTIONS, SearchSpace


def _pairs(items: list[str], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise InvalidInputError(f"--{name}: expected KEY=VALUE, got {part!r}")
            try:
                out[key.strip()] = float(value)
            except ValueError as exc:
                raise InvalidInputError(f"--{name}: {key.strip()}={value!r} is not a number") from exc
    return out


def _config_from_options(base: SearchConfig | None, opts: dict[str, Any], ws: Any = None) -> SearchConfig:
    """Options the user gave override `base` (a stored or --config file); others keep it.

    `--accuracy TABLE` (an accuracy table's name) also sets the space's resolutions and width
    to the table's, unless --resolutions / --width say otherwise."""
    from ofa2_edge.accuracy.table import table_space

    if base:
        d = base.to_dict()
    else:  # the defaults, with what depends on the objectives left to decide
        d = SearchConfig(objectives=("top1",)).to_dict()
        d["algorithm"], d["operators"]["elite"] = AUTO, None
    space = dict(d["space"])
    from_table = table_space(opts["accuracy"], ws) if ws is not None and opts["accuracy"] else None
    if from_table is not None:
        space["resolutions"], space["w"] = list(from_table[0]), from_table[1]
    for key, field in (("resolutions", "resolutions"), ("ks", "ks"), ("e", "e"), ("d", "d"), ("width", "w")):
        if opts[key] is not None:
            space[field] = opts[key]
    d["space"] = SearchSpace.from_dict(space).to_dict()
    ops = dict(d["operators"])
    for key, field in (
        ("sampling", "sampling"),
        ("mutation", "mutation"),
        ("mutation_prob", "mutation_prob_var"),
        ("crossover_prob", "crossover_prob"),
        ("dedupe", "dedupe"),
        ("refine", "refine"),
        ("refine_anchors", "refine_anchors"),
        ("elite", "elite"),
    ):
        if opts[key] is not None:
            ops[field] = opts[key]
    d["operators"] = ops
    simple = {"objectives": "objectives", "algo": "algorithm", "pop": "pop_size", "gens": "n_gen", "seed": "seed", "accuracy": "accuracy", "checkpoint_every": "checkpoint_every"}
    for key, field in simple.items():
        if opts[key] is not None:
            d[field] = opts[key]
    if opts["constraint"]:
        d["constraints"] = list(opts["constraint"])
    if opts["param"]:
        d["algorithm_params"] = {**d.get("algorithm_params", {}), **opts["param"]}
    if opts["ref_point"]:
        d["reference_point"] = opts["ref_point"]
    if base is None and opts["objectives"] is None:
        raise InvalidInputError("give --objectives, e.g. --objectives top1,latency:note10")
    if isinstance(d["objectives"], str):
        d["objectives"] = [x.strip() for x in d["objectives"].split(",")]
    return SearchConfig.from_dict(d)


def _summary_table(doc: dict[str, Any], folder: Path) -> Table:
    s = doc.get("summary") or {}
    t = doc.get("timings") or {}
    table = Table(title=f"run {doc['run_id']}: {doc['state']}", show_header=False)
    table.add_row("folder", str(folder))
    table.add_row("generations", f"{doc['gen']} / {doc['n_gen']}  ({doc['n_evals']} evaluations, {doc['n_archs']} distinct archs)")
    if s:
        table.add_row("front", f"{s['front_size']} non-dominated archs ({s['n_feasible']} feasible evaluated)")
        # above EXACT_HV_MAX_OBJ objectives the run's indicator is the mean of the per-device 2-D HVs
        label = "mean 2-D hypervolume" if s.get("hv_indicator") == PAIR_MEAN else "hypervolume"
        table.add_row(label, f"{s['hv_population']:.2f} final population, {s['hv_archive']:.2f} all evaluated")
        if s.get("hv_archive_pairs"):
            pairs = rs.RunFolder(folder).hypervolume().get("pairs") or []
            if len(pairs) == len(s["hv_archive_pairs"]):
                per = ", ".join(f"{b}: {v:.2f}" for (_, b), v in zip(pairs, s["hv_archive_pairs"], strict=True))
                table.add_row("2-D HV per pair", per)
    if t:
        table.add_row(
            "time",
            f"{t['total_s']:.1f} s: objective evaluation {t['evaluation_s']:.1f} s, pymoo {t['algorithm_s']:.1f} s, "
            f"run store {t['store_s']:.1f} s, hypervolume {t['hypervolume_s']:.1f} s",
        )
    names = (rs.FRONT_FILE, rs.FRONT_CSV, rs.PLOT_FILE, rs.EVALUATIONS_FILE, rs.HV_FILE, rs.CONFIG_FILE)
    table.add_row("files", ", ".join(n for n in names if (folder / n).is_file()))
    return table


def search(
    ctx: typer.Context,
    objectives: Optional[str] = typer.Option(None, "--objectives", help="Comma-separated: top1, latency:<device>, macs, params, peak-mem."),
    algo: Optional[str] = typer.Option(
        None, "--algo", help=f"auto (default: NSGA-II for 2+ objectives, OFA's finder for 1), or one of {', '.join(ALGORITHMS)}."
    ),
    pop: Optional[int] = typer.Option(None, "--pop", help="Population size (default 100)."),
    gens: Optional[int] = typer.Option(None, "--gens", help="Generations (default 1000)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed: the same seed gives the same front (default 1)."),
    constraint: list[str] = typer.Option([], "--constraint", "-c", help="e.g. latency:rpi4<=80, macs<=600, top1>=75 (repeatable)."),
    resolutions: Optional[str] = typer.Option(None, "--resolutions", help=f"Allowed input sizes (default {','.join(map(str, DEFAULT_RESOLUTIONS))})."),
    ks: Optional[str] = typer.Option(None, "--ks", help="Allowed kernel sizes (subset of 3,5,7)."),
    e: Optional[str] = typer.Option(None, "--e", help="Allowed expand ratios (subset of 3,4,6)."),
    d: Optional[str] = typer.Option(None, "--d", help="Allowed stage depths (subset of 2,3,4)."),
    width: Optional[float] = typer.Option(None, "--width", help="Supernet width multiplier (default 1.2)."),
    accuracy: Optional[str] = typer.Option(
        None, "--accuracy", help="'official' (default), a predictor JSON from `fit-accuracy`, or an accuracy table's name (its fitted predictor; the space takes the table's resolutions)."
    ),
    assets: Optional[Path] = typer.Option(None, "--assets", help="Folder with the official OFA assets (else $OFA2_EDGE_ASSETS)."),
    ref_point: list[str] = typer.Option([], "--ref-point", help="Hypervolume reference, natural units: top1=75,latency:note10=100."),
    sampling: Optional[str] = typer.Option(None, "--sampling", help=f"Initial population: {', '.join(SAMPLINGS)}."),
    mutation: Optional[str] = typer.Option(None, "--mutation", help=f"Mutation: {', '.join(MUTATIONS)}."),
    mutation_prob: Optional[float] = typer.Option(None, "--mutation-prob", help="Per-gene mutation probability (default 1/46)."),
    crossover_prob: Optional[float] = typer.Option(None, "--crossover-prob", help="Uniform crossover probability (default 0.9)."),
    dedupe: Optional[str] = typer.Option(None, "--dedupe", help=f"Duplicate elimination: {', '.join(DEDUPES)}."),
    refine: Optional[float] = typer.Option(
        None, "--refine", help="Memetic step: share of each generation's offspring that are one-gene neighbours of the front (default 0.1; 0 turns it off)."
    ),
    elite: Optional[float] = typer.Option(
        None,
        "--elite",
        help="Accurate-end breeding: share of each generation's offspring bred from the most accurate networks found (default 0.1 with two or more cost objectives, else 0).",
    ),
    refine_anchors: Optional[str] = typer.Option(None, "--refine-anchors", help=f"Where the neighbours go: {', '.join(REFINE_ANCHORS)} (default {OperatorConfig().refine_anchors})."),
    param: list[str] = typer.Option([], "--param", help="Algorithm parameter KEY=VALUE, e.g. parent_ratio=0.25 (ofa-evolution)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every N generations (default 100)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Repeat a run: start from its config.json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default runs/<time>-<algo>-s<seed>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in -o from its checkpoint."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the Pareto PNG."),
    allow_emulated: bool = ALLOW_EMULATED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Search the Pareto front of accuracy and costs (OFA²) and write a run folder."""
    ws = state(ctx).workspace
    opts = {
        "objectives": objectives, "algo": algo, "pop": pop, "gens": gens, "seed": seed, "constraint": constraint,
        "resolutions": parse_ints(resolutions, "--resolutions"), "ks": parse_ints(ks, "--ks"), "e": parse_ints(e, "--e"), "d": parse_ints(d, "--d"),
        "width": width, "accuracy": accuracy, "ref_point": _pairs(ref_point, "ref-point"), "sampling": sampling,
        "mutation": mutation, "mutation_prob": mutation_prob, "crossover_prob": crossover_prob, "dedupe": dedupe,
        "refine": refine, "refine_anchors": refine_anchors, "elite": elite, "param": _pairs(param, "param"), "checkpoint_every": checkpoint_every,
    }  # fmt: skip
    given = any(v not in (None, [], {}) for v in opts.values())
    if resume:
        if output is None:
            raise InvalidInputError("--resume needs the run folder: -o runs/NAME")
        cfg = _config_from_options(stored_config(rs.RunFolder(output)), opts, ws) if given else None
    else:
        base = stored_config(rs.RunFolder(config.parent if config.is_file() else config)) if config else None
        cfg = _config_from_options(base, opts, ws)
    if output is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        output = ws.runs_dir / f"{stamp}-{cfg.algorithm}-s{cfg.seed}"
    progress = step_progress("search", "gen  HV {task.fields[hv]:.2f}  front {task.fields[front]}  {task.fields[evals]} evals", as_json)
    with progress:
        task = progress.add_task("search", total=None, hv=0.0, front=0, evals=0)

        def on_gen(p) -> None:
            progress.update(task, completed=p.gen, total=p.n_gen, hv=p.hv, front=p.front_size, evals=p.n_evals)

        assets_dir = assets or getattr(state(ctx), "assets_dir", None)  # the root --assets, where the CLI has one
        doc = run_search(cfg, output, workspace=ws, assets_dir=assets_dir, resume=resume, progress=on_gen, plot=not no_plot,
                         allow_emulated=allow_emulated)
    folder = Path(output)
    if as_json:
        emit_json({**doc, "folder": str(folder.resolve())})
    else:
        out_console.print(_summary_table(doc, folder))
    if doc["state"] == "infeasible":
        raise InvalidInputError(doc.get("message") or "no feasible arch found")


def fit_accuracy(
    ctx: typer.Context,
    data: Optional[Path] = typer.Argument(None, help="CSV: a `top1` column (percent) and an `arch` JSON column or genes ks0..ks19,e0..e19,d0..d4,r."),
    table: Optional[str] = typer.Option(None, "--table", help="Fit on an accuracy table from `ofa2-edge evaluate` (its val top-1) instead of a CSV."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to save (default: accuracy_predictors/<csv name>.json, or the table's predictor.json)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, folds and MLP initialisation."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of pairs held out for the report."),
    models: str = typer.Option("ridge,mlp", "--models", help="Model families to choose from by cross-validation."),
    width: float = typer.Option(1.2, "--width", help="Width multiplier of the archs (if the CSV does not say)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit a top-1 predictor from your own (arch, accuracy) pairs or an accuracy table; use it with `search --accuracy`."""
    from ofa2_edge.accuracy.fit import fit_accuracy_predictor, fit_table_predictor, read_accuracy_csv
    from ofa2_edge.accuracy.table import AccuracyTable

    ws = state(ctx).workspace
    if (data is None) == (table is None):
        raise InvalidInputError("give a CSV of (arch, top1) pairs or --table NAME (an accuracy table), not both or neither")
    kinds = tuple(m.strip() for m in models.split(",") if m.strip())
    if table is not None:
        acc_table = AccuracyTable.of(ws, table).require()
        predictor, path, _ = fit_table_predictor(acc_table, seed=seed, test_fraction=test_fraction, kinds=kinds, output=output)
    else:
        name = data.stem  # type: ignore[union-attr]
        pairs = read_accuracy_csv(data, width_mult=width)  # type: ignore[arg-type]
        predictor = fit_accuracy_predictor(pairs, seed=seed, test_fraction=test_fraction, kinds=kinds, name=name)
        path = output or ws.root / "accuracy_predictors" / f"{name}.json"
        predictor.save(path, name=name, data=str(data.resolve()))  # type: ignore[union-attr]
    report = predictor.report
    if as_json:
        emit_json({"path": str(Path(path).resolve()), "report": report})
        return
    h = report["held_out"]
    use = table if table is not None and output is None else path
    title = f"accuracy predictor from table {table}" if table is not None else f"accuracy predictor from {data.name}"  # type: ignore[union-attr]
    out = Table(title=title, show_header=False)
    out.add_row("model", f"{report['model']} (chosen by {report['cv_folds']}-fold CV: " + ", ".join(f"{k} RMSE {v['rmse_pct']:.3f}" for k, v in report["cv"].items()) + ")")
    out.add_row("features", f"{report['features']['kind']} (resolutions {', '.join(map(str, report['resolutions']))})")
    out.add_row("pairs", f"{report['n_pairs']} ({report['n_train']} train, {report['n_test']} held out)")
    out.add_row("held-out", f"RMSE {h['rmse_pct']:.3f} pt, MAE {h['mae_pct']:.3f} pt, Spearman {h['spearman']:.3f}, Kendall tau {h['kendall_tau']:.3f}, R² {h['r2']:.3f}")
    floor = report.get("noise_floor")
    if table is not None:
        out.add_row("noise floor", f"Spearman {floor['spearman']:.3f} between two BN recalibrations of {floor['n_repeated']} subnets; the predictor reaches {report['share_of_noise_floor']:.0%} of it" if floor and report.get("share_of_noise_floor") is not None else "not measured (evaluate with --repeat-fraction)")
    out.add_row("saved", f"{path}  (use: {command_name()} search --accuracy {use} ...)")
    out_console.print(out)
