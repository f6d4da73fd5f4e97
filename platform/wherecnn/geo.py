"""WGS84 <-> local UTM, geodesic distances and metre offsets.

lat/lon order is the classic bug of geospatial code, so every function here takes keyword-only arguments
(``lat=``, ``lon=``) and never a bare tuple. Functions accept scalars or numpy arrays (vectorised); scalars in
give Python floats out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, overload

import numpy as np
from pyproj import CRS, Geod, Transformer

__all__ = [
    "WGS84",
    "GEOD",
    "LocalGrid",
    "check_lat_lon",
    "utm_crs_for",
    "utm_zone_for",
    "to_utm",
    "from_utm",
    "distance_m",
    "azimuth_deg",
    "offset_m",
    "metres_to_degrees",
]

WGS84 = CRS.from_epsg(4326)
GEOD = Geod(ellps="WGS84")

ArrayLike = float | np.ndarray | Any


def _as_array(value: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got {arr.dtype}")
    return arr


def _out(value: np.ndarray, scalar: bool) -> Any:
    return float(value) if scalar else value


def check_lat_lon(*, lat: ArrayLike, lon: ArrayLike) -> None:
    """Raise ValueError when any latitude/longitude is outside WGS84 bounds (or NaN).

    Catches swapped arguments early: a longitude passed as latitude is usually beyond +-90.
    """
    la = _as_array(lat, "lat")
    lo = _as_array(lon, "lon")
    if not np.all(np.isfinite(la)) or not np.all(np.isfinite(lo)):
        raise ValueError("lat/lon must be finite numbers (got NaN or inf)")
    if np.any(np.abs(la) > 90.0):
        bad = la[np.abs(la) > 90.0].ravel()[0]
        raise ValueError(f"latitude {bad} outside [-90, 90]: were lat and lon swapped?")
    if np.any(np.abs(lo) > 180.0):
        bad = lo[np.abs(lo) > 180.0].ravel()[0]
        raise ValueError(f"longitude {bad} outside [-180, 180]")


def utm_zone_for(*, lat: float, lon: float) -> tuple[int, bool]:
    """(zone number, northern hemisphere?) with the Norway/Svalbard exceptions."""
    check_lat_lon(lat=lat, lon=lon)
    lon_n = ((float(lon) + 180.0) % 360.0) - 180.0
    zone = int((lon_n + 180.0) // 6.0) + 1
    zone = min(zone, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon_n < 12.0:
        zone = 32
    if 72.0 <= lat < 84.0:
        if 0.0 <= lon_n < 9.0:
            zone = 31
        elif 9.0 <= lon_n < 21.0:
            zone = 33
        elif 21.0 <= lon_n < 33.0:
            zone = 35
        elif 33.0 <= lon_n < 42.0:
            zone = 37
    return zone, lat >= 0.0


def utm_crs_for(*, lat: float, lon: float) -> CRS:
    """The UTM CRS (WGS84 datum, EPSG 326xx north / 327xx south) whose zone contains the point.

    One CRS per city: pick it from the city centre and use it for every tile of that city, so metric
    grids never straddle a zone boundary.
    """
    zone, north = utm_zone_for(lat=lat, lon=lon)
    return CRS.from_epsg((32600 if north else 32700) + zone)


@lru_cache(maxsize=64)
def _transformers(crs_wkt: str) -> tuple[Transformer, Transformer]:
    crs = CRS.from_wkt(crs_wkt)
    fwd = Transformer.from_crs(WGS84, crs, always_xy=True)
    inv = Transformer.from_crs(crs, WGS84, always_xy=True)
    return fwd, inv


def _crs(crs: CRS | str | int) -> CRS:
    return crs if isinstance(crs, CRS) else CRS.from_user_input(crs)


@overload
def to_utm(*, lat: float, lon: float, crs: CRS | str | int | None = None) -> tuple[float, float]: ...
@overload
def to_utm(
    *, lat: np.ndarray, lon: np.ndarray, crs: CRS | str | int | None = None
) -> tuple[np.ndarray, np.ndarray]: ...
def to_utm(*, lat: Any, lon: Any, crs: CRS | str | int | None = None) -> tuple[Any, Any]:
    """(easting, northing) in metres. Without ``crs`` the zone of the (first) point is used."""
    la = _as_array(lat, "lat")
    lo = _as_array(lon, "lon")
    check_lat_lon(lat=la, lon=lo)
    if crs is None:
        crs = utm_crs_for(lat=float(la.ravel()[0]), lon=float(lo.ravel()[0]))
    fwd, _ = _transformers(_crs(crs).to_wkt())
    e, n = fwd.transform(lo, la)
    scalar = la.ndim == 0 and lo.ndim == 0
    return _out(np.asarray(e), scalar), _out(np.asarray(n), scalar)


@overload
def from_utm(*, easting: float, northing: float, crs: CRS | str | int) -> tuple[float, float]: ...
@overload
def from_utm(
    *, easting: np.ndarray, northing: np.ndarray, crs: CRS | str | int
) -> tuple[np.ndarray, np.ndarray]: ...
def from_utm(*, easting: Any, northing: Any, crs: CRS | str | int) -> tuple[Any, Any]:
    """(lat, lon) from projected metres in ``crs`` (note the order: lat first, like every API here)."""
    e = _as_array(easting, "easting")
    n = _as_array(northing, "northing")
    _, inv = _transformers(_crs(crs).to_wkt())
    lon, lat = inv.transform(e, n)
    scalar = e.ndim == 0 and n.ndim == 0
    return _out(np.asarray(lat), scalar), _out(np.asarray(lon), scalar)


def _inverse(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> tuple[Any, Any, Any]:
    """The geodesic inverse problem from point 1 to point 2 (checked, broadcast): azimuths and distance."""
    a1, o1 = _as_array(lat1, "lat1"), _as_array(lon1, "lon1")
    a2, o2 = _as_array(lat2, "lat2"), _as_array(lon2, "lon2")
    check_lat_lon(lat=a1, lon=o1)
    check_lat_lon(lat=a2, lon=o2)
    a1, o1, a2, o2 = np.broadcast_arrays(a1, o1, a2, o2)
    return GEOD.inv(o1, a1, o2, a2)


def distance_m(*, lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Geodesic distance on the WGS84 ellipsoid in metres (Karney's algorithm via pyproj); vectorised."""
    _, _, dist = _inverse(lat1, lon1, lat2, lon2)
    dist = np.asarray(dist, dtype=np.float64)
    return _out(dist, dist.ndim == 0)


def azimuth_deg(*, lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Forward azimuth from point 1 to point 2, compass degrees in [0, 360)."""
    az, _, _ = _inverse(lat1, lon1, lat2, lon2)
    az = np.mod(np.asarray(az, dtype=np.float64), 360.0)
    return _out(az, az.ndim == 0)


def offset_m(*, lat: Any, lon: Any, east_m: Any, north_m: Any) -> tuple[Any, Any]:
    """The point ``east_m`` east and ``north_m`` north of (lat, lon): (lat, lon).

    Exact in the sense of a geodesic: moves ``hypot(east, north)`` metres along the azimuth
    ``atan2(east, north)``. For the few hundred metres of a tile this equals a local tangent-plane offset.
    """
    la, lo = _as_array(lat, "lat"), _as_array(lon, "lon")
    check_lat_lon(lat=la, lon=lo)
    e, n = _as_array(east_m, "east_m"), _as_array(north_m, "north_m")
    la, lo, e, n = np.broadcast_arrays(la, lo, e, n)
    dist = np.hypot(e, n)
    az = np.degrees(np.arctan2(e, n))
    lon2, lat2, _ = GEOD.fwd(lo, la, az, dist)
    lat2 = np.asarray(lat2, dtype=np.float64)
    lon2 = np.asarray(lon2, dtype=np.float64)
    scalar = lat2.ndim == 0
    return _out(lat2, scalar), _out(lon2, scalar)


def metres_to_degrees(*, lat: float, metres: float) -> tuple[float, float]:
    """How many degrees of latitude and longitude ``metres`` spans at ``lat`` (small-distance scale)."""
    check_lat_lon(lat=lat, lon=0.0)
    d_lat, _ = offset_m(lat=lat, lon=0.0, east_m=0.0, north_m=metres)
    _, d_lon = offset_m(lat=lat, lon=0.0, east_m=metres, north_m=0.0)
    return abs(float(d_lat) - lat), abs(float(d_lon))


@dataclass(frozen=True)
class LocalGrid:
    """A metric grid anchored at a city centre in the city's UTM zone.

    Converts between WGS84 and metres east/north of the origin; used by tilers and samplers that want to
    think in metres (cell size, strides) while storing lat/lon.
    """

    origin_lat: float
    origin_lon: float
    crs: CRS
    origin_e: float
    origin_n: float

    @classmethod
    def at(cls, *, lat: float, lon: float, crs: CRS | None = None) -> LocalGrid:
        crs = crs or utm_crs_for(lat=lat, lon=lon)
        e, n = to_utm(lat=lat, lon=lon, crs=crs)
        return cls(float(lat), float(lon), crs, float(e), float(n))

    def to_local(self, *, lat: Any, lon: Any) -> tuple[Any, Any]:
        """(x_m east, y_m north) of the origin, in the zone's projected metres."""
        e, n = to_utm(lat=lat, lon=lon, crs=self.crs)
        return e - self.origin_e, n - self.origin_n

    def to_wgs84(self, *, x_m: Any, y_m: Any) -> tuple[Any, Any]:
        """(lat, lon) of a point ``x_m`` east and ``y_m`` north of the origin (projected metres)."""
        return from_utm(
            easting=np.asarray(x_m, dtype=np.float64) + self.origin_e,
            northing=np.asarray(y_m, dtype=np.float64) + self.origin_n,
            crs=self.crs,
        )

    def centres(self, *, width_m: float, height_m: float, step_m: float) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) arrays of cell centres covering a width x height rectangle centred on the origin.

        Rows run north to south, columns west to east; flattened row-major.
        """
        if step_m <= 0:
            raise ValueError(f"step_m must be > 0, got {step_m}")
        nx = max(1, int(np.floor(width_m / step_m)) + 1)
        ny = max(1, int(np.floor(height_m / step_m)) + 1)
        xs = (np.arange(nx) - (nx - 1) / 2.0) * step_m
        ys = ((ny - 1) / 2.0 - np.arange(ny)) * step_m
        gx, gy = np.meshgrid(xs, ys)
        lat, lon = self.to_wgs84(x_m=gx.ravel(), y_m=gy.ravel())
        return np.asarray(lat), np.asarray(lon)
