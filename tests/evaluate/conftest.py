"""A fake two-city world written in milliseconds (no rendering): random images, real manifest schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from wherecnn.data.manifest import captures_frame, tiles_frame, write_manifests

CITIES = {"alpha": (40.0, -74.0), "beta": (34.0, -118.0)}


def _img(path: Path, rng: np.random.Generator, shape: tuple[int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    return str(path)


def make_fake_world(root: Path, *, places: int = 8, grid: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    caps, tiles, pairs = [], [], []
    d = 0.0009  # ~100 m

    def tile(tid: str, city: str, lat: float, lon: float, kind: str, split: str) -> dict:
        uri = _img(root / city / "tiles" / f"{tid}.png", rng, (32, 32))
        box = dict(min_lat=lat - d / 2, max_lat=lat + d / 2, min_lon=lon - d / 2, max_lon=lon + d / 2)
        ids = dict(tile_id=tid, city=city, lat=lat, lon=lon)
        return dict(**ids, gsd_m=0.78, kind=kind, uri=uri, split=split, **box)

    for ci, (city, (lat0, lon0)) in enumerate(CITIES.items()):
        grid_ids = []
        for r in range(grid):
            for c in range(grid):
                tid = f"{city}-g{r}{c}"
                lat, lon = lat0 + r * d / 2, lon0 + c * d / 2
                grid_ids.append((tid, lat, lon))
                tiles.append(tile(tid, city, lat, lon, "grid", "gallery"))
        for p in range(places):
            pid = f"{city}-{p:03d}"
            split = "test" if p % 2 else "train"
            cross = "test" if ci == 1 else "train"
            lat, lon = lat0 + rng.uniform(0, d), lon0 + rng.uniform(0, d)
            for kind, shape, fov, heading in (
                ("pano", (32, 128), 360.0, 0.0),
                ("photo", (32, 32), 90.0, 45.0),
            ):
                caps.append(
                    dict(
                        capture_id=f"{pid}-{kind}",
                        city=city,
                        lat=lat,
                        lon=lon,
                        heading_deg=heading,
                        fov_deg=fov,
                        uri=_img(root / city / kind / f"{pid}.png", rng, shape),
                        split=split,
                        split_cross_area=cross,
                    )
                )
            tid = f"{pid}-tile"
            tiles.append(tile(tid, city, lat, lon, "centred", split))
            near = min(grid_ids, key=lambda g: (g[1] - lat) ** 2 + (g[2] - lon) ** 2)[0]
            semis = [g[0] for g in grid_ids if g[0] != near][:2]
            pairs += [
                dict(capture_id=f"{pid}-pano", tile_id=tid, track="aligned", semi_positive_tile_ids=[]),
                dict(capture_id=f"{pid}-pano", tile_id=near, track="offset", semi_positive_tile_ids=semis),
                dict(capture_id=f"{pid}-photo", tile_id=tid, track="photo", semi_positive_tile_ids=[]),
            ]
    tdf = pd.DataFrame(tiles)
    tdf["split_cross_area"] = np.where(tdf["city"] == "beta", "test", "train")
    write_manifests(root, captures_frame(pd.DataFrame(caps)), tiles_frame(tdf), pd.DataFrame(pairs))
    return root


def make_checkpoint(out: Path, *, protocol: str = "same-area", track: str = "aligned", seed: int = 0) -> Path:
    """An untrained dual-cpu checkpoint in the training loop's format (card + metrics.jsonl)."""
    import torch
    from wherecnn.models import build_model
    from wherecnn.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = build_model("dual-cpu")
    history = [{"kind": "step", "epoch": 0, "step": s, "loss": 3.0 - 0.2 * s} for s in range(1, 6)]
    history.append({"kind": "epoch", "epoch": 1, "step": 5, "loss": 2.4, "val": {"R@1": 0.1}})
    save_checkpoint(
        str(out),
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        loop_state={"epoch": 1, "step": 5},
        card={"model": "dual-cpu", "config": model.config, "data": {"protocol": protocol, "track": track}},
        history=history,
    )
    return out


@pytest.fixture(scope="session")
def fake_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_world(tmp_path_factory.mktemp("fake_world"))
