"""CVUSA (Workman et al. 2015; cross-view subset of Zhai et al. 2017) -> captures / tiles / pairs.

Layout::

    <root>/splits/train-19zl.csv, <root>/splits/val-19zl.csv     header-less rows:
        bingmap/19/0000001.jpg,streetview/panos/0000001.jpg,streetview/annotations/0000001.png
    <root>/split_locations/all.csv   (optional; also looked for as split/all.csv)   header-less rows:
        street_lat, street_lon, sat_lat, sat_lon[, vehicle_heading]   row k <-> image id k + 1

Every panorama is paired with the aerial image of the same id (track ``aligned``: the aerial image is centred
on the camera, north-up). ``val-19zl`` is the benchmark's test set, so its rows get ``split = "test"``.

Conventions recorded here:
- Aerial images are 750 x 750 px Web Mercator at zoom 19: gsd = 156543.03 * cos(lat) / 2**19 m/px.
- Panoramas are north-aligned with north at the image centre (the SAFA polar transform maps column 0 to south,
  W/4 west, W/2 north), so under our convention (heading = compass direction of the left edge) every panorama
  has ``heading_deg = 180``. The vehicle's driving direction from all.csv, when present, is kept in
  ``vehicle_heading_deg``.
- Without all.csv the rows still load: lat/lon, footprints and gsd are unknown (NaN / null geometry), which
  `wherecnn validate` reports as warnings. Retrieval training works; map-based search does not.
- Images are referenced in place (absolute paths); nothing is copied.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.data.formats.common import (
    IngestResult,
    absolute,
    make_captures,
    make_pairs,
    make_tiles,
    web_mercator_gsd,
)

SPLIT_FILES = {"train": "train-19zl.csv", "test": "val-19zl.csv"}
AERIAL_PX = 750
AERIAL_ZOOM = 19
PANORAMA_HEADING_DEG = 180.0  # north at the centre column -> the left edge faces south
CITY = "CVUSA"
TRACK = "aligned"
LOCATION_FILES = ("split_locations/all.csv", "split/all.csv")


def _image_id(rel: str) -> str:
    return Path(rel).stem


def read_split_file(path: Path) -> list[tuple[str, str]]:
    """(aerial, panorama) relative paths per row; the annotation column is optional."""
    rows = []
    with path.open(newline="") as fh:
        for lineno, fields in enumerate(csv.reader(fh), start=1):
            fields = [f.strip() for f in fields if f.strip()]
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(
                    f"{path}:{lineno}: expected 'bingmap/..,streetview/..[,annotation]', got {fields}"
                )
            rows.append((fields[0], fields[1]))
    return rows


def read_locations(path: Path) -> dict[str, tuple[float, float, float, float, float]]:
    """image id (7-digit, as in the file names) -> (street lat, lon, sat lat, lon, vehicle heading or NaN)."""
    out: dict[str, tuple[float, float, float, float, float]] = {}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        row_index = 0
        for lineno, fields in enumerate(reader, start=1):
            if not fields:
                continue
            try:
                values = [float(v) for v in fields[:5]]
            except ValueError:
                if lineno == 1:  # a header row
                    continue
                raise ValueError(
                    f"{path}:{lineno}: expected numbers (lat, lon, sat_lat, sat_lon, heading)"
                ) from None
            if len(values) < 2:
                raise ValueError(f"{path}:{lineno}: expected at least lat, lon")
            street = values[0], values[1]
            sat = (values[2], values[3]) if len(values) >= 4 else street
            heading = values[4] if len(values) >= 5 else float("nan")
            row_index += 1
            out[f"{row_index:07d}"] = (street[0], street[1], sat[0], sat[1], heading)
    return out


def load(root: str | Path) -> IngestResult:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    notes: list[str] = []
    entries: list[tuple[str, str, str]] = []  # (split, aerial rel, pano rel)
    for split, name in SPLIT_FILES.items():
        path = root / "splits" / name
        if not path.exists():
            notes.append(f"no {path.relative_to(root)}")
            continue
        entries += [(split, a, g) for a, g in read_split_file(path)]
    if not entries:
        raise FileNotFoundError(
            f"{root} does not look like CVUSA: no splits/train-19zl.csv or splits/val-19zl.csv"
        )

    loc_path = next((root / p for p in LOCATION_FILES if (root / p).exists()), None)
    locations = read_locations(loc_path) if loc_path else {}
    if loc_path is None:
        notes.append("no split_locations/all.csv: locations unknown (lat/lon NaN); rows still load")

    capture_rows: list[dict[str, Any]] = []
    tile_rows: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    missing_loc = 0
    for split, aerial, pano in entries:
        pid, tid = _image_id(pano), _image_id(aerial)
        if pid in seen:
            notes.append(f"panorama {pano} listed twice; kept the first")
            continue
        seen.add(pid)
        loc = locations.get(pid)
        if loc is None:
            missing_loc += bool(locations)
            loc = (np.nan,) * 5
        s_lat, s_lon, a_lat, a_lon, heading = loc
        gsd = float(web_mercator_gsd(lat=a_lat, zoom=AERIAL_ZOOM)) if np.isfinite(a_lat) else np.nan
        capture_id, tile_id = f"cvusa/{pid}", f"cvusa/bingmap/{tid}"
        capture_rows.append(
            {
                "capture_id": capture_id,
                "city": CITY,
                "lat": s_lat,
                "lon": s_lon,
                "heading_deg": PANORAMA_HEADING_DEG,
                "fov_deg": 360.0,
                "uri": absolute(root / pano),
                "split": split,
                "kind": "panorama",
                "place_id": pid,
                "vehicle_heading_deg": heading,
            }
        )
        tile_rows.append(
            {
                "tile_id": tile_id,
                "city": CITY,
                "lat": a_lat,
                "lon": a_lon,
                "gsd_m": gsd,
                "size_m": gsd * AERIAL_PX,
                "width": AERIAL_PX,
                "height": AERIAL_PX,
                "uri": absolute(root / aerial),
                "split": split,
                "kind": "centred",
            }
        )
        pair_rows.append(
            {"capture_id": capture_id, "tile_id": tile_id, "track": TRACK, "semi_positive_tile_ids": []}
        )
    if missing_loc:
        notes.append(f"{missing_loc} images have no row in {loc_path}: their location is unknown")
    tiles = pd.DataFrame(tile_rows).drop_duplicates("tile_id", keep="first")
    return IngestResult(
        captures=make_captures(pd.DataFrame(capture_rows)),
        tiles=make_tiles(tiles),
        pairs=make_pairs(pair_rows),
        source=f"cvusa:{root}",
        notes=notes,
    )
