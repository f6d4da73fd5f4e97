"""Pair augmentation: turns, mirrors, colour, shifts and zooms applied to both views of a pair; a compass
error to the ground view alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from wherecnn.data.augment import augment_pair, zoom_tile
from wherecnn.data.datasets import PairDataset, load_pairs


def polar(tile: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Panorama seen from the tile centre (north at the left edge, clockwise), as the fake world renders."""
    size = tile.shape[0]
    rows = (np.arange(ph) + 0.5) / ph
    cols = 2 * math.pi * (np.arange(pw) + 0.5) / pw
    r, a = np.meshgrid((1 - rows) * (size / 2 - 1), cols, indexing="ij")
    px = np.clip(size / 2 + r * np.sin(a), 0, size - 1).astype(int)
    py = np.clip(size / 2 - r * np.cos(a), 0, size - 1).astype(int)
    return tile[py, px]


def blocky(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    return np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((size // 8, size // 8, 1))).astype(np.uint8)


@pytest.mark.parametrize("rotation", ["quarter", "any"])
def test_augmentation_keeps_views_consistent(rotation: str) -> None:
    rng = np.random.default_rng(0)
    for trial in range(8):
        tile = blocky(rng)
        pano = polar(tile, 32, 128)
        aug_rng = np.random.default_rng(trial)
        g, a = augment_pair(pano, tile, aug_rng, rotation=rotation, flip=True)
        if np.array_equal(a, tile):
            continue
        consistent = np.abs(polar(a, 32, 128).astype(int) - g.astype(int)).mean()
        broken = np.abs(polar(a, 32, 128).astype(int) - pano.astype(int)).mean()
        assert consistent < 0.35 * broken, (trial, consistent, broken)


def test_colour_augmentation_changes_both_views_alike() -> None:
    rng = np.random.default_rng(1)
    tile = blocky(rng)
    pano = polar(tile, 32, 128)
    g, a = augment_pair(pano, tile, np.random.default_rng(5), rotation="none", flip=False, color=0.3)
    assert not np.array_equal(a, tile)
    # the same palette change on both: the panorama is still the polar view of the tile
    assert np.abs(polar(a, 32, 128).astype(int) - g.astype(int)).max() <= 1
    ratio = a.reshape(-1, 3).astype(float).sum(0) / tile.reshape(-1, 3).astype(float).sum(0)
    assert np.ptp(ratio) > 0.05  # channels scaled differently, not just brightness


def test_shift_augmentation_moves_only_the_tile_within_bounds() -> None:
    tile = np.zeros((40, 40, 3), dtype=np.uint8)
    tile[19:21, 19:21] = 255  # the camera's spot
    pano = np.full((8, 32, 3), 7, dtype=np.uint8)
    moves = set()
    for seed in range(30):
        g, a = augment_pair(pano, tile, np.random.default_rng(seed), rotation="none", flip=False, shift=0.1)
        assert np.array_equal(g, pano) and a.shape == tile.shape
        r, c = np.nonzero(a[..., 0] == 255)
        dy, dx = int(r.min()) - 19, int(c.min()) - 19
        assert max(abs(dy), abs(dx)) <= 4 and len(r) == 4  # 10% of 40 px, the spot intact
        moves.add((dy, dx))
    assert len(moves) > 10


def test_heading_augmentation_turns_only_the_ground_view_within_bounds() -> None:
    rng = np.random.default_rng(2)
    tile = blocky(rng)
    pano = polar(tile, 32, 360)  # one column a degree
    turns = set()
    for seed in range(40):
        kwargs = dict(rotation="quarter", flip=True, color=0.2, shift=0.05)
        g0, a0 = augment_pair(pano, tile, np.random.default_rng(seed), **kwargs)
        g, a = augment_pair(pano, tile, np.random.default_rng(seed), heading=12.0, **kwargs)
        assert np.array_equal(a, a0)  # the tile, and every other change, as without it
        turn = next(k for k in range(-12, 13) if np.array_equal(np.roll(g0, -k, axis=1), g))
        turns.add(turn)
    assert len(turns) > 10 and max(abs(t) for t in turns) > 6
    g, a = augment_pair(pano, tile, np.random.default_rng(0), rotation="none", flip=False, heading=0.0)
    assert np.array_equal(g, pano) and np.array_equal(a, tile)


def test_zoom_shows_the_centre_at_another_scale() -> None:
    # a context two tile sides wide around a 40 px tile
    context = np.zeros((80, 80, 3), dtype=np.uint8)
    context[30:50, 30:50] = 255  # 20 px square = half the tile side (the tile is the centre 40 px)
    at_1 = zoom_tile(context, 2.0, 1.0, (40, 40))
    assert np.array_equal(at_1, context[20:60, 20:60])  # scale 1: the tile itself, no resampling
    wide = zoom_tile(context, 2.0, 2.0, (40, 40))  # twice the ground: the square is half as wide
    assert abs(int((wide[..., 0] > 127).sum()) - 10 * 10) <= 12
    close = zoom_tile(context, 2.0, 0.5, (40, 40))  # half the ground: the square fills the view
    assert (close[2:-2, 2:-2] == 255).all()
    with pytest.raises(ValueError, match="context"):
        zoom_tile(context, 2.0, 2.5, (40, 40))


def test_zoom_augmentation_cuts_wider_views_from_the_raster(tiny_world: Path) -> None:
    frame = load_pairs(tiny_world, track="aligned", protocol="same-area", split="train").iloc[:8]
    ds = PairDataset(frame=frame, aerial_size=(48, 48), augment={"scale": (0.8, 1.5), "flip": False})
    assert ds.has_windows and ds.context_scale == 1.5
    ds.preload()
    for i in range(len(ds)):
        ctx = ds.context(i)
        assert ctx.shape == (72, 72, 3)
        # the centre of the wider view is the tile as its file shows it (same cut, JPEG and resize)
        centre = zoom_tile(ctx, 1.5, 1.0, (48, 48)).astype(float)
        assert np.abs(centre - ds.raw(i)[1].astype(float)).mean() < 3
    lazy = PairDataset(frame=frame, aerial_size=(48, 48), augment={"scale": (0.8, 1.5)})
    assert np.array_equal(lazy.context(2), ds.context(2))  # cut on demand = cut in bulk
    scales = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        scales |= {float(ds[i]["aerial"].std()) for i in range(3)}
    assert len(scales) > 6  # the zoom varies with the epoch
    # without windows (e.g. in-memory pairs) the tile file is the context: zooming in only, with a warning
    with pytest.warns(UserWarning, match="zooming in only"):
        bare = PairDataset(
            frame=frame.drop(columns="source_uri"), aerial_size=(48, 48), augment={"scale": (0.8, 1.5)}
        )
    assert bare.zoom == (0.8, 1.0) and bare.context_scale == 1.0
    assert bare[0]["aerial"].shape == (3, 48, 48)
