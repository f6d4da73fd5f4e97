"""The two-branch interface every model implements (see docs/contracts.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherecnn.data.ground import CANVAS_LAYOUTS


class TwoBranchModel(nn.Module):
    """Ground encoder + aerial encoder -> L2-normalised ``embed_dim`` vectors, plus the loss's temperature.

    ``forward(ground, aerial)`` returns both embeddings so DDP (Ray Train) sees one forward call per step.

    Test-time views (config ``tta``: ``{"flip": bool, "phases": n}``): `embed_ground_views` and
    `embed_aerial_views` embed each image as it is and, with ``flip``, mirrored (canvas and tile mirrored
    together, as training's flip augmentation does), and with ``phases`` n > 1 also turned by 1/n of a bearing
    column (models whose feature columns are bearings: the polar compact model). The views' embeddings are
    concatenated and divided by sqrt(views), so the dot product of two such vectors is the mean of the views'
    cosines and the vectors stay unit length: one vector per image for the index, ``views * embed_dim`` long.
    The network is not invariant to a turn smaller than its output stride, so the views disagree where it is
    unsure, and their mean ranks better (docs/experiments.md).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config: dict[str, Any] = config
        self.embed_dim = int(config["embed_dim"])
        self.ground_size: tuple[int, int] = (int(config["ground_size"][0]), int(config["ground_size"][1]))
        self.aerial_size: tuple[int, int] = (int(config["aerial_size"][0]), int(config["aerial_size"][1]))
        loss = config["loss"]
        temperature = float(loss["temperature"])
        # log(1/T), CLIP-style; learnable only when the config says so
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)),
            requires_grad=bool(loss["learn_temperature"]),
        )

    def place(self, device: torch.device) -> TwoBranchModel:
        """Move to ``device``; on CUDA also lay the convolution weights out channels-last (NHWC), the layout
        cuDNN's fast kernels use: dual-resnet's training step on an H200 ran 2.0x faster in bf16 at batch 256,
        1.4x at batch 64 (benchmarks/results/train_step-cuda*.json). CPUs keep NCHW."""
        self.to(device)
        if device.type == "cuda":
            self.to(memory_format=torch.channels_last)
        return self

    def ground_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def aerial_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def embed_ground(self, x: Tensor) -> Tensor:
        return F.normalize(self.ground_features(x).float(), dim=-1)

    def embed_aerial(self, x: Tensor) -> Tensor:
        return F.normalize(self.aerial_features(x).float(), dim=-1)

    # ------------------------------------------------------------ test-time views
    @property
    def bearing_column_px(self) -> int | None:
        """Input pixels per bearing column of the output, for models whose columns are bearings; else None."""
        return None

    def test_views(self) -> list[tuple[bool, int]]:
        """(mirrored, bearing turn in input pixels) of each test-time view, from the config's ``tta``."""
        tta = self.config["tta"]
        phases = int(tta["phases"])
        step = 0
        if phases > 1:
            column = self.bearing_column_px
            if self.config["ground_layout"] not in CANVAS_LAYOUTS:
                raise ValueError(
                    f"tta phases {phases}: turning needs a 360° canvas, ground_layout in {CANVAS_LAYOUTS}"
                )
            if column is None or column % phases:
                raise ValueError(
                    f"tta phases {phases}: model {self.config.get('name')!r} has no bearing columns of a "
                    f"multiple of {phases} pixels to turn by (bearing_column_px={column})"
                )
            step = column // phases
        flips = (False, True) if tta["flip"] else (False,)
        return [(mirror, p * step) for mirror in flips for p in range(phases)]

    @property
    def embedding_columns(self) -> int | None:
        """Bearing columns of one view's embedding, for models whose embedding is one part per bearing
        on a 360° canvas (a turn of the canvas by one column is a roll of the parts); else None."""
        return None

    def turn_ground_vectors(self, vectors: np.ndarray, columns: int) -> np.ndarray:
        """`embed_ground_views` vectors ([n, output_dim]) as if each canvas had been turned by ``columns``
        bearing columns (the heading plus ``columns`` x 360 / `embedding_columns` degrees), without a forward
        pass: each view's per-bearing parts roll, a mirrored view's the other way. Exact for a network whose
        convolutions are circular along the bearings with a total stride of one column."""
        cols = self.embedding_columns
        if cols is None:
            raise NotImplementedError(f"{type(self).__name__} has no bearing columns to turn")
        views = self.test_views()
        x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), len(views), -1, cols)
        out = np.empty_like(x)
        for i, (mirror, _) in enumerate(views):
            out[:, i] = np.roll(x[:, i], -columns if mirror else columns, axis=-1)
        return out.reshape(len(vectors), -1)

    @property
    def output_dim(self) -> int:
        """Length of the vectors `embed_*_views` return: ``embed_dim`` per test-time view."""
        return self.embed_dim * len(self.test_views())

    def turned_aerial_features(self, x: Tensor, turn: int) -> Tensor:
        """Aerial features with the bearings turned by ``turn`` input pixels (models with bearing columns)."""
        if turn:
            raise NotImplementedError(f"{type(self).__name__} cannot turn its bearings")
        return self.aerial_features(x)

    def embed_ground_views(self, x: Tensor) -> Tensor:
        """The concatenated, normalised embeddings of the ground views (`test_views`)."""
        parts = []
        canvas = self.config["ground_layout"] in CANVAS_LAYOUTS
        for mirror, turn in self.test_views():
            v = x
            if mirror:  # the canvas's bearings h -> -h (as `augment_pair` mirrors it)
                v = torch.flip(v, dims=[3])
                v = torch.roll(v, 1, dims=3) if canvas else v
            parts.append(self.embed_ground(torch.roll(v, -turn, dims=3) if turn else v))
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def embed_aerial_views(self, x: Tensor) -> Tensor:
        """The concatenated, normalised embeddings of the aerial views (`test_views`)."""
        parts = []
        for mirror, turn in self.test_views():
            v = torch.flip(x, dims=[3]) if mirror else x
            parts.append(F.normalize(self.turned_aerial_features(v, turn).float(), dim=-1))
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def forward(self, ground: Tensor, aerial: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed_ground(ground), self.embed_aerial(aerial)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
