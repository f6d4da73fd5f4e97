"""End to end on a model that learned something: train a tiny model for a few epochs with the real training
function, index the tiles with its Embedder, and check that training captures find their own tile first."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_true_tile_of_training_captures_ranks_first(tmp_path: Path) -> None:
    import importlib.util

    from wherecnn import storage
    from wherecnn.data.manifest import read_captures, read_pairs, read_tiles
    from wherecnn.index.store import TilePoint, open_store
    from wherecnn.models.embedder import Embedder
    from wherecnn.search import SearchEngine
    from wherecnn.train.loop import run_training
    from wherecnn.train.options import TrainOptions

    spec = importlib.util.spec_from_file_location("root_conftest", Path(__file__).parents[1] / "conftest.py")
    assert spec and spec.loader
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    # 24 places (20 train, 4 held for validation): one 16-pair batch per epoch, a few seconds on a free CPU.
    fake_pairs = root_conftest.make_fake_pairs(tmp_path / "pairs", n_places=24)
    ckpt = tmp_path / "ckpt"
    run_training(
        TrainOptions(
            data=str(fake_pairs),
            out=str(ckpt),
            epochs=60,
            track="aligned",
            seed=0,
            device="cpu",
            val_size=4,
            batch_size=16,
            lr=3e-3,
            progress=False,
        )
    )
    embedder = Embedder.from_checkpoint(str(ckpt), device="cpu")
    tiles = read_tiles(fake_pairs)
    vectors = embedder.aerial([storage.load_image(u) for u in tiles["uri"]])
    store = open_store(":memory:")
    store.upsert(
        TilePoint(
            tile_id=r.tile_id,
            vector=v,
            payload={
                "location": {"lat": r.lat, "lon": r.lon},
                "city": r.city,
                "tile_id": r.tile_id,
                "uri": r.uri,
                "gsd_m": r.gsd_m,
            },
        )
        for r, v in zip(tiles.itertuples(), vectors, strict=True)
    )
    engine = SearchEngine(store, embedder)
    captures = read_captures(fake_pairs).set_index("capture_id")
    pairs = read_pairs(fake_pairs)
    # the pairs' own columns only: some also copy the capture's city and split, as the synthetic world's do
    train = pairs.loc[pairs["track"] == "aligned", ["capture_id", "tile_id"]].merge(
        captures[captures["split"] == "train"][["uri", "lat", "lon", "city"]],
        left_on="capture_id",
        right_index=True,
    )
    firsts = 0
    for row in train.itertuples():
        result = engine.search(row.uri, cities=[row.city], k=5, true_lat=row.lat, true_lon=row.lon)
        top = result.ranked.iloc[0]
        firsts += int(top.tile_id == row.tile_id)
        if top.tile_id == row.tile_id:
            assert top.distance_m < 1.0
    assert len(train) == 20
    assert firsts >= 15, f"only {firsts}/20 training captures found their own tile first"  # chance: 1/12
