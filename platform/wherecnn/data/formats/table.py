"""Bring your own data: a table of photos plus a folder (or S3 prefix) of aerial tiles -> manifests.

Photos: CSV or Parquet with ``uri`` (or ``path``/``file``/``image``), ``lat`` (``latitude``), ``lon``
(``lng``/``longitude``) and optionally ``heading_deg`` (``heading``), ``fov_deg``, ``city``, ``capture_id``
(``id``), ``split``, ``kind``. Relative photo URIs resolve against ``base`` (default: the table's folder).

Tiles: every image under the folder/prefix. Coordinates (the tile centre) come from a sidecar table
(``file``/``uri``/``name`` + ``lat``, ``lon``, optional ``gsd_m``, ``size_m``, ``width``, ``city``,
``tile_id``),
matched by full URI or file name, or from ``_<lat>_<lon>`` at the end of the file name
(``tile_47.6062_-122.3321.png``). The scale comes from the sidecar (``gsd_m`` or ``size_m``) or from one of
``gsd_m=``, ``zoom=`` (Web Mercator) or ``tile_size_m=``; the pixel width is read from the first tile's header
unless the sidecar has ``width``. Tiles are assumed north-up.

Pairs: each located photo is paired with the nearest tile whose footprint contains it; the other containing
tiles are semi-positives. Track ``offset`` for panoramas (fov 360), ``photo`` otherwise. Without a ``split``
column photos get a deterministic spatial-block split (``test_fraction``); tiles are the ``gallery``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn import storage
from wherecnn.data.formats.common import (
    IngestResult,
    absolute,
    lat_lon_from_name,
    make_captures,
    make_pairs,
    make_tiles,
    match_by_location,
    web_mercator_gsd,
)
from wherecnn.data.formats.splits import block_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
_ALIASES = {
    "uri": ("uri", "path", "file", "filename", "image", "url"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
    "heading_deg": ("heading_deg", "heading", "yaw", "compass"),
    "fov_deg": ("fov_deg", "fov"),
    "capture_id": ("capture_id", "id", "photo_id"),
    "tile_id": ("tile_id", "id"),
    "city": ("city",),
    "split": ("split",),
    "kind": ("kind",),
    "gsd_m": ("gsd_m", "gsd"),
    "size_m": ("size_m",),
    "width": ("width", "width_px"),
}
DEFAULT_CITY = "default"


def read_table(uri: str | os.PathLike[str]) -> pd.DataFrame:
    """CSV or Parquet from a path or s3:// URI (by extension; ``.csv``/``.tsv`` else Parquet)."""
    name = os.fspath(uri)
    data = storage.read_bytes(name)
    lower = name.lower()
    try:
        if lower.endswith((".csv", ".csv.gz", ".txt")):
            return pd.read_csv(io.BytesIO(data), compression="gzip" if lower.endswith(".gz") else None)
        if lower.endswith(".tsv"):
            return pd.read_csv(io.BytesIO(data), sep="\t")
        try:  # GeoParquet keeps its geometry (e.g. the tiler's exact footprints)
            import geopandas as gpd

            return gpd.read_parquet(io.BytesIO(data))
        except ValueError:
            return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise ValueError(f"cannot read table {name}: {exc}") from exc


def _canonical(frame: pd.DataFrame, wanted: tuple[str, ...], source: str) -> pd.DataFrame:
    """Rename alias columns (case-insensitive) to our names."""
    lower = {c.lower(): c for c in frame.columns}
    renames: dict[str, str] = {}
    for name in wanted:
        if name in frame.columns:
            continue
        for alias in _ALIASES[name]:
            if alias in lower and lower[alias] not in renames:
                renames[lower[alias]] = name
                break
    return frame.rename(columns=renames)


def _resolve(uri: str, base: str) -> str:
    if "://" in uri or uri.startswith("/"):
        return uri
    if storage.is_s3(base):
        return storage.join(base, uri)
    return absolute(Path(base) / uri)


def _probe_width(uri: str) -> int:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
            return int(img.size[0])
    except Exception as exc:
        raise ValueError(f"cannot read the size of tile {uri}: {exc}") from exc


def load(
    photos: str | os.PathLike[str],
    tiles: str | os.PathLike[str],
    *,
    base: str | None = None,
    tile_table: str | os.PathLike[str] | None = None,
    gsd_m: float | None = None,
    zoom: int | None = None,
    tile_size_m: float | None = None,
    city: str | None = None,
    fov_deg: float = 90.0,
    test_fraction: float = 0.2,
) -> IngestResult:
    notes: list[str] = []
    photos_uri = os.fspath(photos)
    tiles_uri = os.fspath(tiles)
    if storage.is_s3(tiles_uri) and not tiles_uri.endswith("/"):
        tiles_uri += "/"  # a folder: never match sibling prefixes (tiles/ vs tiles2/)
    if sum(v is not None for v in (gsd_m, zoom, tile_size_m)) > 1:
        raise ValueError("give at most one of gsd_m, zoom, tile_size_m")

    # ---- photos
    frame = _canonical(
        read_table(photos_uri), tuple(k for k in _ALIASES if k not in ("tile_id",)), photos_uri
    )
    missing = [c for c in ("uri", "lat", "lon") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{photos_uri}: missing column(s) {missing}; expected uri (or path/file), lat, lon "
            f"[, heading_deg, fov_deg, city, capture_id, split]; found {list(frame.columns)}"
        )
    if base is None:
        base = photos_uri.rsplit("/", 1)[0] if storage.is_s3(photos_uri) else str(Path(photos_uri).parent)
    caps = pd.DataFrame({"uri": [_resolve(str(u), base) for u in frame["uri"]]})
    for col in ("lat", "lon"):
        caps[col] = pd.to_numeric(frame[col], errors="coerce")
        bad = frame[col].notna() & caps[col].isna()
        if bad.any():
            raise ValueError(
                f"{photos_uri}: column {col!r} row {int(np.flatnonzero(bad)[0])} is not a number"
            )
    caps["heading_deg"] = (
        pd.to_numeric(frame["heading_deg"], errors="coerce") if "heading_deg" in frame else np.nan
    )
    caps["fov_deg"] = (
        pd.to_numeric(frame["fov_deg"], errors="coerce").fillna(fov_deg) if "fov_deg" in frame else fov_deg
    )
    # a photo's city: its `city` column > --city > the nearest tile's city (filled in once tiles are read)
    caps["city"] = frame["city"].astype(object) if "city" in frame else None
    if city is not None:
        caps["city"] = caps["city"].where(caps["city"].notna(), city)
    if "capture_id" in frame:
        caps["capture_id"] = frame["capture_id"].astype(str)
    else:
        caps["capture_id"] = [
            str(u)[len(base) :].lstrip("/") if str(u).startswith(base) else str(u) for u in caps["uri"]
        ]
    if caps["capture_id"].duplicated().any():
        dup = caps["capture_id"][caps["capture_id"].duplicated()].iloc[0]
        raise ValueError(f"{photos_uri}: duplicate photo id {dup!r} (give unique capture_id or uri values)")
    caps["kind"] = frame["kind"] if "kind" in frame else np.where(caps["fov_deg"] >= 360, "panorama", "photo")
    for col in frame.columns:  # keep the user's extra columns
        if col not in caps.columns and col not in ("geometry",):
            caps[col] = frame[col].to_numpy()

    # ---- tiles
    uris = list(storage.list_uris(tiles_uri, suffixes=IMAGE_SUFFIXES))
    if not uris:
        raise FileNotFoundError(f"no tile images ({', '.join(IMAGE_SUFFIXES)}) under {tiles_uri}")
    side = None
    if tile_table is None and storage.exists(storage.join(tiles_uri, "tiles.parquet")):
        tile_table = storage.join(tiles_uri, "tiles.parquet")  # what `wherecnn tile` writes next to its tiles
        notes.append(f"tile coordinates from {tile_table}")
    if tile_table is not None:
        side = _canonical(
            read_table(tile_table),
            ("uri", "lat", "lon", "gsd_m", "size_m", "width", "city", "tile_id"),
            os.fspath(tile_table),
        )
        if not {"uri", "lat", "lon"} <= set(side.columns):
            raise ValueError(
                f"{tile_table}: the tile table needs file (or uri), lat, lon; found {list(side.columns)}"
            )
    tile_frame = _tiles_frame(uris, tiles_uri, side, notes)
    if tile_frame.empty:
        raise ValueError(
            f"no tile under {tiles_uri} has coordinates (sidecar table or '_<lat>_<lon>' in the name)"
        )
    _scale(tile_frame, gsd_m=gsd_m, zoom=zoom, tile_size_m=tile_size_m)
    _photo_cities(caps, tile_frame)
    _tile_cities(tile_frame, caps, city)
    tile_frame["split"] = tile_frame["split"].fillna("gallery") if "split" in tile_frame else "gallery"
    if "split" in frame:
        caps["split"] = frame["split"].astype(str).to_numpy()
    else:
        caps["split"] = block_split(caps, test_fraction=test_fraction).to_numpy()
        notes.append(f"no split column: spatial-block split with test fraction {test_fraction}")

    # ---- pairs
    located = caps[np.isfinite(caps["lat"]) & np.isfinite(caps["lon"])]
    pano = located["fov_deg"] >= 360
    parts, unmatched = [], []
    for track, sel in (("offset", located[pano]), ("photo", located[~pano])):
        if len(sel):
            pairs, miss = match_by_location(sel, tile_frame, track=track)
            parts.append(pairs)
            unmatched += miss
    if unmatched:
        notes.append(
            f"{len(unmatched)} photos lie in no tile footprint and have no pair (e.g. {unmatched[0]})"
        )
    if len(located) < len(caps):
        notes.append(f"{len(caps) - len(located)} photos have no location")
    pairs = pd.concat(parts, ignore_index=True) if parts else make_pairs([])
    return IngestResult(
        captures=make_captures(caps),
        tiles=_with_footprints(tile_frame),
        pairs=make_pairs(pairs),
        source=f"table:{photos_uri} + {tiles_uri}",
        notes=notes,
    )


def _tiles_frame(uris: list[str], prefix: str, side: pd.DataFrame | None, notes: list[str]) -> pd.DataFrame:
    root = prefix.rstrip("/") + "/"
    by_uri: dict[str, dict[str, Any]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    if side is not None:
        for rec in side.to_dict("records"):
            key = str(rec["uri"])
            by_uri[_resolve(key, prefix)] = rec
            by_name.setdefault(Path(key).name, rec)
    rows, skipped = [], []
    for uri in uris:
        rel = uri[len(root) :] if uri.startswith(root) else Path(uri).name
        uri = uri if storage.is_s3(uri) else absolute(uri)
        rec = by_uri.get(uri) or by_name.get(Path(uri).name)
        row: dict[str, Any] = {"uri": uri}
        if rec is not None:  # every sidecar column travels along; its footprint replaces ours below
            row.update({k: v for k, v in rec.items() if k not in ("uri", "geometry") and not _missing(v)})
            if rec.get("geometry") is not None:
                row["_footprint"] = rec["geometry"]
        else:
            found = lat_lon_from_name(uri)
            if found is None:
                skipped.append(uri)
                continue
            row["lat"], row["lon"] = found
        row.setdefault("tile_id", str(Path(rel).with_suffix("")))
        rows.append(row)
    if skipped:
        notes.append(f"{len(skipped)} tiles have no coordinates and were skipped (e.g. {skipped[0]})")
    frame = pd.DataFrame(rows)
    if not frame.empty and frame["tile_id"].duplicated().any():
        raise ValueError(
            f"duplicate tile ids under {prefix}: {frame['tile_id'][frame['tile_id'].duplicated()].iloc[0]}"
        )
    return frame


def _with_footprints(frame: pd.DataFrame) -> Any:
    """Tiles GeoDataFrame: north-up squares from size_m, replaced by the sidecar's footprints where given."""
    if "_footprint" not in frame.columns:
        return make_tiles(frame)
    given = frame["_footprint"].to_numpy(dtype=object)
    tiles = make_tiles(frame.drop(columns="_footprint"))
    has = np.array([g is not None and not getattr(g, "is_empty", True) for g in given])
    if has.any():
        geoms = np.asarray(tiles.geometry.array, dtype=object)
        geoms[has] = given[has]
        tiles = tiles.set_geometry(list(geoms), crs=tiles.crs)
        bounds = np.array([g.bounds for g in given[has]])
        tiles.loc[has, ["min_lon", "min_lat", "max_lon", "max_lat"]] = bounds
    return tiles


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _scale(frame: pd.DataFrame, *, gsd_m: float | None, zoom: int | None, tile_size_m: float | None) -> None:
    """Fill gsd_m and size_m for every tile, or raise naming what is missing."""
    for col in ("gsd_m", "size_m", "width"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce") if col in frame else np.nan
    width = frame["width"]
    if width.isna().any():
        probe = _probe_width(frame.loc[width.isna().idxmax(), "uri"])
        frame["width"] = width.fillna(float(probe))
    if gsd_m is not None:
        frame["gsd_m"] = frame["gsd_m"].fillna(gsd_m)
    elif zoom is not None:
        frame["gsd_m"] = frame["gsd_m"].fillna(
            pd.Series(web_mercator_gsd(lat=frame["lat"].to_numpy(), zoom=zoom))
        )
    elif tile_size_m is not None:
        frame["size_m"] = frame["size_m"].fillna(tile_size_m)
    frame["gsd_m"] = frame["gsd_m"].fillna(frame["size_m"] / frame["width"])
    frame["size_m"] = frame["size_m"].fillna(frame["gsd_m"] * frame["width"])
    if frame["size_m"].isna().any():
        first = frame.loc[frame["size_m"].isna().idxmax(), "uri"]
        raise ValueError(
            f"tile scale unknown (e.g. {first}): give gsd_m or size_m columns in the tile table, "
            "or --gsd-m, --zoom or --tile-size-m"
        )


def _photo_cities(caps: pd.DataFrame, tiles: pd.DataFrame) -> None:
    """Photos without a city take the city of the nearest tile that has one, else 'default'."""
    missing = caps["city"].isna().to_numpy()
    if not missing.any():
        return
    named = tiles[tiles["city"].notna()] if "city" in tiles else tiles.iloc[0:0]
    located = missing & np.isfinite(caps["lat"].to_numpy()) & np.isfinite(caps["lon"].to_numpy())
    if len(named) and located.any():
        from scipy.spatial import cKDTree

        scale = np.cos(np.radians(float(named["lat"].mean())))
        tree = cKDTree(np.column_stack([named["lat"], named["lon"] * scale]))
        _, idx = tree.query(np.column_stack([caps.loc[located, "lat"], caps.loc[located, "lon"] * scale]))
        caps.loc[located, "city"] = named["city"].to_numpy()[idx]
    caps["city"] = caps["city"].fillna(DEFAULT_CITY).astype(str)


def _tile_cities(frame: pd.DataFrame, caps: pd.DataFrame, city: str | None) -> None:
    """Sidecar city > --city > the city of the nearest photo > 'default'."""
    current = frame["city"] if "city" in frame else pd.Series([None] * len(frame))
    if city is not None:
        frame["city"] = current.fillna(city).to_numpy()
        return
    located = caps[np.isfinite(caps["lat"]) & np.isfinite(caps["lon"])]
    cities = located["city"].unique()
    if len(cities) <= 1:
        frame["city"] = current.fillna(cities[0] if len(cities) else DEFAULT_CITY).to_numpy()
        return
    from scipy.spatial import cKDTree

    scale = np.cos(np.radians(located["lat"].mean()))
    tree = cKDTree(np.column_stack([located["lat"], located["lon"] * scale]))
    _, idx = tree.query(np.column_stack([frame["lat"], frame["lon"] * scale]))
    nearest = located["city"].to_numpy()[idx]
    frame["city"] = [c if isinstance(c, str) else n for c, n in zip(current, nearest, strict=True)]
