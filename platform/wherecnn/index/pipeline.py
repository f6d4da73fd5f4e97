"""An index run: a tile manifest in, one point per good tile in a NEW store version out (`run_index`).

The manifest is read (`index.manifest`), the tiles to do are those the version does not hold yet, and one of
two runners embeds them with the same per-tile functions (`index.tiles`: loading, checks, payloads):
- Ray Data (`index.ray_runner`): tasks load and decode, a model actor pool (CPU or GPU) embeds, a datasink
  upserts into the store;
- plain (``use_ray=False``, here): the same steps in one process, for small jobs and tests.

Resumable by construction: point IDs are ``uuid5(tile_id)`` and a rerun of the same job resumes into the same
version (found by a tag derived from the manifest content and the model) and skips the tile IDs already
there, so a job killed at any point and rerun ends with exactly one point per good tile. Bad tiles (missing,
unreadable, wrong size) are skipped, counted by reason and listed in ``rejects.jsonl`` in the run folder
(`index.summary`).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from wherecnn.config import Settings, get_settings
from wherecnn.index.manifest import manifest_digest, read_tile_manifest
from wherecnn.index.ray_runner import RAY_LOG, ensure_ray, ray_output_to, run_ray
from wherecnn.index.store import StoreError, VectorStore, open_store
from wherecnn.index.summary import (
    IndexSummary,
    Progress,
    progress_bar,
    rejects_of,
    skip_counts,
    write_rejects,
    write_summary,
)
from wherecnn.index.tiles import chunks, embed_tiles, load_batch, load_embedder, points_for
from wherecnn.retrieval.settings import RetrievalSettings
from wherecnn.retrieval.views import with_windows

# --------------------------------------------------------------------------------------------- plain path


def _run_plain(
    todo: pd.DataFrame,
    store: VectorStore,
    embedder: Any,
    *,
    batch_size: int,
    workers: int,
    tile_size: int | None,
    settings: Settings,
    progress: Progress,
    index_views: int = 1,
) -> list[dict[str, Any]]:
    rejects: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for chunk in chunks(todo, batch_size):
            good, images, bad = load_batch(chunk, tile_size=tile_size, settings=settings, pool=pool)
            if good:
                store.upsert(
                    points_for(good, embed_tiles(embedder, good, images, index_views), embedder.model_id),
                    batch_size=batch_size,
                )
            rejects.extend(bad)
            progress.add(len(good), len(bad))
    return rejects


# --------------------------------------------------------------------------------------------- entry


def job_tag(digest: str, model_id: str, prefix: str = "ix") -> str:
    return f"{prefix}-" + hashlib.sha256(f"{digest}|{model_id}".encode()).hexdigest()[:12]


def _live_tag(store: VectorStore) -> str | None:
    live = store.live_version()
    for info in store.versions():
        if info.version == live:
            return info.tag
    return None


def store_uri_of(store: VectorStore | str) -> str:
    """A URI other processes (Ray workers) can open the same store with."""
    if isinstance(store, str):
        return store
    from wherecnn.index.store.edge import EdgeStore
    from wherecnn.index.store.server import ServerStore

    if isinstance(store, EdgeStore):
        return f"edge://{store.root}"
    if isinstance(store, ServerStore) and store.url != ":memory:":
        return store.url
    raise StoreError(
        "an in-process ':memory:' store cannot be shared with Ray workers; use --no-ray or a server URL"
    )


def store_key(store: VectorStore | str) -> str:
    """A short stable name for a store (its URI's digest; an in-process one's identity): run folders are
    per store, so runs into different stores never share rejects or summaries."""
    try:
        uri = store_uri_of(store)
    except StoreError:
        uri = f"memory:{id(store)}"
    return hashlib.sha256(uri.encode()).hexdigest()[:8]


def run_index(
    tiles: str,
    checkpoint: str,
    store: VectorStore | str,
    *,
    workers: int = 1,
    batch_size: int = 64,
    use_ray: bool = True,
    device: str = "auto",
    threads: int | None = None,
    tile_size: int | None = None,
    run_dir: str | Path | None = None,
    switch: bool = True,
    tag: str | None = None,
    settings: Settings | None = None,
    frame: pd.DataFrame | None = None,
    console: Any = None,
    show_progress: bool = True,
    retrieval: RetrievalSettings | None = None,
) -> IndexSummary:
    """Embed a tile manifest into a new store version (resuming a killed run of the same job), switch to it.

    ``switch=False`` leaves the built version for the caller (reindex validates first). The version records
    what it holds (`VersionInfo.about`): the model id, the embedding size and the ``retrieval`` settings it
    was built with (``index_views`` and any query-side ones set explicitly), which search reads back; each
    point's payload carries its tile's raster window for the fine stage (`retrieval.views.TileWindow`) where
    the manifest has one.
    """
    from rich.console import Console

    settings = settings or get_settings()
    console = console or Console(stderr=True)
    frame = frame if frame is not None else read_tile_manifest(tiles, settings)
    frame = with_windows(frame)
    retrieval = retrieval or RetrievalSettings()
    if not (frame["cell_px"] > 0).any():  # no raster windows: the tiles as cut, one view each
        retrieval = retrieval.model_copy(update={"index_views": 1})
    embedder = load_embedder(checkpoint, device)
    model_id = str(embedder.model_id)
    # the retrieval settings the index needs (how tiles are stored) and any query-side ones set for it;
    # query-side settings left unset follow the engine's defaults
    recorded = {**retrieval.model_dump(exclude_unset=True), "index_views": retrieval.index_views}
    about = {"model_id": model_id, "dim": int(embedder.embed_dim), "retrieval": recorded}
    index_model = model_id if retrieval.index_views == 1 else f"{model_id}|views{retrieval.index_views}"
    tag = tag or job_tag(manifest_digest(frame), index_model)
    owned = isinstance(store, str)
    vs = open_store(store, settings=settings) if isinstance(store, str) else store
    run_path = Path(run_dir) if run_dir else Path(settings.work_dir) / "runs" / f"index-{tag}-{store_key(vs)}"
    run_path.mkdir(parents=True, exist_ok=True)
    summary = IndexSummary(
        manifest_tiles=len(frame), engine="ray" if use_ray else "plain", run_dir=str(run_path)
    )
    summary.model_id = model_id
    summary.rejects_file = str(run_path / "rejects.jsonl")
    try:
        if switch and _live_tag(vs) == tag:
            summary.up_to_date, summary.version, summary.points = True, vs.live_version(), vs.count()
            summary.switched = True
            # what the run that built it skipped, as its rejects file says
            summary.skipped = skip_counts(rejects_of(run_path / "rejects.jsonl"))
            console.print(
                f"[green]up to date[/]: live version {summary.version} already holds this job ({tag})"
            )
            write_summary(run_path, summary)
            return summary
        version = vs.begin_version(tag, dim=int(embedder.embed_dim), views=retrieval.index_views**2)
        vs.describe(about)
        summary.version = version
        present = vs.tile_ids()
        todo = frame[~frame["tile_id"].isin(present)]
        summary.already_present = len(frame) - len(todo)
        if summary.already_present:
            console.print(
                f"resuming {version}: {summary.already_present} of {len(frame)} tiles already indexed"
            )
        progress = Progress()
        start = time.perf_counter()
        with progress_bar(console, len(todo), progress, show_progress, run_path / "progress.json"):
            if len(todo) == 0:
                rejects: list[dict[str, Any]] = []
            elif use_ray:
                uri = store_uri_of(vs)
                vs.close()  # Edge: let the Ray writer hold the version dir
                # imported first: Ray's loggers take the stderr they find at import (then pointed at the log)
                import ray.data  # noqa: F401

                with ray_output_to(run_path / RAY_LOG):
                    started = ensure_ray(settings)
                try:
                    n_threads = threads or max(
                        1, (settings.num_cpus or os.cpu_count() or 1) // max(1, workers)
                    )
                    with ray_output_to(run_path / RAY_LOG):
                        rejects = run_ray(
                            todo, uri, tag, checkpoint=checkpoint, device=device,
                            batch_size=batch_size, workers=workers, threads=n_threads, tile_size=tile_size,
                            settings=settings, progress=progress, index_views=retrieval.index_views,
                        )  # fmt: skip
                finally:
                    if started:
                        import ray

                        with ray_output_to(run_path / RAY_LOG):
                            ray.shutdown()
                    console.print(f"Ray's own messages: {run_path / RAY_LOG}", soft_wrap=True)
                vs.begin_version(tag)
            else:
                if threads:
                    import torch

                    torch.set_num_threads(threads)
                rejects = _run_plain(
                    todo, vs, embedder, batch_size=batch_size, workers=max(workers, 4), tile_size=tile_size,
                    settings=settings, progress=progress, index_views=retrieval.index_views,
                )  # fmt: skip
        summary.seconds = time.perf_counter() - start
        summary.embedded = progress.embedded
        summary.tiles_per_s = summary.embedded / summary.seconds if summary.seconds > 0 else 0.0
        summary.skipped = skip_counts(rejects)
        write_rejects(run_path / "rejects.jsonl", rejects)
        summary.points = vs.count()
        if switch:
            if summary.points == 0:
                raise StoreError(
                    f"no tile of {tiles} could be indexed ({summary.skipped_total} skipped); see "
                    f"{summary.rejects_file}. The live version is unchanged."
                )
            vs.switch(version)
            summary.switched = True
            vs.prune(settings.retention)
        write_summary(run_path, summary)
        return summary
    finally:
        if owned:
            vs.close()
