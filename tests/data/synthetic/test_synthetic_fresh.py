"""Fresh training places: identical to the generator's pairs, inside the protocol's training area, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from wherecnn.data.manifest import read_captures, read_pairs, read_tiles, split_column
from wherecnn.data.synthetic.fresh import FreshPlaces
from wherecnn.data.synthetic.generate import split_blocks
from wherecnn.geo import to_utm
from wherecnn.storage import load_image


def _local_xy(fp: FreshPlaces, city: str, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    cs = next(c for c in fp.cities if c.name == city)
    e, n = to_utm(lat=np.asarray(lat), lon=np.asarray(lon), crs=cs.crs)
    return np.stack([e - cs.west, n - cs.south], axis=1)


def _at_generated_places(
    world: Path, track: str, n: int
) -> tuple[pd.DataFrame, pd.DataFrame, list[np.ndarray], list[np.ndarray]]:
    """The first ``n`` generated panoramas of the first open city, and fresh pairs at their places."""
    caps = pd.DataFrame(read_captures(world).drop(columns="geometry"))
    fp = FreshPlaces(world, protocol="same-area", track=track, seed=0)
    city = fp.city_names[0]
    panos = caps[(caps["city"] == city) & (caps["kind"] == "panorama")].head(n)
    xy = _local_xy(fp, city, panos["lat"].to_numpy(), panos["lon"].to_numpy())
    return (panos, *fp.render(city, xy, np.random.default_rng(0), prefix="t"))


def test_fresh_pairs_match_the_written_ones(tiny_world: Path) -> None:
    """At a generated place a fresh tile is byte-identical to the file, its panorama shows the same scene."""
    tiles = pd.DataFrame(read_tiles(tiny_world).drop(columns="geometry")).set_index("tile_id")
    pairs = read_pairs(tiny_world)
    panos, frame, grounds, fresh_tiles = _at_generated_places(tiny_world, "aligned", 6)
    aligned = pairs[pairs["track"] == "aligned"].set_index("capture_id")["tile_id"]
    for k, cap in enumerate(panos["capture_id"]):
        written = load_image(str(tiny_world / tiles.loc[aligned[cap], "uri"]))
        assert np.array_equal(fresh_tiles[k], written)
        stored = load_image(str(tiny_world / panos["uri"].iloc[k])).astype(np.float32)
        assert grounds[k].shape == stored.shape == (128, 512, 3)
        # the sun differs, the geometry does not: the sky line (sky vs not-sky per column) agrees
        sky_fresh = grounds[k].astype(np.float32)[..., 2] > grounds[k][..., 0] + 30
        sky_stored = stored[..., 2] > stored[..., 0] + 30
        assert (sky_fresh == sky_stored).mean() > 0.9
    assert np.allclose(frame["lat"], panos["lat"], atol=1e-7) and (frame["fov_deg"] == 360).all()


def test_offset_tiles_and_semi_positives_follow_the_grid(tiny_world: Path) -> None:
    pairs = read_pairs(tiny_world)
    panos, frame, _, _ = _at_generated_places(tiny_world, "offset", 10)
    offset = pairs[pairs["track"] == "offset"].set_index("capture_id")
    for k, cap in enumerate(panos["capture_id"]):
        assert frame["tile_id"].iloc[k] == offset.loc[cap, "tile_id"]
        semis = offset.loc[cap, "semi_positive_tile_ids"]
        assert sorted(frame["semi_positive_tile_ids"].iloc[k]) == sorted(semis)


@pytest.mark.parametrize("protocol", ["same-area", "cross-area"])
def test_fresh_places_stay_in_the_training_area(tiny_world: Path, protocol: str) -> None:
    """Places in the data's cities lie in training blocks only; the rest are in new training-style worlds."""
    caps = pd.DataFrame(read_captures(tiny_world).drop(columns="geometry"))
    caps["train"] = (split_column(caps, protocol) == "train").to_numpy()
    fp = FreshPlaces(tiny_world, protocol=protocol, track="aligned", seed=3)
    trained_cities = set(caps.loc[caps["train"], "city"])
    assert set(fp.city_names) == trained_cities and fp.new_worlds == len(trained_cities)
    frame, grounds, tiles = fp.sample(60, epoch=1)
    assert len(frame) == len(grounds) == len(tiles) == 60 and frame["capture_id"].is_unique
    in_data = frame["city"].isin(fp.city_names)
    assert in_data.sum() == 20  # area_share 1/3
    new = frame.loc[~in_data, "city"]
    assert new.str.contains("~e1w").all() and new.nunique() == fp.new_worlds
    assert not set(new.str.split("~").str[0]) - trained_cities  # named after (styled like) training cities
    extent = fp.spec["extent_m"]
    for city in fp.city_names:
        here = frame[frame["city"] == city]
        known = caps[caps["city"] == city]
        fresh_blocks, _ = split_blocks(_local_xy(fp, city, here["lat"], here["lon"]), extent)
        known_blocks, _ = split_blocks(_local_xy(fp, city, known["lat"], known["lon"]), extent)
        for b in set(fresh_blocks):
            assert known["train"].to_numpy()[known_blocks == b].all(), f"{city} block {b} is not training"


def test_fresh_places_are_seeded_per_epoch(tiny_world: Path) -> None:
    fp = FreshPlaces(tiny_world, protocol="same-area", track="photo", seed=1)
    a, ga, _ = fp.sample(8, epoch=2)
    b, gb, _ = fp.sample(8, epoch=2)
    c, _, _ = fp.sample(8, epoch=3)
    pd.testing.assert_frame_equal(a, b)
    assert all(np.array_equal(x, y) for x, y in zip(ga, gb, strict=True))
    fp.workers = 1  # JPEG round trips and cuts in one thread: the same pairs, in the same order
    _, g1, t1 = fp.sample(8, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(ga, g1, strict=True)) and len(t1) == 8
    assert not np.allclose(a["lat"], c["lat"])
    assert ga[0].shape == (128, 128, 3) and (a["fov_deg"] == 90).all()
    assert a["heading_deg"].between(0, 360).all()


def test_style_spread_builds_new_worlds_in_random_styles(tiny_world: Path) -> None:
    plain = FreshPlaces(tiny_world, protocol="same-area", track="aligned", seed=1, new_world_m=300)
    spread = FreshPlaces(
        tiny_world, protocol="same-area", track="aligned", seed=1, new_world_m=300, style_spread=1.5
    )
    a, _, ta = plain.sample(12, epoch=0)
    b, _, tb = spread.sample(12, epoch=0)
    again, _, tc = spread.sample(12, epoch=0)
    pd.testing.assert_frame_equal(b, again)
    assert all(np.array_equal(x, y) for x, y in zip(tb, tc, strict=True))
    new = ~a["city"].isin(plain.city_names)
    assert new.sum() == 8 and (~b["city"].isin(spread.city_names)).sum() == 8  # 2/3 from new worlds
    assert not all(np.array_equal(x, y) for x, y, m in zip(ta, tb, new, strict=True) if m)
    with pytest.raises(ValueError, match="style_spread"):
        FreshPlaces(tiny_world, protocol="same-area", track="aligned", style_spread=0.5)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_area_share_splits_places_between_the_data_and_new_worlds(tiny_world: Path, share: float) -> None:
    fp = FreshPlaces(
        tiny_world, protocol="same-area", track="aligned", seed=2, new_world_m=300, area_share=share
    )
    frame, _, _ = fp.sample(12, epoch=0)
    assert frame["city"].isin(fp.city_names).mean() == share
    with pytest.raises(ValueError, match="area_share"):
        FreshPlaces(tiny_world, protocol="same-area", track="aligned", area_share=1.5)


def test_a_world_without_its_spec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="synthetic.json"):
        FreshPlaces(tmp_path, protocol="same-area", track="aligned")
