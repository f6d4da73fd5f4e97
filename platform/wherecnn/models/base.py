"""The two-branch interface every model implements (see docs/contracts.md)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TwoBranchModel(nn.Module):
    """Ground encoder + aerial encoder -> L2-normalised ``embed_dim`` vectors, plus the loss's temperature.

    ``forward(ground, aerial)`` returns both embeddings so DDP (Ray Train) sees one forward call per step.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config: dict[str, Any] = config
        self.embed_dim = int(config["embed_dim"])
        self.ground_size: tuple[int, int] = (int(config["ground_size"][0]), int(config["ground_size"][1]))
        self.aerial_size: tuple[int, int] = (int(config["aerial_size"][0]), int(config["aerial_size"][1]))
        loss = config.get("loss", {})
        temperature = float(loss.get("temperature", 0.07))
        # log(1/T), CLIP-style; learnable only when the config says so
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)),
            requires_grad=bool(loss.get("learn_temperature", False)),
        )

    def ground_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def aerial_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def embed_ground(self, x: Tensor) -> Tensor:
        return F.normalize(self.ground_features(x).float(), dim=-1)

    def embed_aerial(self, x: Tensor) -> Tensor:
        return F.normalize(self.aerial_features(x).float(), dim=-1)

    def forward(self, ground: Tensor, aerial: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed_ground(ground), self.embed_aerial(aerial)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
