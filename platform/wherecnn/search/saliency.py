"""Why did the query match this tile? Gradient saliency of the match score, for the dashboard's overlays.

Used when `wherecnn.evaluate.activations` is not available: the absolute gradient of the cosine similarity
between the query and the matched tile with respect to each input pixel (max over colour channels), lightly
smoothed. Both views are explained: the ground canvas the model actually saw and the aerial tile.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _normalised(grad: Any) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    sal = grad.abs().amax(dim=1, keepdim=True)  # [1,1,H,W]
    kernel = torch.ones(1, 1, 5, 5, dtype=sal.dtype) / 25.0
    sal = F.conv2d(F.pad(sal, (2, 2, 2, 2), mode="replicate"), kernel)[0, 0].numpy()
    lo, hi = np.percentile(sal, 1), np.percentile(sal, 99.5)
    return np.clip((sal - lo) / (hi - lo + 1e-12), 0.0, 1.0).astype(np.float32)


def match_saliency(
    embedder: Any,
    ground: np.ndarray,
    aerial: np.ndarray,
    *,
    heading_deg: float | None = None,
    fov_deg: float | None = None,
) -> dict[str, np.ndarray]:
    """Saliency of `score = <ground embedding, aerial embedding>` for both inputs.

    Returns the model-input views (`ground_view`, `aerial_view`, uint8 RGB) and their saliency maps in [0, 1].
    """
    import torch

    from wherecnn.data.torchdata import resize, to_tensor

    model = embedder.model
    device = next(model.parameters()).device
    g_img = embedder.ground_input(ground, heading_deg, fov_deg)
    a_img = resize(np.ascontiguousarray(aerial[:, :, :3]), embedder.aerial_size)
    g = to_tensor(g_img[None], embedder.mean, embedder.std).to(device).requires_grad_(True)
    a = to_tensor(a_img[None], embedder.mean, embedder.std).to(device).requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            score = (model.embed_ground(g) * model.embed_aerial(a)).sum()
            score.backward()
    finally:
        model.train(was_training)
    return {
        "ground_view": g_img,
        "aerial_view": a_img,
        "ground_saliency": _normalised(g.grad.detach().cpu()),
        "aerial_saliency": _normalised(a.grad.detach().cpu()),
        "score": np.float32(score.detach().cpu().item()),
    }


def overlay(image: np.ndarray, saliency: np.ndarray, *, alpha: float = 0.55, cmap: str = "jet") -> np.ndarray:
    """Blend a [0,1] map (resized to the image) over an RGB image as a heat colour overlay."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = image.shape[:2]
    sal = saliency
    if sal.shape != (h, w):
        sal = np.asarray(Image.fromarray((sal * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)) / 255.0
    colour = colormaps[cmap](sal)[..., :3] * 255.0
    weight = alpha * sal[..., None] ** 0.7
    return (image[..., :3] * (1 - weight) + colour * weight).clip(0, 255).astype(np.uint8)
