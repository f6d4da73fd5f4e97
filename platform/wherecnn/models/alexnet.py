"""`where-cnn`: the paper's AlexNet-style two-branch network.

Each branch is torchvision's AlexNet convolutional stack (so ImageNet or Places AlexNet weights load
directly), followed by a small fully connected embedding; trained with the contrastive loss.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from wherecnn.models.base import TwoBranchModel
from wherecnn.models.weights import init_from, pretrained_state


def _alexnet_features(batch_norm: bool = False) -> nn.Sequential:
    """torchvision's AlexNet conv stack; ``batch_norm`` puts a BatchNorm2d before each ReLU (in the ReLU's
    slot, so the conv layers keep their indices and AlexNet weights still load by name)."""
    from torchvision.models import alexnet

    features = alexnet(weights=None).features
    if batch_norm:
        channels = 3
        for i, layer in enumerate(features):
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            elif isinstance(layer, nn.ReLU):
                features[i] = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
    return features


class WhereCNN(TwoBranchModel):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        batch_norm = bool(config["batch_norm"])
        self.ground_trunk = _alexnet_features(batch_norm)
        self.aerial_trunk = self.ground_trunk if config["shared"] else _alexnet_features(batch_norm)
        state = pretrained_state(config, "alexnet")
        if state is not None:
            init_from(self.ground_trunk, state, prefix="features.")
            if self.aerial_trunk is not self.ground_trunk:
                init_from(self.aerial_trunk, state, prefix="features.")
        # pooled grids keep coarse layout: 2x8 for the panorama (azimuth), 3x3 for the tile
        self.ground_pool = nn.AdaptiveAvgPool2d((2, 8))
        self.aerial_pool = nn.AdaptiveAvgPool2d((3, 3))
        hidden = int(config["hidden"])
        self.ground_head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(256 * 16, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, self.embed_dim),
        )
        self.aerial_head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(256 * 9, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, self.embed_dim),
        )

    def ground_features(self, x: Tensor) -> Tensor:
        return self.ground_head(self.ground_pool(self.ground_trunk(x)))

    def aerial_features(self, x: Tensor) -> Tensor:
        return self.aerial_head(self.aerial_pool(self.aerial_trunk(x)))
