"""Shared fixtures: a tiny synthetic world (generated once per session) and a loopback S3 server."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    """Streamlit's AppTest runs the app as ``__main__`` and leaves it in sys.modules; a later test that
    spawns processes (torch.multiprocessing, Ray) would then re-run the dashboard in every child."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`wherecnn synth --size tiny --seed 0`: 2 cities, ~100 captures. Treat as read-only."""
    from wherecnn.data.synthetic import generate

    out = tmp_path_factory.mktemp("tiny_world")
    generate(out, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 endpoint on loopback; yields its URL. Credentials are dummies set in the environment."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def make_fake_pairs(out: Path, *, n_places: int = 96, seed: int = 0) -> Path:
    """Tiny manifests whose ground views really are the polar unwrap of their tiles (north at the left edge),
    so a model can learn the pairs in seconds and augmentation consistency matters. Two cities, three tracks.
    """
    import math

    import numpy as np
    import pandas as pd
    from PIL import Image
    from wherecnn.data.manifest import captures_frame, tiles_frame, write_manifests

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    size, ph, pw = 64, 32, 128
    rows = (np.arange(ph) + 0.5) / ph
    cols = 2 * math.pi * (np.arange(pw) + 0.5) / pw
    r, a = np.meshgrid((1 - rows) * (size / 2 - 1), cols, indexing="ij")
    px = np.clip(size / 2 + r * np.sin(a), 0, size - 1).astype(int)
    py = np.clip(size / 2 - r * np.cos(a), 0, size - 1).astype(int)
    caps, tiles, pairs = [], [], []
    for i in range(n_places):
        city = "alpha" if i % 2 == 0 else "beta"
        lat0, lon0 = (40.0, -75.0) if city == "alpha" else (41.0, -87.0)
        lat, lon = lat0 + rng.uniform(0, 0.01), lon0 + rng.uniform(0, 0.01)
        tile = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        pano = tile[py, px]
        heading = float(rng.uniform(0, 360))
        c0 = int(round((heading - 45) / 360 * pw))
        photo = pano[:, (np.arange(pw // 4) + c0) % pw]
        Image.fromarray(tile).save(out / f"t{i:03d}.png")
        Image.fromarray(pano).save(out / f"p{i:03d}.png")
        Image.fromarray(photo).save(out / f"f{i:03d}.png")
        split = "test" if i % 6 == 5 else "train"
        cross = "test" if city == "beta" and i % 4 == 1 else "train"
        for cid, uri, hd, fov in (
            (f"{i:03d}-pano", f"p{i:03d}.png", 0.0, 360.0),
            (f"{i:03d}-photo", f"f{i:03d}.png", heading, 90.0),
        ):
            caps.append(
                dict(
                    capture_id=cid,
                    city=city,
                    lat=lat,
                    lon=lon,
                    heading_deg=hd,
                    fov_deg=fov,
                    uri=uri,
                    split=split,
                    split_cross_area=cross,
                )
            )
        d = 0.0004
        tiles.append(
            dict(
                tile_id=f"tile-{i:03d}",
                city=city,
                lat=lat,
                lon=lon,
                gsd_m=1.5,
                uri=f"t{i:03d}.png",
                split="gallery",
                kind="centred",
                min_lat=lat - d,
                min_lon=lon - d,
                max_lat=lat + d,
                max_lon=lon + d,
            )
        )
        pairs += [
            dict(
                capture_id=f"{i:03d}-pano",
                tile_id=f"tile-{i:03d}",
                track="aligned",
                semi_positive_tile_ids=[],
            ),
            dict(
                capture_id=f"{i:03d}-pano", tile_id=f"tile-{i:03d}", track="offset", semi_positive_tile_ids=[]
            ),
            dict(
                capture_id=f"{i:03d}-photo", tile_id=f"tile-{i:03d}", track="photo", semi_positive_tile_ids=[]
            ),
        ]
    for pair in pairs[-3:]:  # the synthetic world also copies city and splits into pairs
        pair.update(city=city, split=split)
    write_manifests(
        out, captures_frame(pd.DataFrame(caps)), tiles_frame(pd.DataFrame(tiles)), pd.DataFrame(pairs)
    )
    return out


@pytest.fixture(scope="session")
def fake_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make_fake_pairs` with 96 places (read-only); for model/training tests that need no rendered world."""
    return make_fake_pairs(tmp_path_factory.mktemp("fake_pairs"))
