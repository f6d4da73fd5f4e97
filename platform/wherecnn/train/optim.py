"""The optimiser side of a training step: the optimiser (no weight decay on norms, biases and the
temperature), the warm-up and cosine learning-rate schedule, bf16 autocast, the weights' moving average."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from wherecnn.models.base import TwoBranchModel


def mixed_precision(device: torch.device, precision: str) -> bool:
    """Whether to train under bf16 autocast (``train.precision``): ``"auto"`` on CUDA, and on CPUs with native
    bf16 arithmetic (AVX512-BF16 or AMX; ~2x the pairs per second of fp32 for ``dual-cpu``,
    benchmarks/train_step.py); ``"bf16"`` always; ``"fp32"`` never. The loss, validation and evaluation stay
    fp32; the mining pass embeds in bf16."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    native = (
        getattr(torch.cpu, name, lambda: False)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return device.type == "cpu" and any(check() for check in native)


def lr_factor(progress: float, step: int, warmup: int) -> float:
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def make_optimizer(model: torch.nn.Module, train_cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("logit_scale") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(train_cfg["weight_decay"])},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kind = str(train_cfg["optimizer"])
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {kind!r} (adam|adamw|sgd)")


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics (``train.ema``: the
    decay per step), warmed up as ``min(decay, (1 + t) / (10 + t))`` so the first, random weights fade fast.
    Weight averaging helps domain generalisation elsewhere (SWAD, Cha et al. 2021); for `dual-cpu` under its
    cosine schedule it did not (docs/experiments.md), so it is off by default."""

    def __init__(self, model: TwoBranchModel, decay: float, step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must be a decay in (0, 1), not {decay}")
        self.model, self.decay, self.step = copy.deepcopy(model), decay, step
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.step += 1
        keep = min(self.decay, (1.0 + self.step) / (10.0 + self.step))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs.to(mine.dtype), 1.0 - keep)
            else:  # e.g. batch norm's num_batches_tracked
                mine.copy_(theirs)
