"""The search engine: a ground image in, ranked locations per city out (and a city-scale heat map).

One engine wraps one vector store and one embedder; the ranking is `wherecnn.retrieval.path.Retriever`'s
(coarse per-city store queries with the cities and the geo prior as filters, then the fine stage that places
the camera in metres inside the best tiles), with the settings the live index version recorded. The engine
refuses a checkpoint other than the one the index was built with. The best guess carries a confidence from
the score margin between the best answer and the best *different* place (answers closer than one tile to
the best are the same place seen by overlapping tiles, not a rival).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.retrieval.headings import Headings, circular_deg
from wherecnn.retrieval.path import POSITION_REFINED, Candidate, Retriever, payload_location
from wherecnn.retrieval.settings import RetrievalSettings
from wherecnn.search.errors import EmptyIndexError, IndexMismatchError, UnknownCityError
from wherecnn.search.geoutil import distance_m
from wherecnn.search.heatmap import HEATMAP_CMAP, HeatMap, rasterise
from wherecnn.search.query import GeoPrior, check_k, infer_fov, load_query
from wherecnn.search.results import RANKED_COLUMNS, BestGuess, Bounds, CityInfo, SearchResult
from wherecnn.similarity import HubCorrection, hub_scores

# A rival heading is at least this far from the best (one bearing column of the azimuth head).
HEADING_RIVAL_DEG = 45.0
# Margin → confidence: tanh(margin / (2T)); T is the contrastive temperature the models settle near,
# so a margin of one temperature unit means the best place is e:1 likelier than its rival (confidence ≈ 0.46).
CONFIDENCE_TEMPERATURE = 0.05
# Hits fetched per city for the confidence estimate, even when fewer are returned.
CONFIDENCE_POOL = 20
DEFAULT_SEPARATION_M = 100.0


class SearchEngine:
    """Image in, ranked locations out. Thread-safe: one lock around the model and the store."""

    def __init__(
        self,
        store: Any,
        embedder: Any,
        *,
        max_pixels: int | None = 40_000_000,
        separation_m: float = DEFAULT_SEPARATION_M,
        retrieval: RetrievalSettings | None = None,
        exact: bool = False,
        hub_weight: float | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.max_pixels = max_pixels
        self.separation_m = separation_m
        self._retrieval_override = retrieval
        self.retrieval = retrieval or RetrievalSettings()
        self._lock = threading.RLock()
        self._cities: list[str] | None = None
        self._city_vectors: dict[str, tuple[list[str], np.ndarray, list[dict[str, Any]]]] = {}
        self._city_hubness: dict[str, dict[str, float]] = {}
        self._tile_index: dict[str, dict[str, Any]] | None = None
        self._version: str | None = None
        # the hub correction: each tile scores its cosine minus the weight times its hubness among its city's
        # tiles (similarity.hub_scores; neighbours from the model config), weight from the retrieval settings
        # unless ``hub_weight`` replaces it
        card = getattr(embedder, "card", None) or {}
        self._model_config: dict[str, Any] = card.get("config") or {}
        self._hub_override = hub_weight
        self.hub = self._hub_correction()
        self.retriever = Retriever(
            store,
            embedder.aerial,
            self.retrieval,
            hub_weight=self.hub.weight,
            exact=exact,
            first_view=(
                (embedder.aerial_first_view, embedder.first_view)
                if hasattr(embedder, "aerial_first_view")
                else None
            ),
        )
        self._follow_version()

    @classmethod
    def from_settings(
        cls, settings: Any = None, *, store: str | None = None, checkpoint: str | None = None
    ) -> SearchEngine:
        """Open the store read-only and load the checkpoint named by settings (or the overrides)."""
        from wherecnn.config import get_settings
        from wherecnn.index.store import open_store
        from wherecnn.models.embedder import Embedder

        settings = settings or get_settings()
        embedder = Embedder.from_checkpoint(checkpoint or settings.checkpoint, device=settings.device)
        vector_store = open_store(store or settings.store, settings=settings, read_only=True)
        return cls(vector_store, embedder, max_pixels=settings.max_image_pixels)

    def close(self) -> None:
        """Release the store (a Qdrant Edge version admits one open handle at a time)."""
        self.store.close()

    # ---- what the index holds -------------------------------------------------------------------------

    def _follow_version(self) -> None:
        """Drop caches when the store's live version changed (a reindex switched under us)."""
        live = getattr(self.store, "live_version", None)
        try:
            current = live() if live is not None else None
        except Exception:  # a store that cannot tell keeps its caches
            return
        if current != self._version:
            self._cities = None
            self._city_vectors.clear()
            self._city_hubness.clear()
            self._tile_index = None
            self._version = current
            self._adopt_index()

    def _adopt_index(self) -> None:
        """Check the live version was built with this engine's model; take its retrieval settings."""
        describe = getattr(self.store, "live_about", None)
        about = describe() if describe is not None and self._version is not None else {}
        model = about.get("model_id")
        mine = getattr(self.embedder, "model_id", None)
        if model is not None and mine is not None and model != mine:
            raise IndexMismatchError(
                "checkpoint",
                f"the index ({self._version}) was built with model {model!r}, the checkpoint is {mine!r}: "
                "search with the checkpoint the index was built with, or rebuild it with `wherecnn index`",
            )
        dim = about.get("dim")
        if dim is not None and int(dim) != int(self.embedder.embed_dim):
            raise IndexMismatchError(
                "checkpoint",
                f"the index holds {dim}-value vectors, the checkpoint makes {self.embedder.embed_dim}",
            )
        recorded = RetrievalSettings.from_dict(about.get("retrieval"))
        override = self._retrieval_override
        # query-side settings may be overridden; how tiles are stored is the index's
        self.retrieval = (
            override.model_copy(update={"index_views": recorded.index_views}) if override else recorded
        )
        self.retriever.settings = self.retrieval
        self.hub = self._hub_correction()
        self.retriever.hub_weight = self.hub.weight

    def _hub_correction(self) -> HubCorrection:
        weight = self._hub_override if self._hub_override is not None else self.retrieval.hub_weight
        return HubCorrection.from_config(self._model_config, weight)

    def cities(self) -> list[str]:
        with self._lock:
            self._follow_version()
            if self._cities is None:
                self._cities = sorted(self.store.cities())
            return list(self._cities)

    def warm(self) -> None:
        """Load what the first search of each city would (its cities and, with a hub correction, each
        city's hubness): a server calls this before it reports ready, so no user query pays for it."""
        for city in self.cities():
            if self.hub:
                self.city_hubness(city)

    def refresh(self) -> None:
        """Forget cached city lists and vectors (after a reindex switched versions)."""
        with self._lock:
            self._cities = None
            self._city_vectors.clear()
            self._city_hubness.clear()
            self._tile_index = None

    def resolve_cities(self, cities: Sequence[str] | str | None) -> list[str]:
        known = self.cities()
        if not known:
            raise EmptyIndexError(
                "store", "the index holds no tiles; build one with `wherecnn index` (or `wherecnn demo`)"
            )
        if cities is None:
            return known
        if isinstance(cities, str):
            cities = [cities]
        wanted = [c.strip() for c in cities if c and c.strip()]
        if not wanted:
            return known
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise UnknownCityError(
                "city", f"unknown city {', '.join(map(repr, unknown))}; the index holds {', '.join(known)}"
            )
        return list(dict.fromkeys(wanted))

    def city_vectors(self, city: str) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """All tile ids, vectors and payloads of a city (cached; for heat maps and tile lookups)."""
        with self._lock:
            self._follow_version()
            if city not in self._city_vectors:
                ids, vectors, payloads = self.store.all_vectors(city)
                self._city_vectors[city] = (list(ids), np.asarray(vectors, dtype=np.float32), list(payloads))
            return self._city_vectors[city]

    def city_hubness(self, city: str) -> dict[str, float]:
        """Each tile's hubness among its city's tiles (`similarity.hub_scores`), by tile id; cached per index
        version (the first search of a city with the hub correction reads all its vectors)."""
        with self._lock:
            self._follow_version()
            if city not in self._city_hubness:
                ids, vectors, _ = self.city_vectors(city)
                scores = hub_scores(vectors, self.hub.neighbours) if len(ids) else np.zeros(0)
                if scores.ndim == 2:  # a tile stored as several views: their mean hubness
                    scores = scores.mean(axis=1)
                self._city_hubness[city] = dict(zip(ids, scores.tolist(), strict=True))
            return self._city_hubness[city]

    def city_info(self) -> list[CityInfo]:
        infos = []
        for city in self.cities():
            _, _, payloads = self.city_vectors(city)
            infos.append(CityInfo(city, len(payloads), _payload_bounds(payloads)))
        return infos

    def tile_payload(self, tile_id: str) -> dict[str, Any] | None:
        """The stored payload of a tile (its uri is where the image lives), or None."""
        with self._lock:
            retrieve = getattr(self.store, "retrieve", None)
            if retrieve is not None:
                points = retrieve([tile_id])
                return dict(points[0].payload) if points else None
            if self._tile_index is None:
                index: dict[str, dict[str, Any]] = {}
                for city in self.cities():
                    ids, _, payloads = self.city_vectors(city)
                    index.update(zip(ids, payloads, strict=True))
                self._tile_index = index
            return self._tile_index.get(tile_id)

    # ---- search ---------------------------------------------------------------------------------------

    @property
    def trained_on(self) -> str | None:
        """The ground images the model was trained on (its card): "panorama" or "photo"; None: unknown."""
        card = getattr(self.embedder, "card", None) or {}
        track = (card.get("data") or {}).get("track")
        return {"aligned": "panorama", "offset": "panorama", "photo": "photo"}.get(str(track))

    def prepare(self, image: Any) -> np.ndarray:
        return load_query(image, max_pixels=self.max_pixels)

    def embed_headings(
        self, image: np.ndarray, *, heading_deg: float | None = None, fov_deg: float | None = None
    ) -> tuple[np.ndarray, Headings]:
        """The query at each heading it is tried at ([headings, dim]) and the plan (`Headings.plan`)."""
        fov = infer_fov(image, fov_deg)
        if heading_deg is not None and not math.isfinite(heading_deg):
            heading_deg = None
        plan = Headings.plan(self.retrieval, heading_deg)
        degrees = [float(d) for d in plan.degrees]
        with self._lock:
            at_headings = getattr(self.embedder, "ground_headings", None)
            if at_headings is not None:
                vectors = at_headings(image, degrees, fov_deg=fov)
            else:  # embedders without bearing columns to turn: one image per heading
                vectors = self.embedder.ground(
                    [image] * len(degrees), heading_deg=degrees, fov_deg=[fov] * len(degrees)
                )
        return np.asarray(vectors, dtype=np.float32).reshape(len(degrees), -1), plan

    def embed(
        self, image: np.ndarray, *, heading_deg: float | None = None, fov_deg: float | None = None
    ) -> np.ndarray:
        """What the heat map scores: the query at the given heading ([1, dim]), or at each of the coarse
        stage's headings when none is given ([n, dim]; a tile scores its best)."""
        vectors, plan = self.embed_headings(image, heading_deg=heading_deg, fov_deg=fov_deg)
        return vectors[list(plan.coarse)]

    def search(
        self,
        image: Any,
        *,
        cities: Sequence[str] | str | None = None,
        k: int = 10,
        prior: GeoPrior | None = None,
        true_lat: float | None = None,
        true_lon: float | None = None,
        heading_deg: float | None = None,
        fov_deg: float | None = None,
    ) -> SearchResult:
        k = check_k(k)
        chosen = self.resolve_cities(cities)
        t0 = time.perf_counter()
        img = self.prepare(image)
        t1 = time.perf_counter()
        vectors, headings = self.embed_headings(img, heading_deg=heading_deg, fov_deg=fov_deg)
        t2 = time.perf_counter()
        filters = prior.store_filters() if prior is not None else {}
        with self._lock:
            self._follow_version()
            per_city = self.retriever.retrieve(
                vectors,
                chosen,
                k,
                headings=headings,
                filters=filters,
                fetch=CONFIDENCE_POOL,
                hubness=self.city_hubness,
            )
        t3 = time.perf_counter()
        ranked = self._frame(per_city, k, true_lat=true_lat, true_lon=true_lon)
        best = self._best(per_city, headings)
        t4 = time.perf_counter()
        stages = self.retriever.timings
        timings = {
            "decode_ms": (t1 - t0) * 1e3,
            "embed_ms": (t2 - t1) * 1e3,
            "query_ms": stages.get("coarse_ms", (t3 - t2) * 1e3),  # the store (coarse stage)
            "refine_ms": stages.get("fine_ms", 0.0),  # the fine stage: views cut and embedded
            "rank_ms": (t4 - t3) * 1e3,
            "total_ms": (t4 - t0) * 1e3,
        }
        query = {
            "cities": chosen,
            "k": k,
            "prior": prior.as_dict() if prior else None,
            "height": int(img.shape[0]),
            "width": int(img.shape[1]),
            "fov_deg": infer_fov(img, fov_deg),
            "model": getattr(self.embedder, "model_id", None),
            "trained_on": self.trained_on,
            "position_source": best.position_source if best else None,
            "heading_deg": float(heading_deg)
            if heading_deg is not None and math.isfinite(heading_deg)
            else None,
            "heading_source": best.heading_source if best else None,
            "retrieval": self.retrieval.as_dict(),
        }
        if true_lat is not None and true_lon is not None:
            query.update(true_lat=float(true_lat), true_lon=float(true_lon))
        return SearchResult(ranked=ranked, best=best, timings=timings, query=query)

    def _frame(
        self, per_city: dict[str, list[Candidate]], k: int, *, true_lat: float | None, true_lon: float | None
    ) -> Any:
        import geopandas as gpd

        rows = []
        for city, cands in per_city.items():
            for rank, c in enumerate(cands[:k], start=1):
                rows.append(
                    {
                        "city": city,
                        "rank": rank,
                        "lat": c.lat,
                        "lon": c.lon,
                        "score": float(c.score),
                        "tile_id": c.tile_id,
                        "uri": str(c.payload.get("uri", "")),
                        "distance_m": math.nan,
                        "position_source": c.position_source,
                        "heading_deg": math.nan if c.heading_deg is None else float(c.heading_deg),
                    }
                )
        frame = pd.DataFrame(rows, columns=RANKED_COLUMNS)
        frame = frame.astype(
            {
                "rank": "int64",
                "lat": "float64",
                "lon": "float64",
                "score": "float64",
                "distance_m": "float64",
                "heading_deg": "float64",
            }
        )
        if true_lat is not None and true_lon is not None and len(frame):
            frame["distance_m"] = distance_m(
                lat1=true_lat, lon1=true_lon, lat2=frame["lat"].to_numpy(), lon2=frame["lon"].to_numpy()
            )
        return gpd.GeoDataFrame(
            frame, geometry=gpd.points_from_xy(frame["lon"], frame["lat"]), crs="EPSG:4326"
        )

    def _best(
        self, per_city: dict[str, list[Candidate]], headings: Headings | None = None
    ) -> BestGuess | None:
        """The best answer over all cities; refined answers rank ahead (their scores are their best views'),
        and the rival is the best different place of the same kind of score."""
        every = [c for cands in per_city.values() for c in cands]
        refined = [c for c in every if c.position_source == POSITION_REFINED]
        pool = sorted(refined if len(refined) > 1 else every, key=lambda c: -c.score)
        if not pool:
            return None
        top = pool[0]
        rival = None
        for c in pool[1:]:
            if float(distance_m(lat1=top.lat, lon1=top.lon, lat2=c.lat, lon2=c.lon)) > self.separation_m:
                rival = c
                break
        # No rival place among the answers: the weakest bounds the rival's score from above.
        rival_score = rival.score if rival is not None else (pool[-1].score if len(pool) > 1 else top.score)
        margin = max(0.0, float(top.score) - float(rival_score))
        confidence = math.tanh(margin / (2 * CONFIDENCE_TEMPERATURE))
        return BestGuess(
            lat=top.lat,
            lon=top.lon,
            score=float(top.score),
            confidence=confidence,
            city=top.city,
            tile_id=top.tile_id,
            margin=margin,
            position_source=top.position_source,
            heading_deg=top.heading_deg,
            heading_source=headings.source if headings is not None and top.heading_deg is not None else None,
            heading_confidence=_heading_confidence(top, headings),
        )

    # ---- heat map -------------------------------------------------------------------------------------

    def heatmap(
        self,
        image: Any,
        city: str,
        *,
        heading_deg: float | None = None,
        fov_deg: float | None = None,
        cmap: str = HEATMAP_CMAP,
    ) -> HeatMap:
        """The query's similarity to every tile of `city` (the paper's city-scale geolocalization map)."""
        (city,) = self.resolve_cities([city])
        vector = (
            image
            if _is_vector(image, int(self.embedder.embed_dim))
            else self.embed(self.prepare(image), heading_deg=heading_deg, fov_deg=fov_deg)
        )
        ids, vectors, payloads = self.city_vectors(city)
        queries = np.atleast_2d(np.asarray(vector, dtype=np.float32))
        # a tile stored as several views scores its best, as the index ranks it; without a heading, its best
        # over the coarse stage's headings
        scores = (vectors @ queries.T).reshape(len(ids), -1).max(axis=1)
        if self.hub:
            hubness = self.city_hubness(city)
            scores = scores - self.hub.weight * np.array([hubness[t] for t in ids], dtype=np.float32)
        lats = np.array([payload_location(p)[0] for p in payloads], dtype=float)
        lons = np.array([payload_location(p)[1] for p in payloads], dtype=float)
        return rasterise(city, lats, lons, scores, cmap=cmap)

    def embed_for_heatmap(
        self, image: Any, *, heading_deg: float | None = None, fov_deg: float | None = None
    ) -> np.ndarray:
        """Embed once, then call `heatmap(vector, city)` per city without re-running the model."""
        return self.embed(self.prepare(image), heading_deg=heading_deg, fov_deg=fov_deg)


def _is_vector(obj: Any, dim: int) -> bool:
    """A query vector (or one per heading: [n, dim]) rather than an image (a float grayscale image is 2-D
    too, but not ``dim`` wide)."""
    return (
        isinstance(obj, np.ndarray) and obj.dtype.kind == "f" and obj.ndim in (1, 2) and obj.shape[-1] == dim
    )


def _heading_confidence(top: Candidate, headings: Headings | None) -> float | None:
    """How sure the heading is: the margin of the best view's best heading over its best heading at least
    a column's turn away (45 degrees), as a confidence the way a position's is (tanh(margin / 2T))."""
    if headings is None or top.heading_deg is None or len(top.heading_scores) != len(headings):
        return None
    scores = np.asarray(top.heading_scores, dtype=np.float64)
    far = circular_deg(headings.degrees, top.heading_deg) >= HEADING_RIVAL_DEG
    if not far.any():
        return None
    margin = float(scores.max() - scores[far].max())
    return math.tanh(max(0.0, margin) / (2 * CONFIDENCE_TEMPERATURE))


def _payload_bounds(payloads: Sequence[dict[str, Any]]) -> Bounds | None:
    if not payloads:
        return None
    boxes = [p.get("bounds") for p in payloads if p.get("bounds")]
    if boxes:
        return Bounds(
            min(b["min_lat"] for b in boxes),
            min(b["min_lon"] for b in boxes),
            max(b["max_lat"] for b in boxes),
            max(b["max_lon"] for b in boxes),
        )
    locs = [payload_location(p) for p in payloads]
    return Bounds(
        min(a for a, _ in locs), min(o for _, o in locs), max(a for a, _ in locs), max(o for _, o in locs)
    )
