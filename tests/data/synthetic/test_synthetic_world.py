"""The 2.5-D city generator: deterministic, every style builds, cameras land on streets."""

from __future__ import annotations

import numpy as np
import pytest
from wherecnn.data.synthetic.generate import street_cameras
from wherecnn.data.synthetic.world import (
    BUILDING,
    CITIES,
    MARKING,
    ROAD,
    STYLES,
    TREE,
    WATER,
    City,
    build_world,
    random_style,
)


def test_nine_named_cities_with_distinct_styles() -> None:
    assert len(CITIES) == 9
    assert len({c.name for c in CITIES}) == 9
    assert {c.style for c in CITIES} == set(STYLES)
    for c in CITIES:  # real US city centres
        assert 25 < c.lat < 49 and -125 < c.lon < -66, c


def test_same_seed_same_world_and_different_seed_differs() -> None:
    a = build_world(CITIES[0], extent_m=200, res=1.0, seed=3)
    b = build_world(CITIES[0], extent_m=200, res=1.0, seed=3)
    c = build_world(CITIES[0], extent_m=200, res=1.0, seed=4)
    for name in ("height", "cls", "albedo", "facade", "angle"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.height, c.height)


@pytest.mark.parametrize("city", CITIES, ids=lambda c: c.style)
def test_every_style_has_streets_buildings_and_its_character(city) -> None:
    w = build_world(city, extent_m=400, res=1.0, seed=0)
    st = STYLES[city.style]
    frac = np.bincount(w.cls.ravel(), minlength=9) / w.cls.size
    assert frac[ROAD] + frac[MARKING] > 0.08  # a street network
    assert frac[BUILDING] > 0.03
    bh = w.height[w.cls == BUILDING]
    assert bh.min() >= st.height[0] - 0.01 or st.towers  # podiums may be lower than towers' range
    assert bh.max() <= st.height[1] + 3.01  # + pitched roof
    assert np.all(w.height[np.isin(w.cls, (ROAD, MARKING, WATER))] == 0)
    assert np.all(w.height[w.cls == TREE] > 0)
    if st.river:
        assert frac[WATER] > 0.01
    assert w.albedo.dtype == np.uint8 and w.albedo.shape == (400, 400, 3)


def test_styles_differ_in_height_and_greenery() -> None:
    worlds = {c.style: build_world(c, extent_m=400, res=1.0, seed=0) for c in CITIES}
    tall = {s: float(np.percentile(w.height[w.cls == BUILDING], 90)) for s, w in worlds.items()}
    assert tall["downtown"] > 2 * tall["suburban"]
    assert tall["downtown"] > tall["midrise"] > tall["suburban"]
    green = {s: float((w.cls == TREE).mean()) for s, w in worlds.items()}
    assert green["suburban"] > green["industrial"]


def test_cameras_are_on_road_pixels_with_clearance() -> None:
    w = build_world(CITIES[6], extent_m=300, res=1.0, seed=1)
    xy = street_cameras(w, 80, np.random.default_rng(0), margin_m=52)
    row, col = w.pixel_of(xy[:, 0], xy[:, 1])
    assert np.isin(w.cls[row, col], (ROAD, MARKING)).all()
    assert (w.height[row, col] == 0).all()
    assert (xy >= 52).all() and (xy <= 300 - 52).all()
    for r, c in zip(row, col, strict=True):  # nothing above ground within 2 px
        assert w.height[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3].max() == 0


def test_random_styles_stay_between_and_around_their_bases() -> None:
    """Domain randomisation: seeded, knobs within spread of the bases, nothing switched on the bases lack."""
    bases = [STYLES["downtown"], STYLES["suburban"]]
    styles = [random_style(np.random.default_rng(i), bases, spread=1.5) for i in range(40)]
    assert random_style(np.random.default_rng(3), bases) == styles[3]
    assert len({s.road_w for s in styles}) == 40
    road = [b.road_w for b in bases]
    for s in styles:
        assert min(road) / 1.5 - 1e-6 <= s.road_w <= max(road) * 1.5 + 1e-6
        assert s.block_u[0] <= s.block_u[1] and s.height[0] <= s.height[1]
        assert 0 <= s.build_prob <= 1 and 0 <= s.park_frac <= 1
        assert s.warp_m == 0 and not s.ponds and not s.river  # neither base has them
        assert set(s.roofs) != set(bases[0].roofs) | set(bases[1].roofs)  # colours shifted
    assert {s.pitched for s in styles} == {True, False} and {s.towers for s in styles} == {True, False}
    w = build_world(City("x", "random", 41.9, -87.6), extent_m=300, res=1.0, seed=0, style=styles[0])
    frac = np.bincount(w.cls.ravel(), minlength=9) / w.cls.size
    assert frac[ROAD] + frac[MARKING] > 0.05 and frac[BUILDING] > 0.02 and w.meta["style"] == "random"
