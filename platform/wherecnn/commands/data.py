"""`wherecnn validate` and `wherecnn ingest vigor|cvusa|table` (the tiler's `tile` has its own module)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from wherecnn.data.formats.common import IngestResult
    from wherecnn.data.validate import ValidationReport

console = Console()
err_console = Console(stderr=True)

ingest_app = typer.Typer(
    help="Turn a dataset in its own layout into captures/tiles/pairs manifests (images referenced in place).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.add_typer(ingest_app, name="ingest")


# ----------------------------------------------------------------------------------------------- validate


def validate(
    directory: Annotated[
        str,
        typer.Argument(help="Folder or s3:// prefix with captures.parquet, tiles.parquet, pairs.parquet."),
    ],
    check_uris: Annotated[
        bool, typer.Option("--check-uris/--no-check-uris", help="Check that every image URI resolves.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    limit: Annotated[
        int, typer.Option(help="Problems listed per file and kind (counts are always complete).")
    ] = 50,
    workers: Annotated[int, typer.Option(help="Threads for checking s3:// URIs.")] = 16,
) -> None:
    """Check manifests against the column contracts; exit code 1 when any error is found. Modifies nothing."""
    from wherecnn.data.validate import validate_dir

    t0 = time.perf_counter()
    if as_json:
        report = validate_dir(directory, check_uris=check_uris, workers=workers)
        typer.echo(report.to_json(limit_per_kind=limit))
    else:
        report = _validate_with_progress(directory, check_uris=check_uris, workers=workers)
        print_report(report, limit=limit, seconds=time.perf_counter() - t0)
    raise typer.Exit(code=0 if report.ok else 1)


def _validate_with_progress(directory: str | Path, *, check_uris: bool, workers: int) -> ValidationReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wherecnn.data.validate import validate_dir

    with Progress(
        TextColumn("[bold]checking URIs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("uris", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return validate_dir(directory, check_uris=check_uris, workers=workers, progress=update)


def print_report(report: ValidationReport, *, limit: int = 50, seconds: float | None = None) -> None:
    """Human-readable report: problems grouped by file and kind, first ``limit`` of each, then a summary."""
    for (file, kind, severity), items in sorted(report.by_kind().items()):
        total = report.counts[(file, kind, severity)]
        colour = "red" if severity == "error" else "yellow"
        console.print(f"[bold {colour}]{severity}[/] [bold]{file}[/]: {kind} ({total})")
        for p in items[:limit]:
            where = []
            if p.row is not None:
                where.append(f"row {p.row}")
            if p.field:
                where.append(p.field)
            console.print(f"  {' · '.join(where) or '-'}: {p.message}", highlight=False, markup=False)
        if total > min(limit, len(items)):
            console.print(f"  … and {total - min(limit, len(items))} more", style="dim")
    table = Table(title=f"validate {report.directory}", show_header=True)
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("warnings", justify="right")
    for file in ("captures.parquet", "tiles.parquet", "pairs.parquet"):
        errs = sum(n for (f, _, s), n in report.counts.items() if f == file and s == "error")
        warns = sum(n for (f, _, s), n in report.counts.items() if f == file and s == "warning")
        rows = report.rows.get(file)
        table.add_row(file, "-" if rows is None else f"{rows:,}", str(errs), str(warns))
    console.print(table)
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    if report.ok:
        console.print(
            f"[bold green]valid[/]: {report.n_warnings} warnings, {report.uris_checked:,} URIs checked{took}"
        )
    else:
        console.print(
            f"[bold red]invalid[/]: {report.n_errors:,} errors, {report.n_warnings:,} warnings, "
            f"{report.uris_checked:,} URIs checked{took}"
        )


# ----------------------------------------------------------------------------------------------- ingest

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the three manifests to.")]
ProtocolOpt = Annotated[
    str,
    typer.Option(
        help="Which protocol's split goes into `split`: same-area | cross-area (the other, where "
        "defined, is kept in `split_cross_area`)."
    ),
]
ValidateOpt = Annotated[
    bool, typer.Option("--validate/--no-validate", help="Validate the written manifests (URIs included).")
]


@ingest_app.command("vigor")
def ingest_vigor(
    source: Annotated[Path, typer.Argument(help="VIGOR root: <City>/panorama, <City>/satellite, splits/.")],
    out: OutOpt,
    protocol: ProtocolOpt = "same-area",
    cities: Annotated[
        str | None, typer.Option(help="Comma-separated subset of cities (default: every city folder).")
    ] = None,
    run_validate: ValidateOpt = True,
) -> None:
    """VIGOR (official layout and split files): panoramas, 640 px zoom-20 satellite tiles, semi-positives."""
    from wherecnn.data.formats import vigor

    _check_protocol(protocol)
    chosen = [c.strip() for c in cities.split(",") if c.strip()] if cities else None
    _run_ingest(lambda: vigor.load(source, protocol=protocol, cities=chosen), out, run_validate)


@ingest_app.command("cvusa")
def ingest_cvusa(
    source: Annotated[
        Path, typer.Argument(help="CVUSA root: splits/train-19zl.csv, val-19zl.csv, bingmap/19/.")
    ],
    out: OutOpt,
    protocol: ProtocolOpt = "same-area",
    run_validate: ValidateOpt = True,
) -> None:
    """CVUSA: aligned panorama / zoom-19 aerial pairs; locations from split_locations/all.csv when present."""
    from wherecnn.data.formats import cvusa

    _check_protocol(protocol)
    if protocol != "same-area":
        err_console.print(
            "[yellow]CVUSA has no cross-area split; `split` holds the official train/val split."
        )
    _run_ingest(lambda: cvusa.load(source), out, run_validate)


@ingest_app.command("table")
def ingest_table(
    out: OutOpt,
    photos: Annotated[
        str, typer.Option(help="CSV or Parquet of photos: uri, lat, lon[, heading_deg, city, ...].")
    ],
    tiles: Annotated[str, typer.Option(help="Folder or s3:// prefix of aerial tiles.")],
    source: Annotated[
        str | None,
        typer.Argument(
            help="Base folder/prefix that relative photo URIs are resolved against "
            "(default: the photos table's folder)."
        ),
    ] = None,
    tile_table: Annotated[
        str | None,
        typer.Option(
            help="Sidecar CSV/Parquet for tiles: file (or uri), lat, lon[, gsd_m, size_m, city]. "
            "Without it coordinates come from `_<lat>_<lon>` in the file names."
        ),
    ] = None,
    gsd_m: Annotated[
        float | None, typer.Option(help="Metres per pixel of every tile (when not in the table).")
    ] = None,
    zoom: Annotated[
        int | None, typer.Option(help="Web Mercator zoom of the tiles: gsd = 156543.03·cos(lat)/2^zoom.")
    ] = None,
    tile_size_m: Annotated[float | None, typer.Option(help="Ground size of every tile in metres.")] = None,
    city: Annotated[str | None, typer.Option(help="City name for rows without a `city` column.")] = None,
    fov_deg: Annotated[float, typer.Option(help="Field of view for photos without `fov_deg`.")] = 90.0,
    test_fraction: Annotated[
        float,
        typer.Option(help="Fraction of photos put in `test` by spatial blocks when there is no `split`."),
    ] = 0.2,
    run_validate: ValidateOpt = True,
) -> None:
    """A user's own photos table plus a folder/prefix of tiles; pairs by footprint containment."""
    from wherecnn.data.formats import table

    def load() -> IngestResult:
        return table.load(
            photos,
            tiles,
            base=source,
            tile_table=tile_table,
            gsd_m=gsd_m,
            zoom=zoom,
            tile_size_m=tile_size_m,
            city=city,
            fov_deg=fov_deg,
            test_fraction=test_fraction,
        )

    _run_ingest(load, out, run_validate)


def _check_protocol(protocol: str) -> None:
    from wherecnn.data.manifest import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"expected one of {', '.join(PROTOCOLS)}", param_hint="--protocol")


def _run_ingest(load: Any, out: Path, run_validate: bool) -> None:
    t0 = time.perf_counter()
    with console.status("reading the source layout…"):
        try:
            result = load()
        except (FileNotFoundError, ValueError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=2) from None
    result.write(out)
    summary = result.summary()
    table = Table(title=f"ingest {summary['source']} → {out}", show_header=False)
    for key in ("captures", "tiles", "pairs"):
        table.add_row(key, f"{summary[key]:,}")
    table.add_row("cities", ", ".join(summary["cities"]) or "-")
    table.add_row("splits", json.dumps(summary["splits"]))
    table.add_row("tracks", json.dumps(summary["tracks"]))
    if summary["unknown_location"]:
        table.add_row("unknown location", f"{summary['unknown_location']:,}")
    console.print(table)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(
        f"wrote {out}/captures.parquet, tiles.parquet, pairs.parquet in {time.perf_counter() - t0:.1f} s"
    )
    if run_validate:
        report = _validate_with_progress(out, check_uris=True, workers=16)
        print_report(report, limit=10)
        if not report.ok:
            raise typer.Exit(code=1)
