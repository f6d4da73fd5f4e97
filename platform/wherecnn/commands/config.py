"""`wherecnn config show`: every setting as a run would resolve it, and where each came from."""

from __future__ import annotations

import json
from typing import Any

import typer

from wherecnn.commands.choices import Track
from wherecnn.commands.train import parse_overrides

config_app = typer.Typer(help="Show the resolved settings.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    model: str = typer.Option("dual-cpu", "--model", help="Registered model name."),
    track: Track = typer.Option(Track.aligned, "--track", help="The training track (its recipe and model)."),
    set_: list[str] = typer.Option([], "--set", help="Model config override KEY=JSON, as `wherecnn train`."),
    store: str | None = typer.Option(
        None,
        "--store",
        help="An index (edge://DIR or a Qdrant URL): the retrieval settings its live version pins.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of tables."),
) -> None:
    """Print the platform settings, the model's config on a track, its training recipe there and the retrieval
    settings, each value with its source (default, environment, TOML file, config file or its track section,
    an override, an index version)."""
    from wherecnn.config import get_settings, settings_sources
    from wherecnn.models import flatten, list_models, recipe_on_track, resolve_config
    from wherecnn.retrieval.settings import RetrievalSettings

    if model not in list_models():
        raise typer.BadParameter(f"unknown model {model!r}; registered: {', '.join(list_models())}")
    overrides = parse_overrides(set_, model)
    config, config_sources = resolve_config(model, track.value, overrides)
    recipe, recipe_sections = recipe_on_track(config, track.value)
    recipe_sources = {}
    for key, section in recipe_sections.items():
        source = config_sources[f"{section}.{key}"]
        recipe_sources[key] = f"{source} {section}" if source.startswith("configs/") else source
    architecture = {
        key: (value, config_sources[key])
        for key, value in flatten(config).items()
        if key.split(".", 1)[0] not in ("train", "offset", "photo", "description")
    }
    recorded, version = None, None
    if store:
        from wherecnn.index.store import open_store

        with open_store(store, settings=get_settings(), read_only=True) as vs:
            version = vs.live_version()
            recorded = vs.live_about().get("retrieval") if version else None
    sections: dict[str, dict[str, tuple[Any, str]]] = {
        "settings": settings_sources(),
        "model": architecture,
        "recipe": {key: (recipe[key], recipe_sources[key]) for key in recipe},
        "retrieval": RetrievalSettings.sources(recorded, version),
    }
    if as_json:
        out = {
            name: {k: {"value": v, "source": s} for k, (v, s) in rows.items()}
            for name, rows in sections.items()
        }
        typer.echo(json.dumps({"model": model, "track": track.value, **out}, indent=1, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    titles = {
        "settings": "platform settings (WHERECNN_* environment, wherecnn.toml, defaults)",
        "model": f"model {model} on track {track.value}",
        "recipe": f"training recipe on track {track.value} (the train section, the track's keys over it)",
        "retrieval": "retrieval (search)"
        + (f": index {store}, version {version}" if store else ": defaults"),
    }
    console = Console()
    for name, rows in sections.items():
        table = Table(title=titles[name], title_justify="left")
        for column in ("setting", "value", "source"):
            table.add_column(column)
        for key, (value, source) in rows.items():
            table.add_row(key, Text(json.dumps(value, default=str)), source)  # Text: "[...]" is not markup
        console.print(table)
