"""`wherecnn synth` (the synthetic world) and `wherecnn tile` (cut tiles from any GeoTIFF)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("tile")(tile)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created).")],
    cities: Annotated[
        int | None,
        typer.Option(
            help="Use the first N of the nine cities (default: per --size; 9: a second validation city)."
        ),
    ] = None,
    size: Annotated[str, typer.Option(help="tiny (2 cities, ~100 places) | small (8 x 1,500) | full.")] = (
        "tiny"
    ),
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical files.")] = 0,
    oblique: Annotated[
        bool, typer.Option(help="Also render 45-degree bird's-eye tiles (track 'oblique').")
    ] = False,
    preview: Annotated[
        bool, typer.Option(help="Write OUT/preview.png: panorama | photo | aerial tile.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")
    ] = False,
) -> None:
    """Generate the synthetic world (seven cities and a validation city; `--cities 9` a second validation
    city): GeoTIFF orthomosaics, ground views, tiles and manifests."""
    from wherecnn.data.synthetic import SIZES, generate

    if size not in SIZES:
        err_console.print(f"[red]--size must be one of {', '.join(SIZES)}; got {size!r}")
        raise typer.Exit(2)
    try:
        with _progress() as progress:
            tasks: dict[str, int] = {}

            def report(city: str, done: int, total: int, stage: str) -> None:
                if city not in tasks:
                    tasks[city] = progress.add_task(city, total=total, stage=stage)
                progress.update(tasks[city], completed=done, total=total, stage=stage)

            summary = generate(
                out, size=size, cities=cities, seed=seed, oblique=oblique, preview=preview, progress=report
            )
    except ValueError as exc:
        err_console.print(f"[red]{exc}")
        raise typer.Exit(2) from exc
    if json_out:
        console.print_json(json.dumps(summary))
        return
    table = Table(title=f"synthetic world ({size}, seed {seed}) -> {out}")
    for col in ("city", "style", "CRS", "places", "captures", "grid tiles", "max height m", "seconds"):
        table.add_column(col, justify="left" if col in ("city", "style", "CRS") else "right")
    for c in summary["per_city"]:
        held = (
            " (held out)"
            if c["city"] in summary["held_out_cities"]
            else " (validation)"
            if c["city"] in summary.get("validation_cities", [])
            else ""
        )
        table.add_row(
            c["city"] + held,
            c["style"],
            c["crs"],
            str(c["places"]),
            str(2 * c["places"]),
            str(c["grid_tiles"]),
            f"{c['max_height_m']:.0f}",
            f"{c['seconds']:.1f}",
        )
    console.print(table)
    console.print(
        f"{summary['places']} places, {summary['captures']} captures, {summary['tiles']} tiles "
        f"({summary['grid_tiles']} grid), {summary['pairs']} pairs in {summary['seconds']:.1f} s. "
        f"Cross-area test cities: {', '.join(summary['held_out_cities']) or 'none'}; "
        f"validation: {', '.join(summary['validation_cities']) or 'none'}."
    )
    if "preview" in summary:
        console.print(f"preview: {summary['preview']}")


def tile(
    raster: Annotated[Path, typer.Argument(help="A georeferenced raster (GeoTIFF, any CRS).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: tiles/*.jpg and tiles.parquet.")],
    size_m: Annotated[float, typer.Option("--size-m", help="Tile side in ground metres.")] = 100.0,
    px: Annotated[int, typer.Option("--px", help="Tile side in output pixels.")] = 128,
    stride_m: Annotated[
        float | None, typer.Option("--stride-m", help="Grid stride in metres (50% overlap = size/2).")
    ] = None,
    points: Annotated[
        Path | None,
        typer.Option("--points", help="CSV/Parquet of lat, lon[, tile_id]: tiles centred on them."),
    ] = None,
    city: Annotated[str | None, typer.Option(help="City label for the tiles (default: raster name).")] = None,
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 90,
) -> None:
    """Cut square tiles from a GeoTIFF (windowed reads) into JPEGs + tiles.parquet with WGS84 footprints."""
    import pandas as pd

    from wherecnn.data.formats.geotiff import TilerError, tile_raster, to_geodataframe

    if (stride_m is None) == (points is None):
        err_console.print("[red]give exactly one of --stride-m (grid) or --points (centred tiles)")
        raise typer.Exit(2)
    pts = None
    if points is not None:
        if not points.exists():
            err_console.print(f"[red]{points}: no such file")
            raise typer.Exit(2)
        pts = pd.read_parquet(points) if points.suffix == ".parquet" else pd.read_csv(points)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with _progress() as progress:
            task = progress.add_task("tiles", total=None, stage=raster.name)
            frame = tile_raster(
                raster,
                out / "tiles",
                size_m=size_m,
                px=px,
                stride_m=stride_m,
                points=pts,
                city=city,
                uri_base=out,
                quality=quality,
                progress=lambda k: progress.advance(task, k),
            )
            progress.update(task, total=len(frame), completed=len(frame))
    except TilerError as exc:
        err_console.print(f"[red]{exc}")
        raise typer.Exit(2) from exc
    gdf = to_geodataframe(frame)
    gdf.to_parquet(out / "tiles.parquet", index=False)
    dt = time.perf_counter() - t0
    console.print(
        f"{len(frame)} tiles of {size_m:g} m at {px} px ({size_m / px:.2f} m/px) from {raster} -> "
        f"{out / 'tiles.parquet'} in {dt:.1f} s ({len(frame) / max(dt, 1e-9):.0f} tiles/s)"
    )
