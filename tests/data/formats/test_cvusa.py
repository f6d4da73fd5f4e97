"""CVUSA adapter on a tiny folder in the CVPR-subset layout (6 pairs; with and without all.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wherecnn.data.formats import cvusa
from wherecnn.data.manifest import read_pairs
from wherecnn.data.validate import validate_dir


def test_with_locations(cvusa_root: Path, tmp_path: Path) -> None:
    result = cvusa.load(cvusa_root)
    caps, tiles, pairs = result.captures, result.tiles, result.pairs
    assert len(caps) == len(tiles) == len(pairs) == 6
    assert caps["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert (pairs["track"] == "aligned").all()
    assert pairs["semi_positive_tile_ids"].map(len).tolist() == [0] * 6
    # row k of all.csv belongs to image id k + 1
    first = caps.set_index("capture_id").loc["cvusa/0000001"]
    assert (first["lat"], first["lon"]) == pytest.approx((38.5, -90.25))
    assert first["vehicle_heading_deg"] == 10.0
    assert first["heading_deg"] == 180.0  # north at the centre column -> left edge faces south
    assert Path(first["uri"]).name == "0000001.jpg" and Path(first["uri"]).exists()
    tile = tiles.set_index("tile_id").loc["cvusa/bingmap/0000001"]
    assert tile["gsd_m"] == pytest.approx(0.2986 * np.cos(np.radians(38.50001)), rel=1e-3)
    assert tile["size_m"] == pytest.approx(750 * tile["gsd_m"])
    assert tile["geometry"].contains(first["geometry"])
    out = result.write(tmp_path / "out")
    report = validate_dir(out)
    assert report.ok and report.n_warnings == 0, report.to_json(5)
    assert read_pairs(out)["tile_id"].tolist()[0] == "cvusa/bingmap/0000001"


def test_without_locations_rows_still_load(tmp_path: Path, builders: dict) -> None:
    root = tmp_path / "C"
    builders["cvusa"](root, with_locations=False)
    result = cvusa.load(root)
    assert len(result.captures) == 6
    assert result.captures["lat"].isna().all() and result.tiles["gsd_m"].isna().all()
    assert result.captures.geometry.isna().all()
    assert any("all.csv" in n for n in result.notes)
    report = validate_dir(result.write(tmp_path / "out"))
    assert report.ok  # unknown locations are warnings
    kinds = {p.kind for p in report.problems}
    assert kinds == {"unknown-location", "unknown-gsd"}


def test_missing_splits(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not look like CVUSA"):
        cvusa.load(tmp_path)


def test_cli_ingest_cvusa(cvusa_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner
    from wherecnn.cli import app

    res = CliRunner().invoke(app, ["ingest", "cvusa", str(cvusa_root), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "pairs.parquet").exists()
