"""Batch samplers: GPS-aware neighbour groups and mined hard negatives, never two samples of one tile."""

from __future__ import annotations

import numpy as np
import pytest
from wherecnn.data.samplers import GeoBatchSampler, MinedBatchSampler


def _check_batches(batches: list[list[int]], keys: list[frozenset[str]], n: int, bs: int) -> None:
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    assert len(seen) >= n - bs and all(len(b) == bs for b in batches)
    for b in batches:
        tiles = [t for i in b for t in keys[i]]
        assert len(tiles) == len(set(tiles))


def test_geo_sampler_groups_neighbours_without_shared_tiles() -> None:
    rng = np.random.default_rng(0)
    n, bs = 400, 32
    lat, lon = 40 + rng.uniform(0, 0.05, n), -75 + rng.uniform(0, 0.05, n)
    city = np.where(np.arange(n) < 200, "a", "b")
    keys = [frozenset([f"t{i // 2}"]) for i in range(n)]  # pairs of samples share a tile (offset-like)

    def spread(hard: float) -> float:
        s = GeoBatchSampler(lat, lon, city, keys, batch_size=bs, hard_fraction=hard, group_size=8, seed=1)
        batches = list(s)
        _check_batches(batches, keys, n, bs)
        d = []
        for b in batches:
            xy = np.c_[lat[b], lon[b]]
            d.append(np.mean([np.sort(np.hypot(*(xy - p).T))[1] for p in xy]))
        return float(np.mean(d))

    assert spread(1.0) < 0.6 * spread(0.0)
    s = GeoBatchSampler(lat, lon, city, keys, batch_size=bs, seed=1)
    first = list(s)
    assert first == list(s)
    s.set_epoch(1)
    assert first != list(s)


def test_mined_sampler_batches_anchor_with_its_neighbours() -> None:
    n, bs = 64, 16
    neighbours = np.array([[(i + 1) % n, (i + 2) % n, (i + 3) % n] for i in range(n)])
    keys = [frozenset([f"t{i}"]) for i in range(n)]
    s = MinedBatchSampler(neighbours, keys, batch_size=bs, per_anchor=3, seed=0)
    batches = list(s)
    _check_batches(batches, keys, n, bs)
    together = sum(len({i, (i + 1) % n} & set(b)) == 2 for b in batches for i in b)
    assert together >= n // 2
    with pytest.raises(ValueError, match="neighbour table"):
        MinedBatchSampler(neighbours[:3], keys, batch_size=bs)
