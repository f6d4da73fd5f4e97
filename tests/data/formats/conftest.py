"""Tiny folders in the official VIGOR / CVUSA layouts and a user table, with a few generated images each."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wherecnn import geo
from wherecnn.data.formats.common import web_mercator_gsd

VIGOR_CENTRES = {
    "NewYork": (40.7128, -74.0060),
    "Seattle": (47.6062, -122.3321),
    "SanFrancisco": (37.7749, -122.4194),
    "Chicago": (41.8781, -87.6298),
}


def image(path: Path, seed: int, size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_vigor(root: Path, *, with_labels: bool = True) -> dict[str, list[str]]:
    """Per city: a 3 x 3 grid of zoom-20 satellite images at half-tile spacing, 4 panoramas near the centre.

    Label lines list the four images that contain each panorama, nearest first, with VIGOR-style deltas.
    Returns {city: [panorama file names]}.
    """
    out: dict[str, list[str]] = {}
    seed = 0
    for c, (city, (lat0, lon0)) in enumerate(VIGOR_CENTRES.items()):
        size = float(web_mercator_gsd(lat=lat0, zoom=20)) * 640
        sats = []
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                lat, lon = geo.offset_m(lat=lat0, lon=lon0, east_m=j * size / 2, north_m=i * size / 2)
                name = f"satellite_{lat:.7f}_{lon:.7f}.png"
                image(root / city / "satellite" / name, seed := seed + 1)
                sats.append((name, lat, lon))
        panos = []
        for k, (e, n) in enumerate([(3.0, 4.0), (-5.0, 2.0), (6.0, -7.0), (-2.0, -3.0)]):
            lat, lon = geo.offset_m(lat=lat0, lon=lon0, east_m=e + c, north_m=n)
            name = f"pano{c}{k}x_Ab-9,{lat:.7f},{lon:.7f},.jpg"
            image(root / city / "panorama" / name, seed := seed + 1, (8, 16))
            panos.append((name, lat, lon))
        out[city] = [p[0] for p in panos]
        if not with_labels:
            continue
        split_dir = root / "splits" / city
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / "satellite_list.txt").write_text("".join(f"{s[0]}\n" for s in sats))
        gsd = float(web_mercator_gsd(lat=lat0, zoom=20))
        lines = []
        for name, lat, lon in panos:
            offsets = []  # (distance, name, metres north, metres east) of every image containing the panorama
            for s in sats:
                d_north = geo.distance_m(lat1=lat, lon1=s[2], lat2=s[1], lon2=s[2]) * np.sign(s[1] - lat)
                d_east = geo.distance_m(lat1=lat, lon1=lon, lat2=lat, lon2=s[2]) * np.sign(s[2] - lon)
                if abs(d_north) < size / 2 and abs(d_east) < size / 2:
                    offsets.append((float(np.hypot(d_north, d_east)), s[0], d_north, d_east))
            assert len(offsets) == 4
            fields = [name]
            for _, sat, d_north, d_east in sorted(offsets):
                fields += [sat, f"{d_north / gsd:.4f}", f"{d_east / gsd:.4f}"]
            lines.append(" ".join(fields))
        (split_dir / "pano_label_balanced.txt").write_text("\n".join(lines) + "\n")
        (split_dir / "same_area_balanced_train.txt").write_text("\n".join(lines[:3]) + "\n")
        (split_dir / "same_area_balanced_test.txt").write_text("\n".join(lines[3:]) + "\n")
    return out


def make_cvusa(root: Path, *, n: int = 6, with_locations: bool = True) -> list[tuple[float, float]]:
    """n pairs (ids 1..n), 4 train + 2 val, in the CVPR-subset layout; returns the street locations."""
    rows = []
    locs = []
    for k in range(1, n + 1):
        pid = f"{k:07d}"
        image(root / "bingmap" / "19" / f"{pid}.jpg", k)
        image(root / "streetview" / "panos" / f"{pid}.jpg", 100 + k, (8, 32))
        image(root / "streetview" / "annotations" / f"{pid}.png", 200 + k)
        rows.append(
            [f"bingmap/19/{pid}.jpg", f"streetview/panos/{pid}.jpg", f"streetview/annotations/{pid}.png"]
        )
        locs.append((38.0 + k * 0.5, -90.0 - k * 0.25))
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for name, part in (("train-19zl.csv", rows[:4]), ("val-19zl.csv", rows[4:])):
        with (root / "splits" / name).open("w", newline="") as fh:
            csv.writer(fh).writerows(part)
    if with_locations:
        (root / "split_locations").mkdir(parents=True, exist_ok=True)
        with (root / "split_locations" / "all.csv").open("w", newline="") as fh:
            for k, (lat, lon) in enumerate(locs, start=1):
                csv.writer(fh).writerow([lat, lon, lat + 1e-5, lon - 1e-5, 10.0 * k])
    return locs


@pytest.fixture()
def vigor_root(tmp_path: Path) -> Path:
    root = tmp_path / "VIGOR"
    make_vigor(root)
    return root


@pytest.fixture()
def cvusa_root(tmp_path: Path) -> Path:
    root = tmp_path / "CVUSA"
    make_cvusa(root)
    return root


@pytest.fixture()
def builders() -> dict[str, object]:
    """The layout builders, for tests that need variants (no labels, no locations)."""
    return {"vigor": make_vigor, "cvusa": make_cvusa, "image": image}
