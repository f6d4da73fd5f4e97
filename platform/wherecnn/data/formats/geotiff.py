"""Cut square aerial tiles from any georeferenced raster (GeoTIFF in any CRS) into JPEGs + a tiles table.

Tiles are squares of ``size_m`` ground metres resampled to ``px`` pixels, either on a regular grid with a
stride (the search gallery) or centred on given lat/lon points. The raster is never loaded whole: tile
windows are grouped into row bands, each band is one windowed read, and the tiles of a band are resampled
and JPEG-encoded on a thread pool (Pillow releases the GIL while it works).

Ground metres per raster pixel are measured geodesically at the raster's centre, so the same call works for
a UTM orthomosaic, Web Mercator (EPSG:3857, where a CRS metre is not a ground metre) or plain lat/lon.
Footprints are the tile windows' corners transformed to WGS84.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TileProgress = Callable[[int], None]


@dataclass(frozen=True)
class Window:
    """A tile's pixel window in the source raster (may reach outside it; the outside reads as black)."""

    tile_id: str
    col_off: int
    row_off: int
    width: int
    height: int
    grid_row: int = -1
    grid_col: int = -1


class TilerError(ValueError):
    """Bad tiler input: names the raster and what was expected."""


def _open(raster: str | Path):
    import rasterio

    try:
        ds = rasterio.open(raster)
    except Exception as exc:  # rasterio raises several types; one clear message for all
        raise TilerError(f"{raster}: cannot open as a georeferenced raster ({exc})") from exc
    if ds.crs is None:
        ds.close()
        raise TilerError(f"{raster}: raster has no CRS; expected a georeferenced image (GeoTIFF)")
    if ds.count < 3 and ds.count != 1:
        ds.close()
        raise TilerError(f"{raster}: expected 1 (grey) or >= 3 (RGB) bands, found {ds.count}")
    return ds


def ground_pixel_size(ds) -> tuple[float, float]:
    """Ground metres per pixel (x, y) measured geodesically around the raster's centre."""
    from pyproj import Transformer

    from wherecnn.geo import distance_m

    to_ll = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    cc, cr = ds.width / 2.0, ds.height / 2.0
    d = 50.0  # pixels: long enough to be precise, short enough to be local
    pts = [(cc - d, cr), (cc + d, cr), (cc, cr - d), (cc, cr + d)]
    xs, ys = zip(*[ds.transform @ p for p in pts], strict=True)
    lon, lat = to_ll.transform(np.array(xs), np.array(ys))
    gx = float(distance_m(lat1=lat[0], lon1=lon[0], lat2=lat[1], lon2=lon[1])) / (2 * d)
    gy = float(distance_m(lat1=lat[2], lon1=lon[2], lat2=lat[3], lon2=lon[3])) / (2 * d)
    if not (gx > 0 and gy > 0 and math.isfinite(gx) and math.isfinite(gy)):
        raise TilerError(f"{ds.name}: could not measure the ground pixel size (degenerate transform?)")
    return gx, gy


def grid_windows(ds, *, size_m: float, stride_m: float, prefix: str = "") -> list[Window]:
    """A regular grid of windows from the raster's top-left corner, fully inside the raster."""
    if size_m <= 0 or stride_m <= 0:
        raise TilerError(f"size_m and stride_m must be > 0 (got {size_m}, {stride_m})")
    gx, gy = ground_pixel_size(ds)
    tw, th = max(1, round(size_m / gx)), max(1, round(size_m / gy))
    sx, sy = max(1, round(stride_m / gx)), max(1, round(stride_m / gy))
    if tw > ds.width or th > ds.height:
        raise TilerError(f"{ds.name}: a {size_m} m tile ({tw}x{th} px) is larger than the raster")
    cols = range(0, ds.width - tw + 1, sx)
    rows = range(0, ds.height - th + 1, sy)
    return [
        Window(f"{prefix}r{i:03d}c{j:03d}", c, r, tw, th, i, j)
        for i, r in enumerate(rows)
        for j, c in enumerate(cols)
    ]


def point_windows(
    ds, *, lat: Sequence[float], lon: Sequence[float], size_m: float, tile_ids: Sequence[str]
) -> list[Window]:
    """Windows centred (to the nearest pixel corner) on lat/lon points."""
    from pyproj import Transformer

    gx, gy = ground_pixel_size(ds)
    tw, th = max(1, round(size_m / gx)), max(1, round(size_m / gy))
    to_crs = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True)
    xs, ys = to_crs.transform(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    inv = ~ds.transform
    out = []
    for tid, x, y in zip(tile_ids, np.atleast_1d(xs), np.atleast_1d(ys), strict=True):
        c, r = inv @ (float(x), float(y))
        out.append(Window(tid, int(round(c - tw / 2)), int(round(r - th / 2)), tw, th))
    return out


def _bands(windows: list[Window], max_rows: int) -> Iterator[list[Window]]:
    """Group windows (sorted by row) into bands no taller than ``max_rows`` so each band is one read."""
    order = sorted(windows, key=lambda w: (w.row_off, w.col_off))
    band: list[Window] = []
    top = 0
    for w in order:
        if band and w.row_off + w.height - top > max_rows:
            yield band
            band = []
        if not band:
            top = w.row_off
        band.append(w)
    if band:
        yield band


def _read_band(ds, band: list[Window]) -> tuple[np.ndarray, int, int]:
    """Read the union of a band's windows (clipped to the raster, zero-padded outside) as H x W x 3 uint8."""
    from rasterio.windows import Window as RWindow

    c0 = min(w.col_off for w in band)
    r0 = min(w.row_off for w in band)
    c1 = max(w.col_off + w.width for w in band)
    r1 = max(w.row_off + w.height for w in band)
    out = np.zeros((r1 - r0, c1 - c0, 3), dtype=np.uint8)
    cc0, rr0 = max(c0, 0), max(r0, 0)
    cc1, rr1 = min(c1, ds.width), min(r1, ds.height)
    if cc1 > cc0 and rr1 > rr0:
        bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
        data = ds.read(bands, window=RWindow(cc0, rr0, cc1 - cc0, rr1 - rr0))
        if data.dtype != np.uint8:
            data = _to_uint8(data)
        out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = data.transpose(1, 2, 0)
    return out, r0, c0


def _to_uint8(data: np.ndarray) -> np.ndarray:
    """Stretch non-8-bit imagery (e.g. 16-bit) to 8 bits with a 2-98 percentile stretch."""
    lo, hi = np.percentile(data, [2, 98])
    scale = 255.0 / max(float(hi - lo), 1e-6)
    return np.clip((data.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)


def _resample_band(
    img: np.ndarray, band: list[Window], r0: int, c0: int, px: int
) -> tuple[np.ndarray, float] | None:
    """Resample a whole band once when every tile in it lands on whole output pixels (regular grids).

    With 50% overlap each source pixel belongs to four tiles; resampling the band instead of each tile does
    that work once. Returns None (resample per tile) when windows differ in size or fall between pixels.
    """
    from PIL import Image

    sizes = {(w.width, w.height) for w in band}
    if len(sizes) != 1 or len(band) < 4:
        return None
    ((tw, th),) = sizes
    if tw != th or tw == px:
        return None
    scale = px / tw
    offs = np.array([(w.row_off - r0, w.col_off - c0) for w in band], dtype=np.float64) * scale
    if np.abs(offs - np.round(offs)).max() > 1e-6:
        return None
    h, w = img.shape[:2]
    out_w, out_h = int(np.ceil(w * scale)), int(np.ceil(h * scale))
    box = (0.0, 0.0, out_w / scale, out_h / scale)  # exact scale, may reach past the edge by < 1 px
    scaled = Image.fromarray(img).resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    return np.asarray(scaled), scale


def tile_jpeg(img: np.ndarray, px: int, quality: int = 90) -> bytes:
    """A window's pixels as the tile file: resampled to ``px`` square (bilinear), JPEG at ``quality``."""
    from PIL import Image

    im = Image.fromarray(img)
    if im.size != (px, px):
        im = im.resize((px, px), Image.Resampling.BILINEAR, reducing_gap=None)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def shifted_views(
    raster: str | Path,
    windows: Sequence[Window],
    shifts: Sequence[tuple[int, int]],
    px: int,
    quality: int = 90,
) -> np.ndarray:
    """Each window moved by each (column, row) pixel shift, cut like `tile_raster` cuts a tile (resampled to
    ``px``, JPEG round trip, so a view looks like a tile file): (N, V, px, px, 3) uint8.

    A gallery tile seen from several centres, for queries taken anywhere inside it (see
    `wherecnn.evaluate.evaluation`). Views reaching outside the raster read black there, like edge tiles.
    """
    from PIL import Image

    out = np.zeros((len(windows), len(shifts), px, px, 3), dtype=np.uint8)
    dc0, dr0 = min(c for c, _ in shifts), min(r for _, r in shifts)
    dc1, dr1 = max(c for c, _ in shifts), max(r for _, r in shifts)
    with _open(raster) as ds:
        for i, w in enumerate(windows):
            span = Window(
                w.tile_id, w.col_off + dc0, w.row_off + dr0, w.width + dc1 - dc0, w.height + dr1 - dr0
            )
            img, r0, c0 = _read_band(ds, [span])
            for v, (dc, dr) in enumerate(shifts):
                r, c = w.row_off + dr - r0, w.col_off + dc - c0
                view = tile_jpeg(np.ascontiguousarray(img[r : r + w.height, c : c + w.width]), px, quality)
                out[i, v] = np.asarray(Image.open(io.BytesIO(view)).convert("RGB"))
    return out


def _encode(img: np.ndarray, px: int, path: Path, quality: int) -> None:
    path.write_bytes(tile_jpeg(img, px, quality))


def tile_raster(
    raster: str | Path,
    out_dir: str | Path,
    *,
    size_m: float,
    px: int,
    stride_m: float | None = None,
    points: pd.DataFrame | None = None,
    city: str | None = None,
    prefix: str = "",
    kind: str | None = None,
    split: str = "gallery",
    uri_base: str | Path | None = None,
    quality: int = 90,
    workers: int | None = None,
    band_rows: int = 1024,
    progress: TileProgress | None = None,
) -> pd.DataFrame:
    """Cut tiles from ``raster`` into ``out_dir/<tile_id>.jpg`` and return their table (WGS84 footprints).

    Give ``stride_m`` for a grid or ``points`` (columns ``lat``, ``lon``, optional ``tile_id``) for tiles
    centred on points. ``uri`` is relative to ``uri_base`` when given (manifests that travel with their
    images), else absolute. Returned columns follow ``wherecnn.data.manifest.TILE_COLUMNS`` plus ``kind``,
    ``size_m``, ``source_uri``, the pixel window, ``min/max_lon/lat`` and ``geometry`` (footprint polygon).
    """
    from pyproj import Transformer

    if (stride_m is None) == (points is None):
        raise TilerError("give exactly one of stride_m (grid) or points (centred tiles)")
    if px <= 0:
        raise TilerError(f"px must be > 0, got {px}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raster = Path(raster)
    city = city if city is not None else raster.stem
    with _open(raster) as ds:
        if stride_m is not None:
            windows = grid_windows(ds, size_m=size_m, stride_m=stride_m, prefix=prefix)
            kind = kind or "grid"
        else:
            assert points is not None
            missing = {"lat", "lon"} - set(points.columns)
            if missing:
                raise TilerError(f"points table lacks column(s) {sorted(missing)}; expected lat, lon")
            ids = (
                [str(t) for t in points["tile_id"]]
                if "tile_id" in points.columns
                else [f"{prefix}p{i:05d}" for i in range(len(points))]
            )
            windows = point_windows(
                ds, lat=points["lat"].to_numpy(), lon=points["lon"].to_numpy(), size_m=size_m, tile_ids=ids
            )
            kind = kind or "centred"
        if len({w.tile_id for w in windows}) != len(windows):
            raise TilerError(f"{raster}: duplicate tile ids")
        max_rows = max(band_rows, 2 * max((w.height for w in windows), default=1))
        n_workers = workers or min(4, (os.cpu_count() or 1) + 1)
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for band in _bands(windows, max_rows):
                img, r0, c0 = _read_band(ds, band)
                futures = []
                shared = _resample_band(img, band, r0, c0, px)
                for w in band:
                    if shared is not None:  # grid: the band was resampled once, tiles are plain crops
                        scaled, scale = shared
                        r, c = round((w.row_off - r0) * scale), round((w.col_off - c0) * scale)
                        crop = scaled[r : r + px, c : c + px]
                    else:
                        r, c = w.row_off - r0, w.col_off - c0
                        crop = img[r : r + w.height, c : c + w.width]
                    futures.append(pool.submit(_encode, crop, px, out / f"{w.tile_id}.jpg", quality))
                for f in futures:
                    f.result()
                if progress is not None:
                    progress(len(band))
        transform, crs = ds.transform, ds.crs

    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    c_off = np.array([w.col_off for w in windows], dtype=np.float64)
    r_off = np.array([w.row_off for w in windows], dtype=np.float64)
    wid = np.array([w.width for w in windows], dtype=np.float64)
    hei = np.array([w.height for w in windows], dtype=np.float64)

    def ll(cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = transform
        x = a.c + a.a * cols + a.b * rows
        y = a.f + a.d * cols + a.e * rows
        lon, lat = to_ll.transform(x, y)
        return np.asarray(lat), np.asarray(lon)

    clat, clon = ll(c_off + wid / 2, r_off + hei / 2)
    corners = [ll(c_off, r_off), ll(c_off + wid, r_off), ll(c_off + wid, r_off + hei), ll(c_off, r_off + hei)]
    lats = np.stack([c[0] for c in corners], axis=1)
    lons = np.stack([c[1] for c in corners], axis=1)
    base = Path(uri_base).resolve() if uri_base is not None else None

    def uri(tid: str) -> str:
        p = (out / f"{tid}.jpg").resolve()
        return os.path.relpath(p, base) if base is not None else str(p)

    from shapely import polygons

    frame = pd.DataFrame(
        {
            "tile_id": [w.tile_id for w in windows],
            "city": city,
            "lat": clat,
            "lon": clon,
            "gsd_m": float(size_m) / px,
            "uri": [uri(w.tile_id) for w in windows],
            "split": split,
            "kind": kind,
            "size_m": float(size_m),
            "source_uri": str(raster.resolve()) if base is None else os.path.relpath(raster.resolve(), base),
            "col_off": c_off.astype(np.int64),
            "row_off": r_off.astype(np.int64),
            "width": wid.astype(np.int64),
            "height": hei.astype(np.int64),
            "grid_row": np.array([w.grid_row for w in windows], dtype=np.int64),
            "grid_col": np.array([w.grid_col for w in windows], dtype=np.int64),
            "min_lon": lons.min(axis=1),
            "min_lat": lats.min(axis=1),
            "max_lon": lons.max(axis=1),
            "max_lat": lats.max(axis=1),
        }
    )
    ring = np.stack([lons, lats], axis=-1)  # [N, 4, 2] x = lon, y = lat
    frame["geometry"] = polygons(ring)
    return frame


def to_geodataframe(frame: pd.DataFrame):
    """The tile table as a GeoDataFrame (WGS84 footprints), ready for ``manifest.write_manifests``."""
    import geopandas as gpd

    from wherecnn.data.manifest import CRS

    return gpd.GeoDataFrame(frame, geometry="geometry", crs=CRS)
