"""The GeoTIFF tiler on rasters in several CRSs: footprints, centring, content, band reads, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import Point
from wherecnn.data.formats import geotiff
from wherecnn.data.formats.geotiff import TilerError, tile_raster, to_geodataframe
from wherecnn.geo import distance_m

LAT, LON = 40.0, -75.0  # raster centre


def make_raster(
    path: Path, crs: str, *, px_units: float, n: int = 800, mark: tuple[float, float] | None = None
) -> Path:
    """An n x n RGB raster centred on (LAT, LON) in ``crs``; a white 16 px square at ``mark`` (lat, lon)."""
    fwd = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    cx, cy = fwd.transform(LON, LAT)
    transform = from_origin(cx - n / 2 * px_units, cy + n / 2 * px_units, px_units, px_units)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 120, size=(3, n, n), dtype=np.uint8)
    if mark is not None:
        mx, my = fwd.transform(mark[1], mark[0])
        c, r = ~transform @ (mx, my)
        data[:, int(r) - 8 : int(r) + 8, int(c) - 8 : int(c) + 8] = 255
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=n,
        height=n,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as ds:
        ds.write(data)
    return path


def side_lengths(geom) -> tuple[float, float]:
    c = np.asarray(geom.exterior.coords)
    top = distance_m(lat1=c[0, 1], lon1=c[0, 0], lat2=c[1, 1], lon2=c[1, 0])
    right = distance_m(lat1=c[1, 1], lon1=c[1, 0], lat2=c[2, 1], lon2=c[2, 0])
    return top, right


@pytest.mark.parametrize(
    "crs, px_units",
    [("EPSG:3857", 1.0), ("EPSG:32618", 0.6), ("EPSG:4326", 6e-6)],
    ids=["web-mercator", "utm", "lat-lon"],
)
def test_centred_tiles_have_true_footprints_in_any_crs(tmp_path: Path, crs: str, px_units: float) -> None:
    mark = (LAT + 0.0004, LON - 0.0005)
    raster = make_raster(tmp_path / "r.tif", crs, px_units=px_units, mark=mark)
    import pandas as pd

    pts = pd.DataFrame({"lat": [mark[0], LAT], "lon": [mark[1], LON], "tile_id": ["m", "c"]})
    frame = tile_raster(raster, tmp_path / "tiles", size_m=100, px=64, points=pts, city="x")
    gsd = {"EPSG:3857": 1.0 * np.cos(np.radians(LAT)), "EPSG:32618": 0.6}.get(crs)
    for _, row in frame.iterrows():
        lat, lon = mark if row["tile_id"] == "m" else (LAT, LON)
        tol = (gsd or 0.51) * 0.75 + 0.05  # centred to the nearest pixel corner
        assert distance_m(lat1=row["lat"], lon1=row["lon"], lat2=lat, lon2=lon) < tol
        top, right = side_lengths(row["geometry"])
        assert abs(top - 100) < 1.5 and abs(right - 100) < 1.5, (top, right)
        assert row["geometry"].contains(Point(lon, lat))
        assert row["min_lon"] < lon < row["max_lon"] and row["min_lat"] < lat < row["max_lat"]
    img = np.asarray(Image.open(frame.set_index("tile_id").loc["m", "uri"]))
    assert img.shape == (64, 64, 3)
    assert img[29:35, 29:35].mean() > 190  # the marked square is in the middle of its tile
    assert img[:10, :10].mean() < 130
    assert (frame["gsd_m"] == 100 / 64).all() and (frame["kind"] == "centred").all()


def test_grid_covers_the_raster_with_overlap(tmp_path: Path) -> None:
    raster = make_raster(tmp_path / "r.tif", "EPSG:3857", px_units=1.0)
    frame = tile_raster(raster, tmp_path / "tiles", size_m=100, px=32, stride_m=50, prefix="g-")
    with rasterio.open(raster) as ds:
        gx, gy = geotiff.ground_pixel_size(ds)
    assert abs(gx - np.cos(np.radians(LAT))) < 0.01  # a Web Mercator unit is cos(lat) ground metres
    tile_px, stride = round(100 / gx), round(50 / gx)
    per_axis = (800 - tile_px) // stride + 1
    assert len(frame) == per_axis**2
    assert set(frame["width"]) == {tile_px}
    assert frame["tile_id"].is_unique and frame["tile_id"].iloc[0] == "g-r000c000"
    a = frame.set_index("tile_id").loc["g-r000c000", "geometry"]
    b = frame.set_index("tile_id").loc["g-r000c001", "geometry"]
    assert 0.45 < a.intersection(b).area / a.area < 0.55  # 50% overlap
    gdf = to_geodataframe(frame)
    assert gdf.crs.to_epsg() == 4326
    with rasterio.open(raster) as ds:  # the first tile is exactly the raster's top-left window
        first = ds.read(window=rasterio.windows.Window(0, 0, tile_px, tile_px)).transpose(1, 2, 0)
    small = np.asarray(Image.fromarray(first).resize((32, 32), Image.Resampling.BILINEAR))
    got = np.asarray(Image.open(frame["uri"].iloc[0])).astype(int)
    assert np.abs(got - small.astype(int)).mean() < 8  # JPEG error only


def test_reads_in_row_bands_never_the_whole_raster(tmp_path: Path, monkeypatch) -> None:
    raster = make_raster(tmp_path / "r.tif", "EPSG:32618", px_units=0.5, n=1200)
    seen: list[tuple[int, int]] = []
    real = geotiff._read_band

    def spy(ds, band):
        img, r0, c0 = real(ds, band)
        seen.append(img.shape[:2])
        return img, r0, c0

    monkeypatch.setattr(geotiff, "_read_band", spy)
    frame = tile_raster(raster, tmp_path / "t", size_m=50, px=32, stride_m=50, band_rows=300)
    assert len(frame) == 144
    assert len(seen) >= 4 and max(h for h, _ in seen) <= 300


def test_points_outside_are_padded_and_uris_relative(tmp_path: Path) -> None:
    import pandas as pd

    raster = make_raster(tmp_path / "r.tif", "EPSG:32618", px_units=1.0, n=300)
    pts = pd.DataFrame({"lat": [LAT + 0.0012], "lon": [LON]})  # ~133 m north: half outside
    out = tmp_path / "out"
    frame = tile_raster(raster, out / "tiles", size_m=100, px=50, points=pts, uri_base=out)
    assert frame["uri"].iloc[0] == "tiles/p00000.jpg"
    img = np.asarray(Image.open(tmp_path / "out" / frame["uri"].iloc[0]))
    assert img[:10].mean() < 5 and img[-10:].mean() > 20  # black beyond the northern edge


def test_clear_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=10, height=10, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 10, 10), np.uint8))
    with pytest.raises(TilerError, match="plain.tif.*no CRS"):
        tile_raster(plain, tmp_path / "t", size_m=10, px=8, stride_m=5)
    with pytest.raises(TilerError, match="cannot open"):
        (tmp_path / "bad.tif").write_bytes(b"not a tiff")
        tile_raster(tmp_path / "bad.tif", tmp_path / "t", size_m=10, px=8, stride_m=5)
    raster = make_raster(tmp_path / "r.tif", "EPSG:32618", px_units=1.0, n=100)
    with pytest.raises(TilerError, match="exactly one"):
        tile_raster(raster, tmp_path / "t", size_m=10, px=8)
    with pytest.raises(TilerError, match="larger than the raster"):
        tile_raster(raster, tmp_path / "t", size_m=500, px=8, stride_m=100)
    import pandas as pd

    with pytest.raises(TilerError, match="lacks column"):
        tile_raster(raster, tmp_path / "t", size_m=10, px=8, points=pd.DataFrame({"x": [1.0]}))


def test_shifted_views_move_the_window_over_the_raster(tmp_path: Path) -> None:
    import pandas as pd

    mark = (LAT + 0.0003, LON + 0.0002)
    raster = make_raster(tmp_path / "r.tif", "EPSG:32618", px_units=0.5, mark=mark)
    pts = pd.DataFrame({"lat": [mark[0]], "lon": [mark[1]], "tile_id": ["m"]})
    frame = tile_raster(raster, tmp_path / "tiles", size_m=50, px=50, points=pts, city="x")
    row = frame.iloc[0]
    window = geotiff.Window("m", *(int(row[k]) for k in ("col_off", "row_off", "width", "height")))
    views = geotiff.shifted_views(raster, [window], [(0, 0), (20, 0), (0, -30), (900, 0)], px=50)
    assert views.shape == (1, 4, 50, 50, 3)
    # no shift: the very tile file tile_raster wrote (same resampling and JPEG)
    np.testing.assert_array_equal(views[0, 0], np.asarray(Image.open(row["uri"])))

    def mark_centre(img: np.ndarray) -> tuple[float, float]:
        r, c = np.nonzero(img.min(axis=2) > 190)
        return r.mean(), c.mean()

    r0, c0 = mark_centre(views[0, 0])
    assert abs(r0 - 24.5) < 1.5 and abs(c0 - 24.5) < 1.5
    r1, c1 = mark_centre(views[0, 1])  # window 20 raster px east (10 output px): the mark moves west
    assert abs(c1 - (c0 - 10)) < 1 and abs(r1 - r0) < 1
    r2, c2 = mark_centre(views[0, 2])  # window 30 px north: the mark moves south
    assert abs(r2 - (r0 + 15)) < 1 and abs(c2 - c0) < 1
    assert views[0, 3].max() < 30  # past the raster's edge: black, like an edge tile
