"""The `wherecnn` command. Each area registers its commands from `wherecnn.commands.<area>`.

Heavy imports (torch, ray, qdrant) happen inside the commands, so `wherecnn --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="wherecnn",
    help="Where was this ground photo taken? Synthesize, ingest, train, evaluate, index, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Order is the order `--help` lists them in.
_AREAS = ("synth", "data", "train", "evaluate", "index", "search", "demo", "config")

for _area in _AREAS:
    importlib.import_module(f"wherecnn.commands.{_area}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
