"""`wherecnn validate`: a valid tiny manifest set passes; each corruption is reported with row and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shapely.geometry import Point, box
from typer.testing import CliRunner
from wherecnn import storage
from wherecnn.data.formats.common import make_captures, make_pairs, make_tiles
from wherecnn.data.manifest import CAPTURES, PAIRS, TILES, read_pairs, write_manifests
from wherecnn.data.validate import validate_dir


def _image(path: Path, seed: int, size: tuple[int, int] = (16, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def valid_dir(tmp_path: Path) -> Path:
    """3 captures, 4 tiles (relative and absolute URIs), 3 pairs with semi-positives."""
    root = tmp_path / "m"
    lat0, lon0 = 47.6062, -122.3321
    caps, tiles = [], []
    for i in range(3):
        _image(root / "captures" / f"c{i}.jpg", i, (8, 32))
        caps.append(
            {
                "capture_id": f"c{i}",
                "city": "Seattle",
                "lat": lat0 + i * 1e-4,
                "lon": lon0,
                "heading_deg": 0.0,
                "fov_deg": 360.0,
                "uri": f"captures/c{i}.jpg",
                "split": "train" if i < 2 else "test",
            }
        )
    for j in range(4):
        path = root / "tiles" / f"t{j}.png"
        _image(path, 10 + j)
        tiles.append(
            {
                "tile_id": f"t{j}",
                "city": "Seattle",
                "lat": lat0 + j * 1e-4,
                "lon": lon0,
                "gsd_m": 0.5,
                "size_m": 60.0,
                "uri": str(path) if j == 3 else f"tiles/t{j}.png",
                "split": "gallery",
            }
        )
    pairs = make_pairs(
        [
            {
                "capture_id": f"c{i}",
                "tile_id": f"t{i}",
                "track": "offset",
                "semi_positive_tile_ids": [f"t{i + 1}"],
            }
            for i in range(3)
        ]
    )
    write_manifests(root, make_captures(pd.DataFrame(caps)), make_tiles(pd.DataFrame(tiles)), pairs)
    return root


def _corrupt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _kinds(report) -> set[tuple[str, str]]:  # noqa: ANN001
    return {(p.file, p.kind) for p in report.problems if p.severity == "error"}


def test_valid_manifests_pass(valid_dir: Path) -> None:
    before = {p: p.read_bytes() for p in valid_dir.glob("*.parquet")}
    report = validate_dir(valid_dir)
    assert report.ok, report.to_json()
    assert report.n_warnings == 0
    assert report.rows == {CAPTURES: 3, TILES: 4, PAIRS: 3}
    assert report.uris_checked == 7
    assert {p: p.read_bytes() for p in valid_dir.glob("*.parquet")} == before  # nothing modified


def test_missing_files_and_folder(tmp_path: Path, valid_dir: Path) -> None:
    assert not validate_dir(tmp_path / "nope").ok
    d = _corrupt(valid_dir, tmp_path / "c")
    (d / PAIRS).unlink()
    report = validate_dir(d)
    assert (PAIRS, "missing-file") in _kinds(report)


def test_captures_corruptions_reported_with_row_and_field(tmp_path: Path, valid_dir: Path) -> None:
    d = _corrupt(valid_dir, tmp_path / "c")
    caps = gpd.read_parquet(d / CAPTURES)
    caps.loc[0, "lat"] = 123.0  # out of range
    caps.loc[1, "capture_id"] = "c0"  # duplicate
    caps.loc[1, "lat"] += 0.01  # the geometry still holds the old position
    caps.loc[2, "uri"] = "captures/missing.jpg"  # does not resolve
    caps = caps.drop(columns=["fov_deg"])  # missing column
    caps.to_parquet(d / CAPTURES)
    report = validate_dir(d)
    assert not report.ok
    found = {(p.kind, p.row, p.field) for p in report.errors() if p.file == CAPTURES}
    assert ("out-of-range", 0, "lat") in found
    assert ("geometry-mismatch", 1, "geometry") in found
    assert ("duplicate-id", 1, "capture_id") in found
    assert ("unresolved-uri", 2, "uri") in found
    assert ("missing-column", None, "fov_deg") in found
    # the pair of the (now missing) capture c1 dangles
    assert (PAIRS, "dangling-capture") in _kinds(report)


def test_null_ids_wrong_types_and_swapped_geometry(tmp_path: Path, valid_dir: Path) -> None:
    d = _corrupt(valid_dir, tmp_path / "c")
    caps = gpd.read_parquet(d / CAPTURES)
    caps.loc[0, "capture_id"] = None
    caps["split"] = caps["split"].astype(object)
    caps.loc[1, "split"] = None
    caps["geometry"] = [
        Point(r.lat, r.lon) if i == 2 else r.geometry for i, r in enumerate(caps.itertuples())
    ]
    caps["heading_deg"] = ["north"] * len(caps)
    caps.to_parquet(d / CAPTURES)
    report = validate_dir(d)
    msgs = {(p.kind, p.row, p.field): p.message for p in report.errors() if p.file == CAPTURES}
    assert ("null-id", 0, "capture_id") in msgs
    assert ("null-value", 1, "split") in msgs
    assert "swapped" in msgs[("geometry-mismatch", 2, "geometry")]
    assert ("wrong-type", None, "heading_deg") in msgs


def test_tiles_and_pairs_corruptions(tmp_path: Path, valid_dir: Path) -> None:
    d = _corrupt(valid_dir, tmp_path / "c")
    tiles = gpd.read_parquet(d / TILES)
    tiles.loc[1, "gsd_m"] = -1.0
    geoms = list(tiles.geometry)
    geoms[2] = box(0, 0, 1, 1)  # footprint nowhere near its centre
    tiles = tiles.set_geometry(gpd.GeoSeries(geoms, crs=tiles.crs))
    tiles = tiles.drop(index=3)  # tile t3 (a semi-positive of c2) disappears
    tiles.to_parquet(d / TILES)
    pairs = read_pairs(d)
    pairs.loc[0, "tile_id"] = "ghost"
    pairs.to_parquet(d / PAIRS)
    report = validate_dir(d)
    found = {(p.file, p.kind, p.row, p.field) for p in report.errors()}
    assert (TILES, "out-of-range", 1, "gsd_m") in found
    assert (TILES, "geometry-mismatch", 2, "geometry") in found
    assert (PAIRS, "dangling-positive", 0, "tile_id") in found
    assert (PAIRS, "dangling-semi-positive", 2, "semi_positive_tile_ids") in found


def test_wrong_crs_and_plain_parquet(tmp_path: Path, valid_dir: Path) -> None:
    d = _corrupt(valid_dir, tmp_path / "c")
    tiles = gpd.read_parquet(d / TILES).to_crs("EPSG:3857")
    tiles.to_parquet(d / TILES)
    caps = pd.DataFrame(gpd.read_parquet(d / CAPTURES).drop(columns="geometry"))
    caps.to_parquet(d / CAPTURES)
    report = validate_dir(d)
    kinds = _kinds(report)
    assert (TILES, "crs") in kinds
    assert (CAPTURES, "not-geoparquet") in kinds


def test_unknown_location_is_a_warning(tmp_path: Path, valid_dir: Path) -> None:
    d = _corrupt(valid_dir, tmp_path / "c")
    caps = gpd.read_parquet(d / CAPTURES)
    caps.loc[0, ["lat", "lon"]] = np.nan
    caps = make_captures(pd.DataFrame(caps.drop(columns="geometry")))
    caps.to_parquet(d / CAPTURES)
    report = validate_dir(d)
    assert report.ok and report.n_warnings == 1
    assert report.problems[0].kind == "unknown-location"


def test_s3_uris_checked(
    tmp_path: Path, valid_dir: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    client = storage.s3_client()
    client.create_bucket(Bucket="validate-bucket")
    d = _corrupt(valid_dir, tmp_path / "c")
    tiles = gpd.read_parquet(d / TILES)
    tiles["uri"] = [f"s3://validate-bucket/tiles/{t}.png" for t in tiles["tile_id"]]
    tiles.to_parquet(d / TILES)
    for t in ("t0", "t1", "t3"):
        storage.write_bytes(f"s3://validate-bucket/tiles/{t}.png", b"x")
    report = validate_dir(d, workers=4)
    bad = [(p.row, p.field) for p in report.errors()]
    assert bad == [(2, "uri")]
    assert "s3://validate-bucket/tiles/t2.png" in report.errors()[0].message


def test_cli_exit_codes_and_json(tmp_path: Path, valid_dir: Path) -> None:
    from wherecnn.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(valid_dir)])
    assert ok.exit_code == 0, ok.output
    assert "valid" in ok.output.lower()
    d = _corrupt(valid_dir, tmp_path / "c")
    caps = gpd.read_parquet(d / CAPTURES)
    caps["uri"] = [f"nowhere/{i}.jpg" for i in range(len(caps))]
    caps.to_parquet(d / CAPTURES)
    bad = runner.invoke(app, ["validate", str(d), "--json", "--limit", "2"])
    assert bad.exit_code == 1
    data = json.loads(bad.stdout)
    assert data["ok"] is False and data["errors"] == 3
    assert len(data["problems"]) == 2  # capped per kind
    assert data["counts"][0]["count"] == 3
    human = runner.invoke(app, ["validate", str(d), "--limit", "1"])
    assert human.exit_code == 1
    assert "captures.parquet" in human.output and "row 0" in human.output and "2 more" in human.output


def test_unpaired_capture_and_unknown_split_are_warnings(tmp_path: Path, valid_dir: Path) -> None:
    d = _corrupt(valid_dir, tmp_path / "c")
    caps = gpd.read_parquet(d / CAPTURES)
    caps.loc[0, "split"] = "holdout"
    caps.to_parquet(d / CAPTURES)
    pairs = read_pairs(d)
    pairs.iloc[1:].to_parquet(d / PAIRS)
    report = validate_dir(d)
    assert report.ok
    found = {(p.kind, p.row, p.field) for p in report.problems}
    assert found == {("unknown-split", 0, "split"), ("unpaired-capture", 0, "capture_id")}


def test_manifests_on_s3(
    tmp_path: Path, valid_dir: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest folder on S3: tables are fetched, relative URIs resolve against the prefix."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    storage.s3_client().create_bucket(Bucket="manifests")
    prefix = "s3://manifests/run1"
    for path in sorted(valid_dir.rglob("*")):
        if path.is_file() and path.name != "t3.png":  # t3's URI is absolute (local), skip the copy
            storage.write_bytes(storage.join(prefix, str(path.relative_to(valid_dir))), path.read_bytes())
    report = validate_dir(prefix, workers=4)
    assert report.ok, report.to_json(5)
    assert report.directory == prefix and report.rows[CAPTURES] == 3
    from wherecnn.cli import app

    res = CliRunner().invoke(app, ["validate", prefix])
    assert res.exit_code == 0 and "s3://manifests/run1" in res.output, res.output
    client = storage.s3_client()
    client.delete_object(Bucket="manifests", Key="run1/captures/c1.jpg")
    client.delete_object(Bucket="manifests", Key="run1/pairs.parquet")
    report = validate_dir(prefix, workers=4)
    found = {(p.file, p.kind, p.row) for p in report.errors()}
    assert (PAIRS, "missing-file", None) in found
    assert (CAPTURES, "unresolved-uri", 1) in found
    assert any("s3://manifests/run1/captures/c1.jpg" in p.message for p in report.errors())


def test_tiny_world_validates_and_a_corrupted_copy_fails(tiny_world: Path, tmp_path: Path) -> None:
    """The synthetic world passes; breaking it yields row-level errors (issue 2's "done when")."""
    report = validate_dir(tiny_world)
    assert report.ok and report.n_warnings == 0, report.to_json(5)
    d = tmp_path / "bad"
    d.mkdir()
    for name in (CAPTURES, TILES, PAIRS):
        shutil.copy(tiny_world / name, d / name)
    caps = gpd.read_parquet(d / CAPTURES)
    caps.loc[4, "lon"] = 500.0
    caps.to_parquet(d / CAPTURES)
    report = validate_dir(d)  # relative URIs now point into an empty folder
    assert not report.ok
    found = {(p.file, p.kind) for p in report.errors()}
    assert (CAPTURES, "out-of-range") in found and (CAPTURES, "unresolved-uri") in found
    assert any(p.row == 4 and p.field == "lon" for p in report.errors())
