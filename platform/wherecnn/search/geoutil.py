"""Geodesic distance for ranked results, and local metric coordinates for rasterising a city's tile grid.

Distances come from `wherecnn.geo` so every module measures the same way.
"""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_M = 6_371_008.8


def distance_m(*, lat1: object, lon1: object, lat2: object, lon2: object) -> np.ndarray:
    """Geodesic WGS84 distance in metres (vectorised), as `wherecnn.geo` measures it everywhere."""
    from wherecnn.geo import distance_m as geo_distance

    return np.asarray(geo_distance(lat1=lat1, lon1=lon1, lat2=lat2, lon2=lon2), dtype=float)


def local_xy(lat: np.ndarray, lon: np.ndarray, *, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """Equirectangular metres around (lat0, lon0): accurate to well under a pixel across one city."""
    k = np.pi / 180.0 * EARTH_RADIUS_M
    x = (np.asarray(lon, dtype=float) - lon0) * k * np.cos(np.radians(lat0))
    y = (np.asarray(lat, dtype=float) - lat0) * k
    return x, y


def local_to_latlon(
    x: np.ndarray, y: np.ndarray, *, lat0: float, lon0: float
) -> tuple[np.ndarray, np.ndarray]:
    k = np.pi / 180.0 * EARTH_RADIUS_M
    lat = np.asarray(y, dtype=float) / k + lat0
    lon = np.asarray(x, dtype=float) / (k * np.cos(np.radians(lat0))) + lon0
    return lat, lon
