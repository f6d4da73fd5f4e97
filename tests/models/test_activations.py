"""Activation / Grad-CAM maps: polar models' aerial maps are drawn back onto the north-up tile."""

from __future__ import annotations

import numpy as np
import torch
from wherecnn.models import build_model
from wherecnn.models.activations import pair_maps
from wherecnn.models.embedder import Embedder


def test_azimuth_head_maps_cover_the_tile_not_bearing_stripes() -> None:
    torch.manual_seed(0)
    emb = Embedder(build_model("dual-cpu", head="azimuth", polar=True), model_id="t", device="cpu")
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    photo = rng.integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    maps = pair_maps(emb, photo, tile, heading_deg=90.0, fov_deg=90.0)
    assert maps.aerial_cam.shape == maps.aerial_activation.shape == emb.aerial_size
    assert maps.ground_cam.shape == emb.ground_size
    # a map over the tile varies down its columns too; the head's one-row bearing conv would give stripes
    act = maps.aerial_activation
    assert act.std(axis=0).mean() > 0.01 and act.std(axis=1).mean() > 0.01
