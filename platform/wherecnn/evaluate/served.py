"""Accuracy through the product: the "anywhere" protocol, answered by the search engine over a real index.

What a user gets is what is measured: a city's gallery is its grid tiles only (what `wherecnn tile` gives for
a user's own imagery), indexed by `wherecnn index` (`run_index`) into a vector store; the queries are
held-out places anywhere in the city, each sent through `SearchEngine.search` (the code the HTTP API, the
CLI and the dashboard call), with the city given or unknown (all cities searched: the best guess names it).

Metrics per city and overall (the mean over cities): ``hit@1`` / ``hit@10`` (one of the best-guess city's
first K answers is a tile that contains the camera), ``median_error_m`` and ``within_{5,10,25,50}m`` (the
best guess's position against the camera's), ``city_right`` (city unknown), and the query time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.evaluate.evaluation import number_or_none

WITHIN_M = (5, 10, 25, 50)
HIT_KS = (1, 10)
# How a query's heading is sent: as the capture records it, off by up to NOISY_HEADING_DEG (a phone compass),
# or not at all (the engine estimates it).
HEADING_MODES = ("given", "noisy", "unknown")
NOISY_HEADING_DEG = 20.0


def grid_tiles(data_dir: str | Path) -> pd.DataFrame:
    """The manifest's grid tiles (every tile where the manifest has no ``kind``): the served gallery."""
    from wherecnn.index.manifest import read_tile_manifest

    tiles = read_tile_manifest(str(Path(data_dir) / "tiles.parquet"))
    if "kind" in tiles.columns:
        tiles = tiles[tiles["kind"].astype(str) == "grid"]
    return tiles.reset_index(drop=True)


def index_grid(
    data_dir: str | Path,
    checkpoint: str,
    store: str,
    *,
    run_dir: str | Path,
    cities: Sequence[str] | None = None,
    retrieval: Any = None,
) -> Any:
    """Index the world's grid tiles (of ``cities``, else all) with `run_index`, in process: the served
    gallery. Returns the `IndexSummary`."""
    from wherecnn.index.pipeline import run_index

    tiles = grid_tiles(data_dir)
    if cities:
        tiles = tiles[tiles["city"].isin(list(cities))].reset_index(drop=True)
    return run_index(
        str(Path(data_dir) / "tiles.parquet"), checkpoint, store, use_ray=False, frame=tiles,
        run_dir=run_dir, show_progress=False, retrieval=retrieval,
    )  # fmt: skip


def anywhere_queries(
    data_dir: str | Path,
    *,
    protocol: str,
    kind: str = "panorama",
    per_city: int | None = 60,
    seed: int = 0,
    cities: Sequence[str] | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """Held-out captures of one kind under a protocol, up to ``per_city`` a city (seeded): its ``split``,
    "test" to report, "val" to choose settings on (same-area: the validation blocks of the training cities,
    which training never draws places from).

    Columns: capture_id, city, lat, lon, heading_deg, fov_deg, uri (absolute)."""
    from wherecnn.data.manifest import read_captures, split_column
    from wherecnn.index.manifest import resolve_uri

    caps = pd.DataFrame(read_captures(data_dir).drop(columns="geometry"))
    caps = caps[(split_column(caps, protocol) == split).to_numpy()]
    if "kind" in caps.columns:
        caps = caps[caps["kind"].astype(str) == kind]
    if cities:
        caps = caps[caps["city"].isin(list(cities))]
    rng = np.random.default_rng(seed)
    parts = []
    for _, rows in caps.groupby("city", sort=True):
        if per_city is not None and len(rows) > per_city:
            rows = rows.iloc[np.sort(rng.choice(len(rows), per_city, replace=False))]
        parts.append(rows)
    if not parts:
        raise ValueError(f"{data_dir}: no {split!r} {kind} captures under protocol {protocol!r}")
    out = pd.concat(parts).reset_index(drop=True)
    out["uri"] = [resolve_uri(u, str(Path(data_dir).absolute())) for u in out["uri"]]
    return out[["capture_id", "city", "lat", "lon", "heading_deg", "fov_deg", "uri"]]


@dataclass
class ServedRun:
    """One query set answered through the engine: a row per query, metrics per city and overall."""

    protocol: str
    city_given: bool
    outcomes: pd.DataFrame
    retrieval: dict[str, Any] = field(default_factory=dict)

    @property
    def cities(self) -> dict[str, dict[str, float]]:
        return {
            str(city): served_metrics(rows, city_given=self.city_given)
            for city, rows in self.outcomes.groupby("city", sort=True)
        }

    @property
    def overall(self) -> dict[str, float]:
        per_city = list(self.cities.values())
        if not per_city:
            return {}
        out = {k: float(np.nanmean([m[k] for m in per_city])) for k in per_city[0]}
        out["queries"] = float(len(self.outcomes))  # a total, not a per-city mean
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "city_given": self.city_given,
            "through_store": True,
            "retrieval": self.retrieval,
            "overall": self.overall,
            "cities": self.cities,
        }


def served_metrics(outcomes: pd.DataFrame, *, city_given: bool) -> dict[str, float]:
    """The anywhere metrics of a set of query outcomes (`answer_queries`' rows)."""
    err = outcomes["error_m"].to_numpy(dtype=float)
    out: dict[str, float] = {}
    for k in HIT_KS:
        out[f"hit@{k}"] = float(np.mean(outcomes["hit_rank"].to_numpy(dtype=float) <= k))
    out["median_error_m"] = float(np.median(err)) if err.size else float("nan")
    for t in WITHIN_M:
        out[f"within_{t}m"] = float(np.mean(err <= t)) if err.size else float("nan")
    if not city_given:
        out["city_right"] = float(np.mean(outcomes["city_right"].to_numpy(dtype=bool)))
    if "heading_error_deg" in outcomes.columns:
        herr = outcomes["heading_error_deg"].to_numpy(dtype=float)
        herr = herr[np.isfinite(herr)]
        if herr.size:
            out["heading_error_median_deg"] = float(np.median(herr))
            out["heading_within_10deg"] = float(np.mean(herr <= 10.0))
    ms = outcomes["search_ms"].to_numpy(dtype=float)
    out["search_ms_p50"] = float(np.percentile(ms, 50)) if ms.size else float("nan")
    out["queries"] = float(len(outcomes))
    return out


def answer_queries(
    engine: Any,
    queries: pd.DataFrame,
    tiles: pd.DataFrame,
    *,
    city_given: bool = True,
    k: int = 10,
    heading: str = "given",
    seed: int = 0,
    photo_fov_deg: float | None = None,
    on_query: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Send each query through ``engine.search`` (field of view as the capture records it; the heading
    ``given`` as recorded, ``noisy`` off by up to `NOISY_HEADING_DEG` either way, or ``unknown``); one row
    per query: the best guess, its error in metres and its heading's error in degrees, and the rank of the
    first answer whose tile contains the camera in the best-guess city's list (inf when none of the first
    ``k`` does). With the heading noisy or unknown a panorama is first turned to a random yaw (a camera
    mounted at any angle; `turned_panorama`): the world's panoramas all face north, which a search that tries
    north first would otherwise get right for free. With ``photo_fov_deg``, each panorama is first cut into a
    photo of that field of view facing a random direction (`photo_from_panorama`; for fields of view the
    world has no photos of). Noise, yaws and directions are seeded."""
    from wherecnn.geo import distance_m
    from wherecnn.retrieval.headings import circular_deg

    if heading not in HEADING_MODES:
        raise ValueError(f"heading must be one of {HEADING_MODES}, got {heading!r}")
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-NOISY_HEADING_DEG, NOISY_HEADING_DEG, len(queries))
    yaws = rng.uniform(0.0, 360.0, len(queries))
    directions = rng.uniform(0.0, 360.0, len(queries))

    bounds = tiles.set_index("tile_id")[["min_lat", "min_lon", "max_lat", "max_lon"]]
    rows = []
    for i, q in enumerate(queries.itertuples(index=False)):
        truth = number_or_none(q.heading_deg)
        image: Any = q.uri
        fov = number_or_none(q.fov_deg)
        if photo_fov_deg is not None and truth is not None and (fov is None or fov >= 360):
            image, truth = photo_from_panorama(q.uri, truth, float(directions[i]), photo_fov_deg)
            fov = photo_fov_deg
        elif heading != "given" and truth is not None and (fov is None or fov >= 360):
            image, truth = turned_panorama(q.uri, truth, float(yaws[i]))
        t0 = time.perf_counter()
        res = engine.search(
            image,
            cities=[q.city] if city_given else None,
            k=k,
            heading_deg=None
            if heading == "unknown" or truth is None
            else truth + (float(noise[i]) if heading == "noisy" else 0.0),
            fov_deg=fov,
        )
        ms = (time.perf_counter() - t0) * 1e3
        best = res.best
        hit_rank = float("inf")
        if best is not None:
            ranked = res.ranked[res.ranked["city"] == best.city].sort_values("rank")
            b = bounds.reindex(ranked["tile_id"].astype(str))
            inside = (
                (b["min_lat"].to_numpy() <= q.lat)
                & (q.lat <= b["max_lat"].to_numpy())
                & (b["min_lon"].to_numpy() <= q.lon)
                & (q.lon <= b["max_lon"].to_numpy())
            )
            if inside.any():
                hit_rank = float(np.argmax(inside) + 1)
        rows.append(
            {
                "capture_id": q.capture_id,
                "city": q.city,
                "best_city": best.city if best else None,
                "city_right": bool(best is not None and best.city == q.city),
                "lat": best.lat if best else float("nan"),
                "lon": best.lon if best else float("nan"),
                "position_source": best.position_source if best else None,
                "heading_deg": best.heading_deg if best and best.heading_deg is not None else float("nan"),
                "heading_source": best.heading_source if best else None,
                "heading_error_deg": float(circular_deg(best.heading_deg, truth))
                if best and best.heading_deg is not None and truth is not None
                else float("nan"),
                "error_m": float(distance_m(lat1=q.lat, lon1=q.lon, lat2=best.lat, lon2=best.lon))
                if best
                else float("inf"),
                "hit_rank": hit_rank,
                "search_ms": ms,
            }
        )
        if on_query is not None:
            on_query(i)
    return pd.DataFrame(rows)


def turned_panorama(uri: str, heading_deg: float, yaw_deg: float) -> tuple[np.ndarray, float]:
    """A panorama whose left edge faces ``heading_deg`` turned by about ``yaw_deg`` (to a whole pixel): the
    image and the bearing its left edge now faces."""
    from wherecnn import storage

    image = storage.load_image(uri)
    width = image.shape[1]
    shift = int(round(yaw_deg / 360.0 * width)) % width
    return np.roll(image, -shift, axis=1), (heading_deg + shift * 360.0 / width) % 360.0


def photo_from_panorama(
    uri: str, heading_deg: float, direction_deg: float, fov_deg: float, size: int = 128
) -> tuple[np.ndarray, float]:
    """A ``fov_deg`` pinhole photo cut from a synthetic-world panorama (left edge facing ``heading_deg``, its
    rows spanning +-45 degrees) looking ``direction_deg`` right of that edge: the image and its bearing."""
    from wherecnn import storage
    from wherecnn.data.synthetic.render import photos_from_panoramas

    pano = storage.load_image(uri)
    photo = photos_from_panoramas(pano[None], np.array([direction_deg]), size=size, fov_deg=fov_deg)[0]
    return photo, (heading_deg + direction_deg) % 360.0


def evaluate_served(
    data_dir: str | Path,
    checkpoint: str,
    store: str | None = None,
    *,
    per_city: int = 30,
    seed: int = 0,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The anywhere protocol for a checkpoint: per protocol with the city given, and cross-area with the
    city unknown, through ``store`` (an index built with this checkpoint) or, without one, an index of the
    world's grid tiles built here by `run_index` (in ``work_dir``/index). Keys: "same-area", "cross-area",
    "cross-area, city unknown" (protocols without test places are left out); values: `ServedRun.to_json`."""
    import tempfile

    from wherecnn.index.store import open_store
    from wherecnn.models.embedder import Embedder
    from wherecnn.search.engine import SearchEngine

    tiles = grid_tiles(data_dir)
    if store is None:
        root = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="wherecnn-served-"))
        store = f"edge://{(root / 'index').absolute()}"
        log(f"[served] indexing {len(tiles)} grid tiles into {store}")
        index_grid(data_dir, checkpoint, store, run_dir=root / "index-run")
    out: dict[str, Any] = {}
    vs = open_store(store, read_only=True)
    try:
        engine = SearchEngine(vs, Embedder.from_checkpoint(checkpoint))
        engine.warm()  # as a server does before it reports ready: query times are a user's
        for protocol, given in (("same-area", True), ("cross-area", True), ("cross-area", False)):
            try:
                queries = anywhere_queries(data_dir, protocol=protocol, per_city=per_city, seed=seed)
            except ValueError:
                continue  # no held-out places under this protocol
            key = protocol if given else f"{protocol}, city unknown"
            log(f"[served] {key}: {len(queries)} held-out places through the search engine")
            outcomes = answer_queries(engine, queries, tiles, city_given=given)
            out[key] = ServedRun(protocol, given, outcomes, retrieval=engine.retrieval.as_dict()).to_json()
            o = out[key]["overall"]
            log(f"[served]   hit@1 {o['hit@1']:.3f}, median error {o['median_error_m']:.1f} m")
    finally:
        vs.close()
    return out
