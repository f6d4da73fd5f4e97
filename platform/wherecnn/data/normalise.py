"""Input normalisation: the ImageNet mean and standard deviation every model config defaults to, and uint8
images to normalised float tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MEAN_RGB = (124, 116, 104)  # ImageNet mean in uint8: padding that normalises to ~0
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # a model config's default ``mean`` (models.schema)
IMAGENET_STD = (0.229, 0.224, 0.225)  # and ``std``


def to_tensor(
    images: np.ndarray | Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 NHWC (or one HWC) -> normalised float NCHW (or CHW): converted, transposed and normalised in
    place in one buffer (a batch's inputs every training step)."""
    arr = np.ascontiguousarray(np.asarray(images))
    if not arr.flags.writeable:  # torch warns on read-only arrays, even when it only reads them
        arr = arr.copy()
    single = arr.ndim == 3
    src = torch.from_numpy(arr[None] if single else arr).permute(0, 3, 1, 2)  # a view: nothing copied yet
    t = torch.empty(src.shape, dtype=torch.float32).copy_(src).div_(255.0)
    t.sub_(torch.tensor(mean, dtype=torch.float32)[:, None, None])
    t.div_(torch.tensor(std, dtype=torch.float32)[:, None, None])
    return t[0] if single else t
