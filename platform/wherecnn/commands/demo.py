"""`wherecnn demo`: the whole platform on the embedded default, in one command."""

from __future__ import annotations

from pathlib import Path

import typer

from wherecnn.config import DEMO_DIR


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    size: str = typer.Option("small", "--size", help="Synthetic world size: tiny | small | full."),
    out: Path = typer.Option(Path(DEMO_DIR), "--out", help="Demo folder (data, checkpoint, index, report)."),
    minutes: float | None = typer.Option(
        None, "--minutes", min=0.05, help="Training budget (default: 1 tiny, 10 small, 30 full)."
    ),
    seed: int = typer.Option(0, "--seed", help="World and training seed."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild every stage instead of reusing."),
    baselines: bool = typer.Option(
        True, "--baselines/--no-baselines", help="Hand-crafted/generic baselines."
    ),
    no_progress: bool = typer.Option(
        False, "--no-progress", help="Plain log lines instead of progress bars."
    ),
) -> None:
    """Synthesize the cities, train the default model, index the grid tiles, evaluate through search."""
    from rich.console import Console
    from rich.table import Table

    from wherecnn.data.synthetic import SIZES
    from wherecnn.demo import run_demo

    if size not in SIZES:
        raise typer.BadParameter(f"expected one of {sorted(SIZES)}", param_hint="--size")
    console = Console()
    result = run_demo(
        out, size=size, seed=seed, minutes=minutes, rebuild=rebuild, baselines=baselines,
        log=lambda msg: console.print(msg, markup=False, highlight=False), progress=not no_progress,
    )  # fmt: skip

    stages = Table(title="Stages")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    stages.add_column("")
    for s in result.stages:
        stages.add_row(s.name, "reused" if s.reused else f"{s.seconds:.1f}", s.detail)
    console.print(stages)

    protocols = list(result.overall)
    cities = Table(
        title="Per city, through the search engine: held-out places anywhere in the city, the index holding "
        "its grid tiles. Each cell: hit@1 (the top tile contains the camera) · median error · within 10 m"
    )
    cities.add_column("city")
    cities.add_column("tiles", justify="right")
    for p in protocols:
        cities.add_column(p, justify="right")

    def cell(m: dict[str, float] | None) -> str:
        if not m:
            return "—"
        text = f"{m['hit@1']:.2f} · {m['median_error_m']:.0f} m · {m['within_10m']:.2f}"
        return f"{text} · city {m['city_right']:.2f}" if m.get("city_right") is not None else text

    for row in result.per_city:
        cities.add_row(row["city"], str(row["tiles"]), *[cell(row.get(p)) for p in protocols])
    total = str(sum(r["tiles"] for r in result.per_city))
    cities.add_row("mean over cities", total, *[cell(result.overall[p]) for p in protocols], style="bold")
    console.print(cities)

    if result.searches:
        searches = Table(title="Sample searches (no heading sent: it is estimated)")
        for col in ("capture", "true city", "best guess", "confidence", "error", "heading"):
            searches.add_column(col)
        for s in result.searches:
            e = s["error_m"]
            err = "—" if e is None else (f"{e:.0f} m" if e < 10_000 else f"{e / 1000:,.0f} km")
            conf = "—" if s["confidence"] is None else f"{s['confidence']:.2f}"
            guess = f"{s['best_city']} ({s['best_lat']:.5f}, {s['best_lon']:.5f})" if s["best_city"] else "—"
            heading = "—" if s.get("heading_deg") is None else f"{s['heading_deg']:.0f}°"
            searches.add_row(s["capture_id"], s["city"], guess, conf, err, heading)
        console.print(searches)

    p = result.paths
    example = result.searches[0]["uri"] if result.searches else "PATH/TO/PHOTO.jpg"
    console.print(
        "\n[bold]Next steps[/bold]\n"
        f"  report:     {(p.report / 'index.html').resolve()}\n"
        f"  dashboard:  make dashboard DEMO_DIR={p.root}   (then open http://localhost:8501)\n"
        f"  search:     .venv/bin/wherecnn search --store {p.store} --checkpoint {p.checkpoint} "
        f"--image {example}\n"
        f"  API:        make serve DEMO_DIR={p.root}   (OpenAPI at http://localhost:8000/docs)\n"
    )
