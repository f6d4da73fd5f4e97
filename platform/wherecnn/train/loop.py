"""The one training function, `train_func`, run as-is by the local loop and by Ray Train's `TorchTrainer`.

Distributed runs split each global batch across workers and all-gather the embeddings (gradients kept), so
the loss -- and every negative in it -- is the global batch's, exactly as in a single process. Rank 0
validates, writes checkpoints and shows progress; every rank calls ``ray.train.report`` under Ray.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from wherecnn.data.manifest import read_pairs
from wherecnn.data.torchdata import (
    CANVAS_VFOV_DEG,
    GeoBatchSampler,
    MinedBatchSampler,
    PairDataset,
    load_pairs,
    zoom_range,
)
from wherecnn.models import build_model, model_from_config, recipe_on_track
from wherecnn.models.base import TwoBranchModel
from wherecnn.train.checkpoint import load_checkpoint, manifest_digest, save_checkpoint
from wherecnn.train.losses import gather_with_grad, make_loss
from wherecnn.train.mining import carry_neighbours, embed_dataset, neighbour_table


@dataclass
class TrainOptions:
    """Everything a run needs, JSON-able so Ray can ship it to workers."""

    data: str
    out: str
    model: str = "dual-cpu"
    epochs: int | None = None
    minutes: float | None = None
    workers: int = 0  # 0 = local loop without Ray
    protocol: str = "same-area"
    track: str = "aligned"
    resume: bool = False
    batch_size: int | None = None  # global batch; default from the model config
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    val_size: int = 256
    max_pairs: int | None = None  # train on a subset (tests, quick looks)
    # synthetic worlds: render this many new places per epoch instead of the manifest's pairs (None: the
    # model config's fresh_places, its track section's else train's, on a world made by `wherecnn synth`,
    # else 0; 0 turns it off)
    fresh_places: int | None = None
    # ... and train on each for this many epochs, the pool holding the latest ones (None: the model config's
    # fresh_epochs, its track section's else train's, else 3)
    fresh_epochs: int | None = None
    # fresh places: new worlds in random styles scaled around the training ones (None: the model config's
    # train.style_spread; 0 turns it off)
    style_spread: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    log_every: int = 20

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.minutes is None):
            raise ValueError("give exactly one of epochs or minutes")
        if (self.fresh_places or 0) < 0 or (self.fresh_epochs is not None and self.fresh_epochs < 1):
            raise ValueError("fresh_places must be >= 0 and fresh_epochs >= 1")
        if self.style_spread and self.fresh_places == 0:
            raise ValueError("style_spread styles fresh places' new worlds: it needs fresh_places")


# --------------------------------------------------------------------------------------------- context
class _Ctx:
    """Rank/world size/device/report for the local loop or a Ray Train worker."""

    def __init__(self, device: str) -> None:
        self.ray = False
        try:
            if "ray" not in sys.modules:  # a Ray Train worker has imported ray already; importing it is slow
                raise ImportError
            import ray.train

            ctx = ray.train.get_context()
            self.ray = ctx.get_world_size() >= 1 and dist.is_available() and dist.is_initialized()
        except Exception:  # not inside a Ray Train worker
            self.ray = False
        if self.ray:
            import ray.train.torch

            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.device = ray.train.torch.get_device()
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device(
                "cuda"
                if device == "auto" and torch.cuda.is_available()
                else ("cpu" if device == "auto" else device)
            )

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if not self.ray:
            return
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. the time budget ran out) broadcast to every rank."""
        if self.world == 1:
            return flag
        # on the run's device: NCCL (Ray Train on GPUs) has no CPU tensors
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())


# --------------------------------------------------------------------------------------------- helpers
def _fresh_settings(opts: TrainOptions, train_cfg: dict[str, Any]) -> tuple[int, int, float | None]:
    """(fresh places per epoch, epochs each is trained on, style spread): the options', else the model
    config's ``fresh_places``, ``fresh_epochs`` (default 3) and ``style_spread`` from ``train_cfg`` (its
    ``train`` section, with the track section's keys over it in training), where the data is a synthetic
    world (its ``synthetic.json``); no fresh places elsewhere."""
    from wherecnn.data.synthetic.generate import SPEC_FILE

    synthetic = "://" not in opts.data and (Path(opts.data) / SPEC_FILE).exists()
    n = opts.fresh_places
    if n is None:
        n = int(train_cfg.get("fresh_places", 0) or 0) if synthetic else 0
    epochs = opts.fresh_epochs if opts.fresh_epochs is not None else int(train_cfg.get("fresh_epochs", 3))
    if epochs < 1:
        raise ValueError(f"fresh_epochs must be >= 1, not {epochs}")
    spread = opts.style_spread if opts.style_spread is not None else train_cfg.get("style_spread")
    return n, epochs, (float(spread) if n and spread else None)


def _anneal(start: float, end: float, anneal: float, progress: float) -> float:
    """A curriculum setting at ``progress`` (0..1) through training: ``start`` at first, moving linearly to
    ``end`` over the first ``anneal`` share of training, ``end`` after (photo.fov_start_deg: the field of view
    photo training cuts; offset.shift_start: the camera-centred tiles' shift)."""
    if anneal <= 0:
        return end
    return end + (float(start) - end) * max(0.0, 1.0 - progress / anneal)


def mixed_precision(device: torch.device, precision: str) -> bool:
    """Whether to train under bf16 autocast (``train.precision``): ``"auto"`` on CUDA, and on CPUs with native
    bf16 arithmetic (AVX512-BF16 or AMX; ~2x the pairs per second of fp32 for ``dual-cpu``,
    benchmarks/train_step.py); ``"bf16"`` always; ``"fp32"`` never. The loss, validation and evaluation stay
    fp32; the mining pass embeds in bf16."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    native = (
        getattr(torch.cpu, name, lambda: False)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return device.type == "cpu" and any(check() for check in native)


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _optimizer(model: torch.nn.Module, train_cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("logit_scale") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(train_cfg.get("weight_decay", 0.0))},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kind = str(train_cfg.get("optimizer", "adam")).lower()
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {kind!r} (adam|adamw|sgd)")


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics (``train.ema``: the
    decay per step), warmed up as ``min(decay, (1 + t) / (10 + t))`` so the first, random weights fade fast.
    Weight averaging helps domain generalisation elsewhere (SWAD, Cha et al. 2021); for `dual-cpu` under its
    cosine schedule it did not (docs/evaluation.md), so it is off by default."""

    def __init__(self, model: TwoBranchModel, decay: float, step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must be a decay in (0, 1), not {decay}")
        self.model, self.decay, self.step = copy.deepcopy(model), decay, step
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.step += 1
        keep = min(self.decay, (1.0 + self.step) / (10.0 + self.step))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs.to(mine.dtype), 1.0 - keep)
            else:  # e.g. batch norm's num_batches_tracked
                mine.copy_(theirs)


def _split_val(frame: Any, val_frame: Any, size: int, seed: int) -> tuple[Any, Any]:
    """Validation pairs: the protocol's ``val`` rows if any, else ``size`` training pairs held out."""
    if len(val_frame):
        return frame, val_frame.iloc[: max(size, 0)] if size else val_frame.iloc[:0]
    if size <= 0 or len(frame) < 4 * size:
        size = min(size, len(frame) // 4)
    rng = np.random.default_rng((seed, 99))
    held = np.zeros(len(frame), dtype=bool)
    held[rng.choice(len(frame), size=size, replace=False)] = True
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


def _batches(dataset: PairDataset, sampler: Any, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
    """Global batches from the sampler; each rank takes its contiguous share."""
    for batch in sampler:
        per = len(batch) // world
        if per == 0:
            continue
        mine = batch[rank * per : (rank + 1) * per]
        yield dataset.batch(mine)


def _validate(model: Any, val: PairDataset, device: torch.device) -> dict[str, float]:
    if len(val) == 0:
        return {}
    g, a = embed_dataset(model, val, device)
    tiles = val.frame["tile_id"].to_numpy()
    _, first, inverse = np.unique(tiles, return_index=True, return_inverse=True)
    from wherecnn.evaluate.metrics import retrieval_metrics

    return retrieval_metrics(g, a[first], inverse, ks=(1, 5))


# --------------------------------------------------------------------------------------------- the function
def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Train per ``TrainOptions`` (as a dict); returns a summary (rank 0's is the one that matters)."""
    opts = TrainOptions(**config)
    ctx = _Ctx(opts.device)
    rank0 = ctx.rank == 0
    torch.manual_seed(opts.seed)
    # CPU kernels used here are deterministic already; torch.use_deterministic_algorithms would import
    # torch._inductor (~10 s) for nothing. The determinism test guards this.

    resumed = load_checkpoint(opts.out) if opts.resume else None
    if resumed is not None:
        model = model_from_config(resumed["model"]["config"])
        model.load_state_dict(resumed["model"]["state_dict"])
    else:
        model = build_model(opts.model, track=opts.track, **opts.overrides)
    cfg = model.config
    train_cfg = dict(cfg.get("train") or {})
    # train.ema: checkpoints, validation and so every consumer get the weights' moving average; the
    # optimizer trains `model`, whose own weights ride along in the checkpoint for --resume
    average = None
    if train_cfg.get("ema"):
        step = int(resumed["loop"]["step"]) if resumed is not None else 0
        average = WeightAverage(model, float(train_cfg["ema"]), step)
        if resumed is not None:
            if resumed.get("train_state") is None:
                raise ValueError(f"{opts.out}: the checkpoint has no trained weights beside their average")
            model.load_state_dict(resumed["train_state"])
    batch_size = int(opts.batch_size or train_cfg.get("batch_size", 64))
    if batch_size % ctx.world:
        raise ValueError(f"batch size {batch_size} must be divisible by the number of workers {ctx.world}")

    # ---- data
    # `offset` with config offset.pairs "centred": train on the same panoramas' camera-centred tiles (a
    # training place's position is known), shifted a little (offset.augment_shift); evaluation then
    # embeds each grid tile from several centres (offset.gallery_centres, `wherecnn.evaluate.evaluation`)
    # `photo` with config photo.pairs "panorama": train on the same places' panoramas, cutting a photo at a
    # random heading each time (as the photos were made), validate on the photo pairs
    offset_cfg = dict(cfg.get("offset") or {})
    photo_cfg = dict(cfg.get("photo") or {})
    centred = opts.track == "offset" and offset_cfg.get("pairs") == "centred"
    from_pano = opts.track == "photo" and photo_cfg.get("pairs") == "panorama"
    pairs_track = "aligned" if centred or from_pano else opts.track
    if pairs_track != opts.track and "aligned" not in set(read_pairs(opts.data)["track"]):
        # no camera-centred panoramas (e.g. ingested VIGOR): train on the track's own pairs
        pairs_track = opts.track
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
    frame, val_frame = _split_val(frame.reset_index(drop=True), val_rows, opts.val_size, opts.seed)
    # the track's own section (offset, photo) replaces train.augment_* and the fresh places' pool on that
    # track, e.g. dual-cpu's zoom is off on both; offset's shift moves camera-centred tiles, so it applies
    # only to those
    on_track, _ = recipe_on_track(cfg, opts.track)  # the train section with the track section's keys over it
    lr = float(opts.lr or on_track.get("lr", 1e-3))  # dual-cpu: 2e-3 on offset, 1e-3 elsewhere
    fresh = None
    n_fresh, fresh_epochs, spread = _fresh_settings(opts, on_track)
    if n_fresh:
        from wherecnn.data.synthetic.fresh import FreshPlaces

        # the pairs the track trains on: panoramas for photos cut from them, camera-centred tiles for offset
        fresh = FreshPlaces(
            opts.data,
            protocol=opts.protocol,
            track=pairs_track,
            seed=opts.seed,
            style_spread=spread,
            new_worlds=train_cfg.get("fresh_worlds"),  # None: as many as the training cities
            area_share=on_track.get("fresh_area_share"),  # None: a third in the training area
        )
        if n_fresh < batch_size:
            raise ValueError(f"fresh_places {n_fresh} < batch {batch_size}")
    elif len(frame) < batch_size:
        raise ValueError(
            f"{opts.data}: only {len(frame)} training pairs for track {opts.track!r} < batch {batch_size}"
        )
    common = dict(
        ground_size=model.ground_size,
        aerial_size=model.aerial_size,
        ground_layout=cfg.get("ground_layout", "canvas"),
        canvas_vfov_deg=float(cfg.get("canvas_vfov_deg", CANVAS_VFOV_DEG)),
        mean=cfg.get("mean", (0.485, 0.456, 0.406)),
        std=cfg.get("std", (0.229, 0.224, 0.225)),
    )

    # the tracks that train on camera-centred tiles (offset's, and photo's cut from the same panoramas) may
    # shift them: the track section's augment_shift, with its shift_start/shift_anneal curriculum
    shifted = centred or from_pano

    def setting(key: str, default: Any) -> Any:
        if key == "augment_shift" and not shifted:
            return train_cfg.get(key, default)
        return on_track.get(key, default)

    augment = {
        "rotation": setting("augment_rotation", "quarter"),
        "flip": setting("augment_flip", True),
        "color": setting("augment_color", 0.0),
        "shift": setting("augment_shift", 0.0),
        "scale": setting("augment_scale", None),
        "photo_fov": float(photo_cfg.get("fov_deg", 90.0)) if from_pano else None,
    }
    if fresh is not None and augment["scale"]:
        # a fresh tile is cut at its own side, with no raster window around it to show more ground; capped
        # here once, so the fresh datasets built every epoch do not warn each time
        zoom = zoom_range(augment["scale"], has_windows=False)
        if zoom[1] < float(augment["scale"][1]):
            augment["scale"] = list(zoom)
            if rank0:
                print(f"fresh places: zoom in only ({zoom[0]:g}-1x a tile's ground)", flush=True)
    # photo.fov_start_deg: a curriculum from panorama sectors that wide down to the photos' own field of view
    fov_start = photo_cfg.get("fov_start_deg") if from_pano else None
    # <track>.shift_start: a curriculum from camera-centred tiles shifted that much to <track>.augment_shift
    shift_start = (
        float(on_track["shift_start"]) if shifted and on_track.get("shift_start") is not None else None
    )
    shift_end = float(augment["shift"])
    val_set = PairDataset(frame=val_frame, **common)
    t_load = time.perf_counter()
    if fresh is None:
        train_set = PairDataset(frame=frame, augment=augment, seed=opts.seed, **common)
        train_set.preload(progress=rank0 and opts.progress, label="decoding train")
        pool_keys = [(0, i) for i in range(len(train_set))]  # one key per sample; the manifest's never change
    val_set.preload(progress=rank0 and opts.progress, label="decoding val")
    load_s = time.perf_counter() - t_load

    def geo_sampler(dataset: PairDataset) -> GeoBatchSampler:
        return GeoBatchSampler(
            dataset.frame["lat"],
            dataset.frame["lon"],
            dataset.frame["city"],
            dataset.tile_keys(),
            batch_size=batch_size,
            hard_fraction=float(train_cfg.get("hard_fraction", 0.5)),
            group_size=int(train_cfg.get("neighbours_per_group", 8)),
            seed=opts.seed,
        )

    # fresh places: epoch e trains on the places drawn for epochs e-fresh_epochs+1 .. e (each drawn once)
    pool: dict[int, tuple[Any, list[tuple[np.ndarray, np.ndarray]]]] = {}

    def fresh_set(epoch: int) -> tuple[PairDataset, list[tuple[int, int]]]:
        """The pool epoch ``epoch`` trains on, and a key per sample: (the epoch it was drawn for, index)."""
        assert fresh is not None
        wanted = range(max(0, epoch - fresh_epochs + 1), epoch + 1)
        for e in [e for e in pool if e not in wanted]:
            del pool[e]
        for e in wanted:
            if e not in pool:
                f, grounds, tiles = fresh.sample(n_fresh, epoch=e)
                prepared = PairDataset(frame=f, images=list(zip(grounds, tiles, strict=True)), **common)
                pool[e] = (f, [prepared.raw(i) for i in range(len(f))])
        frames = [pool[e][0] for e in wanted]
        images = [im for e in wanted for im in pool[e][1]]
        dataset = PairDataset(
            frame=pd.concat(frames, ignore_index=True),
            images=images,
            prepared=True,
            augment=augment,
            seed=opts.seed,
            **common,
        )
        return dataset, [(e, i) for e in wanted for i in range(len(pool[e][0]))]

    if fresh is not None:  # the first pool is drawn before the clock starts, like decoding the manifest
        t_fresh = time.perf_counter()
        train_set, pool_keys = fresh_set(int(resumed["loop"]["epoch"]) if resumed is not None else 0)
        load_s += time.perf_counter() - t_fresh
    sampler: Any = geo_sampler(train_set)

    # ---- model, optimizer, state
    model.place(ctx.device)
    if average is not None:
        average.model.place(ctx.device)
    published = average.model if average is not None else model  # what validation and checkpoints see
    net: Any = model
    if ctx.ray:
        import ray.train.torch

        net = ray.train.torch.prepare_model(model, move_to_device=False)
    optimizer = _optimizer(model, train_cfg, lr)
    loss_fn = make_loss(cfg)
    amp = mixed_precision(ctx.device, str(train_cfg.get("precision", "auto")))
    total_steps = len(sampler) * (opts.epochs or 0)  # progress bar only: fresh pools grow for a few epochs
    history: list[dict[str, Any]] = []
    loop: dict[str, Any] = {"epoch": 0, "step": 0, "elapsed_s": 0.0, "pairs": 0}
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        loop, history = dict(resumed["loop"]), list(resumed["history"])
    budget_s = opts.minutes * 60.0 if opts.minutes is not None else None
    card = {
        "model": cfg["name"],
        "config": cfg,
        "data": {
            "dir": os.path.abspath(opts.data),
            "manifest_digest": manifest_digest(opts.data),
            "track": opts.track,
            "pairs_track": pairs_track,
            "protocol": opts.protocol,
            "train_pairs": len(train_set),
            "val_pairs": len(val_frame),
            "fresh_places": n_fresh,
            "fresh_epochs": fresh_epochs if fresh is not None else None,
            "style_spread": spread,
        },
        "train": {
            "seed": opts.seed,
            "batch_size": batch_size,
            "lr": lr,
            "workers": max(1, ctx.world),
            "epochs": opts.epochs,
            "minutes": opts.minutes,
            "device": str(ctx.device),
            "precision": "bf16" if amp else "fp32",
            "decode_s": round(load_s, 1),
        },
    }
    mine_every = int(train_cfg.get("mine_every", 0) or 0)
    mined: np.ndarray | None = None  # the latest neighbour table, its rows following pool_keys

    def mined_sampler(table: np.ndarray, dataset: PairDataset) -> MinedBatchSampler:
        return MinedBatchSampler(
            table,
            dataset.tile_keys(),
            batch_size=batch_size,
            per_anchor=int(train_cfg.get("neighbours_per_group", 8)) - 1,
            seed=opts.seed,
        )

    if loop.get("mined") is not None:  # resumed: the table the last epoch trained with, as a straight run has
        mined = carry_neighbours(loop["mined"]["table"], loop["mined"]["keys"], pool_keys)
        sampler = mined_sampler(mined, train_set)
    if resumed is not None and rank0:
        print(f"resuming from epoch {loop['epoch']} (step {loop['step']}) of {opts.out}", flush=True)
    progress = _Progress(
        enabled=rank0 and opts.progress, total=(total_steps or None), budget_s=budget_s, rank0=rank0
    )

    def position(elapsed_s: float, epochs_done: float) -> float:
        """Position in training (0..1) for the lr schedule and the photo curriculum: by the time budget, or
        by epochs rather than steps, since epochs differ in length (fresh pools)."""
        return elapsed_s / budget_s if budget_s else epochs_done / (opts.epochs or 1)

    start_epoch = int(loop["epoch"])
    progress.start(loop["step"], loop["elapsed_s"])
    t_start = time.perf_counter() - float(loop["elapsed_s"])
    last_val: dict[str, float] = history[-1].get("val", {}) if history else {}
    stop = False
    epoch = start_epoch
    while not stop:
        if opts.epochs is not None and epoch >= opts.epochs:
            break
        if fresh is not None and epoch > start_epoch:
            train_set, keys = fresh_set(epoch)
            if mined is None:
                sampler = geo_sampler(train_set)
            else:  # between minings, the latest table carried over to the pool's new places
                mined = carry_neighbours(mined, pool_keys, keys)
                sampler = mined_sampler(mined, train_set)
            pool_keys = keys
        train_set.set_epoch(epoch)
        if fov_start is not None:
            augment["photo_sector"] = _anneal(
                fov_start,
                float(augment["photo_fov"]),
                float(photo_cfg.get("fov_anneal", 0.5)),
                position(loop["elapsed_s"], epoch),
            )
        if shift_start is not None:
            augment["shift"] = _anneal(
                shift_start,
                shift_end,
                float(on_track.get("shift_anneal", 0.5)),
                position(loop["elapsed_s"], epoch),
            )
        if mine_every and epoch > 0 and epoch % mine_every == 0:
            # after set_epoch: photos cut from panoramas are mined as this epoch cuts them
            g, a = embed_dataset(model, train_set, ctx.device, bf16=amp)
            mined = neighbour_table(g, a, k=int(train_cfg.get("mine_k", 32)))
            sampler = mined_sampler(mined, train_set)
        sampler.set_epoch(epoch)
        model.train()
        losses: list[float] = []
        t_epoch, pairs_epoch = time.perf_counter(), 0
        n_batches = max(1, len(sampler))
        for i_batch, batch in enumerate(_batches(train_set, sampler, ctx.rank, ctx.world)):
            elapsed = time.perf_counter() - t_start
            out_of_time = budget_s is not None and elapsed >= budget_s
            if ctx.agree(out_of_time):
                stop = True
                break
            frac = position(elapsed, epoch + i_batch / n_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_factor(frac, loop["step"], int(train_cfg.get("warmup_steps", 0)))
            ground = batch["ground"].to(ctx.device, non_blocking=True)
            aerial = batch["aerial"].to(ctx.device, non_blocking=True)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
                g, a = net(ground, aerial)
            loss = loss_fn(gather_with_grad(g.float()), gather_with_grad(a.float()), net)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(model)
            loop["step"] += 1
            n_pairs = ground.shape[0] * ctx.world
            loop["pairs"] += n_pairs
            pairs_epoch += n_pairs
            losses.append(float(loss.detach()))
            rate = pairs_epoch / max(1e-6, time.perf_counter() - t_epoch)
            progress.update(
                loop["step"], time.perf_counter() - t_start, epoch, losses[-1], rate, last_val.get("R@1")
            )
            if rank0 and loop["step"] % opts.log_every == 0:
                history.append(
                    {
                        "kind": "step",
                        "epoch": epoch,
                        "step": loop["step"],
                        "loss": losses[-1],
                        "lr": optimizer.param_groups[0]["lr"],
                        "temperature": model.temperature,
                        "pairs_per_s": rate,
                    }
                )
        if not losses:
            break
        # ---- end of epoch (or of the budget): validate, checkpoint, report
        loop["epoch"] = epoch + 1
        loop["elapsed_s"] = time.perf_counter() - t_start
        loop["mined"] = None if mined is None else {"table": mined, "keys": pool_keys}
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": loop["step"],
            "loss": float(np.mean(losses)),
            "temperature": model.temperature,
            "elapsed_s": round(loop["elapsed_s"], 1),
            "pairs_per_s": pairs_epoch / max(1e-6, time.perf_counter() - t_epoch),
        }
        tmp = None
        if rank0:
            last_val = _validate(published, val_set, ctx.device)
            metrics["val"] = last_val
            history.append({"kind": "epoch", **metrics})
            card["metrics"] = metrics
            state = model.state_dict() if average is not None else None
            save = dict(
                model=published, optimizer=optimizer, loop_state=loop, history=history, train_state=state
            )
            card = save_checkpoint(opts.out, card=card, **save)
            progress.epoch_done(metrics)
            if ctx.ray:
                tmp = tempfile.mkdtemp(prefix="wherecnn-ckpt-")
                save_checkpoint(tmp, card=card, **save)
        ctx.report(
            {k: v for k, v in metrics.items() if k != "val"} | {f"val_{k}": v for k, v in last_val.items()},
            tmp,
        )
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        epoch += 1
        if budget_s is not None and ctx.agree(time.perf_counter() - t_start >= budget_s):
            stop = True
    progress.stop()
    return {
        "epochs": loop["epoch"],
        "steps": loop["step"],
        "pairs": loop["pairs"],
        "elapsed_s": loop["elapsed_s"],
        "loss": history[-1].get("loss") if history else None,
        "val": last_val,
        "out": opts.out,
        "model_id": card.get("model_id"),
        "params": model.num_parameters(),
        "train_pairs": len(train_set),
        "fresh_places_per_epoch": n_fresh,
    }


class _Progress:
    """rich progress on rank 0: loss, pairs/s and the latest validation R@1."""

    def __init__(
        self, *, enabled: bool, total: int | None, budget_s: float | None, rank0: bool = True
    ) -> None:
        self.enabled, self.total, self.budget_s, self.rank0 = enabled, total, budget_s, rank0
        self._p: Any = None

    def start(self, step: int, elapsed: float) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[rate]} pairs/s  R@1 {task.fields[r1]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        total = self.budget_s if self.budget_s is not None else self.total
        self._task = self._p.add_task(
            "train",
            total=total,
            completed=elapsed if self.budget_s else step,
            epoch=0,
            loss="-",
            rate="-",
            r1="-",
        )
        self._p.start()

    def update(
        self, step: int, elapsed: float, epoch: int, loss: float, rate: float, r1: float | None
    ) -> None:
        if self._p is None:
            if self.rank0 and step % 50 == 0:
                print(f"step {step}: loss {loss:.4f}  {rate:.0f} pairs/s  ({elapsed:.0f} s)", flush=True)
            return
        self._p.update(
            self._task,
            completed=min(elapsed, self.budget_s) if self.budget_s else step,
            epoch=epoch + 1,
            loss=f"{loss:.4f}",
            rate=f"{rate:.0f}",
            r1="-" if r1 is None else f"{r1:.3f}",
        )

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        """One line per epoch: in the progress display, or plain (logs, Ray workers, --no-progress)."""
        val = metrics.get("val", {})
        line = (
            f"epoch {metrics['epoch']}: loss {metrics['loss']:.4f}  T {metrics['temperature']:.3f}  "
            f"{metrics['pairs_per_s']:.0f} pairs/s  val R@1 {val.get('R@1', float('nan')):.3f} "
            f"R@5 {val.get('R@5', float('nan')):.3f}  ({metrics['elapsed_s']:.0f} s)"
        )
        if self._p is not None:
            self._p.console.log(line)
        elif self.rank0:
            print(line, flush=True)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()


# --------------------------------------------------------------------------------------------- entry points
def run_training(opts: TrainOptions) -> dict[str, Any]:
    """Local loop when ``workers`` <= 1 and not asked for Ray; else Ray Train with ``workers`` workers."""
    if opts.workers <= 0:
        return train_func(asdict(opts))
    return _run_ray(opts)


def _run_ray(opts: TrainOptions) -> dict[str, Any]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from wherecnn import storage
    from wherecnn.config import get_settings

    settings = get_settings()
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address=settings.ray_address,
            num_cpus=settings.num_cpus if not settings.ray_address else None,
            include_dashboard=False,
            log_to_driver=True,
        )
        started = True
    try:
        gpu = torch.cuda.is_available() if opts.device == "auto" else opts.device.startswith("cuda")
        # Ray Train's own checkpoints beside ours; S3 through pyarrow with the configured endpoint (MinIO)
        ray_out = (opts.out.rstrip("/") if storage.is_s3(opts.out) else os.path.abspath(opts.out)) + "-ray"
        filesystem, storage_path = storage.arrow_fs(ray_out)
        config = asdict(opts) | {
            "data": os.path.abspath(opts.data),
            "out": opts.out if storage.is_s3(opts.out) else os.path.abspath(opts.out),
            "progress": False,  # workers' output goes to logs: plain lines, not live bars
        }
        trainer = TorchTrainer(
            train_func,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=opts.workers, use_gpu=gpu, resources_per_worker={"CPU": 1}
            ),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(storage_path=storage_path, storage_filesystem=filesystem, name="run"),
        )
        result = trainer.fit()
        if result.error:
            raise result.error
        metrics = dict(result.metrics or {})
        card = load_checkpoint(config["out"])
        return {
            "epochs": metrics.get("epoch"),
            "steps": metrics.get("step"),
            "elapsed_s": metrics.get("elapsed_s"),
            "loss": metrics.get("loss"),
            "val": {k[4:]: v for k, v in metrics.items() if k.startswith("val_")},
            "out": opts.out,
            "model_id": card["card"].get("model_id") if card else None,
            "pairs": None,
            "params": None,
            "train_pairs": card["card"]["data"]["train_pairs"] if card else None,
        }
    finally:
        if started:
            ray.shutdown()
