"""Fixtures for the index tests: a small seeded tile set (JPEGs + tiles.parquet) with known bad tiles."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

TILE_PX = 128
GSD = 100.0 / TILE_PX
BAD = {"missing": 1, "unreadable": 2, "wrong_size": 1}


def _tile_image(rng: np.random.Generator, px: int = TILE_PX) -> bytes:
    """Blocky random colours: distinct per tile, so every tile's embedding finds itself."""
    coarse = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((px, px), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_tile_set(
    out: Path, n_good: int = 24, seed: int = 0, prefix: str = "t"
) -> tuple[Path, dict[str, str]]:
    """``out/tiles.parquet`` + ``out/tiles/*.jpg`` (relative URIs); returns (manifest, bad id -> reason)."""
    rng = np.random.default_rng(seed)
    (out / "tiles").mkdir(parents=True, exist_ok=True)
    rows, bad = [], {}
    cities = ("alpha", "beta")
    specs = [("good", i) for i in range(n_good)] + [(r, i) for r, k in BAD.items() for i in range(k)]
    for j, (kind, _) in enumerate(specs):
        city = cities[j % 2]
        tile_id = f"{prefix}-{city}-{j:04d}"
        rel = f"tiles/{tile_id}.jpg"
        if kind == "good":
            (out / rel).write_bytes(_tile_image(rng))
        elif kind == "unreadable":
            (out / rel).write_bytes(b"not a jpeg at all" if j % 2 else _tile_image(rng)[:200])
        elif kind == "wrong_size":
            (out / rel).write_bytes(_tile_image(rng, px=64))
        if kind != "good":
            bad[tile_id] = kind
        lat = (40.70 if city == "alpha" else 48.85) + (j // 2 % 6) * 0.0009
        lon = (-74.00 if city == "alpha" else 2.35) + (j // 12) * 0.0012
        half = 0.00045
        rows.append(
            {
                "tile_id": tile_id, "city": city, "lat": lat, "lon": lon, "gsd_m": GSD, "uri": rel,
                "split": "gallery", "kind": "grid", "size_m": 100.0,
                "min_lat": lat - half, "min_lon": lon - half, "max_lat": lat + half, "max_lon": lon + half,
            }
        )  # fmt: skip
    manifest = out / "tiles.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest, bad


@pytest.fixture
def tile_set(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return make_tile_set(tmp_path / "world")
