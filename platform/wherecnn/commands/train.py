"""`wherecnn train`: the local loop, or Ray Train with ``--workers N``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from wherecnn.commands.choices import Track, TrainProtocol
from wherecnn.train.options import TrainOptions


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def parse_overrides(items: list[str], model: str) -> dict[str, Any]:
    """``--set KEY=JSON`` options as overrides of registered model ``model``'s config (a value that is not
    JSON stays a string); a key its config cannot hold, or a value it refuses, is a bad parameter."""
    from wherecnn.models import check_overrides, list_models

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=JSON")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if model not in list_models():
        return overrides  # training refuses the model itself
    try:
        check_overrides(model, overrides)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc
    return overrides


def train(
    data: Path = typer.Option(
        ..., "--data", help="Folder with captures/tiles/pairs.parquet (e.g. `wherecnn synth` output)."
    ),
    model: str = typer.Option(
        TrainOptions.model,
        "--model",
        help="Registered model name (dual-cpu, where-cnn, dual-resnet, dual-convnext).",
    ),
    out: str = typer.Option(..., "--out", help="Checkpoint folder or s3:// prefix (written every epoch)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Train this many epochs."),
    minutes: float | None = typer.Option(
        None, "--minutes", min=0.05, help="Or: train for this wall-clock budget."
    ),
    workers: int = typer.Option(
        TrainOptions.workers, "--workers", min=0, help="Ray Train workers (0 = local loop without Ray)."
    ),
    protocol: TrainProtocol = typer.Option(
        TrainProtocol(TrainOptions.protocol), "--protocol", help="Which split is training data."
    ),
    track: Track = typer.Option(Track(TrainOptions.track), "--track", help="aligned | offset | photo pairs."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last epoch checkpoint in --out."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=2, help="Global batch (default: model config)."
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (default: the model config's lr, its track section's else train's: "
        "`wherecnn config show --track T`).",
    ),
    seed: int = typer.Option(TrainOptions.seed, "--seed", help="Seed: same seed, same run on CPU."),
    device: str = typer.Option(
        TrainOptions.device, "--device", help="auto | cpu | cuda | cuda:N (local loop)."
    ),
    val_size: int = typer.Option(
        TrainOptions.val_size, "--val-size", min=0, help="Held-out pairs for the in-loop Recall@1."
    ),
    max_pairs: int | None = typer.Option(None, "--max-pairs", min=1, help="Train on a random subset."),
    fresh_places: int | None = typer.Option(
        None,
        "--fresh-places",
        min=0,
        help="Synthetic worlds: render this many new training places per epoch (in the protocol's "
        "training area, and in new cities) instead of reusing the manifest's pairs. Default: the model "
        "config's fresh_places (its track section's, else train's) on a world made by `wherecnn synth`, "
        "else 0; 0 turns it off.",
    ),
    fresh_epochs: int | None = typer.Option(
        None,
        "--fresh-epochs",
        min=1,
        help="Epochs each fresh place is trained on (the pool holds that many epochs' places). Default: "
        "the model config's fresh_epochs (its track section's, else train's).",
    ),
    style_spread: float | None = typer.Option(
        None,
        "--style-spread",
        min=0.0,
        help="Fresh places: build the new cities in random styles blended from the training cities' "
        "styles, each knob scaled by up to this factor (>= 1). Default: the model config's "
        "train.style_spread; 0 keeps the training styles.",
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Model config override KEY=JSON, e.g. --set embed_dim=64 "
        "--set 'train={\"hard_fraction\":0.25}' or --set train.hard_fraction=0.25.",
    ),
    no_progress: bool = typer.Option(
        False, "--no-progress", help="Plain log lines instead of progress bars."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="torch CPU threads (default: torch's)."
    ),
) -> None:
    """Train a two-branch model on a manifest folder; checkpoints + model card + metrics.jsonl in --out."""
    import os

    # Before torch loads OpenMP. Ray Train workers share the cores: there idle threads must sleep instead of
    # spinning (measured 4x more pairs/s for dual-cpu with PASSIVE). Alone, the local loop is faster spinning
    # (measured 110 -> ~170 pairs/s on 2 cores), so it keeps OpenMP's default.
    if workers:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if threads:
        torch.set_num_threads(threads)
    from rich.console import Console
    from rich.table import Table

    from wherecnn.models import list_models, shadowed_overrides
    from wherecnn.train.loop import run_training

    if (epochs is None) == (minutes is None):
        raise typer.BadParameter("give exactly one of --epochs or --minutes")
    if not (data / "pairs.parquet").exists():
        raise typer.BadParameter(
            f"{data} has no pairs.parquet (expected `wherecnn synth`/`ingest` output)", param_hint="--data"
        )
    overrides = parse_overrides(set_, model)
    shadowed = shadowed_overrides(model, track.value, overrides) if model in list_models() else {}
    for key, wins in shadowed.items():
        Console(stderr=True).print(
            f"[yellow]note[/]: --set train.{key} changes nothing on the {track.value} track: its own "
            f"{track.value}.{key} ({wins}) wins; set {track.value}.{key} instead"
        )
    opts = TrainOptions(
        data=str(data),
        out=out,
        model=model,
        epochs=epochs,
        minutes=minutes,
        workers=workers,
        protocol=protocol.value,
        track=track.value,
        resume=resume,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        val_size=val_size,
        max_pairs=max_pairs,
        fresh_places=fresh_places,
        fresh_epochs=fresh_epochs,
        style_spread=style_spread,
        overrides=overrides,
        progress=not no_progress,
    )
    summary = run_training(opts)
    table = Table(title=f"trained {model} ({track.value}, {protocol.value})", show_header=False)
    for key in ("epochs", "steps", "train_pairs", "params", "elapsed_s", "loss", "model_id", "out"):
        value = summary.get(key)
        if value is not None:
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in (summary.get("val") or {}).items():
        table.add_row(f"val {key}", f"{value:.3f}")
    Console().print(table)
