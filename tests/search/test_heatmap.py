"""The heat map of a query over a city: its raster on the city's tile grid, its bounds, its PNG."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from wherecnn.search import SearchEngine, UnknownCityError

if TYPE_CHECKING:
    from .conftest import TinyIndex


def test_heatmap_on_the_city_grid(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    t = tiny_index.tile("alpha-g0104")
    hm = engine.heatmap(t["image"], "alpha")
    assert hm.image.shape == (tiny_index.grid, tiny_index.grid, 4) and hm.image.dtype == np.uint8
    assert hm.step_m == pytest.approx(50.0, rel=0.02)
    # row 0 is the north edge: grid row r=1 (second from the south) is raster row grid-2; column c=4.
    assert np.unravel_index(np.nanargmax(hm.scores), hm.scores.shape) == (tiny_index.grid - 2, 4)
    assert hm.image[tiny_index.grid - 2, 4, 3] == hm.image[..., 3].max()
    lats = [x["lat"] for x in tiny_index.tiles if x["city"] == "alpha"]
    lons = [x["lon"] for x in tiny_index.tiles if x["city"] == "alpha"]
    assert hm.bounds.min_lat < min(lats) < max(lats) < hm.bounds.max_lat
    assert hm.bounds.min_lon < min(lons) < max(lons) < hm.bounds.max_lon
    assert hm.to_png().startswith(b"\x89PNG")
    with pytest.raises(UnknownCityError):
        engine.heatmap(t["image"], "nowhere")
