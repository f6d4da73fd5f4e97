"""Fixtures for search tests: a small seeded tile index (real vector store when available) and a tiny
deterministic embedder, so engine logic is tested without training a model."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CITY_CENTRES = {"alpha": (40.0, -75.0), "beta": (48.85, 2.35)}
GRID = 6
STEP_M = 50.0
TILE_M = 100.0


class PixelEmbedder:
    """A deterministic stand-in for `Embedder`: the zero-mean 12×12 thumbnail, L2-normalised.

    An image and its own tile embed identically, so "the true tile ranks first" is exact; records the
    fov/heading it was called with so tests can check what the engine passed.
    """

    embed_dim = 12 * 12 * 3
    model_id = "pixel-test"
    card: dict[str, Any] = {"name": "pixel-test"}
    ground_size = (12, 12)
    aerial_size = (12, 12)

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def _embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from PIL import Image

        out = []
        for img in images:
            small = np.asarray(Image.fromarray(img).resize((12, 12), Image.BILINEAR), dtype=np.float32)
            v = (small - small.mean()).reshape(-1)
            out.append(v / (np.linalg.norm(v) + 1e-9))
        return np.stack(out).astype(np.float32)

    def aerial(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._embed(images)

    def ground(
        self, images: Sequence[np.ndarray], *, heading_deg: Any = None, fov_deg: Any = None
    ) -> np.ndarray:
        self.calls.append({"heading_deg": heading_deg, "fov_deg": fov_deg, "shape": images[0].shape})
        return self._embed(images)


def tile_image(seed: int) -> np.ndarray:
    """A 96×96 image of 8×8 random colour blocks: distinct per seed, stable under resizing."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((12, 12, 1), dtype=np.uint8))


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class TinyIndex:
    store: Any
    embedder: PixelEmbedder
    tiles: list[dict[str, Any]]  # tile_id, city, lat, lon, uri, image
    root: Path

    city_centres = CITY_CENTRES
    grid = GRID

    def tile(self, tile_id: str) -> dict[str, Any]:
        return next(t for t in self.tiles if t["tile_id"] == tile_id)

    @staticmethod
    def png(img: np.ndarray) -> bytes:
        return png_bytes(img)

    @staticmethod
    def pattern(seed: int) -> np.ndarray:
        return tile_image(seed)


def _build_tiles(root: Path) -> list[dict[str, Any]]:
    from wherecnn.geo import offset_m

    tiles = []
    seed = 0
    for city, (lat0, lon0) in CITY_CENTRES.items():
        for r in range(GRID):
            for c in range(GRID):
                east, north = (c - GRID / 2) * STEP_M, (r - GRID / 2) * STEP_M
                lat, lon = offset_m(lat=lat0, lon=lon0, east_m=east, north_m=north)
                min_lat, min_lon = offset_m(
                    lat=lat0, lon=lon0, east_m=east - TILE_M / 2, north_m=north - TILE_M / 2
                )
                max_lat, max_lon = offset_m(
                    lat=lat0, lon=lon0, east_m=east + TILE_M / 2, north_m=north + TILE_M / 2
                )
                tile_id = f"{city}-g{r:02d}{c:02d}"
                img = tile_image(seed)
                seed += 1
                path = root / f"{tile_id}.png"
                path.write_bytes(png_bytes(img))
                tiles.append(
                    {
                        "tile_id": tile_id,
                        "city": city,
                        "lat": float(lat),
                        "lon": float(lon),
                        "uri": str(path),
                        "image": img,
                        "bounds": {
                            "min_lat": float(min_lat),
                            "min_lon": float(min_lon),
                            "max_lat": float(max_lat),
                            "max_lon": float(max_lon),
                        },
                    }
                )
    return tiles


def open_test_store() -> Any:
    from wherecnn.index.store import open_store

    return open_store(":memory:")


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyIndex]:
    from wherecnn.index.store import TilePoint

    root = tmp_path_factory.mktemp("tiny_index")
    tiles = _build_tiles(root)
    embedder = PixelEmbedder()
    vectors = embedder.aerial([t["image"] for t in tiles])
    store = open_test_store()
    store.begin_version()
    store.upsert(
        TilePoint(
            tile_id=t["tile_id"],
            vector=v,
            payload={
                "location": {"lat": t["lat"], "lon": t["lon"]},
                "city": t["city"],
                "tile_id": t["tile_id"],
                "uri": t["uri"],
                "gsd_m": TILE_M / 96,
                "bounds": t["bounds"],
                "model": embedder.model_id,
            },
        )
        for t, v in zip(tiles, vectors, strict=True)
    )
    store.switch()
    try:
        yield TinyIndex(store=store, embedder=embedder, tiles=tiles, root=root)
    finally:
        store.close()


@pytest.fixture()
def engine(tiny_index: TinyIndex) -> Any:
    from wherecnn.search import SearchEngine

    return SearchEngine(tiny_index.store, tiny_index.embedder, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature `wherecnn demo` folder (data, checkpoint, index), one per module: a Qdrant Edge version
    admits one open handle, and the dashboard's cached engine keeps its handle for the session."""
    from .demo_fixture import build_demo_dir

    return build_demo_dir(tmp_path_factory.mktemp("demo"))


@pytest.fixture()
def demo_settings(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The environment pointing the settings at the module's demo folder (in-process backend)."""
    from wherecnn.config import reset_settings_cache

    from .demo_fixture import demo_env

    for key, value in demo_env(demo_dir).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WHERECNN_API_URL", raising=False)
    reset_settings_cache()
    yield demo_dir
    reset_settings_cache()
