"""`dual-cpu`: the compact two-branch CNN that trains in minutes on 2 CPU cores.

Why this shape (from the prototype in DESIGN.md): plain 3x3 conv blocks are cheap on CPU; circular padding
along the panorama's width makes the 0/360 degree seam invisible; the head keeps spatial layout because
*where* things are relative to north is the signal -- global pooling throws it away.

The default head, ``head: "azimuth"`` (with ``polar``: the aerial tile polar-transformed, so a column of
either branch is a bearing from north), gives every bearing its own part of the embedding: the score of a
pair is the sum over bearings of per-bearing cosines. A photo on the canvas fills only the bearings it sees
(blank canvas columns are dropped), so it is matched against the tile's sector in its heading -- one gallery
vector per tile serves every heading -- and the head learns one mapping for all bearings, where the
prototype's flattened head (``head: "spatial"``: 1x1 conv, flatten, linear) must learn each heading apart.
Measured (small world, 15 min, cross-area): aligned R@1 0.483 -> 0.727, photo 0.051 -> 0.353.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherecnn.data.ground import CANVAS_LAYOUTS
from wherecnn.data.normalise import MEAN_RGB
from wherecnn.models.backbones import polar_grid, to_polar
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


class MixStyle(nn.Module):
    """MixStyle (Zhou et al., ICLR 2021), a domain-generalisation regulariser: while training, with
    probability ``p`` per batch, each sample's feature map is re-styled with its per-channel mean and
    standard deviation mixed (Beta(``alpha``, ``alpha``) weights) with another sample's from the batch, so
    the network sees styles between its training cities' and cannot key on any one city's. The identity in
    eval mode."""

    def __init__(self, p: float, alpha: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0 or alpha <= 0.0:
            raise ValueError(f"mixstyle needs 0 <= p <= 1 and alpha > 0, got p={p}, alpha={alpha}")
        self.p, self.alpha = p, alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or x.shape[0] < 2 or float(torch.rand(())) >= self.p:
            return x
        xf = x.float()
        mu = xf.mean(dim=(2, 3), keepdim=True).detach()
        sigma = (xf.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt().detach()
        weight = torch.distributions.Beta(self.alpha, self.alpha).sample((x.shape[0], 1, 1, 1)).to(x.device)
        perm = torch.randperm(x.shape[0], device=x.device)
        mixed_mu = weight * mu + (1 - weight) * mu[perm]
        mixed_sigma = weight * sigma + (1 - weight) * sigma[perm]
        return ((xf - mu) / sigma * mixed_sigma + mixed_mu).to(x.dtype)


class Trunk(nn.Module):
    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        pools: list[bool],
        mixstyle: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cins = [3, *channels[:-1]]
        self.blocks = nn.ModuleList(
            ConvBlock(ci, co, s, p) for ci, co, s, p in zip(cins, channels, strides, pools, strict=True)
        )
        # config ``mixstyle``: {"p", "alpha", "after": block indices} (off when absent)
        mix = mixstyle or {"after": []}
        self.mix_after = {int(i) for i in mix["after"]}
        if not self.mix_after <= set(range(len(channels))):
            raise ValueError(f"mixstyle after {sorted(self.mix_after)}: the trunk has {len(channels)} blocks")
        self.mix = MixStyle(float(mix["p"]), float(mix["alpha"])) if self.mix_after else None

    def forward(self, x: Tensor, circular: bool) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, circular)
            if self.mix is not None and i in self.mix_after:
                x = self.mix(x)
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


class AzimuthHead(nn.Module):
    """1x1 conv, then per feature-map column (a bearing) a linear map of the column to ``dim // columns``
    values, L2-normalised per column and weighted by how much of the column the input covers."""

    def __init__(self, cin: int, mid: int, hw: tuple[int, int], dim: int) -> None:
        super().__init__()
        if dim % hw[1]:
            raise ValueError(f"azimuth head: embed_dim {dim} is no multiple of its {hw[1]} bearing columns")
        self.reduce = nn.Conv2d(cin, mid, 1)
        self.column = nn.Conv2d(mid, dim // hw[1], (hw[0], 1))
        self.columns = hw[1]

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        cols = F.normalize(self.column(F.relu(self.reduce(x))).flatten(2), dim=1)  # B x d x columns
        if visible is not None:
            cols = cols * F.adaptive_avg_pool1d(visible[:, None], self.columns)
        return cols.flatten(1)


class CompactTwoBranch(TwoBranchModel):
    """Two trunks (or one shared trunk, config ``shared``) with a head per branch."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        channels = [int(c) for c in config["channels"]]
        strides = [int(s) for s in config["strides"]]
        pools = [bool(p) for p in config["pools"]]
        mixstyle = config["mixstyle"]
        self.ground_trunk = Trunk(channels, strides, pools, mixstyle)
        self.aerial_trunk = (
            self.ground_trunk if config["shared"] else Trunk(channels, strides, pools, mixstyle)
        )
        mid = int(config["head_channels"])
        self.head = str(config["head"])
        self.polar = bool(config["polar"])
        if self.head == "azimuth" and not self.polar:
            raise ValueError("the azimuth head needs polar: true (tile columns must be bearings)")
        if self.head not in ("spatial", "azimuth"):
            raise ValueError(f"compact head must be 'spatial' or 'azimuth', got {self.head!r}")
        if self.polar:  # the tile becomes a ground-sized image, column = bearing
            self.register_buffer("grid", polar_grid(self.ground_size), persistent=False)
        aerial_in = self.ground_size if self.polar else self.aerial_size
        head = AzimuthHead if self.head == "azimuth" else SpatialHead
        self.ground_head = head(channels[-1], mid, _out_hw(self.ground_size, strides, pools), self.embed_dim)
        aerial_out = _out_hw(aerial_in, strides, pools)
        self.aerial_head = head(channels[-1], mid, aerial_out, self.embed_dim)
        self.aerial_head_columns = aerial_out[1]
        # what a blank canvas column (outside a photo's field of view) normalises to
        blank = (torch.tensor(MEAN_RGB) / 255.0 - torch.tensor(config["mean"])) / torch.tensor(config["std"])
        self.register_buffer("blank", blank.float().view(1, 3, 1, 1), persistent=False)

    def ground_features(self, x: Tensor) -> Tensor:
        features = self.ground_trunk(x, circular=True)
        with _full_precision(features):  # the small heads stay in fp32 under mixed precision
            if self.head == "azimuth":
                visible = ((x.float() - self.blank).abs().amax(dim=(1, 2)) > 0.02).float()
                return self.ground_head(features.float(), visible)
            return self.ground_head(features.float())

    def aerial_features(self, x: Tensor) -> Tensor:
        return self.turned_aerial_features(x, 0)

    @property
    def bearing_column_px(self) -> int | None:
        if not self.polar:
            return None
        return self.ground_size[1] // self.aerial_head_columns

    @property
    def embedding_columns(self) -> int | None:
        canvas = self.config["ground_layout"] in CANVAS_LAYOUTS
        return self.aerial_head_columns if self.head == "azimuth" and canvas else None

    def turned_aerial_features(self, x: Tensor, turn: int) -> Tensor:
        """Turning the polar map by ``turn`` columns is exactly the tile turned by that many bearing samples
        (what rolling the ground canvas by ``turn`` does to the panorama)."""
        if self.polar:
            x = to_polar(x, self.grid)
            if turn:
                x = torch.roll(x, -turn, dims=3)
        elif turn:
            raise NotImplementedError("turning the bearings needs polar: true")
        features = self.aerial_trunk(x, circular=self.polar)
        with _full_precision(features):
            return self.aerial_head(features.float())


def _full_precision(x: Tensor) -> torch.autocast:
    """Autocast off: the per-bearing normalisation and the few head weights decide fine score differences."""
    return torch.autocast(x.device.type, enabled=False)
