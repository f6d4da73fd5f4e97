"""Shared pieces of the format adapters: footprints, file-name coordinates, geometric pair matching.

Adapters only parse their layout into plain tables (capture rows, tile rows with centre + size); everything
that turns those into valid manifests lives here so VIGOR, CVUSA and user tables behave the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry import Point, box

from wherecnn import geo
from wherecnn.data import manifest

# Web Mercator ground resolution at the equator for zoom 0 and 256-px tiles (m/px).
_WEB_MERCATOR_Z0 = 2 * np.pi * 6_378_137.0 / 256.0

_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_LAT_LON_IN_NAME = re.compile(rf"_({_NUM})_({_NUM})(?:\.[A-Za-z0-9]+)+$")


def web_mercator_gsd(*, lat: Any, zoom: int) -> Any:
    """Metres per pixel of a Web Mercator (Google/Bing) image at ``zoom``: 156543.03 * cos(lat) / 2**zoom."""
    return _WEB_MERCATOR_Z0 * np.cos(np.radians(lat)) / (2.0**zoom)


def lat_lon_from_name(name: str) -> tuple[float, float] | None:
    """(lat, lon) from a file name ending in ``_<lat>_<lon>.<ext>`` (e.g. ``satellite_40.7_-74.0.png``)."""
    m = _LAT_LON_IN_NAME.search(Path(name).name)
    if not m:
        return None
    lat, lon = float(m.group(1)), float(m.group(2))
    if abs(lat) > 90 or abs(lon) > 180:
        return None
    return lat, lon


def footprints(
    *, lat: np.ndarray, lon: np.ndarray, size_m: np.ndarray
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Square north-up footprints of ``size_m`` metres centred on (lat, lon).

    Returns (polygons, min_lat, min_lon, max_lat, max_lon); rows with an unknown centre or size get
    ``None`` geometry and NaN bounds.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    size = np.broadcast_to(np.asarray(size_m, dtype=np.float64), lat.shape)
    known = np.isfinite(lat) & np.isfinite(lon) & np.isfinite(size)
    nan = np.full(lat.shape, np.nan)
    min_lat, min_lon, max_lat, max_lon = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    if known.any():
        half = size[known] / 2.0
        n_lat, _ = geo.offset_m(lat=lat[known], lon=lon[known], east_m=0.0, north_m=half)
        s_lat, _ = geo.offset_m(lat=lat[known], lon=lon[known], east_m=0.0, north_m=-half)
        _, e_lon = geo.offset_m(lat=lat[known], lon=lon[known], east_m=half, north_m=0.0)
        _, w_lon = geo.offset_m(lat=lat[known], lon=lon[known], east_m=-half, north_m=0.0)
        min_lat[known], max_lat[known] = s_lat, n_lat
        min_lon[known], max_lon[known] = w_lon, e_lon
    polys = [
        box(min_lon[i], min_lat[i], max_lon[i], max_lat[i]) if known[i] else None for i in range(len(lat))
    ]
    return polys, min_lat, min_lon, max_lat, max_lon


def _with_columns(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """A copy of ``df`` with every manifest column (missing ones empty) and the float ones numeric."""
    df = df.reset_index(drop=True).copy()
    for col, kind in columns.items():
        if col not in df.columns:
            df[col] = np.nan if kind == "f" else None
        if kind == "f":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    return df


def make_captures(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """Capture rows -> GeoDataFrame with point geometry (None where the location is unknown)."""
    df = _with_columns(df, manifest.CAPTURE_COLUMNS)
    lat = df["lat"].to_numpy(dtype=np.float64)
    lon = df["lon"].to_numpy(dtype=np.float64)
    geoms = [
        Point(lo, la) if np.isfinite(la) and np.isfinite(lo) else None
        for la, lo in zip(lat, lon, strict=True)
    ]
    return gpd.GeoDataFrame(df, geometry=geoms, crs=manifest.CRS)


def make_tiles(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """Tile rows with ``size_m`` (or ``gsd_m`` and ``width``) -> GeoDataFrame with footprints and bounds."""
    df = _with_columns(df, manifest.TILE_COLUMNS)
    if "size_m" not in df.columns:
        if "width" not in df.columns:
            raise ValueError("tiles need size_m or width (pixels) to compute footprints")
        df["size_m"] = df["gsd_m"].to_numpy(dtype=np.float64) * df["width"].to_numpy(dtype=np.float64)
    polys, min_lat, min_lon, max_lat, max_lon = footprints(
        lat=df["lat"].to_numpy(), lon=df["lon"].to_numpy(), size_m=df["size_m"].to_numpy()
    )
    df["min_lat"], df["min_lon"], df["max_lat"], df["max_lon"] = min_lat, min_lon, max_lat, max_lon
    return gpd.GeoDataFrame(df, geometry=polys, crs=manifest.CRS)


def make_pairs(rows: Sequence[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    pairs = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    if pairs.empty:
        pairs = pd.DataFrame({c: pd.Series(dtype=object) for c in manifest.PAIR_COLUMNS})
    if "semi_positive_tile_ids" not in pairs.columns:
        pairs["semi_positive_tile_ids"] = [[] for _ in range(len(pairs))]
    pairs["semi_positive_tile_ids"] = [
        list(v) if v is not None else [] for v in pairs["semi_positive_tile_ids"]
    ]
    return pairs.reset_index(drop=True)


def match_by_location(
    captures: pd.DataFrame, tiles: pd.DataFrame, *, track: str, max_semi: int | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Pair each located capture with the nearest tile whose footprint contains it (per city).

    Semi-positives are the other tiles that contain the capture, nearest first (VIGOR-style). Captures in no
    footprint are returned by id in the second value, so the caller can report them.
    """
    from scipy.spatial import cKDTree

    rows: list[dict[str, Any]] = []
    unmatched: list[str] = []
    tiles = tiles.reset_index(drop=True)
    for city, caps in captures.groupby("city", sort=True, dropna=False):
        tsel = tiles[tiles["city"] == city] if isinstance(city, str) else tiles.iloc[0:0]
        tsel = tsel[np.isfinite(tsel["lat"]) & np.isfinite(tsel["lon"]) & np.isfinite(tsel["size_m"])]
        located = caps[np.isfinite(caps["lat"]) & np.isfinite(caps["lon"])]
        located_ids = set(located["capture_id"])
        unmatched += [c for c in caps["capture_id"] if c not in located_ids]
        if tsel.empty or located.empty:
            unmatched += list(located["capture_id"])
            continue
        grid = geo.LocalGrid.at(lat=float(tsel["lat"].mean()), lon=float(tsel["lon"].mean()))
        tx, ty = grid.to_local(lat=tsel["lat"].to_numpy(), lon=tsel["lon"].to_numpy())
        cx, cy = grid.to_local(lat=located["lat"].to_numpy(), lon=located["lon"].to_numpy())
        half = tsel["size_m"].to_numpy() / 2.0
        tree = cKDTree(np.column_stack([tx, ty]))
        radius = float(half.max()) * np.sqrt(2.0) + 1e-6
        tile_ids = tsel["tile_id"].to_numpy()
        # metric offsets of UTM vs geodesic differ by the scale factor (<0.1%): allow 1 cm slack
        for cid, x, y, candidates in zip(
            located["capture_id"],
            cx,
            cy,
            tree.query_ball_point(np.column_stack([cx, cy]), radius),
            strict=True,
        ):
            idx = np.asarray(candidates, dtype=int)
            if idx.size:
                inside = (np.abs(tx[idx] - x) <= half[idx] + 0.01) & (np.abs(ty[idx] - y) <= half[idx] + 0.01)
                idx = idx[inside]
            if idx.size == 0:
                unmatched.append(cid)
                continue
            order = idx[np.argsort(np.hypot(tx[idx] - x, ty[idx] - y), kind="stable")]
            semi = [str(t) for t in tile_ids[order[1:]]]
            if max_semi is not None:
                semi = semi[:max_semi]
            rows.append(
                {
                    "capture_id": cid,
                    "tile_id": str(tile_ids[order[0]]),
                    "track": track,
                    "semi_positive_tile_ids": semi,
                }
            )
    return make_pairs(rows), unmatched


@dataclass
class IngestResult:
    """What an adapter produced, plus notes for the summary (skipped rows and why)."""

    captures: gpd.GeoDataFrame
    tiles: gpd.GeoDataFrame
    pairs: pd.DataFrame
    source: str
    notes: list[str] = field(default_factory=list)

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        manifest.write_manifests(out, self.captures, self.tiles, self.pairs)
        return out

    def summary(self) -> dict[str, Any]:
        caps = self.captures
        return {
            "source": self.source,
            "captures": len(caps),
            "tiles": len(self.tiles),
            "pairs": len(self.pairs),
            "cities": sorted({c for c in caps["city"] if isinstance(c, str)}),
            "splits": {str(k): int(v) for k, v in caps["split"].value_counts(dropna=False).items()},
            "tracks": {str(k): int(v) for k, v in self.pairs["track"].value_counts().items()}
            if len(self.pairs)
            else {},
            "unknown_location": int((~np.isfinite(caps["lat"].to_numpy(dtype=np.float64))).sum()),
            "notes": list(self.notes),
        }


def absolute(path: str | Path) -> str:
    """Absolute local path string (images are referenced in place, so manifests must not depend on cwd)."""
    return str(Path(path).expanduser().resolve())
