"""Torch data: ground layout, view-consistent augmentation, datasets and batch samplers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from wherecnn.data.torchdata import (
    MEAN_RGB,
    GeoBatchSampler,
    MinedBatchSampler,
    PairDataset,
    augment_pair,
    cylinder_view,
    cylinder_views,
    default_loader,
    ground_view,
    load_pairs,
    photo_from_canvas,
    photos_from_canvases,
    resize,
    sector_of_canvas,
    zoom_tile,
)


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


def test_panorama_heading_rolls_left_edge_to_north() -> None:
    pano = np.zeros((8, 360, 3), dtype=np.uint8)
    pano[:, 0] = 255  # the column facing the heading (left edge)
    out = ground_view(pano, (8, 360), heading_deg=90.0, fov_deg=360.0)
    assert out[:, 90].min() == 255 and out[:, 0].max() == 0


def test_photo_is_placed_on_canvas_at_its_heading() -> None:
    photo = np.full((16, 16, 3), 200, dtype=np.uint8)
    out = ground_view(photo, (16, 64), heading_deg=90.0, fov_deg=90.0)
    filled = np.where(out[0, :, 0] == 200)[0]
    # 90 degrees of 64 columns = 16 columns centred on 90 deg = column 16
    assert filled.min() == 8 and filled.max() == 23
    assert (out[0, 0] == MEAN_RGB).all()
    wrapped = ground_view(photo, (16, 64), heading_deg=0.0, fov_deg=90.0)
    assert set(np.where(wrapped[0, :, 0] == 200)[0]) == set(range(56, 64)) | set(range(0, 8))


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


def test_photos_cut_from_panoramas_look_like_the_photo_files(tiny_world: Path) -> None:
    kw = dict(track="aligned", protocol="same-area", split="train")
    panos = load_pairs(tiny_world, **kw).iloc[:10]  # type: ignore[arg-type]
    photos = load_pairs(tiny_world, **{**kw, "track": "photo"}).iloc[:10]  # type: ignore[arg-type]
    assert list(panos["capture_id"].str[:-5]) == list(photos["capture_id"].str[:-6])  # the same places
    pano_set = PairDataset(frame=panos, ground_size=(64, 256))
    photo_set = PairDataset(frame=photos, ground_size=(64, 256))
    for i in range(len(panos)):
        heading = float(photos["heading_deg"].iloc[i])
        cut = photo_from_canvas(pano_set.raw(i)[0], heading, 90.0, "canvas").astype(float)
        ref = photo_set.raw(i)[0].astype(float)
        assert np.abs(cut - ref).mean() < 2.0  # the same 64 photo columns, ~2 grey levels apart in them
        other = photo_from_canvas(pano_set.raw(i)[0], heading + 90, 90.0, "canvas").astype(float)
        assert np.abs(other - ref).mean() > 3 * np.abs(cut - ref).mean()
    # the dataset cuts a new heading each epoch; the rest of the canvas is padding
    aug = PairDataset(
        frame=panos, ground_size=(64, 256), augment={"photo_fov": 90, "rotation": "none", "flip": False}
    )
    filled = set()
    for epoch in range(3):
        aug.set_epoch(epoch)
        g = aug[0]["ground"].numpy()
        cols = np.nonzero(np.abs(g).max(axis=(0, 1)) > 0.05)[0]
        assert 56 <= len(cols) <= 72
        filled.add(frozenset(cols.tolist()))
    assert len(filled) == 3


def test_a_cylinder_photo_lands_where_the_panorama_shows_the_same_things(tiny_world: Path) -> None:
    """``ground_layout="cylinder"``: a photo reprojected onto the canvas matches the panorama it was cut
    from, pixel for pixel inside its field of view (the plain canvas layout only resizes it into the sector,
    so its bearings and elevations are off by up to ~4 and ~10 degrees)."""
    from wherecnn.data.synthetic.render import photos_from_panoramas

    panos = load_pairs(tiny_world, track="aligned", protocol="same-area", split="train").iloc[:6]
    errors: dict[str, list[float]] = {"canvas": [], "cylinder": []}
    for uri, heading in zip(panos["ground_uri"], [0.0, 37.0, 200.0, 315.0, 90.0, 359.0], strict=True):
        pano = default_loader(uri)  # north-aligned, at the generator's resolution
        canvas = resize(pano, (64, 256))
        photo = photos_from_panoramas(pano[None], np.array([heading]), size=128, fov_deg=90.0)[0]
        blank = np.zeros_like(canvas)
        inside = ~sector_of_canvas(blank, heading, 86.0).any(axis=2)  # away from the photo's edges
        outside = sector_of_canvas(blank, heading, 92.0).any(axis=2)
        for layout in errors:
            view = ground_view(photo, (64, 256), heading_deg=heading, fov_deg=90.0, layout=layout)
            assert (view[outside] == MEAN_RGB).all()
            errors[layout].append(float(np.abs(view.astype(float) - canvas)[inside].mean()))
    # what is left is resampling blur (the photo is cut bilinearly, then shrunk and sampled back)
    assert np.mean(errors["cylinder"]) < 0.6 * np.mean(errors["canvas"])


@pytest.mark.parametrize("vfov", [90.0, 120.0])
def test_a_photo_cut_from_a_canvas_goes_back_onto_it(vfov: float) -> None:
    """Training cuts photos from panorama canvases that span ``canvas_vfov_deg``; the cut and the
    cylinder layout agree on it, so the photo lands back on the canvas it came from."""
    rng = np.random.default_rng(4)
    canvas = np.kron(rng.integers(0, 256, (8, 32, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 64 x 256
    view = photo_from_canvas(canvas, 100.0, 90.0, "cylinder", canvas_vfov_deg=vfov).astype(float)
    inside = ~sector_of_canvas(np.zeros_like(canvas), 100.0, 84.0).any(axis=2)
    inside &= (view != MEAN_RGB).any(axis=2)  # the photo's corners do not reach the canvas's rows
    assert inside.sum() > 0.6 * 64 * 256 * 84 / 360
    assert np.abs(view - canvas)[inside].mean() < 12.0  # resampling blur at the block edges only
    shifted = photo_from_canvas(canvas, 100.0, 90.0, "cylinder", canvas_vfov_deg=vfov + 30.0).astype(float)
    assert np.abs(view - canvas)[inside].mean() < 0.6 * np.abs(shifted - canvas)[inside].mean()


def test_a_cylinder_photo_fills_only_the_elevations_it_sees() -> None:
    # a level 4:3 landscape photo, 60 degrees across: ~47 degrees high at its centre, less at its sides
    photo = np.full((60, 80, 3), 200, dtype=np.uint8)
    view = cylinder_view(photo, (64, 256), heading_deg=180.0, fov_deg=60.0, canvas_vfov_deg=90.0)
    filled = view[..., 0] == 200
    cols = np.nonzero(filled.any(axis=0))[0]
    assert abs(len(cols) - 256 * 60 / 360) <= 1 and abs(cols.mean() + 0.5 - 128) <= 1  # centred on south
    centre_rows = np.nonzero(filled[:, 128])[0]
    high = math.degrees(2 * math.atan(math.tan(math.radians(30.0)) * 60 / 80))  # 46.8 degrees
    assert abs(len(centre_rows) - 64 * high / 90) <= 1.5
    edge_rows = np.nonzero(filled[:, cols.min()])[0]
    assert len(edge_rows) < len(centre_rows)  # the top and bottom edges dip towards the photo's sides
    assert (view[~filled] == MEAN_RGB).all()
    with pytest.raises(ValueError, match="fov_deg"):
        cylinder_view(photo, (64, 256), heading_deg=0.0, fov_deg=180.0)
    with pytest.raises(ValueError, match="ground_layout"):
        ground_view(photo, (64, 256), heading_deg=0.0, fov_deg=60.0, layout="sphere")


def test_batched_photo_cuts_equal_one_at_a_time() -> None:
    """The photo track cuts a whole batch at once; each photo comes out as if cut alone (any heading,
    across the seam at north), on the cylinder and on the plain canvas."""
    rng = np.random.default_rng(2)
    canvases = rng.integers(0, 256, (6, 32, 128, 3)).astype(np.uint8)
    headings = np.array([0.0, 3.7, 179.9, 200.5, 358.2, 90.0])
    for layout in ("cylinder", "canvas"):
        together = photos_from_canvases(canvases, headings, 90.0, layout)
        for c, h, out in zip(canvases, headings, together, strict=True):
            assert np.array_equal(out, photo_from_canvas(c, h, 90.0, layout))
    photos = rng.integers(0, 256, (4, 48, 96, 3)).astype(np.uint8)  # wider than the canvas's share: shrunk
    views = cylinder_views(photos, (32, 128), headings_deg=headings[:4], fov_deg=75.0)
    for p, h, out in zip(photos, headings[:4], views, strict=True):
        assert np.array_equal(out, cylinder_view(p, (32, 128), heading_deg=h, fov_deg=75.0))


@pytest.mark.parametrize(
    "augment",
    [
        {"rotation": "quarter", "flip": True, "shift": 0.1, "color": 0.2},
        {"rotation": "any", "flip": True, "scale": [0.8, 1.0]},
        {"rotation": "quarter", "flip": True, "photo_fov": 90.0},
        {"rotation": "none", "flip": False, "photo_fov": 90.0, "photo_sector": 200.0},
    ],
)
def test_a_batch_equals_its_samples_prepared_alone(fake_pairs: Path, augment: dict) -> None:
    ds = PairDataset(
        fake_pairs, track="aligned", ground_size=(32, 128), aerial_size=(32, 32), augment=augment, seed=4
    )
    ds.set_epoch(3)
    idx = [7, 0, 12, 5, 30]
    batch = ds.batch(idx)
    assert batch["index"].tolist() == idx
    for row, i in enumerate(idx):
        alone = ds[i]
        assert torch.equal(batch["ground"][row], alone["ground"])
        assert torch.equal(batch["aerial"][row], alone["aerial"])


def test_a_sector_keeps_the_columns_it_faces() -> None:
    pano = np.full((4, 64, 3), 200, dtype=np.uint8)
    out = sector_of_canvas(pano, heading_deg=0.0, fov_deg=90.0)
    kept = set(np.nonzero(out[0, :, 0] == 200)[0].tolist())
    assert kept == set(range(56, 64)) | set(range(0, 8))  # 45 degrees either side of north, across the seam
    assert (out[:, 8:56] == MEAN_RGB).all() and (pano == 200).all()
    assert (sector_of_canvas(pano, 123.0, 360.0) == pano).all()
    assert len(np.nonzero(sector_of_canvas(pano, 90.0, 180.0)[0, :, 0] == 200)[0]) == 32


def test_the_photo_curriculum_cuts_sectors_wider_than_the_photos(fake_pairs: Path) -> None:
    frame = load_pairs(fake_pairs, track="aligned", protocol="same-area", split="train").iloc[:4]
    augment = {"photo_fov": 90, "photo_sector": 180.0, "rotation": "none", "flip": False}
    data = PairDataset(frame=frame, ground_size=(32, 128), augment=augment)

    def filled() -> int:
        return int((np.abs(data[0]["ground"].numpy()).max(axis=(0, 1)) > 0.05).sum())

    assert filled() == 64  # half the canvas: panorama columns as they are
    augment["photo_sector"] = 90.0  # at the photos' own field of view: the pinhole cut
    assert 28 <= filled() <= 36


def test_dataset_filters_track_protocol_split(fake_pairs: Path) -> None:
    same = load_pairs(fake_pairs, track="aligned", protocol="same-area", split="train")
    cross = load_pairs(fake_pairs, track="aligned", protocol="cross-area", split="test")
    assert len(same) == 80 and set(cross["city"]) == {"beta"}
    photo = load_pairs(fake_pairs, track="photo", protocol="same-area", split="test")
    assert (photo["fov_deg"] == 90).all()
    with pytest.raises(ValueError, match="no pairs of track"):
        load_pairs(fake_pairs, track="nope", protocol="same-area", split="train")


def test_dataset_items_and_seeded_augmentation(fake_pairs: Path) -> None:
    ds = PairDataset(
        fake_pairs,
        track="aligned",
        ground_size=(32, 128),
        aerial_size=(32, 32),
        augment={"rotation": "quarter", "flip": True},
        seed=3,
    )
    item = ds[5]
    assert item["ground"].shape == (3, 32, 128) and item["aerial"].shape == (3, 32, 32)
    assert abs(float(item["ground"].mean())) < 3
    again = ds[5]
    assert (again["aerial"] == item["aerial"]).all()
    ds.set_epoch(1)
    changed = [not (ds[i]["aerial"] == PairDataset.__getitem__(ds, i)["aerial"]).all() for i in range(3)]
    assert not any(changed)  # same epoch, same result
    plain = PairDataset(fake_pairs, track="aligned", ground_size=(32, 128), aerial_size=(32, 32))
    ds.set_epoch(0)
    differs = sum(not (ds[i]["aerial"] == plain[i]["aerial"]).all() for i in range(12))
    assert differs >= 6  # 7 of 8 augmentations change the tile


def _check_batches(batches: list[list[int]], keys: list[frozenset[str]], n: int, bs: int) -> None:
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    assert len(seen) >= n - bs and all(len(b) == bs for b in batches)
    for b in batches:
        tiles = [t for i in b for t in keys[i]]
        assert len(tiles) == len(set(tiles))


def test_geo_sampler_groups_neighbours_without_shared_tiles() -> None:
    rng = np.random.default_rng(0)
    n, bs = 400, 32
    lat, lon = 40 + rng.uniform(0, 0.05, n), -75 + rng.uniform(0, 0.05, n)
    city = np.where(np.arange(n) < 200, "a", "b")
    keys = [frozenset([f"t{i // 2}"]) for i in range(n)]  # pairs of samples share a tile (offset-like)

    def spread(hard: float) -> float:
        s = GeoBatchSampler(lat, lon, city, keys, batch_size=bs, hard_fraction=hard, group_size=8, seed=1)
        batches = list(s)
        _check_batches(batches, keys, n, bs)
        d = []
        for b in batches:
            xy = np.c_[lat[b], lon[b]]
            d.append(np.mean([np.sort(np.hypot(*(xy - p).T))[1] for p in xy]))
        return float(np.mean(d))

    assert spread(1.0) < 0.6 * spread(0.0)
    s = GeoBatchSampler(lat, lon, city, keys, batch_size=bs, seed=1)
    first = list(s)
    assert first == list(s)
    s.set_epoch(1)
    assert first != list(s)


def test_mined_sampler_batches_anchor_with_its_neighbours() -> None:
    n, bs = 64, 16
    neighbours = np.array([[(i + 1) % n, (i + 2) % n, (i + 3) % n] for i in range(n)])
    keys = [frozenset([f"t{i}"]) for i in range(n)]
    s = MinedBatchSampler(neighbours, keys, batch_size=bs, per_anchor=3, seed=0)
    batches = list(s)
    _check_batches(batches, keys, n, bs)
    together = sum(len({i, (i + 1) % n} & set(b)) == 2 for b in batches for i in b)
    assert together >= n // 2
    with pytest.raises(ValueError, match="neighbour table"):
        MinedBatchSampler(neighbours[:3], keys, batch_size=bs)


def test_in_memory_images_are_prepared_once() -> None:
    """Rendered images are prepared like files; already prepared ones are kept as they are."""
    frame = pd.DataFrame(
        {
            "capture_id": ["a"],
            "tile_id": ["t"],
            "semi_positive_tile_ids": [[]],
            "city": ["c"],
            "lat": [0.0],
            "lon": [0.0],
            "heading_deg": [90.0],
            "fov_deg": [90.0],
        }
    )
    photo = np.full((32, 32, 3), 200, dtype=np.uint8)
    tile = np.full((40, 40, 3), 50, dtype=np.uint8)
    raw = PairDataset(frame=frame, images=[(photo, tile)], ground_size=(16, 64), aerial_size=(16, 16))
    canvas, small = raw.raw(0)
    assert canvas.shape == (16, 64, 3) and small.shape == (16, 16, 3)
    assert set(np.where(canvas[0, :, 0] == 200)[0]) == set(range(8, 24))  # a quarter of the canvas, at 90 deg
    kept = PairDataset(
        frame=frame, images=[(canvas, small)], prepared=True, ground_size=(16, 64), aerial_size=(16, 16)
    )
    assert np.array_equal(kept.raw(0)[0], canvas)  # not squeezed into a quarter again
