"""`LocalBackend.explain`: the dashboard's "what the model looked at" overlays, on a miniature demo folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture()
def backend(demo_settings: Path) -> Any:
    from wherecnn.config import get_settings
    from wherecnn.search.client import LocalBackend

    return LocalBackend.from_settings(get_settings())


def _photo_bytes() -> bytes:
    from .conftest import png_bytes, tile_image

    return png_bytes(tile_image(5))  # random colour blocks: a square 90-degree "photo"


def _check_overlays(out: dict[str, Any], embedder: Any, heading: float) -> None:
    from wherecnn.data.normalise import MEAN_RGB

    g, a = out["ground_view"], out["aerial_view"]
    assert g.shape == (*embedder.ground_size, 3) and g.dtype == np.uint8
    assert a.shape == (*embedder.aerial_size, 3) and a.dtype == np.uint8
    for view, sal in ((g, out["ground_saliency"]), (a, out["aerial_saliency"])):
        assert sal.shape == view.shape[:2]
        assert np.isfinite(sal).all() and sal.min() >= 0.0 and sal.max() <= 1.0
    # the 90-degree photo sits on the canvas around its heading (north at the left edge); the rest is blank
    w = g.shape[1]
    centre = int(heading / 360.0 * w)
    behind = (centre + w // 2) % w
    assert (g[:, behind] == np.asarray(MEAN_RGB, dtype=np.uint8)).all()
    assert g[:, centre].std() > 5.0


def test_explain_shows_the_photo_where_it_faces_and_the_tile(backend: Any) -> None:
    data = _photo_bytes()
    top = str(backend.search(data, cities=None, k=3).ranked["tile_id"].iloc[0])
    out = backend.explain(data, top, heading_deg=90.0, fov_deg=90.0)
    assert out is not None and out["method"] == "Grad-CAM"
    assert np.isfinite(out["score"])
    _check_overlays(out, backend.engine.embedder, heading=90.0)
    assert backend.explain(data, "no-such-tile", heading_deg=90.0, fov_deg=90.0) is None
