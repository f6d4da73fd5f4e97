"""The dashboard's explanation overlays: a [0, 1] map (Grad-CAM of the match, `wherecnn.models.activations`)
blended over the image it explains."""

from __future__ import annotations

import numpy as np


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
