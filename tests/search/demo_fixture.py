"""A miniature `wherecnn demo` folder for dashboard and serving tests, built in seconds.

Layout as the demo writes it: DIR/data (captures.parquet + tiles.parquet + <city>/aerial.tif),
DIR/checkpoint (an untrained seeded `dual-cpu` saved with the real checkpoint writer) and DIR/index (a Qdrant
Edge store whose vectors come from that checkpoint's Embedder). Rankings are arbitrary (untrained model);
what the tests check is the plumbing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CITIES = {"alpha": (40.0, -75.0), "beta": (48.85, 2.35)}
GRID = 5
STEP_M = 50.0
TILE_M = 100.0


def _blocks(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    blocks = rng.integers(30, 230, size=(cells, cells, 3), dtype=np.uint8)
    img = np.kron(blocks, np.ones((size // cells, size // cells, 1), dtype=np.uint8))
    return np.ascontiguousarray(img[:size, :size])


def _jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def build_demo_dir(root: Path, seed: int = 0) -> Path:
    import geopandas as gpd
    import pandas as pd
    import rasterio
    import torch
    from rasterio.transform import from_origin
    from wherecnn.data.manifest import captures_frame, tiles_frame
    from wherecnn.geo import from_utm, offset_m, to_utm, utm_crs_for
    from wherecnn.index.store import TilePoint, open_store
    from wherecnn.models.embedder import Embedder
    from wherecnn.train.checkpoint import save_checkpoint

    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    tiles, captures = [], []
    for city, (lat0, lon0) in CITIES.items():
        (data / city / "tiles").mkdir(parents=True, exist_ok=True)
        (data / city / "captures").mkdir(parents=True, exist_ok=True)
        crs = utm_crs_for(lat=lat0, lon=lon0)
        e0, n0 = to_utm(lat=lat0, lon=lon0, crs=crs)
        half = (GRID - 1) / 2 * STEP_M + TILE_M / 2
        px = 0.8
        size = int(round(2 * half / px))
        mosaic = _blocks(rng, size, 24)
        with rasterio.open(
            data / city / "aerial.tif",
            "w",
            driver="GTiff",
            width=size,
            height=size,
            count=3,
            dtype="uint8",
            crs=crs.to_wkt(),
            transform=from_origin(e0 - half, n0 + half, px, px),
        ) as dst:
            dst.write(np.moveaxis(mosaic, -1, 0))
        for r in range(GRID):
            for c in range(GRID):
                east, north = (c - (GRID - 1) / 2) * STEP_M, (r - (GRID - 1) / 2) * STEP_M
                lat, lon = from_utm(easting=e0 + east, northing=n0 + north, crs=crs)
                row0 = int(round((half - north - TILE_M / 2) / px))
                col0 = int(round((half + east - TILE_M / 2) / px))
                span = int(round(TILE_M / px))
                tile_img = mosaic[row0 : row0 + span, col0 : col0 + span]
                tile_id = f"{city}-g{r:02d}{c:02d}"
                uri = f"{city}/tiles/{tile_id}.jpg"
                (data / uri).write_bytes(_jpeg(tile_img))
                min_lat, min_lon = offset_m(lat=lat, lon=lon, east_m=-TILE_M / 2, north_m=-TILE_M / 2)
                max_lat, max_lon = offset_m(lat=lat, lon=lon, east_m=TILE_M / 2, north_m=TILE_M / 2)
                tiles.append(
                    {
                        "tile_id": tile_id,
                        "city": city,
                        "lat": float(lat),
                        "lon": float(lon),
                        "gsd_m": px,
                        "uri": uri,
                        "split": "gallery",
                        "kind": "grid",
                        "min_lat": float(min_lat),
                        "min_lon": float(min_lon),
                        "max_lat": float(max_lat),
                        "max_lon": float(max_lon),
                        "source_uri": f"{city}/aerial.tif",
                        "image": tile_img,
                    }
                )
                if (r + c) % 4 == 0:
                    cap_id = f"{city}-p{r}{c}-pano"
                    pano = np.concatenate([_blocks(rng, 64, 4) for _ in range(4)], axis=1)
                    (data / city / "captures" / f"{cap_id}.jpg").write_bytes(_jpeg(pano))
                    captures.append(
                        {
                            "capture_id": cap_id,
                            "city": city,
                            "lat": float(lat),
                            "lon": float(lon),
                            "heading_deg": 0.0,
                            "fov_deg": 360.0,
                            "uri": f"{city}/captures/{cap_id}.jpg",
                            "split": "test",
                            "kind": "panorama",
                        }
                    )
    cap_frame = captures_frame(pd.DataFrame(captures))
    tile_frame = tiles_frame(pd.DataFrame([{k: v for k, v in t.items() if k != "image"} for t in tiles]))
    gpd.GeoDataFrame(cap_frame).to_parquet(data / "captures.parquet", index=False)
    gpd.GeoDataFrame(tile_frame).to_parquet(data / "tiles.parquet", index=False)

    embedder = Embedder.untrained("dual-cpu", seed=seed)
    model = embedder.model
    card = save_checkpoint(
        str(root / "checkpoint"),
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        loop_state={"epoch": 0},
        card={"name": "dual-cpu", "note": "untrained test model"},
        history=[],
    )
    embedder = Embedder.from_checkpoint(str(root / "checkpoint"), device="cpu")
    vectors = embedder.aerial([t["image"] for t in tiles])
    store = open_store(f"edge://{root / 'index'}")
    try:
        store.begin_version()
        store.upsert(
            TilePoint(
                tile_id=t["tile_id"],
                vector=v,
                payload={
                    "location": {"lat": t["lat"], "lon": t["lon"]},
                    "city": t["city"],
                    "tile_id": t["tile_id"],
                    "uri": str(data / t["uri"]),
                    "gsd_m": t["gsd_m"],
                    "model": card["model_id"],
                    "bounds": {k: t[k] for k in ("min_lat", "min_lon", "max_lat", "max_lon")},
                },
            )
            for t, v in zip(tiles, vectors, strict=True)
        )
        store.switch()
    finally:
        store.close()
    return root


def demo_env(root: Path) -> dict[str, str]:
    return {
        "WHERECNN_DATA_DIR": str(root / "data"),
        "WHERECNN_STORE": f"edge://{root / 'index'}",
        "WHERECNN_CHECKPOINT": str(root / "checkpoint"),
    }
