"""Generic adapter: photos CSV/Parquet plus a tile folder or S3 prefix (coordinates in names or a sidecar)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from wherecnn import geo, storage
from wherecnn.data.formats import table
from wherecnn.data.validate import validate_dir

LAT0, LON0 = 45.5152, -122.6784  # Portland


def _layout(root: Path, builders: dict, *, names_with_coords: bool = True) -> tuple[Path, Path, list[dict]]:
    """2 x 2 tiles of 60 m (gsd 0.5 m, 120 px) at 30 m spacing, 5 photos; one photo far outside every tile."""
    tiles = []
    for i, (e, n) in enumerate([(-15, -15), (15, -15), (-15, 15), (15, 15)]):
        lat, lon = geo.offset_m(lat=LAT0, lon=LON0, east_m=e, north_m=n)
        name = f"tile_{lat:.7f}_{lon:.7f}.png" if names_with_coords else f"t{i}.png"
        builders["image"](root / "tiles" / "z" / name, i, (120, 120))
        tiles.append({"file": f"z/{name}", "lat": lat, "lon": lon, "name": name})
    rows = []
    for k, (e, n, fov) in enumerate([(1, 2, 360), (-20, 5, 90), (10, -25, 90), (3, 3, 360), (500, 500, 90)]):
        lat, lon = geo.offset_m(lat=LAT0, lon=LON0, east_m=e, north_m=n)
        builders["image"](root / "photos" / f"p{k}.jpg", 10 + k)
        rows.append(
            {"path": f"photos/p{k}.jpg", "latitude": lat, "lng": lon, "heading": 30.0 * k, "fov": fov}
        )
    photos = root / "photos.csv"
    pd.DataFrame(rows).to_csv(photos, index=False)
    return photos, root / "tiles", tiles


def test_folder_with_coordinates_in_names(tmp_path: Path, builders: dict) -> None:
    photos, tiles_dir, _ = _layout(tmp_path, builders)
    result = table.load(photos, tiles_dir, gsd_m=0.5, city="Portland")
    caps, tiles, pairs = result.captures, result.tiles, result.pairs
    assert len(caps) == 5 and len(tiles) == 4
    assert (tiles["size_m"] == 60.0).all() and (
        tiles["city"] == "Portland"
    ).all()  # 120 px read from the header
    assert caps["capture_id"].tolist() == [f"photos/p{k}.jpg" for k in range(5)]
    assert caps["heading_deg"].tolist() == [0.0, 30.0, 60.0, 90.0, 120.0]
    assert set(caps["split"]) <= {"train", "test"}
    assert Path(caps["uri"].iloc[0]).is_absolute() and Path(caps["uri"].iloc[0]).exists()
    # the far photo has no pair; panoramas -> offset, photos -> photo
    assert len(pairs) == 4
    tracks = dict(zip(pairs["capture_id"], pairs["track"], strict=True))
    assert tracks["photos/p0.jpg"] == "offset" and tracks["photos/p1.jpg"] == "photo"
    # p0 sits near the centre: inside all four tiles, positive = the nearest
    p0 = pairs.set_index("capture_id").loc["photos/p0.jpg"]
    assert len(p0["semi_positive_tile_ids"]) == 3
    assert p0["tile_id"].startswith("z/tile_")  # ids are paths relative to the prefix
    assert any("no pair" in n for n in result.notes)
    assert validate_dir(result.write(tmp_path / "out")).ok


def test_sidecar_table_and_s3_tiles(
    tmp_path: Path, builders: dict, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    photos, tiles_dir, tiles = _layout(tmp_path, builders, names_with_coords=False)
    storage.s3_client().create_bucket(Bucket="tiles-bucket")
    for t in tiles:
        storage.write_bytes(f"s3://tiles-bucket/aerial/{t['file']}", (tiles_dir / t["file"]).read_bytes())
    sidecar = tmp_path / "tiles.parquet"
    pd.DataFrame(
        {
            "file": [t["file"] for t in tiles],
            "lat": [t["lat"] for t in tiles],
            "lon": [t["lon"] for t in tiles],
            "size_m": 60.0,
            "city": "Portland",
        }
    ).to_parquet(sidecar)
    storage.write_bytes("s3://tiles-bucket/aerial2/z/stray_45.5_-122.6.png", b"not listed")
    result = table.load(photos, "s3://tiles-bucket/aerial", tile_table=sidecar)
    assert len(result.tiles) == 4
    assert result.tiles["uri"].str.startswith("s3://tiles-bucket/aerial/z/").all()
    assert result.tiles["gsd_m"].tolist() == [0.5] * 4
    assert len(result.pairs) == 4
    assert (result.captures["city"] == "Portland").all()  # taken from the tiles' only city
    report = validate_dir(result.write(tmp_path / "out"), workers=4)
    assert report.ok, report.to_json(5)


def test_errors_name_what_is_missing(tmp_path: Path, builders: dict) -> None:
    photos, tiles_dir, _ = _layout(tmp_path, builders)
    with pytest.raises(ValueError, match="tile scale unknown"):
        table.load(photos, tiles_dir)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"uri": ["a.jpg"], "x": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['lat', 'lon'\]"):
        table.load(bad, tiles_dir, gsd_m=0.5)
    with pytest.raises(FileNotFoundError):
        table.load(photos, tmp_path / "nowhere", gsd_m=0.5)
    photos2, tiles2, _ = _layout(tmp_path / "b", builders, names_with_coords=False)
    with pytest.raises(ValueError, match="has coordinates"):
        table.load(photos2, tiles2, gsd_m=0.5)


def test_cli_ingest_table(tmp_path: Path, builders: dict) -> None:
    from typer.testing import CliRunner
    from wherecnn.cli import app

    photos, tiles_dir, _ = _layout(tmp_path, builders)
    out = tmp_path / "m"
    args = [
        "ingest",
        "table",
        "--photos",
        str(photos),
        "--tiles",
        str(tiles_dir),
        "--zoom",
        "19",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "valid" in res.output
    tiles = pd.read_parquet(out / "tiles.parquet")
    assert tiles["gsd_m"].iloc[0] == pytest.approx(0.2986 * 0.7007, rel=2e-3)  # cos(45.5 deg)


def test_readme_flow_tiler_output_as_tiles(tmp_path: Path, builders: dict) -> None:
    """`wherecnn tile ortho.tif --out T`, then `ingest table --tiles T` reads T/tiles.parquet."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from typer.testing import CliRunner
    from wherecnn.cli import app

    crs = geo.utm_crs_for(lat=LAT0, lon=LON0)
    e0, n0 = geo.to_utm(lat=LAT0, lon=LON0, crs=crs)
    ortho = tmp_path / "ortho.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 240, 240), dtype=np.uint8)
    with rasterio.open(
        ortho,
        "w",
        driver="GTiff",
        width=240,
        height=240,
        count=3,
        dtype="uint8",
        crs=crs.to_wkt(),
        transform=from_origin(e0 - 60, n0 + 60, 0.5, 0.5),
    ) as ds:
        ds.write(data)
    runner = CliRunner()
    tiles_dir = tmp_path / "mine" / "tiles"
    res = runner.invoke(
        app,
        [
            "tile",
            str(ortho),
            "--out",
            str(tiles_dir),
            "--size-m",
            "60",
            "--px",
            "64",
            "--stride-m",
            "30",
            "--city",
            "Portland",
        ],
    )
    assert res.exit_code == 0, res.output
    photos, _, _ = _layout(tmp_path / "p", builders)
    out = tmp_path / "mine"
    res = runner.invoke(
        app, ["ingest", "table", "--photos", str(photos), "--tiles", str(tiles_dir), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    tiler = pd.read_parquet(tiles_dir / "tiles.parquet")
    tiles = pd.read_parquet(out / "tiles.parquet")
    assert sorted(tiles["tile_id"]) == sorted(tiler["tile_id"])  # the tiler's ids and footprints are kept
    merged = tiles.merge(tiler, on="tile_id", suffixes=("", "_tiler"))
    assert np.allclose(merged["min_lat"], merged["min_lat_tiler"]) and (merged["size_m"] == 60.0).all()
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) == 4 and set(pairs["tile_id"]) <= set(tiler["tile_id"])
