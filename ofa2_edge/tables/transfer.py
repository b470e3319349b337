"""Tables in and out of a workspace: export (CSV or a packed table), import (a packed table,
OFA-format lookup tables, or external measurements as a CSV of arch and latency), and the
read-back check both directions run.

What leaves is what the receiver accepts: `export_table` runs the same validation as
`import_table` before packing, and an import lands only after every name, size, record and
block table of the archive read back, under the table's writer lock.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device_agents.records import MIN_LATENCY_MS, MeasureResult, Protocol, Stats
from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import atomic_write_text, sha256_file, write_json
from ofa2_edge.core.tarsafe import check_members, pack_folder, unpack_folder
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.space.arch import Arch
from ofa2_edge.surrogates.base import LatencySurrogate, load_surrogate
from ofa2_edge.surrogates.lut import MAX_PREDICTED_MS, LutSurrogate, read_ofa_tables, write_ofa_table
from ofa2_edge.tables.device import DEVICE_SCHEMA, DEVICE_VERSION, DeviceTable

#: Columns of `export_table`'s CSV: one row per measurement record.
MEASUREMENT_COLUMNS = (
    "arch_id", "arch", "r", "runtime", "runtime_version", "estimate_ms", "median_ms", "min_ms", "p90_ms", "cv",
    "flags", "error", "device_fingerprint", "finished_at",
)  # fmt: skip


def check_table_names(where: str, names: list[str], read: Callable[[str], bytes] | None = None) -> None:
    """An archive's manifest check: only the table's known files, no folders (`read`, the
    archive's member reader, is not needed: every file is validated after unpacking)."""
    extra = sorted(n for n in names if not DeviceTable.is_table_file(n))
    if extra:
        raise SchemaError(
            f"{where}: {', '.join(repr(n) for n in extra[:5])} is not a latency table file (device.json, "
            "measurements.jsonl, surrogate[.<quantity>].json, blocks.jsonl, <r>_lookup_table.yaml); refusing it"
        )


def validate_table(folder: Path) -> None:
    """Read back everything a table folder holds, as its owners do; raise on the first bad file."""
    table = DeviceTable(folder.parent, folder.name)
    table.device_info()
    for _ in (*table.records(), *table.block_records(), *table.verification_records()):
        pass
    from ofa2_edge.tables.imported import read_imported

    for _ in read_imported(table):
        pass
    if table.lookup_table_paths():
        read_ofa_tables(folder)
    for path in table.predictor_paths().values():
        load_surrogate(path)


def export_table(table: DeviceTable, output: Path) -> Path:
    """Write `table` as a flat CSV of its records (for analysis) or a `.tar.gz` of the table."""
    if not table.exists():
        raise InvalidInputError(f"no latency table for {table.key}")
    if output.name.endswith(".tar.gz"):
        # Exactly the table's files, as plain files (a linked device.json would arrive as a
        # link the receiver refuses), after the checks the receiver runs.
        names = sorted(p.name for p in table.folder.iterdir() if DeviceTable.is_table_file(p.name) and p.is_file())
        validate_table(table.folder)
        return pack_folder(table.folder, output, arcname=table.key, names=names)
    if output.suffix != ".csv":
        raise InvalidInputError(f"--output {output}: use a .csv or a .tar.gz name")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(MEASUREMENT_COLUMNS)
    for r in table.records():
        s = r.stats
        writer.writerow([
            r.arch_id, json.dumps(r.arch, separators=(",", ":")), (r.arch or {}).get("r"), r.runtime,
            r.runtime_version, s and s.estimate_ms, s and s.median_ms, s and s.min_ms, s and s.p90_ms, s and s.cv,
            ";".join(f.value for f in r.flags), r.error_kind.value if r.error_kind else "", r.device_fingerprint,
            r.finished_at,
        ])  # fmt: skip
    return atomic_write_text(output, buf.getvalue())


def _archive_top(source: Path) -> str:
    """The table key a packed table unpacks to (its single top-level folder)."""
    try:
        with tarfile.open(source, "r:gz") as tar:
            return check_members(tar, str(source))
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise SchemaError(f"{source}: not a readable .tar.gz ({type(exc).__name__}: {exc})") from exc


def import_table(workspace: Workspace, source: Path, key: str | None = None, replace: bool = False) -> DeviceTable:
    """Import a packed table (from `export_table`) as `key` (default: the key it was packed as)."""
    if not source.name.endswith(".tar.gz") or not source.is_file():
        raise InvalidInputError(f"{source}: expected a table .tar.gz or a folder of OFA lookup tables")
    root = workspace.tables_dir
    with DeviceTable(root, key or _archive_top(source)).lock():
        imported = unpack_folder(
            source, root, rename_to=key, replace=replace, validate=validate_table, check_names=check_table_names
        )
    return DeviceTable(root, imported)


def import_lookup_tables(
    workspace: Workspace, source: Path, key: str, replace: bool = False, note: str = ""
) -> dict[str, Any]:
    """Make OFA-format `<r>_lookup_table.yaml` files in `source` device `key`'s table, with
    their LUT sum as its latency predictor; return the predictor's report."""
    tables = read_ofa_tables(source)  # validates every file before anything is written
    table = DeviceTable.of(workspace, key)
    with table.lock():
        if table.exists() and not replace:
            raise InvalidInputError(f"latency_tables/{key} exists; pass --replace to overwrite it")
        for r, entries in tables.items():
            write_ofa_table(table.lookup_table_path(r), entries)
        lut = LutSurrogate(tables)
        lut.report = {"source": note or f"OFA lookup tables imported from {source}", "resolutions": list(tables)}
        lut.save(table.surrogate_path, device=key)
    return {"tables": len(tables), "width_mult": lut.width_mult, **lut.report}


# --------------------------------------------------------------------- external measurements (CSV)
#: Columns of an external measurements CSV: the arch (its JSON, as `tables export` and
#: `front.csv` write it) and its latency in ms (`estimate_ms`, `tables export`'s name, too).
CSV_ARCH = "arch"
CSV_LATENCY = ("latency_ms", "estimate_ms")
EXTERNAL_RUNTIME = "external"
MAX_CSV_BYTES = 64 << 20


def read_measurements_csv(source: Path) -> list[tuple[Arch, float]]:
    """(arch, latency ms) of every row of an external measurements CSV, all validated; the
    first bad row is an error naming file, line and what to fix. An arch given twice keeps
    its last latency."""
    where = str(source)
    try:
        if source.stat().st_size > MAX_CSV_BYTES:
            raise InvalidInputError(f"{where}: larger than {MAX_CSV_BYTES >> 20} MiB; split it or keep the rows you need")
        text = source.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInputError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{where}: cannot be read as UTF-8 text ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    latency_col = next((c for c in CSV_LATENCY if c in header), None)
    if CSV_ARCH not in header or latency_col is None:
        raise InvalidInputError(
            f"{where}: expected a header with the columns {CSV_ARCH} (the arch's JSON) and latency_ms "
            f"(or estimate_ms); got {', '.join(header) or 'no header'}"
        )
    found: dict[str, tuple[Arch, float]] = {}
    try:
        for row in reader:
            line = reader.line_num
            try:
                arch = Arch.from_dict(json.loads(row[CSV_ARCH] or ""))
            except (ValueError, TypeError, KeyError, InvalidInputError, SchemaError) as exc:
                raise InvalidInputError(f"{where}:{line}: column {CSV_ARCH} is not an arch's JSON ({exc}); fix or remove that row") from None
            try:
                ms = float(row[latency_col] or "")
            except (TypeError, ValueError):
                raise InvalidInputError(f"{where}:{line}: column {latency_col} {row[latency_col]!r} is not a number of ms; fix or remove that row") from None
            if not (math.isfinite(ms) and MIN_LATENCY_MS <= ms <= MAX_PREDICTED_MS):
                raise InvalidInputError(
                    f"{where}:{line}: {latency_col} {ms!r} is outside [{MIN_LATENCY_MS}, {MAX_PREDICTED_MS:.0f}] ms; fix or remove that row"
                )
            found[arch.id] = (arch, ms)
    except csv.Error as exc:
        raise InvalidInputError(f"{where}:{reader.line_num}: not valid CSV ({exc})") from None
    if len(found) < MIN_CSV_ARCHS:
        raise InvalidInputError(f"{where}: {len(found)} distinct arch(s); a predictor needs at least {MIN_CSV_ARCHS} measured archs")
    return list(found.values())


MIN_CSV_ARCHS = 5


def _external_record(arch: Arch, ms: float, key: str, fingerprint: str, source: Path, digest: str, now: str) -> MeasureResult:
    """One CSV row as a table record: a single value, no runs statistics to speak of."""
    protocol = Protocol()
    stats = Stats(
        estimate_ms=ms, n=1, n_total=1, n_outliers=0, min_ms=ms, p10_ms=ms, median_ms=ms, mean_ms=ms, p90_ms=ms,
        p99_ms=ms, max_ms=ms, std_ms=0.0, cv=0.0, block_min_ms=(ms,), block_median_ms=(ms,), block_min_median_ms=ms,
        block_min_spread=0.0, samples_ms=None,
    )  # fmt: skip
    return MeasureResult(
        batch_id=f"import-{digest[:12]}", device_key=key, device_fingerprint=fingerprint, agent_version=None,
        arch_id=arch.id, arch=arch.to_dict(), model_file=source.name[:200], model_sha256=digest,
        runtime=EXTERNAL_RUNTIME, runtime_version=None, tensorrt=None, protocol=protocol, error_kind=None,
        error_msg=None, flags=(), attempts=1, stats=stats, session_init_ms=None, first_inference_ms=None,
        peak_rss_mib=None, output_shapes=None, cpu_affinity_used=None, energy=None, telemetry_before=None,
        telemetry_after=None, started_at=now, finished_at=now,
    )  # fmt: skip


def import_measurements_csv(
    workspace: Workspace,
    source: Path,
    key: str,
    replace: bool = False,
    prior: LatencySurrogate | None = None,
    prior_label: str = "",
    seed: int = 0,
) -> dict[str, Any]:
    """Make external measurements (a CSV of arch, latency_ms for one device) device `key`'s
    latency table, and fit its predictor on them (as `fit` does: the kind chosen by
    cross-validation; with `prior`, few-shot transfer from another device's predictor).

    The table is built and fitted in a staging folder beside the tables and moved into
    place only when everything succeeded, under the table's writer lock: a bad row, a
    failed fit or an interruption leaves the workspace as it was. The device is named
    ``external:<sha256 of the CSV>`` (its fingerprint): these are not this tool's
    measurements, and `calibrate` will not add its own to them."""
    import shutil
    from datetime import datetime, timezone

    from ofa2_edge.surrogates.select import fit_best

    rows = read_measurements_csv(source)
    widths = sorted({a.w for a, _ in rows})
    if len(widths) != 1:
        raise InvalidInputError(f"{source}: archs of several width multipliers ({', '.join(map(str, widths))}); import one width per table")
    digest = sha256_file(source)
    fingerprint = f"external:{digest}"
    root = workspace.tables_dir
    table = DeviceTable(root, key)
    with table.lock():
        if table.exists() and not replace:
            raise InvalidInputError(f"latency_tables/{key} exists; pass --replace to overwrite it")
        root.mkdir(parents=True, exist_ok=True)
        stage_root = root / f".import-{key}"
        shutil.rmtree(stage_root, ignore_errors=True)  # a staging folder a killed import left
        try:
            staged = DeviceTable(stage_root, key)
            staged.folder.mkdir(parents=True)
            now = datetime.now(timezone.utc).isoformat()
            write_json(staged.device_path, DEVICE_SCHEMA, DEVICE_VERSION, {
                "key": key, "fingerprint": fingerprint,
                "facts": {"source": "external measurements", "file": source.name, "sha256": digest, "rows": len(rows)},
                "runtime": EXTERNAL_RUNTIME, "runtime_version": None, "created_at": now, "reused_by": [],
            })  # fmt: skip
            text = "".join(_external_record(a, ms, key, fingerprint, source, digest, now).to_json_line() + "\n" for a, ms in rows)
            atomic_write_text(staged.measurements_path, text)
            # what `fit` does on a table (`calibration.calibrate.fit_table`, which the tables
            # package may not import): the kind by cross-validation, a nested held-out report
            model, report = fit_best(
                [a for a, _ in rows], np.array([ms for _, ms in rows]), prior=prior, lut=None,
                rng=np.random.default_rng(seed), nested=True, width_mult=widths[0], prior_label=prior_label,
            )  # fmt: skip
            report["quantity"] = "latency"
            report["table"] = {"measurements": len(rows), "flagged": 0, "source": f"external measurements {source.name}"}
            model.report = report
            model.save(staged.surrogate_path, device=key)
            validate_table(staged.folder)
            if table.folder.exists():
                old = stage_root / f"{key}.old"
                table.folder.rename(old)
            staged.folder.rename(table.folder)
        finally:
            shutil.rmtree(stage_root, ignore_errors=True)
    held = report.get("held_out") or {}
    return {"key": key, "archs": len(rows), "width_mult": widths[0], "kind": (report.get("selection") or {}).get("chosen"),
            "held_out": held, "source": str(source), "sha256": digest}  # fmt: skip
