"""A pixel embedder (an image's zero-mean thumbnail) and the tiny world's grid tiles with their windows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def pixel_vectors(images: Sequence[np.ndarray], side: int = 16) -> np.ndarray:
    """Zero-mean side x side thumbnails, L2-normalised: an image and its own view embed identically, and
    views a few pixels apart stay similar, so "the right view wins" is exact."""
    from PIL import Image

    out = []
    for img in images:
        small = np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR), dtype=np.float32)
        v = (small - small.mean()).reshape(-1)
        out.append(v / (np.linalg.norm(v) + 1e-9))
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def grid(tiny_world: Path) -> pd.DataFrame:
    """The tiny world's grid tiles, URIs absolute, with the fine stage's cell and file size."""
    from wherecnn.evaluate.served import grid_tiles
    from wherecnn.retrieval.views import with_windows

    return with_windows(grid_tiles(tiny_world))
