"""`wherecnn search | serve | dashboard`: rank locations for a photo, serve the API, open the dashboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

DEFAULT_API_PORT = 8000
DEFAULT_DASHBOARD_PORT = 8501


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("serve")(serve)
    app.command("dashboard")(dashboard)


def demo_paths(demo_dir: Path) -> dict[str, str]:
    """The `wherecnn demo` layout: DIR/data (world), DIR/checkpoint, DIR/index (edge store), DIR/report."""
    root = demo_dir.resolve()
    return {
        "WHERECNN_DATA_DIR": str(root / "data"),
        "WHERECNN_STORE": f"edge://{root / 'index'}",
        "WHERECNN_CHECKPOINT": str(root / "checkpoint"),
    }


def _apply_env(values: dict[str, str | None]) -> None:
    """Export settings as WHERECNN_* env vars so child processes and Ray replicas see the same ones."""
    from wherecnn.config import reset_settings_cache

    for key, value in values.items():
        if value is not None:
            os.environ[key] = str(value)
    reset_settings_cache()


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def search(
    image: Path = typer.Option(..., "--image", help="Ground photo (JPEG/PNG); a panorama when ≥2:1 wide."),
    store: str | None = typer.Option(None, "--store", help="Vector store URI (default: settings.store)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Checkpoint dir (default: settings)."),
    city: list[str] | None = typer.Option(
        None, "--city", help="Restrict to this city (repeatable; default all)."
    ),
    k: int = typer.Option(5, "--k", help="Ranked locations per city (1..1000)."),
    lat: float | None = typer.Option(None, "--lat", help="Prior centre latitude (with --lon, --radius-m)."),
    lon: float | None = typer.Option(None, "--lon", help="Prior centre longitude."),
    radius_m: float | None = typer.Option(None, "--radius-m", help="Prior radius in metres."),
    bbox: str | None = typer.Option(None, "--bbox", help="Prior box min_lon,min_lat,max_lon,max_lat."),
    heading_deg: float | None = typer.Option(
        None,
        "--heading",
        help="Camera heading (degrees from north), searched within the heading window; without it the "
        "heading is estimated.",
    ),
    fov_deg: float | None = typer.Option(
        None, "--fov", help="Field of view (360 = panorama; default by aspect)."
    ),
    true_lat: float | None = typer.Option(None, "--true-lat", help="Known true latitude: adds distances."),
    true_lon: float | None = typer.Option(None, "--true-lon", help="Known true longitude."),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON list of {city, rank, lat, lon, score, tile_id}."
    ),
    geojson: Path | None = typer.Option(None, "--geojson", help="Also write the results as GeoJSON here."),
) -> None:
    """Rank the likeliest locations of a ground photo in every indexed city (or the chosen ones)."""
    from rich.console import Console
    from rich.table import Table

    from wherecnn.config import get_settings
    from wherecnn.search import GeoPrior, SearchInputError

    console = Console(stderr=as_json)
    settings = get_settings(store=store, checkpoint=checkpoint)
    try:
        prior = None
        if bbox:
            prior = GeoPrior.parse_bbox(bbox)
        elif any(v is not None for v in (lat, lon, radius_m)):
            if None in (lat, lon, radius_m):
                _fail("a radius prior needs all of --lat, --lon and --radius-m")
            prior = GeoPrior.circle(lat=lat, lon=lon, radius_m=radius_m)  # type: ignore[arg-type]
        with console.status("loading model and index…"):
            engine = _open_engine(settings)
        try:
            with console.status("searching…"):
                result = engine.search(
                    str(image),
                    cities=city or None,
                    k=k,
                    prior=prior,
                    true_lat=true_lat,
                    true_lon=true_lon,
                    heading_deg=heading_deg,
                    fov_deg=fov_deg,
                )
        finally:
            engine.close()
    except SearchInputError as exc:
        _fail(str(exc))
        return
    if geojson is not None:
        geojson.write_text(json.dumps(result.to_geojson(), indent=1))
    if as_json:
        keys = ("city", "rank", "lat", "lon", "score", "tile_id", "position_source", "heading_deg")
        heading_source = result.query.get("heading_source")
        rows = [
            {**{key: row[key] for key in keys}, "heading_source": heading_source} for row in result.records()
        ]
        print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"Ranked locations for {image.name}", header_style="bold")
    for col in (
        "city",
        "rank",
        "lat",
        "lon",
        "score",
        "tile",
        *(["distance"] if true_lat is not None else []),
    ):
        table.add_column(col, justify="right" if col not in ("city", "tile") else "left")
    for row in result.records():
        cells = [
            row["city"],
            str(row["rank"]),
            f"{row['lat']:.6f}",
            f"{row['lon']:.6f}",
            f"{row['score']:.4f}",
            row["tile_id"],
        ]
        if true_lat is not None:
            cells.append("" if row["distance_m"] is None else f"{row['distance_m']:.0f} m")
        table.add_row(*cells)
    console.print(table)
    t = result.timings
    if result.best is None:
        console.print("[yellow]No tile matched (the prior or the city filter excluded everything).[/]")
    else:
        b = result.best
        console.print(
            f"Best guess: [bold]{b.city}[/] {b.lat:.6f}, {b.lon:.6f} (tile {b.tile_id}), score "
            f"{b.score:.3f}, confidence {b.confidence:.2f} (margin {b.margin:.3f})"
        )
        if b.heading_deg is not None:
            sure = "" if b.heading_confidence is None else f", confidence {b.heading_confidence:.2f}"
            console.print(f"Heading: {b.heading_deg:.0f}° ({b.heading_source}{sure})")
    console.print(
        f"[dim]decode {t['decode_ms']:.0f} ms · embed {t['embed_ms']:.0f} ms · "
        f"store {t['query_ms']:.0f} ms · fine stage {t.get('refine_ms', 0):.0f} ms · "
        f"total {t['total_ms']:.0f} ms[/]"
    )


def _open_engine(settings: Any) -> Any:
    """The engine, or a clear error saying what is missing and how to make it."""
    from wherecnn import storage
    from wherecnn.search import SearchEngine

    if not storage.exists(storage.join(settings.checkpoint, "model.pt")):
        _fail(
            f"no checkpoint at {settings.checkpoint} (model.pt missing); train one with `wherecnn train` "
            "or pass --checkpoint"
        )
    try:
        return SearchEngine.from_settings(settings)
    except Exception as exc:
        _fail(
            f"cannot open the index {settings.store}: {exc}\n"
            "Build one with `wherecnn index` (or `wherecnn demo`)."
        )


def serve(
    store: str | None = typer.Option(None, "--store", help="Vector store URI (default: settings.store)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Checkpoint dir (default: settings)."),
    demo_dir: Path | None = typer.Option(
        None, "--demo-dir", help="A `wherecnn demo` folder: DIR/index + DIR/checkpoint."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 to expose)."),
    port: int = typer.Option(DEFAULT_API_PORT, "--port", help="HTTP port."),
    ray: bool = typer.Option(False, "--ray", help="Serve with Ray Serve instead of one uvicorn process."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Ray Serve replicas (with --ray)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="WHERECNN_API_KEY", help="Require X-API-Key."
    ),
) -> None:
    """Serve the HTTP search API (OpenAPI docs at /docs)."""
    from rich.console import Console

    console = Console()
    env: dict[str, str | None] = demo_paths(demo_dir) if demo_dir else {}
    env.update(
        {
            "WHERECNN_STORE": store or env.get("WHERECNN_STORE"),
            "WHERECNN_CHECKPOINT": checkpoint or env.get("WHERECNN_CHECKPOINT"),
            "WHERECNN_API_KEY": api_key,
        }
    )
    _apply_env(env)
    from wherecnn.config import get_settings

    settings = get_settings()
    console.print(
        f"search API on http://{host}:{port} (docs /docs) · store {settings.store} · "
        f"checkpoint {settings.checkpoint}{' · API key required' if settings.api_key else ''}"
    )
    if not ray:
        import uvicorn

        from wherecnn.search.api import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return
    _serve_ray(settings, host=host, port=port, replicas=replicas, console=console)


def _serve_ray(settings: Any, *, host: str, port: int, replicas: int, console: Any) -> None:
    import signal
    import threading

    import ray
    from ray import serve

    from wherecnn.search.serving import build_serve_app

    env = {k: v for k, v in os.environ.items() if k.startswith("WHERECNN_")}
    ray.init(
        address=settings.ray_address,
        num_cpus=None if settings.ray_address else settings.num_cpus,
        runtime_env={"env_vars": env},
        include_dashboard=False,
    )
    stop = threading.Event()
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_serve_app(settings, num_replicas=replicas), name="search", route_prefix="/")
        # Installed after Ray's own setup so Ctrl-C / SIGTERM (docker stop, k8s) reach us and we clean up.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        console.print(f"[green]Ray Serve is up[/] with {replicas} replica(s); Ctrl-C stops it.")
        while not stop.wait(1.0):
            pass
        console.print("stopping…")
    finally:
        serve.shutdown()
        ray.shutdown()
        console.print("Ray Serve stopped.")


def dashboard_script() -> Path:
    """dashboards/app.py of this checkout (or WHERECNN_DASHBOARD_APP, or ./dashboards/app.py)."""
    explicit = os.environ.get("WHERECNN_DASHBOARD_APP")
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path(__file__).resolve().parents[3] / "dashboards" / "app.py", Path("dashboards/app.py")]
    for path in candidates:
        if path.exists():
            return path.resolve()
    raise FileNotFoundError("dashboards/app.py not found; set WHERECNN_DASHBOARD_APP")


def dashboard(
    demo_dir: Path | None = typer.Option(
        None, "--demo-dir", help="A `wherecnn demo` folder (data, checkpoint, index)."
    ),
    port: int = typer.Option(DEFAULT_DASHBOARD_PORT, "--port", help="HTTP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    store: str | None = typer.Option(None, "--store", help="Vector store URI (overrides --demo-dir)."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Checkpoint dir (overrides --demo-dir)."
    ),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Manifests + aerial.tif folder."),
    api_url: str | None = typer.Option(
        None, "--api-url", help="Use this search API instead of in-process search."
    ),
) -> None:
    """Open the Streamlit dashboard: upload a photo, see ranked locations per city on the city's imagery."""
    from rich.console import Console

    env: dict[str, str | None] = demo_paths(demo_dir) if demo_dir else {}
    for key, value in (
        ("WHERECNN_STORE", store),
        ("WHERECNN_CHECKPOINT", checkpoint),
        ("WHERECNN_DATA_DIR", data_dir),
        ("WHERECNN_API_URL", api_url),
    ):
        if value is not None:
            env[key] = value
    _apply_env(env)
    script = dashboard_script()
    Console().print(
        f"dashboard on http://{host}:{port} · data {os.environ.get('WHERECNN_DATA_DIR', '(settings)')}"
    )
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    try:
        code = subprocess.call(cmd, env=dict(os.environ))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
