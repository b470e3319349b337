"""Tables in and out of a workspace: export (CSV or a packed table), import (a packed table
or OFA-format lookup tables), and the read-back check both directions run.

What leaves is what the receiver accepts: `export_table` runs the same validation as
`import_table` before packing, and an import lands only after every name, size, record and
block table of the archive read back, under the table's writer lock.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Callable

from ofa2_edge.core.errors import InvalidInputError, SchemaError
from ofa2_edge.core.persist import atomic_write_text
from ofa2_edge.core.tarsafe import check_members, pack_folder, unpack_folder
from ofa2_edge.core.workspace import Workspace
from ofa2_edge.surrogates.base import load_surrogate
from ofa2_edge.surrogates.lut import LutSurrogate, read_ofa_tables, write_ofa_table
from ofa2_edge.tables.device import DeviceTable

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
