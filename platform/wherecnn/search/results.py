"""What a search answers: the ranked rows, the best guess, a city's extent, and their JSON forms.

`SearchResult.ranked` holds `RANKED_COLUMNS` (plus a point geometry) and `best` the `BestGuess`; these are
what the HTTP API, the CLI and the dashboard's backends receive, and they serialise themselves (`records`,
`to_geojson`, `to_csv`, `as_dict`) with NumPy scalars turned into plain Python, so every form is JSON-safe.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

RANKED_COLUMNS = [
    "city",
    "rank",
    "lat",
    "lon",
    "score",
    "tile_id",
    "uri",
    "distance_m",
    "position_source",
    "heading_deg",
]


class Bounds(NamedTuple):
    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    def as_deck(self) -> list[float]:
        """deck.gl BitmapLayer order: [left, bottom, right, top]."""
        return [self.min_lon, self.min_lat, self.max_lon, self.max_lat]


@dataclass(frozen=True)
class BestGuess:
    lat: float
    lon: float
    score: float
    confidence: float
    city: str
    tile_id: str
    margin: float
    position_source: str = "tile_centre"  # "refined": placed in metres by the fine stage
    heading_deg: float | None = None  # the camera's heading (degrees clockwise from north) with the answer
    heading_source: str | None = None  # "given" | "refined" | "estimated" (None: not known)
    heading_confidence: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "lat": self.lat,
            "lon": self.lon,
            "score": self.score,
            "confidence": self.confidence,
            "city": self.city,
            "tile_id": self.tile_id,
            "margin": self.margin,
            "position_source": self.position_source,
            "heading_deg": self.heading_deg,
            "heading_source": self.heading_source,
            "heading_confidence": self.heading_confidence,
        }


@dataclass
class SearchResult:
    """`ranked`: GeoDataFrame (city, rank, lat, lon, score, tile_id, uri, distance_m, geometry) sorted by
    city then rank; `best`: the overall best guess (None when nothing matched);
    `timings`: milliseconds per stage."""

    ranked: Any  # geopandas.GeoDataFrame
    best: BestGuess | None
    timings: dict[str, float] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        """Plain rows (no geometry), NaN distances as None: JSON-safe."""
        rows = []
        for r in self.ranked.drop(columns="geometry").to_dict("records"):
            rows.append(
                {k: (None if isinstance(v, float) and math.isnan(v) else _py(v)) for k, v in r.items()}
            )
        return rows

    def to_geojson(self) -> dict[str, Any]:
        """A FeatureCollection of the ranked points; the best guess and the query ride along as members."""
        features = [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [row["lon"], row["lat"]]},
                "properties": row,
            }
            for row in self.records()
        ]
        return {
            "type": "FeatureCollection",
            "features": features,
            "best": self.best.as_dict() if self.best else None,
            "query": self.query,
        }

    def to_csv(self) -> str:
        return self.ranked.drop(columns="geometry").to_csv(index=False)


@dataclass(frozen=True)
class CityInfo:
    name: str
    tiles: int
    bounds: Bounds | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tiles": self.tiles,
            "bounds": self.bounds._asdict() if self.bounds else None,
        }


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_py)
