"""The Ray path of an index run: Ray Data loads tiles in tasks, embeds them in a model actor pool (CPU or GPU)
and writes them through a datasink into the store; what Ray itself prints goes to the run folder."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.config import Settings
from wherecnn.index.store import open_store, store_kind
from wherecnn.index.summary import Progress
from wherecnn.index.tiles import embed_tiles, load_embedder, load_tile, points_for

RAY_LOG = "ray.log"  # in the run folder: what Ray itself printed while the job ran (`ray_output_to`)


# --------------------------------------------------------------------------------------------- Ray path


def _ray_load(
    batch: pd.DataFrame, tile_size: int | None, settings_json: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Ray task: read and decode one batch. Same-shape images go out as one [N, H, W, 3] tensor (fast through
    Arrow); rejects carry a blank image of that shape and a reason."""
    settings = Settings.model_validate(settings_json)
    images, reasons, details = [], [], []
    for row in batch.to_dict("records"):
        image, reason, detail = load_tile(row, tile_size=tile_size, settings=settings)
        images.append(image)
        reasons.append(reason or "")
        details.append(detail)
    shapes = {im.shape for im in images if im is not None}
    out = {c: batch[c].to_numpy() for c in batch.columns}
    out["reject"] = np.asarray(reasons, dtype=object)
    out["detail"] = np.asarray(details, dtype=object)
    if len(shapes) <= 1:
        shape = next(iter(shapes), (1, 1, 3))
        out["image"] = np.stack([im if im is not None else np.zeros(shape, np.uint8) for im in images])
    else:  # mixed sizes (no expected size known): a ragged column, slower but correct
        blank = np.zeros((1, 1, 3), np.uint8)
        ragged = np.empty(len(images), dtype=object)
        ragged[:] = [im if im is not None else blank for im in images]
        out["image"] = ragged
    return out


class _EmbedActor:
    """Ray actor: one model per actor (loaded once), embeds the good rows of each batch."""

    def __init__(self, checkpoint: str, device: str, threads: int, index_views: int = 1) -> None:
        # OpenMP's worker threads spin between torch ops by default; beside the loader and writer tasks on
        # the same cores that spinning steals their CPU. Passive waiting must be set before torch loads it.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        torch.set_num_threads(max(1, threads))
        self.embedder = load_embedder(checkpoint, device)
        self.index_views = index_views

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.asarray(batch["reject"]) == ""
        n = len(good)
        views = self.index_views**2
        shape = (n, views, self.embedder.embed_dim) if views > 1 else (n, self.embedder.embed_dim)
        vectors = np.zeros(shape, dtype=np.float32)
        if good.any():
            idx = np.flatnonzero(good)
            images = [np.asarray(batch["image"][i]) for i in idx]
            columns = [c for c in batch if c not in ("image", "reject", "detail")]
            rows = [{c: batch[c][i] for c in columns} for i in idx]
            vectors[good] = embed_tiles(self.embedder, rows, images, self.index_views)
        out = {k: v for k, v in batch.items() if k != "image"}
        out["vector"] = vectors
        out["model"] = np.asarray([self.embedder.model_id] * n, dtype=object)
        return out


class _ProgressActor:
    def __init__(self) -> None:
        self.embedded = 0
        self.skipped = 0

    def add(self, embedded: int, skipped: int) -> None:
        self.embedded += embedded
        self.skipped += skipped

    def get(self) -> tuple[int, int]:
        return self.embedded, self.skipped


def _make_datasink(
    store_uri: str, tag: str, settings_json: dict[str, Any], progress_actor: Any, rows_per_write: int = 1024
) -> Any:
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class StoreDatasink(Datasink):
        """Upserts embedded batches into the version being built; returns the batch's rejects."""

        def __init__(self) -> None:
            self.rejects: list[dict[str, Any]] = []
            self.embedded = 0

        @property
        def min_rows_per_write(self) -> int:
            return rows_per_write  # bigger writes: fewer store opens (Edge replays its WAL on each open)

        def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
            settings = Settings.model_validate(settings_json)
            store = open_store(store_uri, settings=settings)
            written, rejects = 0, []
            try:
                store.begin_version(tag)  # the driver created it; this attaches to it
                for block in blocks:
                    df = BlockAccessor.for_block(block).to_pandas()
                    ok = df["reject"] == ""
                    bad = df[~ok]
                    rejects.extend(
                        {"tile_id": str(r.tile_id), "uri": str(r.uri), "reason": r.reject, "detail": r.detail}
                        for r in bad.itertuples()
                    )
                    good = df[ok]
                    if len(good):
                        rows = good.drop(columns=["vector", "reject", "detail", "model"]).to_dict("records")
                        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in good["vector"]])
                        written += store.upsert(points_for(rows, vectors, str(good["model"].iloc[0])))
                    progress_actor.add.remote(int(ok.sum()), int((~ok).sum()))
            finally:
                store.close()
            return {"embedded": written, "rejects": rejects}

        def on_write_complete(self, write_result: Any) -> None:
            for ret in write_result.write_returns:
                self.embedded += ret["embedded"]
                self.rejects.extend(ret["rejects"])

    return StoreDatasink()


def _ray_env() -> dict[str, str]:
    keep = ("AWS_", "WHERECNN_", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


@contextlib.contextmanager
def ray_output_to(path: Path) -> Iterator[None]:
    """While Ray runs in this process, what Ray itself prints (its C++ core worker writes straight to file
    descriptor 2, its Python loggers to the stderr they were handed) goes to ``path``, in the run folder;
    what we print (through ``sys.stderr``, which keeps pointing at the terminal) still reaches the user."""
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = open(terminal_fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)  # noqa: SIM115
    before = sys.stderr
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
        sys.stderr = terminal
        try:
            yield
        finally:
            sys.stderr = before
            terminal.flush()
            os.dup2(terminal_fd, 2)
            terminal.close()


def ensure_ray(settings: Settings) -> bool:
    """Start (or join) Ray; True when this call started it (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address=settings.ray_address,
        num_cpus=None if settings.ray_address else settings.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": _ray_env()},
        logging_level="ERROR",
    )
    return True


def run_ray(
    todo: pd.DataFrame,
    store_uri: str,
    tag: str,
    *,
    checkpoint: str,
    device: str,
    batch_size: int,
    workers: int,
    threads: int,
    tile_size: int | None,
    settings: Settings,
    progress: Progress,
    index_views: int = 1,
) -> list[dict[str, Any]]:
    """Embed ``todo`` (manifest rows, URIs absolute) through Ray Data; returns the rejects.

    The driver has already read the manifest (pyarrow, S3 with an explicit endpoint where configured) to
    derive the job tag and the resume set, so the dataset starts from those rows, cut into blocks here:
    reading the file a second time in Ray (a listing task, a read task, a filter against the resume set and
    an all-to-all repartition) cost seconds per job on 2 cores and bought nothing.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our progress line stands for them
    ctx.print_on_execution_start = False
    settings_json = settings.model_dump()
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    rows = todo.drop(columns=[c for c in ("geometry",) if c in todo.columns]).reset_index(drop=True)
    rows["tile_id"] = rows["tile_id"].astype(str)
    # load blocks of several embed batches: fewer, larger tasks (each has a fixed Ray scheduling cost), but
    # enough of them for the loaders to run ahead of the actors
    block_rows = max(batch_size, min(8 * batch_size, math.ceil(len(rows) / max(4.0, 4 * cluster_cpus))))
    ds = ray.data.from_pandas([rows.iloc[i : i + block_rows] for i in range(0, len(rows), block_rows)])
    # no more loaders than blocks, no more model actors than batches (a small job would start idle ones)
    loaders = max(1, min(int(cluster_cpus), math.ceil(len(rows) / block_rows)))
    actors = max(1, min(workers, math.ceil(len(rows) / batch_size)))
    # logical CPUs: always leave one for the load/write tasks, else the actors starve them
    actor_cpus = max(0.25, min(1.0, (cluster_cpus - 1.0) / actors))
    gpu = device.startswith("cuda") or (device == "auto" and _cuda_available())
    ds = ds.map_batches(
        _ray_load,
        batch_format="pandas",
        batch_size=None,  # one task per block
        fn_args=(tile_size, settings_json),
        num_cpus=0.25,
        # at most one loader per core: each extra concurrent task is another Python worker to start
        # (~1.4 s of CPU to import Ray, pandas and wherecnn), which is what made the load stage slow
        compute=TaskPoolStrategy(size=loaders),
    ).map_batches(
        _EmbedActor,
        batch_format="numpy",
        batch_size=batch_size,
        fn_constructor_args=(checkpoint, "cuda" if gpu else "cpu", threads, index_views),
        compute=ActorPoolStrategy(size=actors),
        num_gpus=1 if gpu else 0,
        num_cpus=0 if gpu else actor_cpus,
    )
    progress_actor = ray.remote(num_cpus=0)(_ProgressActor).remote()
    sink = _make_datasink(store_uri, tag, settings_json, progress_actor)
    # Edge locks a version dir to one handle: its writes run one at a time; a server takes them in parallel.
    concurrency = 1 if store_kind(store_uri) == "edge" else None
    error: list[BaseException] = []

    def run() -> None:
        try:
            ds.write_datasink(sink, concurrency=concurrency, ray_remote_args={"num_cpus": 0.25})
        except BaseException as exc:
            error.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.5)
        embedded, skipped = ray.get(progress_actor.get.remote())
        progress.embedded, progress.skipped = embedded, skipped
    if error:
        raise error[0]
    return sink.rejects


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
