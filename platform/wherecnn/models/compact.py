"""`dual-cpu`: the compact two-branch CNN that trains in minutes on 2 CPU cores.

Why this shape (from the prototype in DESIGN.md): plain 3x3 conv blocks are cheap on CPU; circular padding
along the panorama's width makes the 0/360 degree seam invisible; the head keeps spatial layout (1x1 conv,
then flatten) because *where* things are relative to north is the signal -- global pooling throws it away.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from wherecnn.models.base import TwoBranchModel


class ConvBlock(nn.Module):
    """3x3 conv + BN + ReLU (+ 2x2 max-pool); padding per call: a shared trunk serves both views."""

    def __init__(self, cin: int, cout: int, stride: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=(1, 0), bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.pool = pool

    def forward(self, x: Tensor, circular: bool) -> Tensor:
        # the conv zero-pads the height; the width wraps around (azimuth) or is zero-padded (tile)
        x = F.pad(x, (1, 1, 0, 0), mode="circular" if circular else "constant")
        x = F.relu(self.bn(self.conv(x)), inplace=True)
        return F.max_pool2d(x, 2) if self.pool else x


class Trunk(nn.Module):
    def __init__(self, channels: list[int], strides: list[int], pools: list[bool]) -> None:
        super().__init__()
        cins = [3, *channels[:-1]]
        self.blocks = nn.ModuleList(
            ConvBlock(ci, co, s, p) for ci, co, s, p in zip(cins, channels, strides, pools, strict=True)
        )

    def forward(self, x: Tensor, circular: bool) -> Tensor:
        for block in self.blocks:
            x = block(x, circular)
        return x


def _out_hw(size: tuple[int, int], strides: list[int], pools: list[bool]) -> tuple[int, int]:
    h, w = size
    for s, p in zip(strides, pools, strict=True):
        h, w = (h + s - 1) // s, (w + s - 1) // s
        if p:
            h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"input size {size} is too small for strides {strides} and pools {pools}")
    return h, w


class SpatialHead(nn.Module):
    """1x1 conv to few channels, flatten (keeps layout), linear to the embedding."""

    def __init__(self, cin: int, mid: int, hw: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, mid, 1)
        self.fc = nn.Linear(mid * hw[0] * hw[1], dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.reduce(x)).flatten(1))


class CompactTwoBranch(TwoBranchModel):
    """Two trunks (or one shared trunk, config ``shared``) with per-branch spatial heads."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        channels = [int(c) for c in config["channels"]]
        strides = [int(s) for s in config["strides"]]
        pools = [bool(p) for p in config["pools"]]
        self.ground_trunk = Trunk(channels, strides, pools)
        self.aerial_trunk = self.ground_trunk if config.get("shared") else Trunk(channels, strides, pools)
        mid = int(config.get("head_channels", 32))
        self.ground_head = SpatialHead(
            channels[-1], mid, _out_hw(self.ground_size, strides, pools), self.embed_dim
        )
        self.aerial_head = SpatialHead(
            channels[-1], mid, _out_hw(self.aerial_size, strides, pools), self.embed_dim
        )

    def ground_features(self, x: Tensor) -> Tensor:
        return self.ground_head(self.ground_trunk(x, circular=True))

    def aerial_features(self, x: Tensor) -> Tensor:
        return self.aerial_head(self.aerial_trunk(x, circular=False))
