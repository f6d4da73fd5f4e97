"""Ground views and aerial shading on hand-made worlds where the right answer is known."""

from __future__ import annotations

import numpy as np
from wherecnn.data.synthetic.render import GroundRenderer, Sun, cast_shadows, oblique_view, shade_aerial
from wherecnn.data.synthetic.world import BUILDING, CITIES, ROAD, World

RED = (220, 20, 20)


def tower_world(east_m: float = 0.0, north_m: float = 0.0) -> World:
    """200 m of flat road with one 60 m red tower 30 m from the centre in the given direction."""
    n = 200
    height = np.zeros((n, n), np.float32)
    cls = np.full((n, n), ROAD, np.uint8)
    albedo = np.full((n, n, 3), 80, np.uint8)
    facade = np.zeros((n, n, 3), np.uint8)
    cx, cy = 100 + east_m, 100 + north_m  # local metres; row = n - 1 - y
    r0, c0 = int(n - 1 - cy) - 5, int(cx) - 5
    height[r0 : r0 + 10, c0 : c0 + 10] = 60
    cls[r0 : r0 + 10, c0 : c0 + 10] = BUILDING
    facade[r0 : r0 + 10, c0 : c0 + 10] = RED
    albedo[r0 : r0 + 10, c0 : c0 + 10] = 150
    return World(CITIES[0], 1.0, 200.0, height, cls, albedo, facade, np.zeros((n, n), np.float32))


def redness(img: np.ndarray) -> np.ndarray:
    """Per-column fraction of clearly red pixels."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return ((r > 80) & (r > 2 * g) & (r > 2 * b)).mean(axis=0)


SUN = [Sun(180.0, 45.0)]


def test_panorama_north_is_left_edge_and_east_a_quarter() -> None:
    for (e, nn), expect in (((30, 0), 0.25), ((0, 30), 0.0), ((-30, 0), 0.75), ((0, -30), 0.5)):
        g = GroundRenderer(tower_world(e, nn))
        pano = g.panorama(np.array([100.5]), np.array([100.5]), SUN, size=(64, 256))[0]
        assert pano.shape == (64, 256, 3)
        red = redness(pano)
        assert red.max() > 0.3
        cols = np.flatnonzero(red > 0.3)
        centre = np.angle(np.exp(2j * np.pi * (cols + 0.5) / 256).mean()) / (2 * np.pi) % 1.0
        assert min(abs(centre - expect), 1 - abs(centre - expect)) < 0.03, (e, nn, centre)


def test_photo_heading_points_the_camera() -> None:
    g = GroundRenderer(tower_world(30, 0))
    x, y = np.array([100.5, 100.5]), np.array([100.5, 100.5])
    photos = g.photo(x, y, np.array([90.0, 270.0]), SUN * 2, size=64, fov_deg=90)
    assert photos.shape == (2, 64, 64, 3)
    red_east, red_west = redness(photos[0]), redness(photos[1])
    assert red_east[28:36].mean() > 0.3  # the tower is straight ahead
    assert red_west.max() == 0  # and behind the camera when looking west


def test_upper_rows_are_sky_and_lower_rows_ground() -> None:
    g = GroundRenderer(tower_world(30, 0))
    pano = g.panorama(np.array([100.5]), np.array([100.5]), SUN, size=(64, 256))[0].astype(int)
    north = pano[:, 5]  # nothing to the north: sky above, road below
    assert north[2, 2] > north[2, 0]  # blue sky
    assert abs(north[-2, 0] - north[-2, 2]) < 25  # grey road
    assert not np.array_equal(pano[:, 64], pano[:, 5])


def test_cast_shadows_fall_away_from_the_sun() -> None:
    w = tower_world(0, 0)
    shadow = cast_shadows(w.height, 1.0, Sun(180.0, 45.0))  # sun due south
    r0, c0 = 95, 95  # tower occupies rows/cols 95..104 (centre 100)
    assert shadow[r0 - 30 : r0 - 2, c0 + 2 : c0 + 8].mean() > 0.9  # north of the tower
    assert shadow[r0 + 12 : r0 + 40, c0 + 2 : c0 + 8].mean() == 0  # south of it is lit
    img = shade_aerial(w, Sun(180.0, 45.0), out_res=0.5, rng=np.random.default_rng(0))
    assert img.shape == (400, 400, 3)
    assert img[2 * (r0 - 20), 2 * (c0 + 5)].mean() < img[2 * (r0 + 30), 2 * (c0 + 5)].mean()


def test_oblique_view_shows_the_tower_facade() -> None:
    w = tower_world(0, -30)
    img = oblique_view(w, Sun(180.0, 45.0), heading_deg=0.0, out_res=1.0)
    assert img.shape[1] == 200
    assert redness(img).max() > 0.05  # the south-facing red wall is visible from the south


def test_photos_cut_from_panoramas_match_rendered_photos() -> None:
    from wherecnn.data.synthetic.generate import street_cameras
    from wherecnn.data.synthetic.render import photos_from_panoramas
    from wherecnn.data.synthetic.world import build_world

    w = build_world(CITIES[2], extent_m=300, res=1.0, seed=0)
    rng = np.random.default_rng(0)
    xy = street_cameras(w, 6, rng, margin_m=52)
    suns = [Sun(150.0, 45.0)] * 6
    heading = rng.uniform(0, 360, 6)
    g = GroundRenderer(w)
    panos = g.panorama(xy[:, 0], xy[:, 1], suns, size=(128, 512))
    cut = photos_from_panoramas(panos, heading, size=128, fov_deg=90).astype(int)
    direct = g.photo(xy[:, 0], xy[:, 1], heading, suns, size=128, fov_deg=90).astype(int)
    assert cut.shape == direct.shape == (6, 128, 128, 3)
    assert np.abs(cut - direct).mean() < 20  # same scene, resampling differences only
    shuffled = direct[[1, 2, 3, 4, 5, 0]]
    assert np.abs(cut - shuffled).mean() > np.abs(cut - direct).mean() + 5
