"""The one retrieval path: a query vector in, ranked answers with positions in metres out.

1. **Coarse**: one store query per searched city (cities and the geo prior pushed down as filters), scores
   minus the model's hub correction (`similarity.HubCorrection`, each tile's hubness among its city's tiles).
2. **Fine**: the best ``candidates`` tiles over all searched cities are seen again from a lattice of view
   centres over their ground cell, cut from the source raster at query time (`views.cut_views`); a tile
   then scores the mean of its best views, and its position is its best view's centre. The best few are
   looked at once more on a finer lattice around that centre.

`wherecnn.search.engine.SearchEngine` (so the HTTP API, the CLI and the dashboard) and the served evaluation
(`wherecnn.evaluate.served`) answer through `Retriever.retrieve`; nothing else ranks tiles for a user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wherecnn.retrieval.headings import Headings
from wherecnn.retrieval.settings import RetrievalSettings
from wherecnn.retrieval.views import TileWindow, cell_shifts, cut_views, pixel_latlon

# With a hub correction: hits fetched per city by plain score, then ranked by the corrected one.
HUB_POOL = 200

POSITION_REFINED = "refined"
POSITION_TILE_CENTRE = "tile_centre"


@dataclass
class Candidate:
    """One ranked answer: a tile, its score, and where the camera is (refined, or the tile's centre)."""

    city: str
    tile_id: str
    score: float
    lat: float
    lon: float
    payload: dict[str, Any]
    position_source: str = POSITION_TILE_CENTRE
    coarse_score: float = float("nan")
    view_scores: list[float] = field(default_factory=list)
    # the heading the best view matched at (None: a single query vector, no heading)
    heading_deg: float | None = None
    heading_scores: list[float] = field(default_factory=list)  # the best view's score at each tried heading


def payload_location(payload: dict[str, Any]) -> tuple[float, float]:
    loc = payload.get("location") or {}
    return float(loc.get("lat", payload.get("lat", float("nan")))), float(
        loc.get("lon", payload.get("lon", float("nan")))
    )


class Retriever:
    """Coarse retrieval from a vector store, then the fine stage. Not thread-safe: the engine holds a lock.

    ``aerial(images)`` embeds aerial views as the index embedded its tiles (the embedder's `aerial`);
    ``hub_weight`` is the model's hub correction, with each tile's hubness from the ``hubness(city)`` a
    retrieval is given (the engine caches it per index version).
    """

    def __init__(
        self,
        store: Any,
        aerial: Callable[[Sequence[np.ndarray]], np.ndarray],
        settings: RetrievalSettings | None = None,
        *,
        hub_weight: float = 0.0,
        exact: bool = False,
        first_view: tuple[Callable[[Sequence[np.ndarray]], np.ndarray], Callable[[np.ndarray], np.ndarray]]
        | None = None,
    ) -> None:
        self.store = store
        self.aerial = aerial
        # (embed views by the first test-time view, that view's part of a stored or query vector)
        self.first_view = first_view
        self.settings = settings or RetrievalSettings()
        self.hub_weight = float(hub_weight)
        self.exact = exact  # the reference: coarse stage searched exhaustively instead of through HNSW
        self._lock = threading.RLock()
        self.timings: dict[str, float] = {}  # the last retrieval's stages, milliseconds

    # ---- coarse -----------------------------------------------------------------------------------
    def coarse(
        self,
        vectors: np.ndarray,
        cities: Sequence[str],
        fetch: int,
        filters: dict[str, Any] | None = None,
        hubness: Callable[[str], dict[str, float]] | None = None,
        headings: Headings | None = None,
    ) -> dict[str, list[Candidate]]:
        """Per city, the ``fetch`` best tiles by (hub-corrected) score, best first: one store query per
        city and per coarse heading (``headings.coarse``), a tile keeping its best."""
        filters = filters or {}
        qs = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        tried = headings.coarse if headings is not None else (0,)
        hub_pool = self.hub_weight > 0 and hubness is not None
        out: dict[str, list[Candidate]] = {}
        for city in cities:
            hub = hubness(city) if hub_pool and hubness is not None else {}
            best: dict[str, tuple[Any, float, int]] = {}
            for i in tried:
                hits = self.store.query(
                    qs[i],
                    max(fetch, HUB_POOL) if hub_pool else fetch,
                    cities=[city],
                    exact=self.exact,
                    **filters,
                )
                for h in hits:
                    score = (
                        float(h.score) - self.hub_weight * hub.get(h.tile_id, 0.0)
                        if hub_pool
                        else float(h.score)
                    )
                    key = str(h.tile_id)
                    if key not in best or score > best[key][1]:
                        best[key] = (h, score, i)
            cands = []
            for hit, score, i in sorted(best.values(), key=lambda t: -t[1])[:fetch]:
                lat, lon = payload_location(hit.payload)
                heading = float(headings.degrees[i]) if headings is not None else None
                cands.append(
                    Candidate(
                        city,
                        str(hit.tile_id),
                        score,
                        lat,
                        lon,
                        dict(hit.payload),
                        coarse_score=score,
                        heading_deg=heading,
                    )
                )
            out[city] = cands
        return out

    # ---- fine -------------------------------------------------------------------------------------
    def refine(
        self, vectors: np.ndarray, candidates: Sequence[Candidate], headings: Headings | None = None
    ) -> None:
        """Place each candidate that has a raster window in metres, in place (score, lat, lon, source, and the
        heading with ``headings``: ``vectors`` holds the query at each of them).

        Level 0 is what the index stores: the candidate's ``index_views`` x ``index_views`` views of its cell
        (read back from the store). Level 1 cuts ``refine_centres`` x ``refine_centres`` views spanning one
        stored spacing around the best of them; level 2 (the best ``refine_keep``) ``refine_local`` x
        ``refine_local`` views spanning one level-1 spacing around the best so far. A view scores its best
        heading; a candidate scores the mean of its ``view_pool`` best views over every level, and its
        position and heading are its best view's."""
        s = self.settings
        todo = [(c, w) for c in candidates if (w := TileWindow.from_payload(c.payload)) is not None]
        if not todo:
            return
        qs = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        embed, part = self.aerial, None
        if s.refine_views == "first" and self.first_view is not None:
            embed, part = self.first_view
        dim = qs.shape[1]  # what the index stores a view as
        if part is not None:  # the query as the fine stage compares it, at every heading
            qs = np.stack([part(q) for q in qs])
        best, spacing = self._stored_views(qs, dim, todo, part)
        levels = [(list(range(len(todo))), s.refine_centres), (None, s.refine_local)]
        for keep, centres in levels:
            if centres <= 1:
                continue
            if keep is None:  # the best few so far
                keep = sorted(range(len(todo)), key=lambda i: -todo[i][0].score)[: s.refine_keep]
            lattices = [cell_shifts(spacing[i], centres, around=best[i].shift) for i in keep]
            scores = self._score(qs, [todo[i][1] for i in keep], lattices, embed)
            for i, shifts, sc in zip(keep, lattices, scores, strict=True):
                cand = todo[i][0]
                per_view = sc.max(axis=1)  # a view scores its best heading
                cand.view_scores = cand.view_scores + per_view.tolist()
                if per_view.size and float(per_view.max()) > best[i].score:
                    v = int(per_view.argmax())
                    best[i] = _View(float(per_view[v]), shifts[v], sc[v])
                cand.score = _pooled(np.asarray(cand.view_scores), s.view_pool)
                spacing[i] = spacing[i] / centres
        for (cand, window), view in zip(todo, best, strict=True):
            col, row = window.centre(view.shift)
            lat, lon = pixel_latlon(window.source_uri, np.array([col]), np.array([row]))
            cand.lat, cand.lon = float(lat[0]), float(lon[0])
            cand.position_source = POSITION_REFINED
            if headings is not None and view.by_heading is not None:
                cand.heading_deg = float(headings.degrees[int(np.argmax(view.by_heading))])
                cand.heading_scores = view.by_heading.tolist()

    def _stored_views(
        self,
        qs: np.ndarray,
        dim: int,
        todo: Sequence[tuple[Candidate, TileWindow]],
        part: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[list[_View], list[float]]:
        """Each candidate's best stored view and the stored views' spacing in pixels; sets its view scores
        (and its score: `view_pool` of them) from what the index holds, compared by ``part`` of each stored
        vector where the fine stage scores one test-time view. ``qs``: the query at each heading as the fine
        stage compares it (already ``part`` of the query vectors); ``dim``: a stored view's length."""
        k = self.settings.index_views
        stored: dict[str, np.ndarray] = {}
        retrieve = getattr(self.store, "retrieve", None)
        if retrieve is not None:
            stored = {
                p.tile_id: np.asarray(p.vector, dtype=np.float32)
                for p in retrieve([c.tile_id for c, _ in todo])
            }
        best, spacing = [], []
        for cand, window in todo:
            vectors = stored.get(cand.tile_id)
            lattice = cell_shifts(window.cell_px, k)
            if vectors is None or vectors.reshape(-1, dim).shape[0] != len(lattice):
                best.append(_View(cand.score, (0, 0), None))  # the tile as cut, scored by the coarse stage
                spacing.append(float(window.cell_px))
                continue
            rows = vectors.reshape(-1, dim)
            sc = (rows if part is None else np.stack([part(r) for r in rows])) @ qs.T  # views x headings
            per_view = sc.max(axis=1)
            cand.view_scores = per_view.tolist()
            cand.score = _pooled(per_view, self.settings.view_pool)
            v = int(per_view.argmax())
            best.append(_View(float(per_view[v]), lattice[v], sc[v]))
            spacing.append(window.cell_px / k)
        return best, spacing

    def _score(
        self,
        qs: np.ndarray,
        windows: Sequence[TileWindow],
        shifts: Sequence[Sequence[tuple[int, int]]],
        embed: Callable[[Sequence[np.ndarray]], np.ndarray],
    ) -> list[np.ndarray]:
        """Each window's views cut at ``shifts``, scored at every heading: [views, headings] per window."""
        views = cut_views(windows, shifts)
        flat = [im for v in views for im in v]
        emb = np.asarray(embed(flat), dtype=np.float32) if flat else np.zeros((0, qs.shape[1]), np.float32)
        sims = emb @ qs.T
        out, a = [], 0
        for v in views:
            out.append(sims[a : a + len(v)])
            a += len(v)
        return out

    # ---- both -------------------------------------------------------------------------------------
    def retrieve(
        self,
        vectors: np.ndarray,
        cities: Sequence[str],
        k: int,
        *,
        headings: Headings | None = None,
        filters: dict[str, Any] | None = None,
        fetch: int | None = None,
        hubness: Callable[[str], dict[str, float]] | None = None,
    ) -> dict[str, list[Candidate]]:
        """Per city, up to ``max(k, fetch)`` answers, best first: refined candidates ahead of the tiles the
        fine stage did not look at (their scores are not comparable: a refined tile scores its best views).

        ``vectors``: the query, one vector, or one per heading of ``headings`` ([headings, dim])."""
        qs = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if headings is not None and len(headings) != len(qs):
            raise ValueError(f"{len(qs)} query vectors for {len(headings)} headings")
        with self._lock:
            t0 = time.perf_counter()
            per_city = self.coarse(qs, cities, max(k, fetch or 0, 1), filters, hubness, headings)
            t1 = time.perf_counter()
            if self.settings.refines:
                pool = sorted((c for cs in per_city.values() for c in cs), key=lambda c: -c.score)
                self.refine(qs, pool[: self.settings.candidates], headings)
            self.timings = {"coarse_ms": (t1 - t0) * 1e3, "fine_ms": (time.perf_counter() - t1) * 1e3}
            for city, cands in per_city.items():
                per_city[city] = sorted(
                    cands, key=lambda c: (c.position_source != POSITION_REFINED, -c.score)
                )
            return per_city


@dataclass
class _View:
    """A candidate's best view so far: its score (at its best heading), pixel shift, score per heading."""

    score: float
    shift: tuple[int, int]
    by_heading: np.ndarray | None


def _pooled(scores: np.ndarray, pool: int) -> float:
    top = np.sort(np.asarray(scores, dtype=np.float64))[::-1][: max(1, pool)]
    return float(top.mean())
