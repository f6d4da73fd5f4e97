"""VIGOR (Zhu et al., CVPR 2021) in its official layout -> captures / tiles / pairs manifests.

Layout::

    <root>/<City>/panorama/<panoid>,<lat>,<lon>,.jpg
    <root>/<City>/satellite/satellite_<lat>_<lon>.png
    <root>/splits/<City>/satellite_list.txt                       one satellite file name per line
    <root>/splits/<City>/same_area_balanced_{train,test}.txt      same-area protocol
    <root>/splits/<City>/pano_label_balanced.txt                  all panoramas (cross-area protocol)

A label line is ``<pano> <sat> <d0> <d1> <sat> <d0> <d1> <sat> <d0> <d1> <sat> <d0> <d1>``: the positive
satellite image, then three semi-positives (other images that also contain the panorama), each with VIGOR's
pixel "delta" (offset of the image centre from the panorama in 640-px satellite pixels: the panorama sits at
row ``320 + d0``, column ``320 - d1``), kept in the pairs as ``vigor_delta_lat_px`` / ``vigor_delta_lon_px``
(positive) and ``semi_positive_vigor_deltas_px``. Cross-area: train on NewYork + Seattle, test on
SanFrancisco + Chicago.

Conventions recorded here:
- Satellite images are 640 x 640 px Web Mercator at zoom 20, so gsd = 156543.03 * cos(lat) / 2**20 m/px
  (0.113 m/px in New York). The original labels assumed a constant 0.114 m/px; only our footprints use the
  per-latitude value, the delta columns are copied from the files unchanged.
- Panoramas are north-aligned with north at the image centre (like CVUSA: left edge = south, azimuth
  increasing to the right). Our convention gives a panorama's heading as the compass direction of its left
  edge, so every VIGOR panorama gets ``heading_deg = 180``.
- Images are referenced in place (absolute paths); nothing is copied.

Without label files the adapter still works: panoramas are listed from the folders, pairs come from
footprint containment (nearest tile positive, up to three semi-positives) and the same-area split is a
deterministic spatial-block split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from wherecnn.data.formats.common import (
    IngestResult,
    absolute,
    lat_lon_from_name,
    make_captures,
    make_pairs,
    make_tiles,
    match_by_location,
    web_mercator_gsd,
)
from wherecnn.data.formats.splits import block_split
from wherecnn.data.manifest import PROTOCOLS

CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
CROSS_AREA_TRAIN = ("NewYork", "Seattle")
CROSS_AREA_TEST = ("SanFrancisco", "Chicago")
SATELLITE_PX = 640
SATELLITE_ZOOM = 20
PANORAMA_HEADING_DEG = 180.0  # north at the centre column -> the left edge faces south
TRACK = "offset"


def parse_panorama_name(name: str) -> tuple[str, float, float]:
    """``<panoid>,<lat>,<lon>,.jpg`` -> (panoid, lat, lon)."""
    parts = Path(name).name.rsplit(",", 3)
    if len(parts) != 4:
        raise ValueError(f"not a VIGOR panorama name (expected '<panoid>,<lat>,<lon>,.jpg'): {name!r}")
    try:
        return parts[0], float(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"bad coordinates in VIGOR panorama name {name!r}") from None


def parse_satellite_name(name: str) -> tuple[float, float]:
    """``satellite_<lat>_<lon>.png`` -> (lat, lon)."""
    found = lat_lon_from_name(name)
    if found is None:
        raise ValueError(f"not a VIGOR satellite name (expected 'satellite_<lat>_<lon>.png'): {name!r}")
    return found


def read_label_file(path: Path) -> list[dict[str, Any]]:
    """Parse one VIGOR label file; errors name the file and line."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 13:
            raise ValueError(
                f"{path}:{lineno}: expected 13 fields (pano + 4 x [sat, d0, d1]), got {len(fields)}"
            )
        try:
            deltas = [(float(fields[i + 1]), float(fields[i + 2])) for i in (1, 4, 7, 10)]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: pixel offsets must be numbers") from None
        rows.append({"pano": fields[0], "sats": [fields[i] for i in (1, 4, 7, 10)], "deltas": deltas})
    return rows


def _city_dirs(root: Path, cities: list[str] | None) -> list[str]:
    if cities:
        missing = [c for c in cities if not (root / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"VIGOR city folder(s) not found under {root}: {', '.join(missing)}")
        return list(cities)
    found = sorted(p.name for p in root.iterdir() if (p / "panorama").is_dir() or (p / "satellite").is_dir())
    if not found:
        raise FileNotFoundError(
            f"{root} does not look like VIGOR: no <City>/panorama or <City>/satellite folders"
        )
    return found


def _cross_split(city: str) -> str:
    if city in CROSS_AREA_TRAIN:
        return "train"
    return "test"


def load(root: str | Path, *, protocol: str = "same-area", cities: list[str] | None = None) -> IngestResult:
    """Read a VIGOR folder. ``split`` follows ``protocol``; ``split_cross_area`` is always filled."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    notes: list[str] = []
    capture_rows: list[dict[str, Any]] = []
    tile_rows: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    geometric_cities: list[str] = []
    for city in _city_dirs(root, cities):
        if city not in CITIES:
            notes.append(f"{city} is not one of VIGOR's cities; its cross-area split is 'test'")
        split_dir = root / "splits" / city
        sat_dir = root / city / "satellite"
        pano_dir = root / city / "panorama"
        # tiles
        sat_list = split_dir / "satellite_list.txt"
        if sat_list.exists():
            sat_names = [ln.strip() for ln in sat_list.read_text().splitlines() if ln.strip()]
        elif sat_dir.is_dir():
            sat_names = sorted(
                p.name for p in sat_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
            )
            notes.append(
                f"{city}: no {sat_list.relative_to(root)}; listed {len(sat_names)} images from the folder"
            )
        else:
            raise FileNotFoundError(f"{city}: neither {sat_list} nor {sat_dir} exists")
        city_tiles = set()
        for name in sat_names:
            lat, lon = parse_satellite_name(name)
            gsd = float(web_mercator_gsd(lat=lat, zoom=SATELLITE_ZOOM))
            tile_id = f"{city}/{Path(name).stem}"
            city_tiles.add(name)
            tile_rows.append(
                {
                    "tile_id": tile_id,
                    "city": city,
                    "lat": lat,
                    "lon": lon,
                    "gsd_m": gsd,
                    "size_m": gsd * SATELLITE_PX,
                    "width": SATELLITE_PX,
                    "height": SATELLITE_PX,
                    "uri": absolute(sat_dir / name),
                    "split": "gallery",
                    "split_cross_area": _cross_split(city),
                    "kind": "satellite",
                }
            )
        # captures and pairs
        labels = _city_labels(split_dir)
        if labels is None:
            geometric_cities.append(city)
            if not pano_dir.is_dir():
                raise FileNotFoundError(f"{city}: no label files in {split_dir} and no {pano_dir}")
            names = sorted(
                p.name for p in pano_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
            )
            notes.append(f"{city}: no label files; {len(names)} panoramas paired by footprint containment")
            for name in names:
                capture_rows.append(_capture_row(city, name, pano_dir, same_area=None))
            continue
        for name, (entry, same) in labels.items():
            capture_rows.append(_capture_row(city, name, pano_dir, same_area=same))
            missing = [s for s in entry["sats"] if s not in city_tiles]
            if missing:
                notes.append(f"{city}: {name} refers to satellite images not in the list: {missing}")
            (d0, d1) = entry["deltas"][0]
            pair_rows.append(
                {
                    "capture_id": f"{city}/{_panoid(name)}",
                    "tile_id": f"{city}/{Path(entry['sats'][0]).stem}",
                    "track": TRACK,
                    "semi_positive_tile_ids": [f"{city}/{Path(s).stem}" for s in entry["sats"][1:]],
                    "vigor_delta_lat_px": d0,
                    "vigor_delta_lon_px": d1,
                    "semi_positive_vigor_deltas_px": [list(d) for d in entry["deltas"][1:]],
                }
            )

    captures = pd.DataFrame(capture_rows)
    if captures.empty:
        raise ValueError(f"no panoramas found under {root}")
    tiles = make_tiles(pd.DataFrame(tile_rows))
    captures["split_same_area"] = captures["split_same_area"].astype(object)
    if geometric_cities:
        sel = captures["city"].isin(geometric_cities)
        sub = captures[sel]
        geo_pairs, unmatched = match_by_location(sub, tiles, track=TRACK, max_semi=3)
        if unmatched:
            notes.append(f"{len(unmatched)} panoramas lie in no satellite footprint and have no pair")
        blocks = block_split(sub, test_fraction=0.25)
        captures.loc[sel, "split_same_area"] = blocks.to_numpy()
        pair_rows_df = pd.DataFrame(pair_rows) if pair_rows else None
        pairs = pd.concat([p for p in (pair_rows_df, geo_pairs) if p is not None], ignore_index=True)
    else:
        pairs = pd.DataFrame(pair_rows)
    captures["split_cross_area"] = [_cross_split(c) for c in captures["city"]]
    if protocol == "same-area":
        unsplit = captures["split_same_area"].isna()
        if unsplit.all():
            raise ValueError("same-area protocol needs splits/<City>/same_area_balanced_{train,test}.txt")
        if unsplit.any():
            notes.append(f"{int(unsplit.sum())} panoramas are in no same-area split file; put in 'train'")
        captures["split"] = captures["split_same_area"].fillna("train")
    else:
        captures["split"] = captures["split_cross_area"]
    captures = captures.drop(columns=["split_same_area"])
    return IngestResult(
        captures=make_captures(captures),
        tiles=tiles,
        pairs=make_pairs(pairs),
        source=f"vigor:{root}",
        notes=notes,
    )


def _panoid(name: str) -> str:
    return parse_panorama_name(name)[0]


def _capture_row(city: str, name: str, pano_dir: Path, *, same_area: str | None) -> dict[str, Any]:
    panoid, lat, lon = parse_panorama_name(name)
    return {
        "capture_id": f"{city}/{panoid}",
        "city": city,
        "lat": lat,
        "lon": lon,
        "heading_deg": PANORAMA_HEADING_DEG,
        "fov_deg": 360.0,
        "uri": absolute(pano_dir / name),
        "split_same_area": same_area,
        "kind": "panorama",
        "place_id": panoid,
    }


def _city_labels(split_dir: Path) -> dict[str, tuple[dict[str, Any], str | None]] | None:
    """pano name -> (label entry, same-area split or None); None when the city has no label files."""
    out: dict[str, tuple[dict[str, Any], str | None]] = {}
    same_files = {s: split_dir / f"same_area_balanced_{s}.txt" for s in ("train", "test")}
    all_file = split_dir / "pano_label_balanced.txt"
    present = [p for p in (*same_files.values(), all_file) if p.exists()]
    if not present:
        return None
    if all_file.exists():
        for entry in read_label_file(all_file):
            out[entry["pano"]] = (entry, None)
    for split, path in same_files.items():
        if not path.exists():
            continue
        for entry in read_label_file(path):
            out[entry["pano"]] = (entry, split)
    return out
