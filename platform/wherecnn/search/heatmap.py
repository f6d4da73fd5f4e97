"""The city-scale heat map: a query's similarity to every tile of a city, painted on the city's tile grid.

`rasterise` puts each tile's score in the cell of the regular grid at its centre (the step inferred from the
tiles' spacing), coloured with `HEATMAP_CMAP` and transparent where the city has no tile; the `HeatMap` holds
the RGBA raster, the scores and the WGS84 bounds a map layer draws it at. The engine scores the tiles; this
module only paints them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from wherecnn.search.errors import EmptyIndexError
from wherecnn.search.geoutil import local_to_latlon, local_xy
from wherecnn.search.results import Bounds

# The heat map's matplotlib colormap (the dashboard draws its colour scale from the same name).
HEATMAP_CMAP = "inferno"


@dataclass
class HeatMap:
    """Similarity of a query to every tile of a city, rasterised on the city's tile grid.

    `image` is H×W×4 uint8 RGBA (transparent where the city has no tile), `scores` the same grid as floats
    (NaN where empty), `bounds` the WGS84 extent of the raster's outer pixel edges.
    """

    city: str
    image: np.ndarray
    scores: np.ndarray
    bounds: Bounds
    step_m: float

    def to_png(self) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.image, mode="RGBA").save(buf, format="PNG")
        return buf.getvalue()

    def to_data_url(self) -> str:
        import base64

        return "data:image/png;base64," + base64.b64encode(self.to_png()).decode("ascii")


def rasterise(
    city: str,
    lats: np.ndarray,
    lons: np.ndarray,
    scores: np.ndarray,
    *,
    cmap: str = HEATMAP_CMAP,
    max_side: int = 1024,
) -> HeatMap:
    """Paint each tile's score into the cell of the city's tile grid at its centre (max where cells collide).

    The grid step is the median nearest-neighbour spacing of tile centres, which is the regular grid's step
    even when off-grid (place-centred) tiles are mixed in.
    """
    from matplotlib import colormaps

    if len(scores) == 0:
        raise EmptyIndexError("city", f"city {city!r} has no tiles in the index")
    lat0, lon0 = float(np.mean(lats)), float(np.mean(lons))
    x, y = local_xy(lats, lons, lat0=lat0, lon0=lon0)
    step = _grid_step(x, y)
    span = max(float(x.max() - x.min()), float(y.max() - y.min()))
    step = max(step, span / (max_side - 1)) if span > 0 else step
    cols = np.rint((x - x.min()) / step).astype(int)
    rows = np.rint((y.max() - y) / step).astype(int)
    grid = np.full((rows.max() + 1, cols.max() + 1), -np.inf, dtype=np.float64)
    np.maximum.at(grid, (rows, cols), scores.astype(np.float64))
    filled = np.isfinite(grid)
    values = np.where(filled, grid, np.nan)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    norm = np.where(filled, (np.nan_to_num(values, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0)
    rgba = (colormaps[cmap](norm) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(filled, (70 + 170 * norm).astype(np.uint8), 0)
    half = step / 2
    min_lat, min_lon = local_to_latlon(
        np.array(x.min() - half), np.array(y.min() - half), lat0=lat0, lon0=lon0
    )
    max_lat, max_lon = local_to_latlon(
        np.array(x.min() + step * grid.shape[1] - half), np.array(y.max() + half), lat0=lat0, lon0=lon0
    )
    bounds = Bounds(float(min_lat), float(min_lon), float(max_lat), float(max_lon))
    return HeatMap(city=city, image=rgba, scores=values.astype(np.float32), bounds=bounds, step_m=float(step))


def _grid_step(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return 100.0
    from sklearn.neighbors import NearestNeighbors

    pts = np.column_stack([x, y])
    dist, _ = NearestNeighbors(n_neighbors=2).fit(pts).kneighbors(pts)
    nn = dist[:, 1]
    nn = nn[nn > 1e-6]
    return float(np.median(nn)) if len(nn) else 100.0
