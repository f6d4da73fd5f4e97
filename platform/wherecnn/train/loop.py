"""The one training function, `train_func`, run as-is by the local loop and by Ray Train's `TorchTrainer`.

Distributed runs split each global batch across workers and all-gather the embeddings (gradients kept), so
the loss -- and every negative in it -- is the global batch's, exactly as in a single process. Rank 0
validates, writes checkpoints and shows progress; every rank calls ``ray.train.report`` under Ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from wherecnn.data.datasets import PairDataset
from wherecnn.models import build_model, model_from_config
from wherecnn.train.checkpoint import load_checkpoint, manifest_digest, save_checkpoint
from wherecnn.train.context import RunContext
from wherecnn.train.data import TrainingData, rank_batches
from wherecnn.train.losses import gather_with_grad, make_loss
from wherecnn.train.mining import carry_neighbours, embed_dataset, neighbour_table
from wherecnn.train.optim import WeightAverage, lr_factor, make_optimizer, mixed_precision
from wherecnn.train.options import TrainOptions
from wherecnn.train.progress import TrainProgress


# --------------------------------------------------------------------------------------------- helpers
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
    ctx = RunContext(opts.device)
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
    train_cfg = dict(cfg["train"])
    # train.ema: checkpoints, validation and so every consumer get the weights' moving average; the
    # optimizer trains `model`, whose own weights ride along in the checkpoint for --resume
    average = None
    if train_cfg["ema"]:
        step = int(resumed["loop"]["step"]) if resumed is not None else 0
        average = WeightAverage(model, float(train_cfg["ema"]), step)
        if resumed is not None:
            if resumed.get("train_state") is None:
                raise ValueError(f"{opts.out}: the checkpoint has no trained weights beside their average")
            model.load_state_dict(resumed["train_state"])
    batch_size = int(opts.batch_size or train_cfg["batch_size"])
    if batch_size % ctx.world:
        raise ValueError(f"batch size {batch_size} must be divisible by the number of workers {ctx.world}")

    # ---- data
    data = TrainingData(
        opts,
        cfg,
        batch_size=batch_size,
        first_epoch=int(resumed["loop"]["epoch"]) if resumed is not None else 0,
        rank0=rank0,
    )
    train_set, pool_keys, val_set = data.train_set, data.pool_keys, data.val_set
    lr = float(opts.lr or data.recipe["lr"])  # dual-cpu: 2e-3 on offset, 1e-3 elsewhere
    sampler: Any = data.geo_sampler(train_set)

    # ---- model, optimizer, state
    model.place(ctx.device)
    if average is not None:
        average.model.place(ctx.device)
    published = average.model if average is not None else model  # what validation and checkpoints see
    net: Any = model
    if ctx.ray:
        import ray.train.torch

        net = ray.train.torch.prepare_model(model, move_to_device=False)
    optimizer = make_optimizer(model, train_cfg, lr)
    loss_fn = make_loss(cfg, turned_negatives=bool(data.recipe["turned_negatives"]))
    amp = mixed_precision(ctx.device, str(train_cfg["precision"]))
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
            "pairs_track": data.pairs_track,
            "protocol": opts.protocol,
            "train_pairs": len(train_set),
            "val_pairs": len(data.val_frame),
            "fresh_places": data.n_fresh,
            "fresh_epochs": data.fresh_epochs if data.fresh is not None else None,
            "style_spread": data.spread,
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
            "decode_s": round(data.load_s, 1),
        },
    }
    mine_every = int(train_cfg["mine_every"])
    mined: np.ndarray | None = None  # the latest neighbour table, its rows following pool_keys

    if loop.get("mined") is not None:  # resumed: the table the last epoch trained with, as a straight run has
        mined = carry_neighbours(loop["mined"]["table"], loop["mined"]["keys"], pool_keys)
        sampler = data.mined_sampler(mined, train_set)
    if resumed is not None and rank0:
        print(f"resuming from epoch {loop['epoch']} (step {loop['step']}) of {opts.out}", flush=True)
    progress = TrainProgress(
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
        if data.fresh is not None and epoch > start_epoch:
            train_set, keys = data.epoch_set(epoch)
            if mined is None:
                sampler = data.geo_sampler(train_set)
            else:  # between minings, the latest table carried over to the pool's new places
                mined = carry_neighbours(mined, pool_keys, keys)
                sampler = data.mined_sampler(mined, train_set)
            pool_keys = keys
        train_set.set_epoch(epoch)
        data.follow_curricula(position(loop["elapsed_s"], epoch))
        if mine_every and epoch > 0 and epoch % mine_every == 0:
            # after set_epoch: photos cut from panoramas are mined as this epoch cuts them
            g, a = embed_dataset(model, train_set, ctx.device, bf16=amp)
            mined = neighbour_table(g, a, k=int(train_cfg["mine_k"]))
            sampler = data.mined_sampler(mined, train_set)
        sampler.set_epoch(epoch)
        model.train()
        losses: list[float] = []
        t_epoch, pairs_epoch = time.perf_counter(), 0
        n_batches = max(1, len(sampler))
        for i_batch, batch in enumerate(rank_batches(train_set, sampler, ctx.rank, ctx.world)):
            elapsed = time.perf_counter() - t_start
            out_of_time = budget_s is not None and elapsed >= budget_s
            if ctx.agree(out_of_time):
                stop = True
                break
            frac = position(elapsed, epoch + i_batch / n_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(frac, loop["step"], int(train_cfg["warmup_steps"]))
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
        "fresh_places_per_epoch": data.n_fresh,
    }


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
