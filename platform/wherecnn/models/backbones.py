"""`dual-resnet` / `dual-convnext`: torchvision backbones per branch, optional SAFA-style polar transform.

The polar transform resamples the aerial tile into a panorama-shaped image (column = azimuth from north,
clockwise; row = distance from the centre, far at the top), so both branches see the same geometry.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherecnn.models.base import TwoBranchModel
from wherecnn.models.weights import init_from, pretrained_state


def polar_grid(out_hw: tuple[int, int]) -> Tensor:
    """grid_sample grid: a north-up square tile to (H=radius, W=azimuth) with north at the left edge."""
    h, w = out_hw
    rows = torch.arange(h, dtype=torch.float32)
    cols = torch.arange(w, dtype=torch.float32)
    radius = (h - rows - 0.5) / h  # top row = tile edge, bottom row = centre (normalised 0..1)
    azimuth = 2 * math.pi * (cols + 0.5) / w  # clockwise from north
    r, a = torch.meshgrid(radius, azimuth, indexing="ij")
    x = r * torch.sin(a)  # east = +x
    y = -r * torch.cos(a)  # north = -y (image rows grow southwards)
    return torch.stack([x, y], dim=-1).unsqueeze(0)


def tile_grid(size: tuple[int, int]) -> Tensor:
    """grid_sample grid that takes a polar map (row = distance from the centre, far at the top; column =
    bearing from north, clockwise) back onto the north-up tile: the inverse of `polar_grid`."""
    h, w = size
    y, x = torch.meshgrid(
        (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1,
        (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1,
        indexing="ij",
    )
    bearing = torch.remainder(torch.atan2(x, -y), 2 * torch.pi)
    radius = torch.sqrt(x**2 + y**2).clamp(max=1.0)
    return torch.stack([bearing / torch.pi - 1, 1 - 2 * radius], dim=-1)[None]


def to_polar(x: Tensor, grid: Tensor) -> Tensor:
    """Resample a batch of tiles with a `polar_grid`."""
    grid = grid.to(dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _backbone(name: str) -> tuple[nn.Module, int]:
    """Feature extractor (no pooling, no classifier) and its output channels."""
    import torchvision.models as tvm

    net = tvm.get_model(name, weights=None)
    if name.startswith("resnet"):
        channels = net.fc.in_features
        trunk = nn.Sequential(*list(net.children())[:-2])
    elif name.startswith("convnext"):
        channels = net.classifier[-1].in_features
        trunk = net.features
    else:
        raise ValueError(f"backbone {name!r} not supported; use a resnet* or convnext_* torchvision model")
    return trunk, channels


class GeM(nn.Module):
    """Generalised-mean pooling: between average (p=1) and max pooling, p learned."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class DualBackbone(TwoBranchModel):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        name = str(config["backbone"])
        self.ground_trunk, channels = _backbone(name)
        self.aerial_trunk = self.ground_trunk if config["shared"] else _backbone(name)[0]
        state = pretrained_state(config, name)
        if state is not None:
            prefix = "" if name.startswith("resnet") else "features."
            init_from(self.ground_trunk, _strip_resnet(state) if not prefix else state, prefix=prefix)
            if self.aerial_trunk is not self.ground_trunk:
                init_from(self.aerial_trunk, _strip_resnet(state) if not prefix else state, prefix=prefix)
        self.polar = bool(config["polar"])
        if self.polar:
            size = config["polar_size"] or config["ground_size"]
            self.register_buffer("grid", polar_grid((int(size[0]), int(size[1]))), persistent=False)
        self.ground_pool, self.aerial_pool = GeM(), GeM()
        self.ground_proj = nn.Linear(channels, self.embed_dim)
        self.aerial_proj = nn.Linear(channels, self.embed_dim)

    def ground_features(self, x: Tensor) -> Tensor:
        return self.ground_proj(self.ground_pool(self.ground_trunk(x)))

    def aerial_features(self, x: Tensor) -> Tensor:
        if self.polar:
            x = to_polar(x, self.grid)
        return self.aerial_proj(self.aerial_pool(self.aerial_trunk(x)))


def _strip_resnet(state: dict[str, Any]) -> dict[str, Any]:
    """torchvision ResNet keys (conv1, layer1...) -> indices of our Sequential trunk (0, 4...)."""
    order = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in order:
            out[f"{order.index(head)}.{rest}"] = value
    return out
