"""Ground-image geometry: panoramas and photos on the canvas, the cylinder, photos cut from canvases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from wherecnn.data.datasets import PairDataset, default_loader, load_pairs
from wherecnn.data.ground import (
    cylinder_view,
    cylinder_views,
    ground_view,
    photo_from_canvas,
    photos_from_canvases,
    resize,
    sector_of_canvas,
)
from wherecnn.data.normalise import MEAN_RGB


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


def test_a_sector_keeps_the_columns_it_faces() -> None:
    pano = np.full((4, 64, 3), 200, dtype=np.uint8)
    out = sector_of_canvas(pano, heading_deg=0.0, fov_deg=90.0)
    kept = set(np.nonzero(out[0, :, 0] == 200)[0].tolist())
    assert kept == set(range(56, 64)) | set(range(0, 8))  # 45 degrees either side of north, across the seam
    assert (out[:, 8:56] == MEAN_RGB).all() and (pano == 200).all()
    assert (sector_of_canvas(pano, 123.0, 360.0) == pano).all()
    assert len(np.nonzero(sector_of_canvas(pano, 90.0, 180.0)[0, :, 0] == 200)[0]) == 32
