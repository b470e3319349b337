"""`ofa2-edge assets`: fetch and check the official OFA predictor and lookup tables."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ofa2_edge.cli.common import JSON_OPTION, emit_json, err_console, out_console, state
from ofa2_edge.core.assets import (
    OFA_FILES_URL,
    OFA_LFS_URL,
    OFFICIAL_ASSETS,
    SUPERNET_W12,
    FetchResult,
    default_cache_dir,
    fetch_assets,
    find_assets,
)
from ofa2_edge.core.errors import AssetError

app = typer.Typer(help="Fetch and check the official OFA assets.", no_args_is_help=True)


@app.command()
def fetch(
    dest: Optional[Path] = typer.Option(None, "--dir", help="Where to put them (default: the user cache)."),
    supernet: bool = typer.Option(False, "--supernet", help="Also fetch the w1.2 supernet checkpoint (~30 MB)."),
    supernet_sha256: Optional[str] = typer.Option(
        None, "--supernet-sha256", help="Expected sha256 of the checkpoint (required with --supernet: none is pinned)."
    ),
    base_url: Optional[List[str]] = typer.Option(
        None, "--base-url", help="Mirror(s) holding the han-cai/files `ofa/` tree (default: GitHub)."
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds before a stalled connection is dropped."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Download the official files, verifying each against its pinned sha256."""
    wanted = [*OFFICIAL_ASSETS, *([SUPERNET_W12] if supernet else [])]
    overrides = {SUPERNET_W12.relpath: supernet_sha256.lower()} if supernet_sha256 else {}

    def report(result: FetchResult) -> None:
        err_console.print(f"{result.status:>10}  {result.relpath}  ({result.bytes:,} bytes)")

    results = fetch_assets(
        wanted,
        dest=dest,
        base_urls=base_url or (OFA_FILES_URL, OFA_LFS_URL),
        sha_overrides=overrides,
        timeout=timeout,
        on_file=report,
    )
    folder = Path(dest) if dest else default_cache_dir()
    if as_json:
        emit_json({"dir": str(folder), "files": [{**r.__dict__, "path": str(r.path)} for r in results]})
    else:
        err_console.print(f"all {len(results)} file(s) verified in {folder}")


@app.command("list")
def list_assets(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Show where each official file is found (and verified), or that it is missing."""
    rows = []
    for asset in OFFICIAL_ASSETS:
        try:
            where: str | None = str(find_assets([asset.relpath], state(ctx).assets_dir)[asset.relpath])
        except AssetError:
            where = None
        rows.append({"relpath": asset.relpath, "path": where, "sha256": asset.sha256, "description": asset.description})
    if as_json:
        emit_json(rows)
    else:
        table = Table("file", "found at (verified)")
        for row in rows:
            table.add_row(row["relpath"], row["path"] or "[red]missing[/]")
        out_console.print(table)
    if any(row["path"] is None for row in rows):
        raise typer.Exit(1)
