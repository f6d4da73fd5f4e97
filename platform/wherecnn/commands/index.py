"""`wherecnn index` (embed tiles into a new version; `versions`, `rollback`, `prune`) and `wherecnn reindex`.

Heavy imports (torch, ray, qdrant) happen inside the commands so `wherecnn --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

STORE_HELP = (
    "Vector store: edge:///path (embedded, default from settings), http(s)://host:6333 (Qdrant server)."
)
CKPT_HELP = "Checkpoint dir or s3:// prefix (`untrained:dual-cpu` = a seeded untrained model, for tests)."


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


def _retrieval(text: str | None):  # type: ignore[no-untyped-def]
    """`--retrieval` JSON as `RetrievalSettings` (unknown keys and bad values refused with their name)."""
    import json

    from pydantic import ValidationError

    from wherecnn.retrieval.settings import RetrievalSettings

    if not text:
        return None
    try:
        return RetrievalSettings.from_dict(json.loads(text))
    except (json.JSONDecodeError, ValidationError, TypeError) as exc:
        raise typer.BadParameter(
            str(exc).splitlines()[0] if isinstance(exc, json.JSONDecodeError) else str(exc),
            param_hint="--retrieval",
        ) from None


def register(app: typer.Typer) -> None:
    index_app = typer.Typer(
        help="Embed aerial tiles into the vector store (a new version, switched atomically when complete). "
        "Subcommands list, roll back and prune versions.",
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @index_app.callback()
    def index(
        ctx: typer.Context,
        tiles: str = typer.Option(
            None, "--tiles", help="Tile manifest (.parquet) or a folder/s3:// prefix with tiles.parquet."
        ),
        checkpoint: str = typer.Option(None, "--checkpoint", help=CKPT_HELP),
        store: str = typer.Option(None, "--store", help=STORE_HELP),
        workers: int = typer.Option(
            1, "--workers", min=1, help="Model actors (Ray) / loader threads (plain)."
        ),
        batch_size: int = typer.Option(
            64, "--batch-size", min=1, help="Tiles per batch (embedding and upsert)."
        ),
        no_ray: bool = typer.Option(
            False, "--no-ray", help="Run in this process without Ray (small jobs, tests)."
        ),
        device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: settings)."),
        threads: int = typer.Option(
            None, "--threads", min=1, help="torch threads per model actor (default: CPUs/workers)."
        ),
        tile_size: int = typer.Option(
            None, "--tile-size", help="Expected tile side in px (default: size_m/gsd_m)."
        ),
        run_dir: Path = typer.Option(
            None, "--run-dir", help="Run folder (rejects.jsonl, summary.json); default under work_dir."
        ),
        retrieval: str = typer.Option(
            None,
            "--retrieval",
            help="Retrieval settings the version records, as JSON (e.g. "
            '\'{"index_views": 2, "candidates": 8}\'); unset keys keep their defaults '
            "(`wherecnn.retrieval.settings`).",
        ),
        kind: str = typer.Option(
            None, "--kind", help="Index only the manifest rows of this kind (e.g. grid: the search gallery)."
        ),
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        if not tiles:
            raise typer.BadParameter("--tiles is required (or use a subcommand: versions, rollback, prune)")
        from wherecnn.config import get_settings
        from wherecnn.index.pipeline import run_index
        from wherecnn.index.summary import print_summary

        settings = get_settings(store=store, checkpoint=checkpoint, device=device)
        console = _console()
        frame = None
        if kind:
            from wherecnn.index.manifest import read_tile_manifest

            frame = read_tile_manifest(tiles, settings)
            if "kind" not in frame.columns or not (frame["kind"].astype(str) == kind).any():
                raise typer.BadParameter(f"the manifest has no rows of kind {kind!r}", param_hint="--kind")
            frame = frame[frame["kind"].astype(str) == kind].reset_index(drop=True)
        summary = run_index(
            tiles, settings.checkpoint, settings.store, workers=workers, batch_size=batch_size,
            use_ray=not no_ray, device=settings.device, threads=threads, tile_size=tile_size, run_dir=run_dir,
            settings=settings, console=console, frame=frame, retrieval=_retrieval(retrieval),
        )  # fmt: skip
        print_summary(summary, console)
        if summary.skipped_total:
            console.print(
                f"[yellow]{summary.skipped_total} tile(s) skipped[/]; listed in {summary.rejects_file}"
            )

    @index_app.command("versions")
    def versions(store: str = typer.Option(None, "--store", help=STORE_HELP)) -> None:
        """List index versions (live one marked, with points, the version it replaced, and why a failed one
        failed)."""
        import datetime as dt

        from rich.table import Table

        from wherecnn.config import get_settings
        from wherecnn.index.store import open_store

        settings = get_settings(store=store)
        with open_store(settings.store, settings=settings, read_only=True) as vs:
            infos = vs.versions()
        table = Table(title=f"versions of {settings.store}")
        table.add_column("version", no_wrap=True)
        for col in ("live", "status", "points", "created", "previous", "model"):
            table.add_column(col, overflow="fold")
        failed = any(i.reason for i in infos)
        if failed:
            table.add_column("reason", overflow="fold")
        for i in infos:
            created = dt.datetime.fromtimestamp(i.created, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            points = "" if i.points is None else str(i.points)
            model = str(i.about.get("model_id", ""))
            row = [i.version, "*" if i.live else "", i.status, points, created, i.previous or "", model]
            table.add_row(*row, *([i.reason or ""] if failed else []))
        _console().print(table)

    @index_app.command("rollback")
    def rollback(store: str = typer.Option(None, "--store", help=STORE_HELP)) -> None:
        """Make the previous version live again (one atomic switch)."""
        from wherecnn.config import get_settings
        from wherecnn.index.store import open_store

        settings = get_settings(store=store)
        with open_store(settings.store, settings=settings) as vs:
            before = vs.live_version()
            after = vs.rollback()
        _console().print(f"rolled back: live version {before} -> {after}")

    @index_app.command("prune")
    def prune(
        store: str = typer.Option(None, "--store", help=STORE_HELP),
        retention: int = typer.Option(
            None, "--retention", min=1, help="Versions to keep (default: settings)."
        ),
    ) -> None:
        """Delete versions beyond the retention count (the live one and its rollback chain are kept first)."""
        from wherecnn.config import get_settings
        from wherecnn.index.store import open_store

        settings = get_settings(store=store)
        with open_store(settings.store, settings=settings) as vs:
            removed = vs.prune(retention or settings.retention)
        _console().print(f"pruned {len(removed)} version(s): {', '.join(removed) or '-'}")

    app.add_typer(index_app, name="index")

    @app.command("reindex")
    def reindex(
        source: str = typer.Option(
            ..., "--source", help="s3://bucket/prefix (with tiles.parquet) or a tiles .parquet."
        ),
        checkpoint: str = typer.Option(None, "--checkpoint", help=CKPT_HELP),
        store: str = typer.Option(None, "--store", help=STORE_HELP),
        inventory: str = typer.Option(
            None, "--inventory", help="Parquet inventory of keys (column `key`) instead of listing."
        ),
        workers: int = typer.Option(
            1, "--workers", min=1, help="Model actors (Ray) / loader threads (plain)."
        ),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Tiles per batch."),
        no_ray: bool = typer.Option(False, "--no-ray", help="Run in this process without Ray."),
        device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
        threads: int = typer.Option(None, "--threads", min=1, help="torch threads per model actor."),
        samples: int = typer.Option(8, "--samples", min=0, help="Known tiles queried during validation."),
        no_switch: bool = typer.Option(
            False, "--no-switch", help="Build and validate only; rerunning the same command then switches."
        ),
        allow_shrink: bool = typer.Option(
            False,
            "--allow-shrink",
            help="Switch even to a version with fewer points than the live one by more than "
            "WHERECNN_REINDEX_MAX_SHRINK (the source really shrank).",
        ),
        run_dir: Path = typer.Option(
            None, "--run-dir", help="Run folder (frozen manifest, state); default under work_dir."
        ),
    ) -> None:
        """Rebuild the index from S3 into a new version, validate, switch atomically, prune old versions."""
        from wherecnn.config import get_settings
        from wherecnn.index.reindex import ValidationError, run_reindex
        from wherecnn.index.summary import print_summary

        settings = get_settings(store=store, checkpoint=checkpoint, device=device)
        console = _console()
        try:
            result = run_reindex(
                source, settings.checkpoint, settings.store, inventory=inventory, workers=workers,
                batch_size=batch_size, use_ray=not no_ray, device=settings.device, threads=threads,
                samples=samples, run_dir=run_dir, switch=not no_switch, allow_shrink=allow_shrink,
                settings=settings, console=console,
            )  # fmt: skip
        except ValidationError as exc:
            console.print(
                f"[red]validation failed[/]: {exc}\nthe live version is unchanged; the new one is marked "
                "failed (`wherecnn index versions`). A rerun lists the source afresh."
            )
            raise typer.Exit(1) from None
        print_summary(result.summary, console, title="reindex")
        if not result.summary.switched:
            console.print(
                f"built and validated {result.summary.version}; not switched (--no-switch): rerun without it "
                "to switch"
            )
            return
        console.print(
            f"switched {result.previous or '-'} -> {result.summary.version}; "
            f"pruned {len(result.pruned)}; rollback with `wherecnn index rollback`"
        )
