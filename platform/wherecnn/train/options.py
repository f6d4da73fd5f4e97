"""`TrainOptions`: everything a training run needs besides the model config, JSON-able so Ray can ship it to
workers; the `wherecnn train` flags take their defaults from it. Imports no torch (the CLI stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainOptions:
    """Everything a run needs, JSON-able so Ray can ship it to workers."""

    data: str
    out: str
    model: str = "dual-cpu"
    epochs: int | None = None
    minutes: float | None = None
    workers: int = 0  # 0 = local loop without Ray
    protocol: str = "same-area"
    track: str = "aligned"
    resume: bool = False
    batch_size: int | None = None  # global batch; default from the model config
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    val_size: int = 256
    max_pairs: int | None = None  # train on a subset (tests, quick looks)
    # synthetic worlds: render this many new places per epoch instead of the manifest's pairs (None: the
    # model config's fresh_places, its track section's else train's, on a world made by `wherecnn synth`,
    # else 0; 0 turns it off)
    fresh_places: int | None = None
    # ... and train on each for this many epochs, the pool holding the latest ones (None: the model config's
    # fresh_epochs, its track section's else train's, else 3)
    fresh_epochs: int | None = None
    # fresh places: new worlds in random styles scaled around the training ones (None: the model config's
    # train.style_spread; 0 turns it off)
    style_spread: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    log_every: int = 20

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.minutes is None):
            raise ValueError("give exactly one of epochs or minutes")
        if (self.fresh_places or 0) < 0 or (self.fresh_epochs is not None and self.fresh_epochs < 1):
            raise ValueError("fresh_places must be >= 0 and fresh_epochs >= 1")
        if self.style_spread and self.fresh_places == 0:
            raise ValueError("style_spread styles fresh places' new worlds: it needs fresh_places")
