"""A tile's ground cell seen from several centres, cut from its source raster, and where those centres are.

The index stores, per tile, the pixel window it was cut from (`TileWindow`, payload key ``window``) and the
grid's step in raster pixels (its *cell*: the ground for which it is the nearest grid tile). Views of that
cell are the tile's window moved by pixel shifts (`wherecnn.data.formats.geotiff.shifted_views`, cut like a
tile file); a view's centre maps through the raster's georeference to a WGS84 point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.data.manifest import WINDOW_COLUMNS

Shift = tuple[int, int]  # (column, row) pixels


@dataclass(frozen=True)
class TileWindow:
    """Where a tile was cut: its source raster, pixel window, grid cell (pixels) and file size (pixels)."""

    source_uri: str
    col_off: int
    row_off: int
    width: int
    height: int
    cell_px: int
    tile_px: int

    def as_payload(self) -> dict[str, Any]:
        return {
            "source_uri": self.source_uri,
            "col_off": self.col_off,
            "row_off": self.row_off,
            "width": self.width,
            "height": self.height,
            "cell_px": self.cell_px,
            "tile_px": self.tile_px,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TileWindow | None:
        """A manifest row's window (`with_windows` added its cell and file size), None without one."""
        try:
            cell, px = int(row.get("cell_px", -1)), int(row.get("tile_px", -1))
            if cell <= 0 or px <= 0 or not isinstance(row.get("source_uri"), str):
                return None
            return cls(
                str(row["source_uri"]), int(row["col_off"]), int(row["row_off"]), int(row["width"]),
                int(row["height"]), cell, px,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TileWindow | None:
        w = payload.get("window")
        if not isinstance(w, dict):
            return None
        try:
            return cls(
                str(w["source_uri"]),
                int(w["col_off"]),
                int(w["row_off"]),
                int(w["width"]),
                int(w["height"]),
                int(w["cell_px"]),
                int(w["tile_px"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def centre(self, shift: Shift = (0, 0)) -> tuple[float, float]:
        """(column, row) in raster pixels of the window's centre moved by ``shift``."""
        return self.col_off + shift[0] + self.width / 2.0, self.row_off + shift[1] + self.height / 2.0


def with_windows(frame: pd.DataFrame) -> pd.DataFrame:
    """The manifest with the fine stage's ``cell_px`` and ``tile_px`` columns (-1 where a row has no raster
    window): flat columns, so they travel through Ray Data to the payload (`TileWindow.from_row`).

    The cell is the grid's step in pixels, per source raster: the smallest positive step between the grid
    tiles' column offsets (rows of ``kind`` "grid" where the manifest says; a raster with one tile column:
    the tile's own width). The tile's file size follows from ``size_m / gsd_m`` (else the window's width).
    """
    out = frame.copy()
    if not set(WINDOW_COLUMNS) <= set(frame.columns):
        out["cell_px"], out["tile_px"] = -1, -1
        return out
    grid = frame
    if "kind" in frame.columns and (frame["kind"].astype(str) == "grid").any():
        grid = frame[frame["kind"].astype(str) == "grid"]
    cells: dict[str, int] = {}
    for source, rows in grid.groupby("source_uri", sort=False):
        cols = np.unique(pd.to_numeric(rows["col_off"], errors="coerce").dropna().to_numpy())
        steps = np.diff(cols)
        steps = steps[steps > 0]
        if steps.size:
            cells[str(source)] = int(steps.min())
    width = pd.to_numeric(frame["width"], errors="coerce")
    out["cell_px"] = [
        cells.get(str(src), int(w)) if np.isfinite(w) else -1
        for src, w in zip(frame["source_uri"], width, strict=True)
    ]
    px = np.full(len(frame), np.nan)
    if {"size_m", "gsd_m"} <= set(frame.columns):
        with np.errstate(divide="ignore", invalid="ignore"):
            px = np.round(
                pd.to_numeric(frame["size_m"], errors="coerce")
                / pd.to_numeric(frame["gsd_m"], errors="coerce")
            ).to_numpy()
    px = np.where(np.isfinite(px) & (px > 0), px, width.to_numpy(dtype=float))
    out["tile_px"] = [int(v) if np.isfinite(v) and v > 0 else -1 for v in px]
    return out


def cell_shifts(cell_px: float, centres: int, *, around: Shift = (0, 0)) -> list[Shift]:
    """A centres x centres lattice of pixel shifts spanning ``cell_px`` around ``around`` (row-major): every
    point of the span is within cell_px / (2 centres) of one shift, per axis."""
    offs = [((i + 0.5) / centres - 0.5) * cell_px for i in range(centres)]
    return [(round(around[0] + dc), round(around[1] + dr)) for dr in offs for dc in offs]


def cut_views(windows: Sequence[TileWindow], shifts: Sequence[Sequence[Shift]]) -> list[np.ndarray]:
    """Each window moved by each of its own shifts, cut like its tile file: one (V_i, px, px, 3) array each.

    Windows of one raster are read together (one open per raster)."""
    from wherecnn.data.formats.geotiff import Window, shifted_views

    out: list[np.ndarray | None] = [None] * len(windows)
    by_source: dict[tuple[str, int, tuple[Shift, ...]], list[int]] = {}
    for i, (w, s) in enumerate(zip(windows, shifts, strict=True)):
        by_source.setdefault((w.source_uri, w.tile_px, tuple(s)), []).append(i)
    for (source, px, shift), idx in by_source.items():
        cuts = [Window(str(i), windows[i].col_off, windows[i].row_off, windows[i].width, windows[i].height)
                for i in idx]  # fmt: skip
        views = shifted_views(source, cuts, list(shift), px)
        for j, i in enumerate(idx):
            out[i] = views[j]
    return [v for v in out if v is not None]


@lru_cache(maxsize=256)
def _georeference(source: str) -> tuple[Any, str]:
    from wherecnn.data.formats.geotiff import _open

    with _open(source) as ds:
        return ds.transform, ds.crs.to_wkt()


def pixel_latlon(source: str, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 (lat, lon) of raster pixel coordinates (column, row; pixel edges at integers)."""
    from wherecnn.geo import from_utm

    transform, crs = _georeference(source)
    xs, ys = transform @ (np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64))
    lat, lon = from_utm(easting=np.asarray(xs), northing=np.asarray(ys), crs=crs)
    return np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
