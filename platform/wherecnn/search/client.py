"""One search interface for apps, two ways to reach it: in-process (`LocalBackend`, the engine on the embedded
store) or over HTTP (`RemoteBackend`, the search API by URL). The dashboard talks only to this.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.search.query import GeoPrior
from wherecnn.search.results import RANKED_COLUMNS, Bounds


class BackendError(RuntimeError):
    """A search the backend refused or could not run; `str()` is a message fit for a person."""


@dataclass
class SearchView:
    """What an app shows: ranked rows (DataFrame with RANKED_COLUMNS), the best guess, timings, heat map."""

    ranked: pd.DataFrame
    best: dict[str, Any] | None
    timings: dict[str, float]
    heatmap: tuple[str, Bounds] | None = None  # (PNG data URL, bounds)
    query: dict[str, Any] = field(default_factory=dict)

    def to_geojson(self) -> dict[str, Any]:
        feats = []
        for row in self.ranked.to_dict("records"):
            props = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [row["lon"], row["lat"]]},
                    "properties": props,
                }
            )
        return {"type": "FeatureCollection", "features": feats, "best": self.best, "query": self.query}

    def to_csv(self) -> str:
        return self.ranked.to_csv(index=False)


class LocalBackend:
    """The engine in this process (model and store loaded once)."""

    remote = False

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @classmethod
    def from_settings(cls, settings: Any) -> LocalBackend:
        from wherecnn.search.engine import SearchEngine

        return cls(SearchEngine.from_settings(settings))

    def cities(self) -> list[dict[str, Any]]:
        return [c.as_dict() for c in self.engine.city_info()]

    def search(
        self,
        data: bytes,
        *,
        cities: list[str] | None,
        k: int,
        prior: GeoPrior | None = None,
        heading_deg: float | None = None,
        fov_deg: float | None = None,
        true_lat: float | None = None,
        true_lon: float | None = None,
        heatmap_city: str | None = None,
    ) -> SearchView:
        from wherecnn.search.errors import SearchInputError

        try:
            result = self.engine.search(
                data,
                cities=cities,
                k=k,
                prior=prior,
                heading_deg=heading_deg,
                fov_deg=fov_deg,
                true_lat=true_lat,
                true_lon=true_lon,
            )
            heat = None
            target = (result.best.city if result.best else None) if heatmap_city == "best" else heatmap_city
            if target:
                vector = self.engine.embed_for_heatmap(data, heading_deg=heading_deg, fov_deg=fov_deg)
                hm = self.engine.heatmap(vector, target)
                heat = (hm.to_data_url(), hm.bounds)
        except SearchInputError as exc:
            raise BackendError(str(exc)) from None
        ranked = pd.DataFrame(result.records(), columns=RANKED_COLUMNS)
        return SearchView(
            ranked=ranked,
            best=result.best.as_dict() if result.best else None,
            timings=result.timings,
            heatmap=heat,
            query=result.query,
        )

    def heatmap(
        self, data: bytes, city: str, *, heading_deg: float | None = None, fov_deg: float | None = None
    ) -> tuple[str, Bounds]:
        from wherecnn.search.errors import SearchInputError

        try:
            vector = self.engine.embed_for_heatmap(data, heading_deg=heading_deg, fov_deg=fov_deg)
            hm = self.engine.heatmap(vector, city)
        except SearchInputError as exc:
            raise BackendError(str(exc)) from None
        return hm.to_data_url(), hm.bounds

    def tile_image(self, tile_id: str) -> np.ndarray | None:
        from wherecnn import storage

        payload = self.engine.tile_payload(tile_id)
        if not payload or not payload.get("uri"):
            return None
        try:
            return storage.load_image(payload["uri"])
        except (FileNotFoundError, storage.ImageDecodeError, storage.StorageError):
            return None

    def explain(
        self, data: bytes, tile_id: str, *, heading_deg: float | None = None, fov_deg: float | None = None
    ) -> dict[str, np.ndarray] | None:
        """Activation overlays for the query and a matched tile (None when the model cannot be inspected)."""
        embedder = self.engine.embedder
        tile = self.tile_image(tile_id)
        if tile is None or not hasattr(embedder, "model"):
            return None
        from wherecnn.search.query import infer_fov

        query = self.engine.prepare(data)
        fov = infer_fov(query, fov_deg)
        from wherecnn.models.activations import pair_maps

        maps = pair_maps(embedder, query, tile, heading_deg=heading_deg, fov_deg=fov)
        return {
            "ground_view": maps.ground,
            "aerial_view": maps.aerial,
            "ground_saliency": maps.ground_cam,
            "aerial_saliency": maps.aerial_cam,
            "score": np.float32(maps.score),
            "method": "Grad-CAM",
        }


class RemoteBackend:
    """The search API by URL (settings.api_url), with the API key header when configured."""

    remote = True

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _json(self, resp: Any) -> Any:
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                message = err.get("message") or err.get("code")
            except Exception:
                message = f"HTTP {resp.status_code}"
            raise BackendError(f"search API: {message}")
        return resp.json()

    def cities(self) -> list[dict[str, Any]]:
        import httpx

        try:
            return list(self._json(self.client.get("/v1/cities"))["cities"])
        except httpx.HTTPError as exc:
            raise BackendError(f"search API at {self.client.base_url} unreachable: {exc}") from None

    def search(
        self,
        data: bytes,
        *,
        cities: list[str] | None,
        k: int,
        prior: GeoPrior | None = None,
        heading_deg: float | None = None,
        fov_deg: float | None = None,
        true_lat: float | None = None,
        true_lon: float | None = None,
        heatmap_city: str | None = None,
    ) -> SearchView:
        import httpx

        form: dict[str, Any] = {"k": str(k)}
        if cities:
            form["city"] = list(cities)
        if prior is not None:
            if prior.kind == "radius":
                form.update(lat=str(prior.lat), lon=str(prior.lon), radius_m=str(prior.radius_m))
            elif prior.kind == "bbox":
                form["bbox"] = f"{prior.min_lon},{prior.min_lat},{prior.max_lon},{prior.max_lat}"
            else:
                raise BackendError("the search API takes a radius or bbox prior, not a polygon")
        for key, value in (("heading_deg", heading_deg), ("fov_deg", fov_deg), ("heatmap", heatmap_city)):
            if value is not None:
                form[key] = str(value)
        try:
            body = self._json(self.client.post("/v1/search", files={"image": ("query", data)}, data=form))
        except httpx.HTTPError as exc:
            raise BackendError(f"search API at {self.client.base_url} unreachable: {exc}") from None
        ranked = pd.DataFrame(body["results"])
        ranked["uri"] = ranked.get("image_url", "")
        if true_lat is not None and true_lon is not None and len(ranked):
            from wherecnn.search.geoutil import distance_m

            ranked["distance_m"] = distance_m(
                lat1=true_lat, lon1=true_lon, lat2=ranked["lat"].to_numpy(), lon2=ranked["lon"].to_numpy()
            )
        ranked = ranked.reindex(columns=RANKED_COLUMNS)
        heat = None
        if body.get("heatmap"):
            hm = body["heatmap"]
            heat = ("data:image/png;base64," + hm["png_base64"], Bounds(**hm["bounds"]))
        return SearchView(
            ranked=ranked,
            best=body.get("best"),
            timings=body.get("timings", {}),
            heatmap=heat,
            query=body.get("query", {}),
        )

    def heatmap(
        self, data: bytes, city: str, *, heading_deg: float | None = None, fov_deg: float | None = None
    ) -> tuple[str, Bounds]:
        view = self.search(
            data, cities=[city], k=1, heading_deg=heading_deg, fov_deg=fov_deg, heatmap_city=city
        )
        if view.heatmap is None:
            raise BackendError(f"the search API returned no heat map for {city}")
        return view.heatmap

    def tile_image(self, tile_id: str) -> np.ndarray | None:
        from PIL import Image

        resp = self.client.get(f"/v1/tiles/{tile_id}/image")
        if resp.status_code != 200:
            return None
        return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))

    def explain(self, data: bytes, tile_id: str, **_: Any) -> dict[str, np.ndarray] | None:
        return None  # the model lives on the server


def data_url_to_array(url: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
