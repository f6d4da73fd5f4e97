"""A picture a person can check the world with: panorama | photo | aerial tile, one row per place.

The aerial tile gets a dot on the camera and a wedge for the photo's field of view; the panorama gets
compass letters (N at the left edge, E at a quarter of the width), so correspondences are easy to find.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

GAP = 4
LABEL_H = 14


def _pick_places(captures: pd.DataFrame, per_city: int, max_rows: int) -> list[str]:
    """A few places per city, spread over cities, preferring the test split."""
    picked: list[str] = []
    for _, group in captures[captures["kind"] == "panorama"].groupby("city", sort=False):
        test = group[group["split"] == "test"]
        src = test if len(test) >= per_city else group
        picked.extend(src["place_id"].iloc[:per_city].tolist())
    return picked[:max_rows]


def write_preview(world_dir: str | Path, path: str | Path, *, per_city: int = 2, max_rows: int = 8) -> Path:
    """Write the grid PNG for the world in ``world_dir``; returns its path."""
    from PIL import Image, ImageDraw

    from wherecnn.data.manifest import read_captures, read_tiles

    world_dir, path = Path(world_dir), Path(path)
    caps = read_captures(world_dir)
    tiles = read_tiles(world_dir)
    places = _pick_places(caps, per_city, max_rows)
    by_id = caps.set_index("capture_id")
    tile_by_place = tiles[tiles["kind"] == "centred"].set_index("place_id")
    rows = []
    for pid in places:
        pano = Image.open(by_id.loc[f"{pid}-pano", "uri"]).convert("RGB")
        photo = Image.open(by_id.loc[f"{pid}-photo", "uri"]).convert("RGB")
        heading = float(by_id.loc[f"{pid}-photo", "heading_deg"])
        tile = Image.open(tile_by_place.loc[pid, "uri"]).convert("RGB")
        th = pano.height
        photo = photo.resize((th, th))
        tile = tile.resize((th, th))
        draw = ImageDraw.Draw(tile)
        c = th / 2
        for a in (heading - 45, heading + 45):  # photo field of view
            r = math.radians(a)
            draw.line([(c, c), (c + c * math.sin(r), c - c * math.cos(r))], fill=(255, 60, 60), width=2)
        draw.ellipse([c - 3, c - 3, c + 3, c + 3], fill=(255, 230, 0), outline=(0, 0, 0))
        w = pano.width + photo.width + tile.width + 2 * GAP
        row = Image.new("RGB", (w, th + LABEL_H), (255, 255, 255))
        row.paste(pano, (0, LABEL_H))
        row.paste(photo, (pano.width + GAP, LABEL_H))
        row.paste(tile, (pano.width + photo.width + 2 * GAP, LABEL_H))
        d = ImageDraw.Draw(row)
        for i, letter in enumerate("NESW"):
            d.text((i * pano.width / 4 + 2, 1), letter, fill=(200, 0, 0))
        d.text((pano.width // 2 + 14, 1), pid, fill=(0, 0, 0))
        d.text((pano.width + GAP + 2, 1), f"photo {heading:.0f} deg", fill=(0, 0, 0))
        d.text((pano.width + photo.width + 2 * GAP + 2, 1), "aerial tile 100 m", fill=(0, 0, 0))
        rows.append(row)
    if not rows:
        raise ValueError(f"{world_dir}: no panoramas to preview")
    width = max(r.width for r in rows)
    grid = Image.new("RGB", (width, sum(r.height + GAP for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + GAP
    path.parent.mkdir(parents=True, exist_ok=True)
    # an adaptive palette keeps the PNG small enough for a README
    small = grid.quantize(colors=192, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)
    return path


def preview_array(path: str | Path) -> np.ndarray:
    """The preview as an RGB array (for tests)."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))
