"""The generated world on disk: deterministic bytes, manifest contracts, geometry, splits, pairs, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shapely.geometry import Point
from typer.testing import CliRunner
from wherecnn.data.manifest import (
    CAPTURE_COLUMNS,
    PAIR_COLUMNS,
    TILE_COLUMNS,
    read_captures,
    read_pairs,
    read_tiles,
)
from wherecnn.data.synthetic import CITIES, generate
from wherecnn.data.synthetic.generate import _same_area_split, city_frame
from wherecnn.data.synthetic.world import MARKING, ROAD, build_world
from wherecnn.geo import distance_m, to_utm

SMALL = dict(size="tiny", cities=1, places_per_city=12, extent_m=260.0)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    a, b, c = (tmp_path_factory.mktemp(n) for n in ("a", "b", "c"))
    generate(a, seed=7, **SMALL)
    generate(b, seed=7, **SMALL)
    generate(c, seed=8, **SMALL)
    return a, b, c


def test_same_seed_gives_byte_identical_files(small_worlds) -> None:
    a, b, _ = small_worlds
    da, db = digest(a), digest(b)
    assert da == db
    assert {"captures.parquet", "tiles.parquet", "pairs.parquet", "chicago/aerial.tif"} <= set(da)
    assert sum(k.endswith(".jpg") for k in da) == 12 * 2 + 16 + 12  # pano+photo, 4x4 grid, centred


def test_different_seed_gives_different_world(small_worlds) -> None:
    a, _, c = small_worlds
    da, dc = digest(a), digest(c)
    for key in ("captures.parquet", "chicago/aerial.tif", "chicago/pano/chicago-00000.jpg"):
        assert da[key] != dc[key], key


def test_tiny_world_layout_and_sizes(tiny_world: Path) -> None:
    caps = read_captures(tiny_world)
    assert sorted(caps["city"].unique()) == ["atlanta", "chicago"]
    assert len(caps) == 200 and set(caps["kind"]) == {"panorama", "photo"}
    for city in ("chicago", "atlanta"):
        assert (tiny_world / city / "aerial.tif").exists()
    pano = caps[caps["kind"] == "panorama"].iloc[0]
    photo = caps[caps["kind"] == "photo"].iloc[0]
    assert Image.open(pano["uri"]).size == (512, 128)
    assert Image.open(photo["uri"]).size == (128, 128)
    assert pano["fov_deg"] == 360 and pano["heading_deg"] == 0
    assert photo["fov_deg"] == 90 and 0 <= photo["heading_deg"] < 360
    tiles = read_tiles(tiny_world)
    assert Image.open(tiles["uri"].iloc[0]).size == (128, 128)
    assert (tiles["kind"] == "grid").sum() == 2 * 81


def test_manifests_follow_the_column_contract(tiny_world: Path) -> None:
    from wherecnn.data.validate import validate_dir

    caps, tiles, pairs = read_captures(tiny_world), read_tiles(tiny_world), read_pairs(tiny_world)
    for frame, cols in ((caps, CAPTURE_COLUMNS), (tiles, TILE_COLUMNS), (pairs, PAIR_COLUMNS)):
        for col, kind in cols.items():
            assert col in frame.columns, col
            assert frame[col].dtype.kind == kind or (kind == "O" and frame[col].dtype == object), col
    assert caps.crs.to_epsg() == 4326 and tiles.crs.to_epsg() == 4326
    report = validate_dir(tiny_world, workers=4)
    assert report.ok, report.to_json(limit_per_kind=3)


def test_centred_tiles_sit_on_their_capture(tiny_world: Path) -> None:
    caps = read_captures(tiny_world)
    tiles = read_tiles(tiny_world)
    centred = tiles[tiles["kind"] == "centred"].set_index("place_id")
    pano = caps[caps["kind"] == "panorama"].set_index("place_id")
    t = centred.loc[pano.index]
    d = distance_m(
        lat1=pano["lat"].to_numpy(),
        lon1=pano["lon"].to_numpy(),
        lat2=t["lat"].to_numpy(),
        lon2=t["lon"].to_numpy(),
    )
    assert d.max() < 0.05  # centred to the millimetre-ish
    corners = np.array([np.asarray(g.exterior.coords)[:4] for g in t["geometry"]])  # [N, 4, (lon, lat)]
    for a, b in ((0, 1), (1, 2)):  # top edge, right edge: UTM squares are slightly rotated in lat/lon
        side = distance_m(
            lat1=corners[:, a, 1], lon1=corners[:, a, 0], lat2=corners[:, b, 1], lon2=corners[:, b, 0]
        )
        assert np.allclose(side, 100.0, atol=0.2)
    assert np.allclose(tiles["gsd_m"], 100 / 128)


def test_cameras_are_on_streets(tiny_world: Path) -> None:
    caps = read_captures(tiny_world)
    for city in CITIES[:2]:
        world = build_world(city, extent_m=500.0, res=1.0, seed=0)
        crs, west, north = city_frame(city, world.extent_m)
        sub = caps[(caps["city"] == city.name) & (caps["kind"] == "panorama")]
        e, n = to_utm(lat=sub["lat"].to_numpy(), lon=sub["lon"].to_numpy(), crs=crs)
        row, col = world.pixel_of(e - west, n - (north - world.extent_m))
        assert np.isin(world.cls[row, col], (ROAD, MARKING)).all(), city.name


def test_same_area_split_is_disjoint_by_blocks(tiny_world: Path) -> None:
    caps = read_captures(tiny_world)
    pano = caps[caps["kind"] == "panorama"]
    assert set(pano["split"]) <= {"train", "val", "test"}
    assert {"train", "test"} <= set(pano["split"])
    # both captures of a place share its split
    assert (caps.groupby("place_id")["split"].nunique() == 1).all()
    # blocks: recompute each place's block; every block has one split
    xy = np.random.default_rng(0).uniform(0, 1000, size=(4000, 2))
    labels = _same_area_split(xy, 1000.0, np.random.default_rng(1))
    block = (xy[:, 0] // 250).astype(int) * 4 + (xy[:, 1] // 250).astype(int)
    per_block = pd.Series(labels).groupby(block).nunique()
    assert (per_block == 1).all() and set(labels) == {"train", "val", "test"}


def test_cross_area_holds_out_whole_cities(tiny_world: Path) -> None:
    caps = read_captures(tiny_world)
    by_city = caps.groupby("city")["split_cross_area"].unique()
    assert list(by_city["atlanta"]) == ["test"] and list(by_city["chicago"]) == ["train"]
    tiles = read_tiles(tiny_world)
    centred = tiles[tiles["kind"] == "centred"]
    assert set(centred[centred["city"] == "atlanta"]["split_cross_area"]) == {"test"}


def test_cross_area_roles_name_a_validation_city_apart_from_the_test_cities() -> None:
    from wherecnn.data.synthetic.generate import SIZES, cross_area_roles
    from wherecnn.data.synthetic.world import CITIES

    names = [c.name for c in CITIES[: SIZES["small"].cities]]
    roles = cross_area_roles(names)
    assert roles["seattle"] == "val"
    assert sorted(n for n, r in roles.items() if r == "test") == ["boston", "minneapolis"]
    assert sorted(n for n, r in roles.items() if r == "train") == sorted(names[:5])
    # every city: a second validation city in another style, the rest as before
    everything = cross_area_roles([c.name for c in CITIES])
    assert everything == {**roles, "phoenix": "val"}
    # prefixes of CITIES without the named cities: the last city (or two) is the test city, no validation city
    assert cross_area_roles(names[:2]) == {"chicago": "train", "atlanta": "test"}
    assert set(cross_area_roles(names[:4]).values()) == {"train", "test"}


def test_the_validation_cities_are_validation_under_every_protocol(tmp_path: Path) -> None:
    from wherecnn.data.synthetic.generate import generate

    out = tmp_path / "w"
    generate(out, size="tiny", cities=9, places_per_city=6, extent_m=220.0, seed=5)
    caps = read_captures(out)
    for city in ("seattle", "phoenix"):
        val = caps[caps["city"] == city]
        assert len(val) and set(val["split"]) == {"val"} and set(val["split_cross_area"]) == {"val"}, city
    others = caps[~caps["city"].isin(["seattle", "phoenix"])]
    assert "val" not in set(others["split_cross_area"]) and "train" in set(others["split"])


def test_pairs_tracks_and_positives(tiny_world: Path) -> None:
    caps = read_captures(tiny_world).set_index("capture_id")
    tiles = read_tiles(tiny_world).set_index("tile_id")
    pairs = read_pairs(tiny_world)
    assert pairs.groupby("track").size().to_dict() == {"aligned": 100, "offset": 100, "photo": 100}
    assert set(pairs["tile_id"]) <= set(tiles.index)
    for _, p in pairs.iterrows():
        cap = caps.loc[p["capture_id"]]
        pt = Point(cap["lon"], cap["lat"])
        pos = tiles.loc[p["tile_id"]]
        if p["track"] == "offset":
            assert pos["kind"] == "grid"
            assert pos["geometry"].buffer(1e-7).contains(pt)
            for semi in p["semi_positive_tile_ids"]:
                assert tiles.loc[semi, "geometry"].buffer(1e-7).contains(pt)
                assert semi != p["tile_id"]
        else:
            assert pos["kind"] == "centred" and pos["place_id"] == cap["place_id"]
            assert (p["track"] == "photo") == (cap["kind"] == "photo")
    offset = pairs[pairs["track"] == "offset"]
    assert offset["semi_positive_tile_ids"].map(len).max() >= 1  # 50% overlap -> neighbours contain it


def test_panorama_and_its_tile_agree_on_road_direction(tiny_world: Path) -> None:
    """A loose check of correspondence: both images are mostly the same place (not noise)."""
    caps = read_captures(tiny_world)
    tiles = read_tiles(tiny_world)
    pid = caps["place_id"].iloc[0]
    tile = np.asarray(Image.open(tiles.set_index("tile_id").loc[f"{pid}-tile", "uri"]))
    centre = tile[60:68, 60:68].astype(int)
    assert centre.std(axis=(0, 1)).mean() < 40  # the camera stands on road: uniform-ish asphalt
    assert abs(centre[..., 0] - centre[..., 2]).mean() < 30  # grey, not grass or water


def test_oblique_and_preview(tmp_path: Path) -> None:
    summary = generate(tmp_path, seed=1, oblique=True, preview=True, **SMALL)
    tiles = read_tiles(tmp_path)
    obl = tiles[tiles["kind"] == "oblique"]
    assert len(obl) == 12 and all(Path(u).exists() for u in obl["uri"])
    assert (read_pairs(tmp_path)["track"] == "oblique").sum() == 12
    img = Image.open(summary["preview"])
    assert img.width >= 512 + 2 * 128 and img.height >= 2 * 128


def test_cli_synth_and_tile(tmp_path: Path, tiny_world: Path) -> None:
    from wherecnn.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["synth", "--help"])
    assert res.exit_code == 0 and "--cities" in res.output
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "w"), "--size", "huge"])
    assert res.exit_code == 2
    raster = str(tiny_world / "chicago" / "aerial.tif")
    out = str(tmp_path / "t")
    args = ["tile", raster, "--out", out, "--size-m", "200", "--px", "64", "--stride-m", "100"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    t = read_tiles(tmp_path / "t")
    assert len(t) == 16 and Image.open(t["uri"].iloc[0]).size == (64, 64)
