"""A tile manifest: reading it (local or s3://, through pyarrow), its URIs, and its content digest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from wherecnn import storage
from wherecnn.config import Settings

REQUIRED = ("tile_id", "city", "lat", "lon", "uri")
BOUNDS = ("min_lat", "min_lon", "max_lat", "max_lon")


# --------------------------------------------------------------------------------------------- manifest


def manifest_uri(tiles: str) -> str:
    """A tiles manifest (.parquet) as given, or ``tiles.parquet`` inside a folder/prefix."""
    return tiles if tiles.endswith(".parquet") else storage.join(tiles, "tiles.parquet")


def _base(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def resolve_uri(uri: Any, base: str) -> Any:
    """Relative tile URIs are relative to the manifest's folder (local or S3)."""
    if not isinstance(uri, str) or not uri or "://" in uri or uri.startswith("/"):
        return uri
    if base.startswith("s3://"):
        return storage.join(base, uri)
    return str((Path(base) / uri).absolute())


def read_tile_manifest(tiles: str, settings: Settings | None = None) -> pd.DataFrame:
    """The tile table (local or s3://), URIs made absolute, required columns checked with a clear error."""
    import pyarrow.parquet as pq

    uri = manifest_uri(tiles)
    fs, path = storage.arrow_fs(uri, settings)
    try:
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"tile manifest {uri} not found (expected a tiles .parquet or a folder with one)"
        ) from exc
    frame = table.to_pandas()
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"tile manifest {uri}: missing column(s) {missing}; expected at least {list(REQUIRED)}"
        )
    frame = frame.drop(columns=[c for c in ("geometry",) if c in frame.columns and _has_bounds(frame)])
    base = _base(uri)
    frame["uri"] = [resolve_uri(u, base) for u in frame["uri"]]
    if "source_uri" in frame.columns:
        frame["source_uri"] = [resolve_uri(u, base) for u in frame["source_uri"]]
    frame["tile_id"] = frame["tile_id"].astype(str)
    dupes = frame["tile_id"][frame["tile_id"].duplicated()].unique()
    if len(dupes):
        raise ValueError(
            f"tile manifest {uri}: duplicate tile_id(s) {list(dupes[:5])}; tile IDs must be unique"
        )
    return frame.reset_index(drop=True)


def _has_bounds(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in BOUNDS)


def manifest_digest(frame: pd.DataFrame) -> str:
    """Content hash of the (tile_id, uri) set: the same manifest means the same job."""
    h = hashlib.sha256()
    for tid, uri in sorted(zip(frame["tile_id"].astype(str), frame["uri"].astype(str), strict=True)):
        h.update(f"{tid}\t{uri}\n".encode())
    return h.hexdigest()
