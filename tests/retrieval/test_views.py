"""A tile's cell from other centres: the window's geometry, the cuts and where their centres are."""

from __future__ import annotations

import numpy as np
import pandas as pd
from wherecnn.geo import distance_m
from wherecnn.retrieval.views import TileWindow, cell_shifts, cut_views, pixel_latlon, with_windows
from wherecnn.storage import load_image


def test_windows_carry_the_grid_step_and_the_tile_files_size(grid: pd.DataFrame) -> None:
    cols = np.unique(grid["col_off"])
    assert (grid["cell_px"] == int(np.diff(cols).min())).all()  # the grid's step, in raster pixels
    assert (grid["tile_px"] == load_image(str(grid["uri"].iloc[0])).shape[0]).all()
    # a 100 m tile at 0.5 m a pixel on a 50 m grid: the cell is half the window
    assert (grid["cell_px"] * 2 == grid["width"]).all()


def test_rows_without_a_raster_window_have_none(grid: pd.DataFrame) -> None:
    bare = with_windows(grid.drop(columns=["source_uri"]))
    assert (bare["cell_px"] == -1).all()
    assert TileWindow.from_row(bare.iloc[0].to_dict()) is None
    assert TileWindow.from_payload({"window": {"source_uri": "x"}}) is None


def test_the_unshifted_view_is_the_tile_and_its_centre_the_tiles_location(grid: pd.DataFrame) -> None:
    row = grid.iloc[40].to_dict()  # the middle of the first city's 9 x 9 grid
    window = TileWindow.from_row(row)
    assert window is not None and TileWindow.from_payload({"window": window.as_payload()}) == window
    (views,) = cut_views([window], [[(0, 0), (window.cell_px // 2, 0)]])
    assert views.shape == (2, window.tile_px, window.tile_px, 3)
    tile = load_image(str(row["uri"])).astype(int)
    assert np.abs(views[0].astype(int) - tile).mean() < 1.0  # cut like the tile file (JPEG noise apart)
    assert not np.array_equal(views[1], views[0])
    lat, lon = pixel_latlon(window.source_uri, *(np.array([v]) for v in window.centre()))
    assert float(distance_m(lat1=lat[0], lon1=lon[0], lat2=row["lat"], lon2=row["lon"])) < 0.5
    # half a cell east is half a grid step (25 m) east of the centre
    lat2, lon2 = pixel_latlon(window.source_uri, *(np.array([v]) for v in window.centre((50, 0))))
    assert abs(float(distance_m(lat1=lat[0], lon1=lon[0], lat2=lat2[0], lon2=lon2[0])) - 25.0) < 0.5
    assert lon2[0] > lon[0]


def test_cell_shifts_cover_the_cell_evenly() -> None:
    shifts = cell_shifts(100, 5)
    assert len(shifts) == 25 and shifts[0] == (-40, -40) and shifts[12] == (0, 0)
    points = np.random.default_rng(0).uniform(-50, 50, size=(500, 2))
    nearest = np.abs(points[:, None, :] - np.array(shifts)[None]).max(axis=2).min(axis=1)
    assert nearest.max() <= 10.0 + 0.5  # within half a spacing, per axis
    assert cell_shifts(20, 3, around=(40, -20)) == [
        (33, -27), (40, -27), (47, -27), (33, -20), (40, -20), (47, -20), (33, -13), (40, -13), (47, -13)
    ]  # fmt: skip
