"""Batch samplers: GPS-aware groups of geographic neighbours and similarity-mined hard negatives, never two
samples of one tile in a batch."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class _Packer:
    """Fills batches from a stream of candidate groups, never putting two samples that share a tile together.

    A sample that conflicts with the current batch waits for the next one (nothing is dropped except, with
    ``drop_last``, the final partial batch).
    """

    def __init__(self, keys: Sequence[frozenset[str]], batch_size: int) -> None:
        self.keys, self.batch_size = keys, batch_size

    def pack(self, units: Iterator[list[int]], drop_last: bool) -> Iterator[list[int]]:
        batch: list[int] = []
        taken: set[str] = set()
        waiting: list[int] = []
        for unit in units:
            for i in [*waiting, *unit]:
                if i in waiting:
                    waiting.remove(i)
                if len(batch) < self.batch_size and not (self.keys[i] & taken):
                    batch.append(i)
                    taken |= self.keys[i]
                else:
                    waiting.append(i)
                if len(batch) == self.batch_size:
                    yield batch
                    batch, taken = [], set()
        # drain the waiting queue
        while waiting:
            progressed = False
            for i in list(waiting):
                if not (self.keys[i] & taken):
                    batch.append(i)
                    taken |= self.keys[i]
                    waiting.remove(i)
                    progressed = True
                    if len(batch) == self.batch_size:
                        yield batch
                        batch, taken = [], set()
            if not progressed:
                if not batch:  # a sample that conflicts with itself cannot happen; stop defensively
                    break
                if not drop_last:
                    yield batch
                batch, taken = [], set()
        if batch and not drop_last:
            yield batch


class GeoBatchSampler(Sampler[list[int]]):
    """Batches where ``hard_fraction`` of the samples come in groups of geographic neighbours (hard negatives
    for each other: same city, similar streets) and the rest at random; never two samples sharing a tile.

    Neighbour groups come from a fresh random strip ordering of each city every epoch (random angle and
    offset), so groups differ from epoch to epoch.
    """

    def __init__(
        self,
        lat: Sequence[float],
        lon: Sequence[float],
        city: Sequence[str],
        keys: Sequence[frozenset[str]],
        *,
        batch_size: int,
        hard_fraction: float = 0.5,
        group_size: int = 8,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.lat, self.lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
        self.city = np.asarray(city)
        self.packer = _Packer(keys, batch_size)
        self.batch_size, self.hard_fraction, self.group_size = batch_size, hard_fraction, max(1, group_size)
        self.seed, self.epoch, self.drop_last = seed, 0, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lat)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _geo_order(self, idx: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        groups: list[np.ndarray] = []
        for c in np.unique(self.city[idx]):
            members = idx[self.city[idx] == c]
            lat0 = self.lat[members].mean()
            x = (self.lon[members] - self.lon[members].mean()) * 111_320.0 * math.cos(math.radians(lat0))
            y = (self.lat[members] - lat0) * 110_540.0
            a = rng.uniform(0, math.pi)
            u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
            area = max((np.ptp(u) + 1.0) * (np.ptp(v) + 1.0), 1.0)
            strip = math.sqrt(area / len(members) * self.group_size)
            band = np.floor((v - v.min()) / strip + rng.uniform())
            snake = np.where(band % 2 == 0, u, -u)  # boustrophedon keeps strip ends adjacent
            order = members[np.lexsort((snake, band))]
            groups += [order[i : i + self.group_size] for i in range(0, len(order), self.group_size)]
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 7))
        n = len(self.lat)
        perm = rng.permutation(n)
        n_hard = int(round(n * self.hard_fraction))
        units: list[list[int]] = [g.tolist() for g in self._geo_order(perm[:n_hard], rng)] if n_hard else []
        units += [[int(i)] for i in perm[n_hard:]]
        order = rng.permutation(len(units))
        yield from self.packer.pack((units[j] for j in order), self.drop_last)


class MinedBatchSampler(Sampler[list[int]]):
    """Sample4Geo-style batches from a neighbour table: each anchor brings its most similar samples (by the
    model's current embeddings), so the batch holds the negatives the model confuses most.

    ``neighbours[i]`` lists sample indices most similar to sample i (best first); refresh it every few epochs
    with `wherecnn.train.mining.neighbour_table`.
    """

    def __init__(
        self,
        neighbours: np.ndarray,
        keys: Sequence[frozenset[str]],
        *,
        batch_size: int,
        per_anchor: int = 4,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.neighbours = np.asarray(neighbours)
        if self.neighbours.ndim != 2 or len(self.neighbours) != len(keys):
            raise ValueError(
                f"neighbour table must be [n_samples, k] with n_samples={len(keys)}, "
                f"got {self.neighbours.shape}"
            )
        self.packer = _Packer(keys, batch_size)
        self.batch_size, self.per_anchor = batch_size, max(0, per_anchor)
        self.seed, self.epoch, self.drop_last = seed, 0, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.neighbours)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _units(self, rng: np.random.Generator) -> Iterator[list[int]]:
        used = np.zeros(len(self.neighbours), dtype=bool)
        for anchor in rng.permutation(len(self.neighbours)):
            if used[anchor]:
                continue
            unit = [int(anchor)]
            used[anchor] = True
            for j in self.neighbours[anchor]:
                if len(unit) > self.per_anchor:
                    break
                if 0 <= j < len(used) and not used[j]:
                    unit.append(int(j))
                    used[j] = True
            yield unit

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 11))
        yield from self.packer.pack(self._units(rng), self.drop_last)
