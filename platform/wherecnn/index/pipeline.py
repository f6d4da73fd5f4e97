"""The embedding pipeline: a tile manifest in, one point per good tile in a NEW store version out.

Two paths share every per-tile function (manifest reading, image loading, payloads, reject reasons):
- Ray Data: the manifest (read with pyarrow's filesystem, S3 with an explicit endpoint where configured)
  becomes a dataset of row blocks, images are loaded and decoded in parallel tasks, embedded by a model
  actor pool (``ActorPoolStrategy``, CPU or GPU) and written by a ``Datasink`` that upserts into the store;
- plain (``use_ray=False``): the same steps in one process, for small jobs and tests.

Resumable by construction: point IDs are ``uuid5(tile_id)`` and a rerun of the same job resumes into the same
version (found by a tag derived from the manifest content and the model) and skips the tile IDs already
there, so a job killed at any point and rerun ends with exactly one point per good tile. Bad tiles (missing,
unreadable, wrong size) are skipped, counted by reason and listed in ``rejects.jsonl`` in the run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn import storage
from wherecnn.config import Settings, get_settings
from wherecnn.index.store import StoreError, TilePoint, VectorStore, open_store, store_kind
from wherecnn.retrieval.settings import RetrievalSettings
from wherecnn.retrieval.views import TileWindow, cell_shifts, cut_views, with_windows

REQUIRED = ("tile_id", "city", "lat", "lon", "uri")
REASONS = ("missing", "unreadable", "wrong_size", "bad_row")
RAY_LOG = "ray.log"  # in the run folder: what Ray itself printed while the job ran (`ray_output_to`)
SIZE_TOLERANCE_PX = 1
BOUNDS = ("min_lat", "min_lon", "max_lat", "max_lon")


# --------------------------------------------------------------------------------------------- manifest


def manifest_uri(tiles: str) -> str:
    """A tiles manifest (.parquet) as given, or ``tiles.parquet`` inside a folder/prefix."""
    return tiles if tiles.endswith(".parquet") else storage.join(tiles, "tiles.parquet")


def _base(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def resolve_uri(uri: Any, base: str) -> Any:
    """Relative tile URIs are relative to the manifest's folder (local or S3)."""
    if not isinstance(uri, str) or not uri or "://" in uri or uri.startswith("/"):
        return uri
    if base.startswith("s3://"):
        return storage.join(base, uri)
    return str((Path(base) / uri).absolute())


def read_tile_manifest(tiles: str, settings: Settings | None = None) -> pd.DataFrame:
    """The tile table (local or s3://), URIs made absolute, required columns checked with a clear error."""
    import pyarrow.parquet as pq

    uri = manifest_uri(tiles)
    fs, path = storage.arrow_fs(uri, settings)
    try:
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"tile manifest {uri} not found (expected a tiles .parquet or a folder with one)"
        ) from exc
    frame = table.to_pandas()
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"tile manifest {uri}: missing column(s) {missing}; expected at least {list(REQUIRED)}"
        )
    frame = frame.drop(columns=[c for c in ("geometry",) if c in frame.columns and _has_bounds(frame)])
    base = _base(uri)
    frame["uri"] = [resolve_uri(u, base) for u in frame["uri"]]
    if "source_uri" in frame.columns:
        frame["source_uri"] = [resolve_uri(u, base) for u in frame["source_uri"]]
    frame["tile_id"] = frame["tile_id"].astype(str)
    dupes = frame["tile_id"][frame["tile_id"].duplicated()].unique()
    if len(dupes):
        raise ValueError(
            f"tile manifest {uri}: duplicate tile_id(s) {list(dupes[:5])}; tile IDs must be unique"
        )
    return frame.reset_index(drop=True)


def _has_bounds(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in BOUNDS)


def manifest_digest(frame: pd.DataFrame) -> str:
    """Content hash of the (tile_id, uri) set: the same manifest means the same job."""
    h = hashlib.sha256()
    for tid, uri in sorted(zip(frame["tile_id"].astype(str), frame["uri"].astype(str), strict=True)):
        h.update(f"{tid}\t{uri}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- tiles


def expected_px(row: dict[str, Any], tile_size: int | None) -> int | None:
    """The tile's expected side in pixels: given, else size_m / gsd_m from the manifest, else unknown."""
    if tile_size:
        return int(tile_size)
    size_m, gsd = row.get("size_m"), row.get("gsd_m")
    try:
        if size_m and gsd and not (math.isnan(float(size_m)) or math.isnan(float(gsd))) and float(gsd) > 0:
            return round(float(size_m) / float(gsd))
    except (TypeError, ValueError):
        return None
    return None


_fs_cache: dict[tuple[str, str | None], Any] = {}


def read_uri(uri: str, settings: Settings | None = None) -> bytes:
    """Tile bytes; S3 through pyarrow's S3FileSystem (one per process and endpoint), else the local file."""
    if uri.startswith("s3://"):
        key = ("s3", storage.s3_endpoint(settings))
        if key not in _fs_cache:
            _fs_cache[key] = storage.arrow_fs(uri, settings)[0]
        with _fs_cache[key].open_input_stream(uri[len("s3://") :]) as fh:
            return bytes(fh.read())
    return storage.read_bytes(uri)


def load_tile(
    row: dict[str, Any], *, tile_size: int | None = None, settings: Settings | None = None
) -> tuple[np.ndarray | None, str | None, str]:
    """(image, None, "") for a good tile, else (None, reason, detail); never raises for a bad tile."""
    uri = row.get("uri")
    try:
        lat, lon = float(row["lat"]), float(row["lon"])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not isinstance(uri, str) or not uri:
            raise ValueError(f"lat={lat}, lon={lon}, uri={uri!r}")
    except (KeyError, TypeError, ValueError) as exc:
        return None, "bad_row", f"expected lat in [-90, 90], lon in [-180, 180] and a uri: {exc}"
    try:
        data = read_uri(uri, settings)
    except FileNotFoundError as exc:
        return None, "missing", str(exc) or f"no such file: {uri}"
    except OSError as exc:
        if "not exist" in str(exc).lower() or "nosuchkey" in str(exc).lower():
            return None, "missing", f"{uri}: {exc}"
        return None, "unreadable", f"{uri}: {exc}"
    try:
        s = settings or get_settings()
        image = storage.decode_image(data, max_pixels=s.max_image_pixels, name=uri)
    except Exception as exc:  # decode errors of any kind are a property of the file, not of the job
        return None, "unreadable", str(exc)
    want = expected_px(row, tile_size)
    h, w = image.shape[:2]
    if want is not None and (abs(h - want) > SIZE_TOLERANCE_PX or abs(w - want) > SIZE_TOLERANCE_PX):
        return None, "wrong_size", f"{uri}: {w}x{h} px, expected {want}x{want} (+-{SIZE_TOLERANCE_PX})"
    return image, None, ""


def tile_payload(row: dict[str, Any], model_id: str) -> dict[str, Any]:
    """The payload contract: location, city, tile_id, uri, gsd_m, bounds, model (+ kind/split if present)."""
    payload: dict[str, Any] = {
        "location": {"lat": float(row["lat"]), "lon": float(row["lon"])},
        "city": str(row["city"]),
        "tile_id": str(row["tile_id"]),
        "uri": str(row["uri"]),
        "model": model_id,
    }
    if row.get("gsd_m") is not None and not _isnan(row["gsd_m"]):
        payload["gsd_m"] = float(row["gsd_m"])
    if all(row.get(c) is not None and not _isnan(row[c]) for c in BOUNDS):
        payload["bounds"] = {c: float(row[c]) for c in BOUNDS}
    for extra in ("kind", "split"):
        if isinstance(row.get(extra), str):
            payload[extra] = row[extra]
    window = TileWindow.from_row(row)
    if window is not None:
        payload["window"] = window.as_payload()
    return payload


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- embedder


def load_embedder(checkpoint: str, device: str = "auto") -> Any:
    """``untrained:NAME`` (tests, benchmarks) or a checkpoint dir / s3:// prefix."""
    from wherecnn.models.embedder import Embedder

    if checkpoint.startswith("untrained:"):
        name = checkpoint.split(":", 1)[1] or "dual-cpu"
        return Embedder.untrained(name, device="cpu" if device == "auto" else device)
    return Embedder.from_checkpoint(checkpoint, device=device)


# --------------------------------------------------------------------------------------------- results


@dataclass
class IndexSummary:
    """What a run did; printed and written to ``summary.json`` in the run folder."""

    manifest_tiles: int = 0
    already_present: int = 0
    embedded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    points: int = 0
    seconds: float = 0.0
    tiles_per_s: float = 0.0
    version: str | None = None
    switched: bool = False
    up_to_date: bool = False
    engine: str = "plain"
    run_dir: str = ""
    rejects_file: str = ""
    model_id: str = ""

    @property
    def skipped_total(self) -> int:
        return int(sum(self.skipped.values()))

    @property
    def skipped_text(self) -> str:
        """The skips by reason, as people read them ("missing 3, unreadable 2"; "none")."""
        return ", ".join(f"{k} {v}" for k, v in self.skipped.items()) or "none"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "skipped_total": self.skipped_total}


class Progress:
    """Thread-safe counters a rich progress bar polls (plain path) or a Ray actor mirrors (Ray path)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.embedded = 0
        self.skipped = 0

    def add(self, embedded: int, skipped: int) -> None:
        with self._lock:
            self.embedded += embedded
            self.skipped += skipped

    def get(self) -> tuple[int, int]:
        with self._lock:
            return self.embedded, self.skipped


def write_rejects(path: Path, rejects: Iterable[dict[str, Any]]) -> int:
    rows = sorted(rejects, key=lambda r: r["tile_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return len(rows)


# --------------------------------------------------------------------------------------------- batches


def _chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def load_batch(
    frame: pd.DataFrame,
    *,
    tile_size: int | None,
    settings: Settings | None,
    pool: ThreadPoolExecutor | None = None,
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[dict[str, Any]]]:
    """(good rows, their images, rejects) for one batch of manifest rows."""
    rows = frame.to_dict("records")
    mapper = pool.map if pool is not None else map
    loaded = list(mapper(lambda r: load_tile(r, tile_size=tile_size, settings=settings), rows))
    good, images, rejects = [], [], []
    for row, (image, reason, detail) in zip(rows, loaded, strict=True):
        if image is None:
            rejects.append(
                {
                    "tile_id": str(row["tile_id"]),
                    "uri": str(row.get("uri")),
                    "reason": reason,
                    "detail": detail,
                }
            )
        else:
            good.append(row)
            images.append(image)
    return good, images, rejects


def embed_tiles(
    embedder: Any, rows: Sequence[dict[str, Any]], images: Sequence[np.ndarray], index_views: int = 1
) -> np.ndarray:
    """The one batch function of both runners: each good tile's stored vectors.

    ``index_views`` 1: [N, d], the tile as cut. K > 1: [N, K*K, d], the tile's cell seen from K x K
    centres (cut from its source raster, `retrieval.views`), stored as one multivector point that scores its
    best view; a tile without a raster window repeats its own vector."""
    if index_views <= 1 or not rows:
        return np.asarray(embedder.aerial(list(images)), dtype=np.float32)
    views = index_views * index_views
    windows = [TileWindow.from_row(dict(r)) for r in rows]
    out = np.zeros((len(rows), views, int(embedder.embed_dim)), dtype=np.float32)
    plain = [i for i, w in enumerate(windows) if w is None]
    if plain:
        out[plain] = np.asarray(embedder.aerial([images[i] for i in plain]), dtype=np.float32)[:, None, :]
    cut = [(i, w) for i, w in enumerate(windows) if w is not None]
    if cut:
        ims = cut_views([w for _, w in cut], [cell_shifts(w.cell_px, index_views) for _, w in cut])
        emb = np.asarray(embedder.aerial([im for v in ims for im in v]), dtype=np.float32)
        out[[i for i, _ in cut]] = emb.reshape(len(cut), views, -1)
    return out


def points_for(rows: Sequence[dict[str, Any]], vectors: np.ndarray, model_id: str) -> list[TilePoint]:
    return [
        TilePoint(str(r["tile_id"]), v, tile_payload(r, model_id)) for r, v in zip(rows, vectors, strict=True)
    ]


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
        for chunk in _chunks(todo, batch_size):
            good, images, bad = load_batch(chunk, tile_size=tile_size, settings=settings, pool=pool)
            if good:
                store.upsert(
                    points_for(good, embed_tiles(embedder, good, images, index_views), embedder.model_id),
                    batch_size=batch_size,
                )
            rejects.extend(bad)
            progress.add(len(good), len(bad))
    return rejects


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


def _run_ray(
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
            _write_summary(run_path, summary)
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
        with _progress_bar(console, len(todo), progress, show_progress, run_path / "progress.json"):
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
                        rejects = _run_ray(
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
        _write_summary(run_path, summary)
        return summary
    finally:
        if owned:
            vs.close()


def _write_summary(run_path: Path, summary: IndexSummary) -> None:
    (run_path / "summary.json").write_text(json.dumps(summary.to_json(), indent=1))


class _progress_bar:
    """A rich bar fed by a `Progress` from a background thread (Ray runs report through an actor)."""

    def __init__(self, console: Any, total: int, progress: Progress, enabled: bool, file: Path) -> None:
        self.console, self.total, self.progress, self.enabled = console, total, progress, enabled
        self.file = file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, embedded: int, skipped: int) -> None:
        """``progress.json`` in the run folder: what a watcher (or a test that kills the job) reads."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"total": self.total, "embedded": embedded, "skipped": skipped}))
        os.replace(tmp, self.file)

    def __enter__(self) -> _progress_bar:
        from contextlib import nullcontext

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        show = self.enabled and self.total > 0
        bar = Progress(
            TextColumn("[bold]embedding tiles"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console, transient=False,
        )  # fmt: skip
        task = bar.add_task("embed", total=self.total, info="")

        def loop() -> None:
            with bar if show else nullcontext():
                while True:
                    done = self._stop.wait(0.1)
                    embedded, skipped = self.progress.get()
                    self._write(embedded, skipped)
                    if show:
                        bar.update(task, completed=embedded + skipped, info=f"skipped {skipped}")
                    if done:
                        return

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def print_summary(summary: IndexSummary, console: Any, title: str = "index") -> None:
    from rich.table import Table

    table = Table(title=f"wherecnn {title}", show_header=False)
    table.add_row("manifest tiles", str(summary.manifest_tiles))
    table.add_row("already present (resumed)", str(summary.already_present))
    table.add_row("embedded this run", str(summary.embedded))
    table.add_row("skipped", f"{summary.skipped_total} ({summary.skipped_text})")
    table.add_row("points in version", str(summary.points))
    table.add_row("tiles/s", f"{summary.tiles_per_s:.1f} ({summary.engine}, {summary.seconds:.1f} s)")
    table.add_row("version", f"{summary.version} ({'live' if summary.switched else 'not switched'})")
    table.add_row("rejects file", summary.rejects_file)
    console.print(table)


def skip_counts(rejects: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Rejected tiles counted by reason, reasons in order."""
    return dict(sorted(Counter(r["reason"] for r in rejects).items()))


def rejects_of(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in io.StringIO(p.read_text()) if line.strip()]
