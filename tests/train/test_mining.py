"""Sample4Geo-style mining: the neighbour table names the confusable samples; training can use it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from wherecnn.data.datasets import PairDataset, load_pairs
from wherecnn.models import build_model
from wherecnn.train.loop import train_func
from wherecnn.train.mining import carry_neighbours, embed_dataset, neighbour_table
from wherecnn.train.options import TrainOptions

from .tiny import TINY_DUAL_CPU


def test_neighbour_table_lists_most_similar_other_samples() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    g = a.copy()
    table = neighbour_table(g, a, k=5)
    assert table.shape == (50, 5)
    assert not (table == np.arange(50)[:, None]).any()  # never itself
    sims = g @ a.T
    np.fill_diagonal(sims, -np.inf)
    assert (table[:, 0] == sims.argmax(axis=1)).all()
    assert (np.diff(np.take_along_axis(sims, table, axis=1), axis=1) <= 1e-9).all()  # best first


def test_a_carried_table_follows_its_samples_into_the_next_pool() -> None:
    old = [(0, 0), (0, 1), (1, 0), (1, 1)]  # a fresh pool: two epochs' places, two each
    table = np.array([[1, 2], [3, 0], [3, 1], [2, -1]])
    new = [(1, 0), (1, 1), (2, 0), (2, 1)]  # the next epoch: epoch 0's places gone, epoch 2's drawn
    carried = carry_neighbours(table, old, new)
    assert carried.tolist() == [[1, -1], [0, -1], [-1, -1], [-1, -1]]
    assert carry_neighbours(table, old, old).tolist() == table.tolist()  # an unchanged pool keeps its table
    shuffled = [old[i] for i in (2, 0, 3, 1)]
    assert carry_neighbours(table, old, shuffled).tolist() == [[2, 3], [3, 0], [0, -1], [2, 1]]


def test_training_with_mined_batches_runs(fake_pairs: Path, tmp_path: Path) -> None:
    tiny = {**TINY_DUAL_CPU, "train": {"mine_every": 1, "mine_k": 8, "neighbours_per_group": 4}}
    opts = TrainOptions(
        data=str(fake_pairs),
        out=str(tmp_path / "m"),
        epochs=2,
        batch_size=16,
        val_size=16,
        overrides=tiny,
        progress=False,
    )
    summary = train_func(asdict(opts))
    assert summary["epochs"] == 2
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card["config"]["train"]["mine_every"] == 1


def test_mining_embeddings_under_bf16_rank_like_fp32(fake_pairs: Path) -> None:
    model = build_model("dual-cpu")
    frame = load_pairs(str(fake_pairs), track="aligned", protocol="same-area", split="train").iloc[:48]
    dataset = PairDataset(frame=frame, ground_size=model.ground_size, aerial_size=model.aerial_size)
    full = embed_dataset(model, dataset, torch.device("cpu"))
    half = embed_dataset(model, dataset, torch.device("cpu"), bf16=True)
    assert full[0].shape == half[0].shape == (48, 128) and half[0].dtype == np.float32
    assert not np.array_equal(full[0], half[0])  # it did run in bf16
    assert np.abs(full[0] - half[0]).max() < 0.05 and np.abs(full[1] - half[1]).max() < 0.05
    same = (neighbour_table(*full, k=4)[:, 0] == neighbour_table(*half, k=4)[:, 0]).mean()
    assert same >= 0.8


def test_photo_training_mines_with_the_photos_it_trains_on(fake_pairs: Path) -> None:
    """The photo track cuts a photo from each panorama per epoch: mining must embed that photo, not the
    panorama (a photo-trained model never sees whole panoramas, so their neighbours say nothing)."""
    model = build_model("dual-cpu", track="photo")
    frame = load_pairs(str(fake_pairs), track="aligned", protocol="same-area", split="train").iloc[:8]
    augment = {"photo_fov": 90, "rotation": "none", "flip": False}
    kw = dict(frame=frame, ground_size=model.ground_size, aerial_size=model.aerial_size)
    photos, panos = PairDataset(**kw, augment=augment), PairDataset(**kw)  # type: ignore[arg-type]
    photos.set_epoch(3)
    g, a = embed_dataset(model, photos, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        shown = torch.stack([photos[i]["ground"] for i in range(len(frame))])  # what epoch 3 trains on
        expected = model.embed_ground(shown).numpy()
    np.testing.assert_allclose(g, expected, atol=1e-5)
    pano_g, pano_a = embed_dataset(model, panos, torch.device("cpu"))
    assert np.abs(g - pano_g).max() > 0.1
    np.testing.assert_allclose(a, pano_a, atol=1e-6)
