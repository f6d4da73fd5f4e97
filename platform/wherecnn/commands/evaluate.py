"""`wherecnn evaluate`: metrics per city and overall, baselines, and the HTML report of the paper's plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from wherecnn.commands.choices import Protocol, Track
from wherecnn.evaluate.baselines import KINDS
from wherecnn.evaluate.pipeline import EvaluateOptions


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


def _parse_compare(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, ckpt = item.partition("=")
        if not sep or not name.strip() or not ckpt.strip():
            raise typer.BadParameter(
                f"{flag} expects NAME=CHECKPOINT (e.g. imagenet=var/ckpt-in), got {item!r}"
            )
        out[name.strip()] = ckpt.strip()
    return out


def _parse_scales(text: str | None) -> tuple[float, ...] | None:
    from wherecnn.evaluate.evaluation import parse_scales

    if text is None:
        return None
    try:
        return parse_scales(text)
    except ValueError:
        raise typer.BadParameter(
            f"--gallery-scales {text!r}: expected positive numbers, e.g. 1,0.85"
        ) from None


def _parse_tta(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        views = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--tta expects JSON such as '{{\"flip\": true}}', got {value!r}") from exc
    if not isinstance(views, dict):
        raise typer.BadParameter(f"--tta expects a JSON object, got {value!r}")
    return views


def evaluate(
    data: Path = typer.Option(
        ..., "--data", help="Folder with captures/tiles/pairs.parquet (and <city>/aerial.tif)."
    ),
    checkpoint: str = typer.Option(
        ..., "--checkpoint", help="Checkpoint folder or s3:// prefix (`wherecnn train --out`)."
    ),
    out: Path = typer.Option(..., "--out", help="Report folder: index.html, PNGs, metrics.json."),
    protocol: list[Protocol] = typer.Option(
        [],
        "--protocol",
        help="same-area | cross-area (repeatable). Default: the checkpoint's; 'both' → both.",
    ),
    track: Track | None = typer.Option(
        None, "--track", help="aligned | offset | photo. Default: the checkpoint's."
    ),
    baselines: bool = typer.Option(
        True,
        "--baselines/--no-baselines",
        help="Also fit and evaluate the hand-crafted and generic deep baselines.",
    ),
    baseline: list[str] = typer.Option(
        [], "--baseline", help=f"Only these baselines (repeatable; of {', '.join(KINDS)}). Default: all."
    ),
    compare: list[str] = typer.Option(
        [],
        "--compare",
        help="Initialisation comparison row NAME=CHECKPOINT (repeatable: random=, imagenet=, places=...).",
    ),
    model: list[str] = typer.Option(
        [],
        "--model",
        help="Another learned model for the comparison NAME=CHECKPOINT (e.g. where-cnn=var/wcnn).",
    ),
    max_gallery: int | None = typer.Option(
        None, "--max-gallery", min=1, help="Cap each city's gallery (true tiles always kept)."
    ),
    max_queries: int | None = typer.Option(None, "--max-queries", min=1, help="Cap each city's queries."),
    gallery_centres: int | None = typer.Option(
        None,
        "--gallery-centres",
        min=1,
        help="Embed each gallery tile from KxK centres over its grid cell, score by the best (default: the "
        "model's; dual-cpu uses 9 on the offset track, else 1).",
    ),
    gallery_scales: str | None = typer.Option(
        None,
        "--gallery-scales",
        help="Also cut those views at these ground scales, comma-separated (1 = the tile's side; e.g. "
        "'1,0.85'), all scored alike (default: the model's offset.gallery_scales, else 1).",
    ),
    view_pool: int | None = typer.Option(
        None,
        "--view-pool",
        min=1,
        help="Score a multi-centre gallery tile by the mean of its P best views (default: the model's; "
        "dual-cpu uses 2 on the offset track; 1 = the best view).",
    ),
    hub_correction: float | None = typer.Option(
        None,
        "--hub-correction",
        min=0.0,
        max=1.0,
        help="Hub correction weight: each gallery view scored minus W times its mean similarity to its "
        "nearest other tiles in the city, so generic views (hubs) rank lower (default: the model's config; "
        "0 turns it off).",
    ),
    baseline_pairs: int = typer.Option(
        EvaluateOptions.baseline_pairs,
        "--baseline-pairs",
        min=3,
        help="Training pairs for each baseline's CCA.",
    ),
    deep_weights: Path | None = typer.Option(
        None,
        "--deep-weights",
        help="Local ResNet-18 weights file for the generic deep baseline (else random init).",
    ),
    tta: str | None = typer.Option(
        None,
        "--tta",
        help='Test-time views of the checkpoint, JSON, e.g. \'{"flip": true, "phases": 2}\' (4 views) or '
        "'{}' (one): replaces the checkpoint config's `tta` (default: keep it).",
    ),
    device: str = typer.Option(EvaluateOptions.device, "--device", help="auto | cpu | cuda | cuda:N."),
    seed: int = typer.Option(
        EvaluateOptions.seed, "--seed", help="Seed for gallery/query caps and balanced-AP sampling."
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="The anywhere protocol through this index (built by `wherecnn index` with this checkpoint); "
        "default: index the world's grid tiles into OUT/index first.",
    ),
    served_queries: int = typer.Option(
        EvaluateOptions.served_queries,
        "--served-queries",
        min=0,
        help="Held-out places a city sent through the search engine (0: skip).",
    ),
) -> None:
    """Evaluate a checkpoint: the anywhere protocol through the search engine (hit@1/10, error in metres,
    city right), and in memory Recall@1/5/10/1%, hit rate, pair AP, localisation error; writes the report."""
    import time

    from rich.console import Console
    from rich.table import Table

    from wherecnn.evaluate.pipeline import evaluate_checkpoint

    console = Console()
    unknown = [b for b in baseline if b not in KINDS]
    if unknown:
        raise typer.BadParameter(f"--baseline {unknown}: expected some of {', '.join(KINDS)}")
    kinds = (baseline or list(KINDS)) if baselines else []
    views = _parse_tta(tta)
    opts = EvaluateOptions(
        data=str(data),
        checkpoint=checkpoint,
        out=str(out),
        protocols=[p.value for p in protocol] or None,
        track=track.value if track else None,
        baselines=kinds,
        compare=_parse_compare(compare, "--compare"),
        others=_parse_compare(model, "--model"),
        max_gallery=max_gallery,
        max_queries=max_queries,
        gallery_centres=gallery_centres,
        gallery_scales=_parse_scales(gallery_scales),
        view_pool=view_pool,
        hub_correction=hub_correction,
        baseline_pairs=baseline_pairs,
        deep_weights=str(deep_weights) if deep_weights else None,
        device=device,
        seed=seed,
        tta=views,
        store=store,
        served_queries=served_queries,
    )
    t0 = time.perf_counter()
    try:
        with console.status("evaluating ...") as status:
            sections, index = evaluate_checkpoint(
                opts, log=lambda msg: (console.print(msg), status.update(msg.strip()))
            )
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for section in sections:
        table = Table(
            title=f"{section.protocol} · {section.track} (mean over {len(section.main.cities)} cities)"
        )
        for col in ("features", "R@1", "R@5", "R@10", "R@1%", "hit rate", "AP", "median m"):
            table.add_column(col, justify="right")
        for run in [*section.baselines, *section.compare.values(), *section.others.values(), section.main]:
            o = run.overall
            table.add_row(
                run.name,
                *(f"{o[k]:.3f}" for k in ("R@1", "R@5", "R@10", "R@1%", "hit_rate")),
                f"{o['AP']:.4f}",
                f"{o['median_m']:.0f}",
            )
        console.print(table)
    served = Path(out) / "served.json"
    if served_queries and served.exists():
        table = Table(title="Anywhere, through the search engine (held-out places, grid tiles indexed)")
        for col in ("protocol", "city right", "hit@1", "hit@10", "median m", "≤10 m", "≤25 m"):
            table.add_column(col, justify="right")
        for key, run in json.loads(served.read_text()).items():
            o = run["overall"]
            right = f"{o['city_right']:.3f}" if "city_right" in o else "given"
            cells = [f"{o[k]:.3f}" for k in ("hit@1", "hit@10")]
            table.add_row(
                key,
                right,
                *cells,
                f"{o['median_error_m']:.1f}",
                f"{o['within_10m']:.3f}",
                f"{o['within_25m']:.3f}",
            )
        console.print(table)
    console.print(f"report: {index}  ({time.perf_counter() - t0:.0f} s)")
