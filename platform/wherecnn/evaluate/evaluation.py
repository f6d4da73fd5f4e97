"""Run the benchmark protocol for one embedder: per-city galleries and queries, embeddings, every metric.

Per city (docs/contracts.md): queries are the city's test captures of the track under the protocol; the
gallery is the city's grid tiles plus, for `aligned`/`photo`, its test centred tiles (`offset`: grid tiles
only). Overall metrics are the mean over cities, so a big city does not drown a small one; the counts
(queries, gallery) are totals.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from wherecnn.data.manifest import WINDOW_COLUMNS
from wherecnn.evaluate.metrics import (
    DEFAULT_KS,
    RetrievalResult,
    balanced_pair_ap,
    evaluate_retrieval,
    localisation_error,
    summarize,
)
from wherecnn.similarity import HubCorrection, hub_corrected

TOPK = 5
PR_GRID = np.linspace(0.0, 1.0, 101)
COUNT_KEYS = ("queries", "gallery")  # per-city counts (`metrics.summarize`): summed, not averaged, overall


class EmbedderLike(Protocol):
    """What evaluation needs: `wherecnn.models.embedder.Embedder` and the baselines both fit."""

    model_id: str

    def aerial(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def ground(
        self,
        images: Sequence[np.ndarray],
        *,
        heading_deg: Sequence[float | None] | None = None,
        fov_deg: Sequence[float | None] | None = None,
    ) -> np.ndarray: ...


@dataclass
class CitySet:
    """One city's queries (captures) and gallery (tiles) with each query's gallery positives."""

    city: str
    queries: pd.DataFrame  # capture_id, lat, lon, heading_deg, fov_deg, ground_uri, tile_id
    gallery: pd.DataFrame  # tile_id, lat, lon, uri, kind
    positives: np.ndarray
    semi_positives: list[np.ndarray] | None


@dataclass
class CityOutcome:
    city: str
    metrics: dict[str, float]
    pr_curve: dict[str, list[float]]
    result: RetrievalResult
    query_emb: np.ndarray
    gallery_emb: np.ndarray


@dataclass
class EvalRun:
    """One embedder on one (protocol, track): per-city outcomes and the mean over cities."""

    name: str
    model_id: str
    protocol: str
    track: str
    cities: list[CityOutcome] = field(default_factory=list)
    gallery_centres: int = 1  # K: each gallery tile seen from K x K centres (`embed_gallery_views`)
    gallery_scales: tuple[float, ...] = (1.0,)  # ... at each of these ground scales (1: the tile's side)
    view_pool: int = 1  # a multi-view tile scores as the mean of its view_pool best views (`pool_views`)
    hub: HubCorrection = field(default_factory=HubCorrection)  # scores minus weight x hubness

    @property
    def multi_view(self) -> bool:
        """Whether each gallery tile is embedded as several views (`embed_gallery_views`)."""
        return self.gallery_centres > 1 or self.gallery_scales != (1.0,)

    @property
    def overall(self) -> dict[str, float]:
        """Each metric's mean over cities; the counts (`COUNT_KEYS`: queries, gallery) are totals."""
        if not self.cities:
            return {}
        keys = self.cities[0].metrics.keys()
        return {
            k: float((np.nansum if k in COUNT_KEYS else np.nanmean)([c.metrics[k] for c in self.cities]))
            for k in keys
        }

    @property
    def pr_curve(self) -> dict[str, list[float]]:
        """Mean over cities of each city's precision at fixed recall levels (interpolated step-wise)."""
        curves = [_precision_on_grid(c.pr_curve) for c in self.cities if c.pr_curve.get("recall")]
        if not curves:
            return {"recall": [], "precision": []}
        return {"recall": [float(r) for r in PR_GRID], "precision": [float(p) for p in np.mean(curves, 0)]}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_id": self.model_id,
            "protocol": self.protocol,
            "track": self.track,
            "gallery_centres": self.gallery_centres,
            "gallery_scales": list(self.gallery_scales),
            "view_pool": self.view_pool,
            "hub_correction": self.hub.as_dict(),
            "overall": self.overall,
            "cities": {c.city: c.metrics for c in self.cities},
            "pr_curve": self.pr_curve,
        }


def _precision_on_grid(curve: dict[str, list[float]]) -> np.ndarray:
    """Interpolated precision (max precision at recall >= r), the usual way to average PR curves."""
    r = np.asarray(curve["recall"])
    p = np.asarray(curve["precision"])
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.searchsorted(r, PR_GRID, side="left")
    out = np.zeros_like(PR_GRID)
    ok = idx < r.size
    out[ok] = envelope[idx[ok]]
    return out


# ------------------------------------------------------------------------------------------------ data


def city_sets(
    data_dir: str | Path,
    *,
    protocol: str,
    track: str,
    max_gallery: int | None = None,
    max_queries: int | None = None,
    cities: Sequence[str] | None = None,
    seed: int = 0,
) -> list[CitySet]:
    """The evaluation sets of every city that has test queries for (protocol, track)."""
    pairs = test_queries(data_dir, protocol=protocol, track=track)
    if pairs.empty:
        raise ValueError(f"{data_dir}: no test captures for track {track!r} under protocol {protocol!r}")
    from wherecnn.data.manifest import read_tiles, split_column

    tiles = pd.DataFrame(read_tiles(data_dir).drop(columns="geometry"))
    tile_split = split_column(tiles, protocol)
    rng = np.random.default_rng(seed)
    out: list[CitySet] = []
    for city in sorted(pairs["city"].unique()):
        if cities and city not in cities:
            continue
        q = pairs[pairs["city"] == city].reset_index(drop=True)
        if max_queries is not None and len(q) > max_queries:
            q = q.iloc[np.sort(rng.choice(len(q), max_queries, replace=False))].reset_index(drop=True)
        in_city = (tiles["city"] == city).to_numpy()
        if "kind" in tiles.columns:
            kind = tiles["kind"].astype(str).to_numpy()
            keep = in_city & (kind == "grid")
            if track != "offset":
                keep |= in_city & (kind == "centred") & (tile_split == "test").to_numpy()
        else:
            keep = in_city.copy()
        needed = set(q["tile_id"])
        semis = [list(s) for s in q["semi_positive_tile_ids"]]
        for s in semis:
            needed.update(s)
        keep |= tiles["tile_id"].isin(needed).to_numpy()
        gallery = tiles[keep]
        if max_gallery is not None and len(gallery) > max_gallery:
            must = gallery["tile_id"].isin(needed).to_numpy()
            rest = np.nonzero(~must)[0]
            room = max(0, max_gallery - int(must.sum()))
            pick = rng.choice(rest, size=min(room, rest.size), replace=False)
            sel = np.zeros(len(gallery), dtype=bool)
            sel[must] = True
            sel[pick] = True
            gallery = gallery[sel]
        gallery = gallery.reset_index(drop=True)
        index = {t: i for i, t in enumerate(gallery["tile_id"])}
        positives = np.array([index[t] for t in q["tile_id"]], dtype=np.int64)
        has_semi = any(len(s) for s in semis)
        semi = [np.array([index[t] for t in s], dtype=np.int64) for s in semis] if has_semi else None
        out.append(CitySet(city=city, queries=q, gallery=gallery, positives=positives, semi_positives=semi))
    if not out:
        raise ValueError(
            f"{data_dir}: none of the cities {list(cities or [])} has test captures for {track!r}"
        )
    return out


def test_queries(data_dir: str | Path, *, protocol: str, track: str) -> pd.DataFrame:
    """The track's pairs whose capture is "test" under the protocol, with the capture's columns.

    Columns: capture_id, tile_id, semi_positive_tile_ids, city, lat, lon, heading_deg, fov_deg, ground_uri.
    """
    from wherecnn.data.manifest import read_captures, read_pairs, split_column

    pairs = read_pairs(data_dir)
    tracks = sorted(set(pairs["track"]))
    pairs = pairs[pairs["track"] == track][["capture_id", "tile_id", "semi_positive_tile_ids"]]
    if pairs.empty:
        raise ValueError(f"{data_dir}: no pairs of track {track!r} in pairs.parquet (present: {tracks})")
    caps = pd.DataFrame(read_captures(data_dir).drop(columns="geometry"))
    caps = caps[(split_column(caps, protocol) == "test").to_numpy()]
    caps = caps[["capture_id", "city", "lat", "lon", "heading_deg", "fov_deg", "uri"]]
    out = pairs.merge(caps.rename(columns={"uri": "ground_uri"}), on="capture_id", how="inner")
    return out.sort_values("capture_id", kind="stable").reset_index(drop=True)


def load_images(uris: Sequence[str]) -> list[np.ndarray]:
    from wherecnn.storage import load_image

    return [load_image(u) for u in uris]


def embed_gallery(embedder: EmbedderLike, uris: Sequence[str], batch: int = 256) -> np.ndarray:
    """Tiles in batches, so a big gallery is never decoded all at once."""
    parts = [embedder.aerial(load_images(uris[a : a + batch])) for a in range(0, len(uris), batch)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 1), np.float32)


def _offset_gallery_setting(config: dict[str, Any], track: str, key: str) -> int:
    """A model config's ``offset.<key>`` for the `offset` track, else (and for baselines, which have no
    config) 1."""
    return int(config["offset"][key]) if track == "offset" and config else 1


def model_gallery_centres(config: dict[str, Any], track: str) -> int:
    """How many centres per axis a model's gallery needs for a track: its config's offset.gallery_centres
    for `offset` (a model trained on camera-centred tiles), else 1."""
    return _offset_gallery_setting(config, track, "gallery_centres")


def model_gallery_scales(config: dict[str, Any], track: str) -> tuple[float, ...]:
    """The ground scales a model's multi-view gallery is cut at: offset.gallery_scales for `offset`, else
    (1.0,) (each view shows its tile's side of ground)."""
    scales = config["offset"]["gallery_scales"] if track == "offset" and config else None
    return _check_scales(scales or (1.0,))


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(s) for s in scales)
    if not out or min(out) <= 0:
        raise ValueError(f"gallery scales must be positive, got {list(scales)}")
    return out


def parse_scales(text: str) -> tuple[float, ...]:
    """Gallery scales from a comma-separated flag (``"1,0.85"``), checked as a config's are."""
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"gallery scales must be positive numbers, e.g. 1,0.85, got {text!r}") from exc
    return _check_scales(scales)


def model_view_pool(config: dict[str, Any], track: str) -> int:
    """How many best views a multi-view tile's score averages: offset.view_pool for `offset`, else 1."""
    return _offset_gallery_setting(config, track, "view_pool")


def centre_shifts(gallery: pd.DataFrame, centres: int) -> list[tuple[int, int]]:
    """A centres x centres grid of (column, row) pixel shifts spanning one grid step around a tile's centre:
    the cell of ground where the tile is the nearest grid tile, so every camera in it is within half a
    grid step / centres of one view's centre (per axis)."""
    grid = gallery[gallery["kind"].astype(str) == "grid"] if "kind" in gallery.columns else gallery
    steps = np.diff(np.unique(grid["col_off"].to_numpy()))
    if not steps.size:
        raise ValueError("multi-centre galleries need at least two grid columns to know the grid step")
    step = int(steps[steps > 0].min())
    offs = [round(((i + 0.5) / centres - 0.5) * step) for i in range(centres)]
    return [(dc, dr) for dr in offs for dc in offs]


def embed_gallery_views(
    embedder: EmbedderLike,
    gallery: pd.DataFrame,
    centres: int,
    batch: int = 64,
    scales: Sequence[float] = (1.0,),
) -> np.ndarray:
    """(N, len(scales) x centres², d): each tile re-cut from its source raster around centres x centres
    points of its grid cell (`centre_shifts`), for queries taken anywhere in the tile, showing ``scales``
    times the tile's side of ground (resampled to the tile's pixels; scale-major order); a tile scores as
    its best view (or the mean of its best few, `similarity.pool_views`)."""
    from wherecnn.data.formats.geotiff import Window, shifted_views
    from wherecnn.storage import load_image

    missing = set(WINDOW_COLUMNS) - set(gallery.columns)
    if missing:
        raise ValueError(
            f"multi-centre galleries need the tiles' source raster windows; missing {sorted(missing)}"
        )
    shifts = centre_shifts(gallery, centres)
    px = int(load_image(str(gallery["uri"].iloc[0])).shape[0])
    out: np.ndarray | None = None
    per_scale = len(shifts)
    for k, scale in enumerate(_check_scales(scales)):
        for source, rows in gallery.groupby("source_uri", sort=False):
            idx = rows.index.to_numpy()
            windows = []
            for r in rows.itertuples():
                w, h = round(int(r.width) * scale), round(int(r.height) * scale)
                c0, r0 = int(r.col_off) - (w - int(r.width)) // 2, int(r.row_off) - (h - int(r.height)) // 2
                windows.append(Window(str(r.tile_id), c0, r0, w, h))
            for a in range(0, len(windows), batch):
                views = shifted_views(str(source), windows[a : a + batch], shifts, px)
                n, v = views.shape[:2]
                emb = embedder.aerial(list(views.reshape(n * v, *views.shape[2:]))).astype(np.float32)
                if out is None:
                    out = np.zeros((len(gallery), len(scales) * per_scale, emb.shape[1]), dtype=np.float32)
                out[idx[a : a + n], k * per_scale : (k + 1) * per_scale] = emb.reshape(n, v, -1)
    assert out is not None
    return out


def embed_queries(embedder: EmbedderLike, queries: pd.DataFrame, batch: int = 256) -> np.ndarray:
    parts = []
    for a in range(0, len(queries), batch):
        q = queries.iloc[a : a + batch]
        parts.append(
            embedder.ground(
                load_images(list(q["ground_uri"])),
                heading_deg=[number_or_none(v) for v in q["heading_deg"]],
                fov_deg=[number_or_none(v) for v in q["fov_deg"]],
            )
        )
    return np.concatenate(parts).astype(np.float32)


def number_or_none(value: Any) -> float | None:
    """A manifest's optional number (heading, field of view): None for missing or NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(v) else v


# ------------------------------------------------------------------------------------------------ run


def evaluate_embedder(
    embedder: EmbedderLike,
    sets: Sequence[CitySet],
    *,
    name: str,
    protocol: str,
    track: str,
    ks: Sequence[int] = DEFAULT_KS,
    on_city: Callable[[str], None] | None = None,
    gallery_centres: int | None = None,
    gallery_scales: Sequence[float] | None = None,
    view_pool: int | None = None,
    hub_correction: float | None = None,
) -> EvalRun:
    """Embed each city's queries and gallery, then every metric (retrieval, verification, localisation).

    ``gallery_centres`` K > 1 embeds every tile from K x K centres over its grid cell (`embed_gallery_views`)
    and scores it by the best, or by the mean of its ``view_pool`` best views: for `offset`, where the camera
    is anywhere in its tile and a model trained on camera-centred tiles needs a view centred near it.
    ``gallery_scales`` cuts those views at each of these ground scales too (views of every scale pooled
    alike). None: the embedder's model card says (`model_gallery_centres`, `model_gallery_scales`,
    `model_view_pool`; one view for embedders without one, such as the baselines).

    The model card's ``hub_correction`` (`similarity.HubCorrection`; none for the baselines) scores every view
    minus its weight times the view's hubness in the city's gallery (`similarity.hub_scores`);
    ``hub_correction`` replaces its weight (0 turns it off).
    """
    config = (getattr(embedder, "card", None) or {}).get("config") or {}
    if gallery_centres is None:
        gallery_centres = model_gallery_centres(config, track)
    run = EvalRun(
        name=name,
        model_id=str(getattr(embedder, "model_id", name)),
        protocol=protocol,
        track=track,
        gallery_centres=gallery_centres,
        gallery_scales=(
            model_gallery_scales(config, track) if gallery_scales is None else _check_scales(gallery_scales)
        ),
        view_pool=model_view_pool(config, track) if view_pool is None else int(view_pool),
        hub=HubCorrection.from_config(config, hub_correction),
    )
    for cs in sets:
        if run.multi_view and not set(cs.gallery.columns) >= set(WINDOW_COLUMNS):
            warnings.warn(
                f"{cs.city}: the tiles manifest has no raster windows; one view per tile", stacklevel=2
            )
            run.gallery_centres, run.gallery_scales = 1, (1.0,)
        if run.multi_view:
            g = embed_gallery_views(embedder, cs.gallery, run.gallery_centres, scales=run.gallery_scales)
        else:
            g = embed_gallery(embedder, list(cs.gallery["uri"]))
        # one more coordinate carries the hub correction, so every metric and the report score alike
        q, g = hub_corrected(embed_queries(embedder, cs.queries), g, run.hub)
        pool = run.view_pool
        res = evaluate_retrieval(
            q, g, cs.positives, semi_positives=cs.semi_positives, topk=TOPK, view_pool=pool
        )
        metrics = summarize(res, ks)
        metrics["AP_balanced"], _ = balanced_pair_ap(q, g, cs.positives, seed=0, view_pool=pool)
        top = cs.gallery.iloc[res.top1]
        metrics.update(
            localisation_error(
                pred_lat=top["lat"].to_numpy(),
                pred_lon=top["lon"].to_numpy(),
                true_lat=cs.queries["lat"].to_numpy(),
                true_lon=cs.queries["lon"].to_numpy(),
            )
        )
        run.cities.append(
            CityOutcome(
                city=cs.city, metrics=metrics, pr_curve=res.pair_pr, result=res, query_emb=q, gallery_emb=g
            )
        )
        if on_city is not None:
            on_city(cs.city)
    return run
