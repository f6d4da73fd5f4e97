"""The three manifest tables (GeoParquet, WGS84, x = lon, y = lat) and their column contracts.

Every adapter (synthetic world, VIGOR, CVUSA, a user's table) writes these; nothing downstream knows where the
data came from. Extra columns are allowed and preserved.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import pandas as pd
from shapely.geometry import Point, box

CRS = "EPSG:4326"
CAPTURES = "captures.parquet"
TILES = "tiles.parquet"
PAIRS = "pairs.parquet"

# column -> pandas dtype kind expected ("O" string/object, "f" float, "i" int, "b" bool)
CAPTURE_COLUMNS: dict[str, str] = {
    "capture_id": "O",
    "city": "O",
    "lat": "f",
    "lon": "f",
    "heading_deg": "f",  # NaN when unknown; 0 = the image centre (photo) / left edge (panorama) faces north
    "fov_deg": "f",  # 360 for a panorama
    "uri": "O",
    "split": "O",  # train | val | test under the default protocol (same-area unless ingested otherwise)
}
# Optional capture columns: split_cross_area (train | val | test), kind (panorama | photo), place_id.

TILE_COLUMNS: dict[str, str] = {
    "tile_id": "O",
    "city": "O",
    "lat": "f",  # centre
    "lon": "f",
    "gsd_m": "f",  # metres per pixel of the tile image
    "uri": "O",
    "split": "O",  # gallery | train | test ...
}
# Optional tile columns: kind (grid | centred), size_m, source_uri, col_off/row_off/width/height (window).
WINDOW_COLUMNS = ("source_uri", "col_off", "row_off", "width", "height")  # where a tile was cut from

PAIR_COLUMNS: dict[str, str] = {
    "capture_id": "O",
    "tile_id": "O",  # the positive
    "track": "O",  # aligned | offset | photo | <adapter-defined>
    "semi_positive_tile_ids": "O",  # list[str], possibly empty
}

SPLITS = ("train", "val", "test")
PROTOCOLS = ("same-area", "cross-area")
# Training-only protocol: train on places that are training places under BOTH protocols, so one model can be
# evaluated honestly on the same-area test places and on the held-out cities (what `wherecnn demo` does).
TRAIN_PROTOCOLS = (*PROTOCOLS, "both")
TRACKS = ("aligned", "offset", "photo")


def split_column(frame: pd.DataFrame, protocol: str) -> pd.Series:
    """The split of each row under a protocol: `split_cross_area` when asked for and present, else `split`.

    Under "both", a row is "train" only where it is "train" under both protocols, and "test" elsewhere.
    """
    if protocol not in TRAIN_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {TRAIN_PROTOCOLS}")
    cross = frame["split_cross_area"] if "split_cross_area" in frame.columns else frame["split"]
    if protocol == "cross-area":
        return cross
    if protocol == "both":
        both = (frame["split"] == "train") & (cross == "train")
        return both.map({True: "train", False: "test"}).rename("split")
    return frame["split"]


def captures_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """Point geometry from lat/lon (x = lon, y = lat)."""
    geometry = [Point(lon, lat) for lat, lon in zip(df["lat"], df["lon"], strict=True)]
    return gpd.GeoDataFrame(df.reset_index(drop=True), geometry=geometry, crs=CRS)


def tiles_frame(df: pd.DataFrame, footprints: Iterable | None = None) -> gpd.GeoDataFrame:
    """Footprint polygons given, or from min_lon/min_lat/max_lon/max_lat columns."""
    if footprints is None:
        footprints = [
            box(r.min_lon, r.min_lat, r.max_lon, r.max_lat)
            for r in df[["min_lon", "min_lat", "max_lon", "max_lat"]].itertuples(index=False)
        ]
    return gpd.GeoDataFrame(df.reset_index(drop=True), geometry=list(footprints), crs=CRS)


def write_manifests(
    out_dir: str | Path,
    captures: gpd.GeoDataFrame,
    tiles: gpd.GeoDataFrame,
    pairs: pd.DataFrame,
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    captures.to_parquet(out / CAPTURES, index=False)
    tiles.to_parquet(out / TILES, index=False)
    pairs = pairs.copy()
    pairs["semi_positive_tile_ids"] = [list(v) for v in pairs["semi_positive_tile_ids"]]
    pairs.to_parquet(out / PAIRS, index=False)


def read_captures(path: str | Path) -> gpd.GeoDataFrame:
    """Read captures; relative `uri`s (as the synthetic world writes them) become absolute paths."""
    file = _file(path, CAPTURES)
    return resolve_uris(gpd.read_parquet(file), file.parent)


def read_tiles(path: str | Path) -> gpd.GeoDataFrame:
    """Read tiles; relative `uri`s (and `source_uri`s, the rasters they were cut from) become absolute."""
    file = _file(path, TILES)
    return resolve_uris(resolve_uris(gpd.read_parquet(file), file.parent), file.parent, "source_uri")


def resolve_uris(frame: pd.DataFrame, base: Path, column: str = "uri") -> pd.DataFrame:
    """Make relative paths absolute against the manifest's folder; URIs with a scheme stay as they are."""
    if column in frame.columns:
        root = base.resolve()
        frame[column] = [_absolute(u, root) for u in frame[column]]
    return frame


def _absolute(uri: object, root: Path) -> object:
    if not isinstance(uri, str) or not uri or "://" in uri or uri.startswith("/"):
        return uri
    return str(root / uri)


def read_pairs(path: str | Path) -> pd.DataFrame:
    pairs = pd.read_parquet(_file(path, PAIRS))
    semis = pairs["semi_positive_tile_ids"]
    pairs["semi_positive_tile_ids"] = [list(v) if v is not None else [] for v in semis]
    return pairs


def _file(path: str | Path, name: str) -> Path:
    p = Path(path)
    return p / name if p.is_dir() else p
