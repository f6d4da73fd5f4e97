"""The pair dataset: track, protocol and split filters; preparation, seeded augmentation, in-memory images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from wherecnn.data.datasets import PairDataset, load_pairs


@pytest.mark.parametrize(
    "augment",
    [
        {"rotation": "quarter", "flip": True, "shift": 0.1, "color": 0.2},
        {"rotation": "any", "flip": True, "scale": [0.8, 1.0]},
        {"rotation": "quarter", "flip": True, "photo_fov": 90.0},
        {"rotation": "none", "flip": False, "photo_fov": 90.0, "photo_sector": 200.0},
        {"rotation": "quarter", "flip": True, "photo_share": 0.5, "photo_fovs": [60.0, 120.0]},
    ],
)
def test_a_batch_equals_its_samples_prepared_alone(fake_pairs: Path, augment: dict) -> None:
    ds = PairDataset(
        fake_pairs, track="aligned", ground_size=(32, 128), aerial_size=(32, 32), augment=augment, seed=4
    )
    ds.set_epoch(3)
    idx = [7, 0, 12, 5, 30]
    batch = ds.batch(idx)
    assert batch["index"].tolist() == idx
    for row, i in enumerate(idx):
        alone = ds[i]
        assert torch.equal(batch["ground"][row], alone["ground"])
        assert torch.equal(batch["aerial"][row], alone["aerial"])


def test_the_photo_curriculum_cuts_sectors_wider_than_the_photos(fake_pairs: Path) -> None:
    frame = load_pairs(fake_pairs, track="aligned", protocol="same-area", split="train").iloc[:4]
    augment = {"photo_fov": 90, "photo_sector": 180.0, "rotation": "none", "flip": False}
    data = PairDataset(frame=frame, ground_size=(32, 128), augment=augment)

    def filled() -> int:
        return int((np.abs(data[0]["ground"].numpy()).max(axis=(0, 1)) > 0.05).sum())

    assert filled() == 64  # half the canvas: panorama columns as they are
    augment["photo_sector"] = 90.0  # at the photos' own field of view: the pinhole cut
    assert 28 <= filled() <= 36


def test_a_photo_share_shows_some_panoramas_as_photos(fake_pairs: Path) -> None:
    frame = load_pairs(fake_pairs, track="aligned", protocol="same-area", split="train").iloc[:40]
    augment = {"photo_share": 1.0, "photo_fovs": [60.0, 60.0], "rotation": "none", "flip": False}
    data = PairDataset(frame=frame, ground_size=(32, 128), augment=augment)

    def filled(i: int) -> int:
        return int((np.abs(data[i]["ground"].numpy()).max(axis=(0, 1)) > 0.05).sum())

    assert all(18 <= filled(i) <= 25 for i in range(8))  # every one a 60-degree photo: a sixth of 128
    augment["photo_share"], augment["photo_fovs"] = 0.5, [60.0, 120.0]
    widths = [filled(i) for i in range(len(frame))]
    photos = [w for w in widths if w < 100]
    assert 8 <= len(photos) <= 32  # about half, drawn per sample
    assert all(18 <= w <= 46 for w in photos) and max(photos) - min(photos) > 8  # 60-120 degrees
    data.set_epoch(1)  # drawn again each epoch
    assert [filled(i) for i in range(len(frame))] != widths


def test_dataset_filters_track_protocol_split(fake_pairs: Path) -> None:
    same = load_pairs(fake_pairs, track="aligned", protocol="same-area", split="train")
    cross = load_pairs(fake_pairs, track="aligned", protocol="cross-area", split="test")
    assert len(same) == 80 and set(cross["city"]) == {"beta"}
    photo = load_pairs(fake_pairs, track="photo", protocol="same-area", split="test")
    assert (photo["fov_deg"] == 90).all()
    with pytest.raises(ValueError, match="no pairs of track"):
        load_pairs(fake_pairs, track="nope", protocol="same-area", split="train")


def test_dataset_items_and_seeded_augmentation(fake_pairs: Path) -> None:
    ds = PairDataset(
        fake_pairs,
        track="aligned",
        ground_size=(32, 128),
        aerial_size=(32, 32),
        augment={"rotation": "quarter", "flip": True},
        seed=3,
    )
    item = ds[5]
    assert item["ground"].shape == (3, 32, 128) and item["aerial"].shape == (3, 32, 32)
    assert abs(float(item["ground"].mean())) < 3
    again = ds[5]
    assert (again["aerial"] == item["aerial"]).all()
    ds.set_epoch(1)
    changed = [not (ds[i]["aerial"] == PairDataset.__getitem__(ds, i)["aerial"]).all() for i in range(3)]
    assert not any(changed)  # same epoch, same result
    plain = PairDataset(fake_pairs, track="aligned", ground_size=(32, 128), aerial_size=(32, 32))
    ds.set_epoch(0)
    differs = sum(not (ds[i]["aerial"] == plain[i]["aerial"]).all() for i in range(12))
    assert differs >= 6  # 7 of 8 augmentations change the tile


def test_in_memory_images_are_prepared_once() -> None:
    """Rendered images are prepared like files; already prepared ones are kept as they are."""
    frame = pd.DataFrame(
        {
            "capture_id": ["a"],
            "tile_id": ["t"],
            "semi_positive_tile_ids": [[]],
            "city": ["c"],
            "lat": [0.0],
            "lon": [0.0],
            "heading_deg": [90.0],
            "fov_deg": [90.0],
        }
    )
    photo = np.full((32, 32, 3), 200, dtype=np.uint8)
    tile = np.full((40, 40, 3), 50, dtype=np.uint8)
    raw = PairDataset(frame=frame, images=[(photo, tile)], ground_size=(16, 64), aerial_size=(16, 16))
    canvas, small = raw.raw(0)
    assert canvas.shape == (16, 64, 3) and small.shape == (16, 16, 3)
    assert set(np.where(canvas[0, :, 0] == 200)[0]) == set(range(8, 24))  # a quarter of the canvas, at 90 deg
    kept = PairDataset(
        frame=frame, images=[(canvas, small)], prepared=True, ground_size=(16, 64), aerial_size=(16, 16)
    )
    assert np.array_equal(kept.raw(0)[0], canvas)  # not squeezed into a quarter again
