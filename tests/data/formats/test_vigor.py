"""VIGOR adapter on a tiny folder in the official layout (4 cities x 9 satellite images x 4 panoramas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wherecnn import geo
from wherecnn.data.formats import vigor
from wherecnn.data.manifest import read_captures, read_pairs, read_tiles
from wherecnn.data.validate import validate_dir


def test_parse_names() -> None:
    assert vigor.parse_panorama_name("/x/-a_B9,40.7,-74.0,.jpg") == ("-a_B9", 40.7, -74.0)
    assert vigor.parse_satellite_name("satellite_40.7128_-74.006.png") == (40.7128, -74.006)
    with pytest.raises(ValueError, match="panorama name"):
        vigor.parse_panorama_name("pano.jpg")
    with pytest.raises(ValueError, match="satellite name"):
        vigor.parse_satellite_name("sat.png")


def test_same_area(vigor_root: Path, tmp_path: Path) -> None:
    result = vigor.load(vigor_root, protocol="same-area")
    caps, tiles, pairs = result.captures, result.tiles, result.pairs
    assert len(caps) == 16 and len(tiles) == 36 and len(pairs) == 16
    assert sorted(caps["city"].unique()) == sorted(vigor.CITIES)
    # same-area: 3 train + 1 test per city, from the balanced split files
    assert caps.groupby("city")["split"].apply(lambda s: (s == "test").sum()).tolist() == [1, 1, 1, 1]
    # cross-area kept alongside
    cross = dict(zip(caps["city"], caps["split_cross_area"], strict=True))
    assert cross == {"NewYork": "train", "Seattle": "train", "SanFrancisco": "test", "Chicago": "test"}
    # panorama conventions
    assert (caps["heading_deg"] == 180.0).all() and (caps["fov_deg"] == 360.0).all()
    row = caps[caps["capture_id"] == "NewYork/pano00x_Ab-9"].iloc[0]
    assert row["uri"] == str((vigor_root / "NewYork" / "panorama").resolve() / Path(row["uri"]).name)
    assert Path(row["uri"]).exists()  # referenced in place
    # footprints: zoom-20 gsd, 640 px
    t = tiles.iloc[0]
    assert t["gsd_m"] == pytest.approx(0.1493 * np.cos(np.radians(t["lat"])), rel=1e-3)
    assert t["size_m"] == pytest.approx(640 * t["gsd_m"])
    width = geo.distance_m(lat1=t["lat"], lon1=t["min_lon"], lat2=t["lat"], lon2=t["max_lon"])
    assert width == pytest.approx(t["size_m"], rel=1e-4)
    # pairs: positive + 3 semi-positives, every one contains the panorama
    assert (pairs["track"] == "offset").all()
    assert all(len(s) == 3 for s in pairs["semi_positive_tile_ids"])
    by_id = tiles.set_index("tile_id")
    caps_by_id = caps.set_index("capture_id")
    for p in pairs.itertuples():
        c = caps_by_id.loc[p.capture_id]
        for tid in [p.tile_id, *p.semi_positive_tile_ids]:
            assert by_id.loc[tid, "geometry"].contains(c.geometry)
        # VIGOR delta of the positive: the panorama at row 320 + d0, column 320 - d1 of the 640 px image
        t = by_id.loc[p.tile_id]
        row_px = 320 + p.vigor_delta_lat_px
        col_px = 320 - p.vigor_delta_lon_px
        exp_row = (t["max_lat"] - c["lat"]) / (t["max_lat"] - t["min_lat"]) * 640
        exp_col = (c["lon"] - t["min_lon"]) / (t["max_lon"] - t["min_lon"]) * 640
        assert row_px == pytest.approx(exp_row, abs=0.5) and col_px == pytest.approx(exp_col, abs=0.5)
    # written manifests validate and read back
    out = result.write(tmp_path / "out")
    report = validate_dir(out)
    assert report.ok, report.to_json(5)
    assert report.n_warnings == 0
    assert len(read_captures(out)) == 16 and len(read_tiles(out)) == 36
    assert read_pairs(out)["semi_positive_tile_ids"].map(len).tolist() == [3] * 16


def test_cross_area(vigor_root: Path) -> None:
    caps = vigor.load(vigor_root, protocol="cross-area").captures
    train = set(caps.loc[caps["split"] == "train", "city"])
    test = set(caps.loc[caps["split"] == "test", "city"])
    assert train == {"NewYork", "Seattle"} and test == {"SanFrancisco", "Chicago"}


def test_city_subset_and_bad_input(vigor_root: Path, tmp_path: Path) -> None:
    result = vigor.load(vigor_root, cities=["Chicago"])
    assert set(result.captures["city"]) == {"Chicago"} and len(result.tiles) == 9
    with pytest.raises(FileNotFoundError, match="Boston"):
        vigor.load(vigor_root, cities=["Boston"])
    with pytest.raises(FileNotFoundError, match="does not look like VIGOR"):
        vigor.load(tmp_path)
    with pytest.raises(ValueError, match="protocol"):
        vigor.load(vigor_root, protocol="both-ways")
    bad = vigor_root / "splits" / "Chicago" / "same_area_balanced_test.txt"
    bad.write_text("only three fields here\n")
    with pytest.raises(ValueError, match=r"same_area_balanced_test.txt:1: expected 13 fields"):
        vigor.load(vigor_root)


def test_without_label_files_pairs_by_footprint(tmp_path: Path, builders: dict) -> None:
    root = tmp_path / "V"
    builders["vigor"](root, with_labels=False)
    result = vigor.load(root, protocol="cross-area")
    assert len(result.captures) == 16 and len(result.tiles) == 36
    assert len(result.pairs) == 16
    # nearest tile is the centre one; all 4 panoramas lie within ~10 m of the centre -> 3 semi-positives
    assert result.pairs["semi_positive_tile_ids"].map(len).min() >= 3
    assert any("footprint containment" in n for n in result.notes)
    assert validate_dir(result.write(tmp_path / "out")).ok


def test_cli_ingest_vigor(vigor_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner
    from wherecnn.cli import app

    out = tmp_path / "m"
    res = CliRunner().invoke(
        app, ["ingest", "vigor", str(vigor_root), "--out", str(out), "--protocol", "cross-area"]
    )
    assert res.exit_code == 0, res.output
    assert "valid" in res.output and "captures" in res.output
    caps = read_captures(out)
    assert set(caps.loc[caps["split"] == "test", "city"]) == {"SanFrancisco", "Chicago"}
    bad = CliRunner().invoke(app, ["ingest", "vigor", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code == 2 and "no such folder" in bad.output
