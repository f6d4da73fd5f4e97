"""One tile, and a batch of them, from manifest row to store point: image loading and its checks (reasons a
tile is rejected), payloads, embedding. Both runners (plain and Ray) call these."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from wherecnn import storage
from wherecnn.config import Settings, get_settings
from wherecnn.index.manifest import BOUNDS
from wherecnn.index.store import TilePoint
from wherecnn.retrieval.views import TileWindow, cell_shifts, cut_views

REASONS = ("missing", "unreadable", "wrong_size", "bad_row")
SIZE_TOLERANCE_PX = 1


# --------------------------------------------------------------------------------------------- tiles


def expected_px(row: dict[str, Any], tile_size: int | None) -> int | None:
    """The tile's expected side in pixels: given, else size_m / gsd_m from the manifest, else unknown."""
    if tile_size:
        return int(tile_size)
    size_m, gsd = row.get("size_m"), row.get("gsd_m")
    try:
        if size_m and gsd and not (math.isnan(float(size_m)) or math.isnan(float(gsd))) and float(gsd) > 0:
            return round(float(size_m) / float(gsd))
    except (TypeError, ValueError):
        return None
    return None


_fs_cache: dict[tuple[str, str | None], Any] = {}


def read_uri(uri: str, settings: Settings | None = None) -> bytes:
    """Tile bytes; S3 through pyarrow's S3FileSystem (one per process and endpoint), else the local file."""
    if uri.startswith("s3://"):
        key = ("s3", storage.s3_endpoint(settings))
        if key not in _fs_cache:
            _fs_cache[key] = storage.arrow_fs(uri, settings)[0]
        with _fs_cache[key].open_input_stream(uri[len("s3://") :]) as fh:
            return bytes(fh.read())
    return storage.read_bytes(uri)


def load_tile(
    row: dict[str, Any], *, tile_size: int | None = None, settings: Settings | None = None
) -> tuple[np.ndarray | None, str | None, str]:
    """(image, None, "") for a good tile, else (None, reason, detail); never raises for a bad tile."""
    uri = row.get("uri")
    try:
        lat, lon = float(row["lat"]), float(row["lon"])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not isinstance(uri, str) or not uri:
            raise ValueError(f"lat={lat}, lon={lon}, uri={uri!r}")
    except (KeyError, TypeError, ValueError) as exc:
        return None, "bad_row", f"expected lat in [-90, 90], lon in [-180, 180] and a uri: {exc}"
    try:
        data = read_uri(uri, settings)
    except FileNotFoundError as exc:
        return None, "missing", str(exc) or f"no such file: {uri}"
    except OSError as exc:
        if "not exist" in str(exc).lower() or "nosuchkey" in str(exc).lower():
            return None, "missing", f"{uri}: {exc}"
        return None, "unreadable", f"{uri}: {exc}"
    try:
        s = settings or get_settings()
        image = storage.decode_image(data, max_pixels=s.max_image_pixels, name=uri)
    except Exception as exc:  # decode errors of any kind are a property of the file, not of the job
        return None, "unreadable", str(exc)
    want = expected_px(row, tile_size)
    h, w = image.shape[:2]
    if want is not None and (abs(h - want) > SIZE_TOLERANCE_PX or abs(w - want) > SIZE_TOLERANCE_PX):
        return None, "wrong_size", f"{uri}: {w}x{h} px, expected {want}x{want} (+-{SIZE_TOLERANCE_PX})"
    return image, None, ""


def tile_payload(row: dict[str, Any], model_id: str) -> dict[str, Any]:
    """The payload contract: location, city, tile_id, uri, gsd_m, bounds, model (+ kind/split if present)."""
    payload: dict[str, Any] = {
        "location": {"lat": float(row["lat"]), "lon": float(row["lon"])},
        "city": str(row["city"]),
        "tile_id": str(row["tile_id"]),
        "uri": str(row["uri"]),
        "model": model_id,
    }
    if row.get("gsd_m") is not None and not _isnan(row["gsd_m"]):
        payload["gsd_m"] = float(row["gsd_m"])
    if all(row.get(c) is not None and not _isnan(row[c]) for c in BOUNDS):
        payload["bounds"] = {c: float(row[c]) for c in BOUNDS}
    for extra in ("kind", "split"):
        if isinstance(row.get(extra), str):
            payload[extra] = row[extra]
    window = TileWindow.from_row(row)
    if window is not None:
        payload["window"] = window.as_payload()
    return payload


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- embedder


def load_embedder(checkpoint: str, device: str = "auto") -> Any:
    """``untrained:NAME`` (tests, benchmarks) or a checkpoint dir / s3:// prefix."""
    from wherecnn.models.embedder import Embedder

    if checkpoint.startswith("untrained:"):
        name = checkpoint.split(":", 1)[1] or "dual-cpu"
        return Embedder.untrained(name, device="cpu" if device == "auto" else device)
    return Embedder.from_checkpoint(checkpoint, device=device)


# --------------------------------------------------------------------------------------------- batches


def chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def load_batch(
    frame: pd.DataFrame,
    *,
    tile_size: int | None,
    settings: Settings | None,
    pool: ThreadPoolExecutor | None = None,
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[dict[str, Any]]]:
    """(good rows, their images, rejects) for one batch of manifest rows."""
    rows = frame.to_dict("records")
    mapper = pool.map if pool is not None else map
    loaded = list(mapper(lambda r: load_tile(r, tile_size=tile_size, settings=settings), rows))
    good, images, rejects = [], [], []
    for row, (image, reason, detail) in zip(rows, loaded, strict=True):
        if image is None:
            rejects.append(
                {
                    "tile_id": str(row["tile_id"]),
                    "uri": str(row.get("uri")),
                    "reason": reason,
                    "detail": detail,
                }
            )
        else:
            good.append(row)
            images.append(image)
    return good, images, rejects


def embed_tiles(
    embedder: Any, rows: Sequence[dict[str, Any]], images: Sequence[np.ndarray], index_views: int = 1
) -> np.ndarray:
    """The one batch function of both runners: each good tile's stored vectors.

    ``index_views`` 1: [N, d], the tile as cut. K > 1: [N, K*K, d], the tile's cell seen from K x K
    centres (cut from its source raster, `retrieval.views`), stored as one multivector point that scores its
    best view; a tile without a raster window repeats its own vector."""
    if index_views <= 1 or not rows:
        return np.asarray(embedder.aerial(list(images)), dtype=np.float32)
    views = index_views * index_views
    windows = [TileWindow.from_row(dict(r)) for r in rows]
    out = np.zeros((len(rows), views, int(embedder.embed_dim)), dtype=np.float32)
    plain = [i for i, w in enumerate(windows) if w is None]
    if plain:
        out[plain] = np.asarray(embedder.aerial([images[i] for i in plain]), dtype=np.float32)[:, None, :]
    cut = [(i, w) for i, w in enumerate(windows) if w is not None]
    if cut:
        ims = cut_views([w for _, w in cut], [cell_shifts(w.cell_px, index_views) for _, w in cut])
        emb = np.asarray(embedder.aerial([im for v in ims for im in v]), dtype=np.float32)
        out[[i for i, _ in cut]] = emb.reshape(len(cut), views, -1)
    return out


def points_for(rows: Sequence[dict[str, Any]], vectors: np.ndarray, model_id: str) -> list[TilePoint]:
    return [
        TilePoint(str(r["tile_id"]), v, tile_payload(r, model_id)) for r, v in zip(rows, vectors, strict=True)
    ]
