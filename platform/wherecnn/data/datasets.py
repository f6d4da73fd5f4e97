"""The pair dataset: one track's (ground view, positive tile) pairs of a protocol and split, decoded once,
prepared for the model and augmented per epoch."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from wherecnn.data.augment import PAIR_AUGMENTS, augment_pair, zoom_range, zoom_tile
from wherecnn.data.ground import (
    CANVAS_VFOV_DEG,
    DEFAULT_GROUND_LAYOUT,
    ground_view,
    photos_from_canvases,
    resize,
    sector_of_canvas,
)
from wherecnn.data.manifest import WINDOW_COLUMNS, read_captures, read_pairs, read_tiles, split_column
from wherecnn.data.normalise import IMAGENET_MEAN, IMAGENET_STD, to_tensor


def default_loader(uri: str) -> np.ndarray:
    from wherecnn.storage import load_image

    return load_image(uri)


def load_pairs(
    data_dir: str | Path, *, track: str, protocol: str, split: str | Sequence[str]
) -> pd.DataFrame:
    """One row per pair of a track whose capture is in ``split`` under ``protocol``; capture and tile columns.

    Columns: capture_id, tile_id, semi_positive_tile_ids, city, lat, lon, heading_deg, fov_deg, ground_uri,
    tile_lat, tile_lon, tile_uri, and the tile's raster window (source_uri, col_off, row_off, width, height)
    where the tiles manifest has it.
    """
    captures = read_captures(data_dir)
    tiles = read_tiles(data_dir)
    pairs = read_pairs(data_dir)
    pairs = pairs.loc[pairs["track"] == track, ["capture_id", "tile_id", "track", "semi_positive_tile_ids"]]
    if pairs.empty:
        tracks = sorted(set(read_pairs(data_dir)["track"]))
        raise ValueError(
            f"{data_dir}: no pairs of track {track!r} in pairs.parquet (tracks present: {tracks})"
        )
    splits = [split] if isinstance(split, str) else list(split)
    caps = pd.DataFrame(captures.drop(columns="geometry"))
    caps = caps[split_column(caps, protocol).isin(splits).to_numpy()]
    caps = caps[["capture_id", "city", "lat", "lon", "heading_deg", "fov_deg", "uri"]].rename(
        columns={"uri": "ground_uri"}
    )
    windows = list(WINDOW_COLUMNS) if set(WINDOW_COLUMNS) <= set(tiles.columns) else []
    tl = pd.DataFrame(tiles.drop(columns="geometry"))[["tile_id", "lat", "lon", "uri", *windows]].rename(
        columns={"lat": "tile_lat", "lon": "tile_lon", "uri": "tile_uri"}
    )
    out = pairs.merge(caps, on="capture_id", how="inner")
    missing = set(out["tile_id"]) - set(tl["tile_id"])
    if missing:
        raise ValueError(
            f"{data_dir}: pairs.parquet names tiles missing from tiles.parquet: {sorted(missing)[:5]}"
        )
    out = out.merge(tl, on="tile_id", how="left")
    return out.sort_values("capture_id", kind="stable").reset_index(drop=True)


class PairDataset(Dataset):
    """(ground view, positive aerial tile, metadata) for one track, protocol and split.

    Images are decoded once, resized to the model's input sizes and kept in memory (``cache=True``): on two
    cores decoding JPEGs every epoch would cost more than the forward pass. Augmentation is seeded by
    (seed, epoch, index) so a run is reproducible; call ``set_epoch`` each epoch.

    ``augment["scale"] = (lo, hi)`` zooms each tile to show between lo and hi times its ground side
    (log-uniform; `zoom_tile`), cut once from its source raster around the tile's centre (the frame's window
    columns) at hi times the side; without windows the tile file is the context and hi is capped at 1.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        frame: pd.DataFrame | None = None,
        track: str = "aligned",
        protocol: str = "same-area",
        split: str | Sequence[str] = "train",
        ground_size: tuple[int, int] = (64, 256),
        aerial_size: tuple[int, int] = (96, 96),
        ground_layout: str = DEFAULT_GROUND_LAYOUT,
        canvas_vfov_deg: float = CANVAS_VFOV_DEG,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: dict[str, Any] | None = None,
        seed: int = 0,
        cache: bool = True,
        loader: Callable[[str], np.ndarray] | None = None,
        images: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
        prepared: bool = False,
    ) -> None:
        """``images``: (ground, tile) pairs already in memory, one per row (rendered on the fly), instead
        of the files the frame names; they are prepared like decoded files, unless ``prepared`` says they
        are model inputs already (another dataset's `raw` items)."""
        if frame is None:
            if data_dir is None:
                raise ValueError("PairDataset needs data_dir or frame")
            frame = load_pairs(data_dir, track=track, protocol=protocol, split=split)
        self.frame = frame.reset_index(drop=True)
        self.ground_size, self.aerial_size = tuple(ground_size), tuple(aerial_size)
        self.ground_layout, self.canvas_vfov_deg = ground_layout, float(canvas_vfov_deg)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.seed, self.epoch = seed, 0
        self.loader = loader or default_loader
        self._images: Sequence[tuple[np.ndarray, np.ndarray]] | None = None  # in memory, until prepared
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] | None = (
            [None] * len(self.frame) if cache or images is not None else None
        )
        # whether every row says where its tile was cut from (so a wider view can be cut)
        self.has_windows = set(WINDOW_COLUMNS) <= set(self.frame.columns) and bool(
            self.frame["source_uri"].notna().all()
        )
        self.zoom: tuple[float, float] | None = None
        self.context_scale = 1.0
        self._context: list[np.ndarray | None] = []
        self._tile_px: int | None = None
        if (augment or {}).get("scale"):
            asked = augment["scale"]  # type: ignore[index]
            self.zoom = zoom_range(asked, has_windows=self.has_windows)
            if self.zoom[1] < float(asked[1]):
                warnings.warn(
                    "zoom augmentation: the pairs have no raster windows to show more ground than a tile; "
                    "zooming in only",
                    stacklevel=2,
                )
            self.context_scale = max(self.zoom[1], 1.0) if self.has_windows else 1.0
            self._context = [None] * len(self.frame)
        if images is not None:
            if len(images) != len(self.frame):
                raise ValueError(f"{len(images)} image pairs for {len(self.frame)} rows")
            if prepared:
                self._cache = list(images)
            else:  # prepared now, like files decoded by `preload`
                self._images = images
                self.preload()
                self._images = None

    def __len__(self) -> int:
        return len(self.frame)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The un-augmented (ground canvas, tile) uint8 arrays at model input size."""
        if self._cache is not None and self._cache[i] is not None:
            return self._cache[i]  # type: ignore[return-value]
        row = self.frame.iloc[i]
        ground, tile = (
            self._images[i]
            if self._images is not None
            else (self.loader(row["ground_uri"]), self.loader(row["tile_uri"]))
        )
        item = self._prepare(ground, tile, row["heading_deg"], row["fov_deg"])
        if self._cache is not None:
            self._cache[i] = item
        return item

    def context(self, i: int) -> np.ndarray:
        """Tile ``i`` seen at ``context_scale`` times its side, at the model's pixel scale (uint8)."""
        item = self._context[i]
        if item is None:
            if self.has_windows:
                self._cut_contexts([i])
            else:
                self._context[i] = self.raw(i)[1]
            item = self._context[i]
        return item  # type: ignore[return-value]

    def _cut_contexts(self, indices: Sequence[int]) -> None:
        """Cut the wider views of these rows from their rasters (one open per raster) like the tile files
        were cut (resampled to the tile's pixel size, JPEG), then resize them to the model's pixel scale."""
        from wherecnn.data.formats.geotiff import Window, shifted_views

        rows = self.frame.iloc[list(indices)]  # the frame's index is its positions
        if rows.empty:
            return
        if self._tile_px is None:
            self._tile_px = int(self.loader(rows["tile_uri"].iloc[0]).shape[0])
        grow = (self.context_scale - 1) / 2
        for (source, width, height), part in rows.groupby(["source_uri", "width", "height"], sort=False):
            pc, pr = round(int(width) * grow), round(int(height) * grow)
            windows = [
                Window(
                    str(r.tile_id),
                    int(r.col_off) - pc,
                    int(r.row_off) - pr,
                    int(width) + 2 * pc,
                    int(height) + 2 * pr,
                )
                for r in part.itertuples()
            ]
            ratio = (int(width) + 2 * pc) / int(width)
            views = shifted_views(str(source), windows, [(0, 0)], round(self._tile_px * ratio))
            side = (round(self.aerial_size[0] * ratio), round(self.aerial_size[1] * ratio))
            for i, view in zip(part.index, views[:, 0], strict=True):
                self._context[int(i)] = resize(view, side)

    def _prepare(
        self, ground: np.ndarray, tile: np.ndarray, heading: Any, fov: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        view = ground_view(
            ground,
            self.ground_size,  # type: ignore[arg-type]
            heading_deg=_num(heading),
            fov_deg=_num(fov),
            layout=self.ground_layout,
            canvas_vfov_deg=self.canvas_vfov_deg,
        )
        return view, resize(tile, self.aerial_size)  # type: ignore[arg-type]

    def preload(self, *, threads: int = 2, progress: bool = False, label: str = "decode") -> None:
        """Decode and resize every image now (threads: PIL releases the GIL), so epochs only compute."""
        if self._cache is None or not len(self):
            return
        from concurrent.futures import ThreadPoolExecutor

        todo = [i for i, item in enumerate(self._cache) if item is None]
        chunks = [todo[a : a + 64] for a in range(0, len(todo), 64)]

        def load(chunk: list[int]) -> int:
            for i in chunk:
                self.raw(i)
            if self.zoom is not None and self.has_windows:
                self._cut_contexts([i for i in chunk if self._context[i] is None])
            return len(chunk)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            results = pool.map(load, chunks)
            if progress:
                from rich.progress import Progress

                with Progress() as bar:
                    task = bar.add_task(f"{label} {len(todo)} pairs", total=len(todo))
                    for n in results:
                        bar.advance(task, n)
            for _ in results:
                pass

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.batch([i])
        return {"ground": item["ground"][0], "aerial": item["aerial"][0], "index": int(i)}

    def batch(self, indices: Sequence[int], augment: bool = True) -> dict[str, torch.Tensor]:
        """Samples ``indices`` as one batch of model inputs: ``ground`` and ``aerial`` (normalised NCHW) and
        their ``index``. Each sample comes out as `__getitem__` makes it alone (seeded by seed, epoch and
        index), but the photo cuts and the normalisation run once for the batch: 1.7-2.3x faster than one
        sample at a time (`benchmarks/train_data.py`), which took up to a third of a step on two cores.
        ``augment=False``: the `query_views` and the tiles before the pairs' augmentation (what hard-negative
        mining embeds)."""
        raws = [self.raw(i) for i in indices]
        grounds = self.query_views(indices, np.stack([g for g, _ in raws]))
        aerials = [a for _, a in raws]
        if augment and self.augment:
            rngs = [np.random.default_rng((self.seed, self.epoch, int(i))) for i in indices]
            if self.zoom is not None:
                lo, hi = self.zoom
                aerials = [
                    zoom_tile(
                        self.context(i),
                        self.context_scale,
                        float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
                        self.aerial_size,  # type: ignore[arg-type]
                    )
                    for i, rng in zip(indices, rngs, strict=True)
                ]
            pairs = [
                augment_pair(
                    g,
                    a,
                    rng,
                    **{key: self.augment[key] for key in PAIR_AUGMENTS if key in self.augment},
                )
                for g, a, rng in zip(grounds, aerials, rngs, strict=True)
            ]
            grounds = np.stack([g for g, _ in pairs])
            aerials = [a for _, a in pairs]
        return {
            "ground": to_tensor(grounds, self.mean, self.std),
            "aerial": to_tensor(np.stack(aerials), self.mean, self.std),
            "index": torch.tensor([int(i) for i in indices], dtype=torch.long),
        }

    def query_views(self, indices: Sequence[int], grounds: np.ndarray) -> np.ndarray:
        """The ground views samples ``indices`` show this epoch before the pairs' geometric augmentation,
        from their canvases ``grounds`` (`raw`; B x H x W x 3): the canvases, or, when training photos are
        cut from panoramas (``augment["photo_fov"]``), the photos cut at this epoch's heading for each; wider
        (sectors of the panoramas) while a field-of-view curriculum (``augment["photo_sector"]``, set per
        epoch) narrows towards the photos' own; or, with ``augment["photo_share"]``, the canvases with that
        share of them shown as photos (`_mixed_views`). Hard-negative mining embeds these views, so the
        negatives are mined for the queries the model trains on."""
        augment = self.augment or {}
        if augment.get("photo_share") and not augment.get("photo_fov"):
            return self._mixed_views(indices, grounds, float(augment["photo_share"]), augment["photo_fovs"])
        if not augment.get("photo_fov"):
            return grounds
        headings = self._photo_headings(indices)
        fov, sector = float(augment["photo_fov"]), augment.get("photo_sector")
        if sector is not None and float(sector) > fov:
            cut = zip(grounds, headings, strict=True)
            return np.stack([sector_of_canvas(g, h, float(sector)) for g, h in cut])
        return photos_from_canvases(grounds, headings, fov, self.ground_layout, self.canvas_vfov_deg)

    def _photo_headings(self, indices: Sequence[int]) -> np.ndarray:
        """The heading each sample's photo is cut at this epoch."""
        return np.array(
            [np.random.default_rng((self.seed, self.epoch, int(i), 1)).uniform(0.0, 360.0) for i in indices]
        )

    def _mixed_views(
        self, indices: Sequence[int], grounds: np.ndarray, share: float, fovs: Sequence[float]
    ) -> np.ndarray:
        """The canvases, ``share`` of them (drawn per sample and epoch) shown as photos instead: each cut at
        its photo heading, its field of view log-uniform in ``fovs`` (lo, hi)."""
        lo, hi = np.log(float(fovs[0])), np.log(float(fovs[1]))
        headings = self._photo_headings(indices)
        out = np.array(grounds)
        for j, i in enumerate(indices):
            rng = np.random.default_rng((self.seed, self.epoch, int(i), 2))
            if rng.random() < share:
                fov = float(np.exp(rng.uniform(lo, hi)))
                out[j] = photos_from_canvases(
                    grounds[j : j + 1], headings[j : j + 1], fov, self.ground_layout, self.canvas_vfov_deg
                )[0]
        return out

    def tile_keys(self) -> list[frozenset[str]]:
        """Per sample: its positive tile and semi-positives (samples sharing any never share a batch)."""
        return [
            frozenset([t, *list(s)])
            for t, s in zip(self.frame["tile_id"], self.frame["semi_positive_tile_ids"], strict=True)
        ]


def _num(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return None if math.isnan(v) else v
