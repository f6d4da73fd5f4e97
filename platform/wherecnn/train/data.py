"""What a training run trains and validates on: which pairs a track trains on, the validation pairs, the
fresh places rendered every epoch on synthetic worlds, the augmentation and its curricula, and the batch
samplers (GPS-aware neighbour groups, or similarity-mined ones).

`offset` with config ``offset.pairs`` "centred" trains on the same panoramas' camera-centred tiles (a training
place's position is known), shifted a little (``offset.augment_shift``); evaluation then embeds each grid tile
from several centres (``offset.gallery_centres``, `wherecnn.evaluate.evaluation`). `photo` with
``photo.pairs`` "panorama" trains on the same places' panoramas, cutting a photo at a random heading each time
(as the photos were made), and validates on the photo pairs. The track's own section replaces
``train.augment_*`` and the fresh places' pool on that track (`models.recipe_on_track`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wherecnn.data.augment import zoom_range
from wherecnn.data.datasets import PairDataset, load_pairs
from wherecnn.data.manifest import read_pairs
from wherecnn.data.samplers import GeoBatchSampler, MinedBatchSampler
from wherecnn.models import recipe_on_track
from wherecnn.train.options import TrainOptions


def fresh_settings(opts: TrainOptions, recipe: dict[str, Any]) -> tuple[int, int, float | None]:
    """(fresh places per epoch, epochs each is trained on, style spread): the options', else the recipe's
    ``fresh_places``, ``fresh_epochs`` and ``style_spread`` (the ``train`` section with the track section's
    keys over it), where the data is a synthetic world (its ``synthetic.json``); no fresh places elsewhere."""
    from wherecnn.data.synthetic.generate import SPEC_FILE

    synthetic = "://" not in opts.data and (Path(opts.data) / SPEC_FILE).exists()
    n = opts.fresh_places
    if n is None:
        n = int(recipe["fresh_places"]) if synthetic else 0
    epochs = opts.fresh_epochs if opts.fresh_epochs is not None else int(recipe["fresh_epochs"])
    if epochs < 1:
        raise ValueError(f"fresh_epochs must be >= 1, not {epochs}")
    spread = opts.style_spread if opts.style_spread is not None else recipe["style_spread"]
    return n, epochs, (float(spread) if n and spread else None)


def anneal(start: float, end: float, share: float, progress: float) -> float:
    """A curriculum setting at ``progress`` (0..1) through training: ``start`` at first, moving linearly to
    ``end`` over the first ``share`` of training, ``end`` after (photo.fov_start_deg: the field of view
    photo training cuts; offset.shift_start: the camera-centred tiles' shift; heading_start: the compass
    error)."""
    if share <= 0:
        return end
    return end + (float(start) - end) * max(0.0, 1.0 - progress / share)


def split_val(frame: Any, val_frame: Any, size: int, seed: int) -> tuple[Any, Any]:
    """Validation pairs: the protocol's ``val`` rows if any, else ``size`` training pairs held out."""
    if len(val_frame):
        return frame, val_frame.iloc[: max(size, 0)] if size else val_frame.iloc[:0]
    if size <= 0 or len(frame) < 4 * size:
        size = min(size, len(frame) // 4)
    rng = np.random.default_rng((seed, 99))
    held = np.zeros(len(frame), dtype=bool)
    held[rng.choice(len(frame), size=size, replace=False)] = True
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


def rank_batches(
    dataset: PairDataset, sampler: Any, rank: int, world: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Global batches from the sampler; each rank takes its contiguous share."""
    for batch in sampler:
        per = len(batch) // world
        if per == 0:
            continue
        mine = batch[rank * per : (rank + 1) * per]
        yield dataset.batch(mine)


class TrainingData:
    """A run's pairs, validation set, fresh-place pool, augmentation (with its curricula) and samplers.

    ``train_set`` and ``pool_keys`` (one key per sample: the epoch its fresh place was drawn for, and its
    index; the manifest's never change) are the first epoch's; with fresh places `epoch_set` gives each
    later epoch's. ``load_s``: the seconds spent decoding the manifest's images or drawing the first pool.
    """

    def __init__(
        self,
        opts: TrainOptions,
        config: dict[str, Any],
        *,
        batch_size: int,
        first_epoch: int = 0,
        rank0: bool = True,
    ) -> None:
        self.opts, self.batch_size = opts, batch_size
        self.train_cfg = config["train"]
        photo_cfg = config["photo"]
        centred = opts.track == "offset" and config["offset"]["pairs"] == "centred"
        from_pano = opts.track == "photo" and photo_cfg["pairs"] == "panorama"
        pairs_track = "aligned" if centred or from_pano else opts.track
        if pairs_track != opts.track and "aligned" not in set(read_pairs(opts.data)["track"]):
            # no camera-centred panoramas (e.g. ingested VIGOR): train on the track's own pairs
            pairs_track = opts.track
        self.pairs_track = pairs_track
        from_pano = from_pano and pairs_track == "aligned"
        frame = load_pairs(opts.data, track=pairs_track, protocol=opts.protocol, split="train")
        val_rows = (
            load_pairs(
                opts.data, track=opts.track if from_pano else pairs_track, protocol=opts.protocol, split="val"
            )
            if opts.protocol != "both"
            else frame.iloc[:0]
        )
        if opts.max_pairs:
            frame = frame.sample(n=min(opts.max_pairs, len(frame)), random_state=opts.seed).sort_values(
                "capture_id"
            )
        frame, self.val_frame = split_val(frame.reset_index(drop=True), val_rows, opts.val_size, opts.seed)
        # the train section with the track section's keys over it: e.g. dual-cpu's zoom is off on offset
        # and photo; a track's shift moves camera-centred tiles, so it applies only to those
        self.recipe, _ = recipe_on_track(config, opts.track)
        recipe = self.recipe
        self.fresh: Any = None
        self.n_fresh, self.fresh_epochs, self.spread = fresh_settings(opts, recipe)
        if self.n_fresh:
            from wherecnn.data.synthetic.fresh import FreshPlaces

            # the pairs the track trains on: panoramas for photos cut from them, camera-centred tiles
            self.fresh = FreshPlaces(
                opts.data,
                protocol=opts.protocol,
                track=pairs_track,
                seed=opts.seed,
                style_spread=self.spread,
                new_worlds=self.train_cfg["fresh_worlds"],  # None: as many as the training cities
                area_share=recipe["fresh_area_share"],  # None: a third in the training area
            )
            if self.n_fresh < batch_size:
                raise ValueError(f"fresh_places {self.n_fresh} < batch {batch_size}")
        elif len(frame) < batch_size:
            raise ValueError(
                f"{opts.data}: only {len(frame)} training pairs for track {opts.track!r} < batch {batch_size}"
            )
        self.common = dict(
            ground_size=tuple(config["ground_size"]),
            aerial_size=tuple(config["aerial_size"]),
            ground_layout=config["ground_layout"],
            canvas_vfov_deg=float(config["canvas_vfov_deg"]),
            mean=config["mean"],
            std=config["std"],
        )

        # the tracks that train on camera-centred tiles (offset's, and photo's cut from the same panoramas)
        # may shift them: the track section's augment_shift, with its shift_start/shift_anneal curriculum
        shifted = centred or from_pano
        self.augment: dict[str, Any] = {
            "rotation": recipe["augment_rotation"],
            "flip": recipe["augment_flip"],
            "color": recipe["augment_color"],
            "shift": recipe["augment_shift"] if shifted else self.train_cfg["augment_shift"],
            "scale": recipe["augment_scale"],
            "heading": recipe["augment_heading"],
            "photo_fov": float(photo_cfg["fov_deg"]) if from_pano else None,
            # offset: a share of the camera-centred panoramas shown as photos of these fields of view
            "photo_share": float(config["offset"]["photo_share"]) if centred else 0.0,
            "photo_fovs": [float(v) for v in config["offset"]["photo_fovs"]],
        }
        if self.fresh is not None and self.augment["scale"]:
            # a fresh tile is cut at its own side, with no raster window around it to show more ground;
            # capped here once, so the fresh datasets built every epoch do not warn each time
            zoom = zoom_range(self.augment["scale"], has_windows=False)
            if zoom[1] < float(self.augment["scale"][1]):
                self.augment["scale"] = list(zoom)
                if rank0:
                    print(f"fresh places: zoom in only ({zoom[0]:g}-1x a tile's ground)", flush=True)
        # the curricula `follow_curricula` moves: augment key -> (start, end, share of training), each set
        self.curricula: dict[str, tuple[float, float, float]] = {
            key: (float(start), float(end), float(share))
            for key, start, end, share in (
                # photo.fov_start_deg: panorama sectors that wide at first, narrowing to the photos' own
                (
                    "photo_sector",
                    photo_cfg["fov_start_deg"] if from_pano else None,
                    self.augment["photo_fov"],
                    photo_cfg["fov_anneal"],
                ),
                # <track>.shift_start: camera-centred tiles shifted that much at first, then augment_shift
                (
                    "shift",
                    recipe["shift_start"] if shifted else None,
                    self.augment["shift"],
                    recipe.get("shift_anneal"),  # a track section's: absent on aligned, never shifted
                ),
                # heading_start: a compass error that large at first, moving to augment_heading (e.g. to
                # none: the exact heading learned last)
                ("heading", recipe["heading_start"], self.augment["heading"], recipe["heading_anneal"]),
            )
            if start is not None
        }

        self.val_set = PairDataset(frame=self.val_frame, **self.common)
        t_load = time.perf_counter()
        progress = rank0 and opts.progress
        if self.fresh is None:
            self.train_set = PairDataset(frame=frame, augment=self.augment, seed=opts.seed, **self.common)
            self.train_set.preload(progress=progress, label="decoding train")
            self.pool_keys = [(0, i) for i in range(len(self.train_set))]
        self.val_set.preload(progress=progress, label="decoding val")
        # fresh places: epoch e trains on the places drawn for epochs e-fresh_epochs+1 .. e (each drawn once)
        self._pool: dict[int, tuple[Any, list[tuple[np.ndarray, np.ndarray]]]] = {}
        if self.fresh is not None:  # the first pool is drawn before the clock starts, like decoding
            self.train_set, self.pool_keys = self.epoch_set(first_epoch)
        self.load_s = time.perf_counter() - t_load

    def epoch_set(self, epoch: int) -> tuple[PairDataset, list[tuple[int, int]]]:
        """The fresh-place pool epoch ``epoch`` trains on, and a key per sample: (the epoch it was drawn
        for, index)."""
        assert self.fresh is not None
        wanted = range(max(0, epoch - self.fresh_epochs + 1), epoch + 1)
        pool = self._pool
        for e in [e for e in pool if e not in wanted]:
            del pool[e]
        for e in wanted:
            if e not in pool:
                f, grounds, tiles = self.fresh.sample(self.n_fresh, epoch=e)
                prepared = PairDataset(frame=f, images=list(zip(grounds, tiles, strict=True)), **self.common)
                pool[e] = (f, [prepared.raw(i) for i in range(len(f))])
        dataset = PairDataset(
            frame=pd.concat([pool[e][0] for e in wanted], ignore_index=True),
            images=[im for e in wanted for im in pool[e][1]],
            prepared=True,
            augment=self.augment,
            seed=self.opts.seed,
            **self.common,
        )
        return dataset, [(e, i) for e in wanted for i in range(len(pool[e][0]))]

    def follow_curricula(self, progress: float) -> None:
        """Set the augmentation's curriculum settings for ``progress`` (0..1) through training: the sectors
        photo training cuts (``photo_sector``), the camera-centred tiles' shift and the compass error."""
        for key, (start, end, share) in self.curricula.items():
            self.augment[key] = anneal(start, end, share, progress)

    def geo_sampler(self, dataset: PairDataset) -> GeoBatchSampler:
        """Batches of geographic neighbour groups (``train.hard_fraction`` of each) and random pairs."""
        return GeoBatchSampler(
            dataset.frame["lat"],
            dataset.frame["lon"],
            dataset.frame["city"],
            dataset.tile_keys(),
            batch_size=self.batch_size,
            hard_fraction=float(self.train_cfg["hard_fraction"]),
            group_size=int(self.train_cfg["neighbours_per_group"]),
            seed=self.opts.seed,
        )

    def mined_sampler(self, table: np.ndarray, dataset: PairDataset) -> MinedBatchSampler:
        """Batches of each anchor with its mined nearest neighbours (``table``: rows follow the samples)."""
        return MinedBatchSampler(
            table,
            dataset.tile_keys(),
            batch_size=self.batch_size,
            per_anchor=int(self.train_cfg["neighbours_per_group"]) - 1,
            seed=self.opts.seed,
        )
