"""Property tests for wherecnn.geo: round trips, agreement with pyproj's Geod, lat/lon-order guards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod
from wherecnn import geo

# UTM is defined between 80S and 84N; cities live well inside.
lats = st.floats(min_value=-79.5, max_value=83.5, allow_nan=False)
lons = st.floats(min_value=-179.9, max_value=179.9, allow_nan=False)
offsets = st.floats(min_value=-2_000.0, max_value=2_000.0, allow_nan=False)
_GEOD = Geod(ellps="WGS84")


@settings(max_examples=200, deadline=None)
@given(lat=lats, lon=lons)
def test_utm_round_trip_within_1cm(lat: float, lon: float) -> None:
    crs = geo.utm_crs_for(lat=lat, lon=lon)
    e, n = geo.to_utm(lat=lat, lon=lon, crs=crs)
    lat2, lon2 = geo.from_utm(easting=e, northing=n, crs=crs)
    assert geo.distance_m(lat1=lat, lon1=lon, lat2=lat2, lon2=lon2) < 0.01


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(min_value=-70, max_value=70), lon=lons, east=offsets, north=offsets)
def test_offset_round_trip_and_distance(lat: float, lon: float, east: float, north: float) -> None:
    lat2, lon2 = geo.offset_m(lat=lat, lon=lon, east_m=east, north_m=north)
    d = geo.distance_m(lat1=lat, lon1=lon, lat2=lat2, lon2=lon2)
    assert abs(d - float(np.hypot(east, north))) < 0.01
    if abs(east) > 1.0 and abs(north) > 1.0:  # direction: the target lies on the requested side
        assert np.sign(lat2 - lat) == np.sign(north)
        assert np.sign(((lon2 - lon + 180.0) % 360.0) - 180.0) == np.sign(east)


@settings(max_examples=100, deadline=None)
@given(
    lat=st.floats(min_value=-70, max_value=70),
    lon=st.floats(min_value=-170, max_value=170),
    east=offsets,
    north=offsets,
)
def test_local_grid_round_trip(lat: float, lon: float, east: float, north: float) -> None:
    grid = geo.LocalGrid.at(lat=lat, lon=lon)
    la, lo = grid.to_wgs84(x_m=east, y_m=north)
    x, y = grid.to_local(lat=la, lon=lo)
    assert abs(x - east) < 0.01 and abs(y - north) < 0.01


@settings(max_examples=200, deadline=None)
@given(lat1=lats, lon1=lons, lat2=lats, lon2=lons)
def test_distance_agrees_with_geod_within_1mm(lat1: float, lon1: float, lat2: float, lon2: float) -> None:
    _, _, ref = _GEOD.inv(lon1, lat1, lon2, lat2)
    assert abs(geo.distance_m(lat1=lat1, lon1=lon1, lat2=lat2, lon2=lon2) - ref) < 1e-3


def test_distance_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    a1, a2 = rng.uniform(-60, 60, 50), rng.uniform(-60, 60, 50)
    o1, o2 = rng.uniform(-170, 170, 50), rng.uniform(-170, 170, 50)
    d = geo.distance_m(lat1=a1, lon1=o1, lat2=a2, lon2=o2)
    assert isinstance(d, np.ndarray) and d.shape == (50,)
    for i in range(0, 50, 7):
        assert d[i] == pytest.approx(geo.distance_m(lat1=a1[i], lon1=o1[i], lat2=a2[i], lon2=o2[i]))
    # broadcasting one point against many
    one = geo.distance_m(lat1=a1[0], lon1=o1[0], lat2=a2, lon2=o2)
    assert one.shape == (50,)


def test_known_distance_and_azimuth() -> None:
    # one degree of latitude at the equator is ~110.574 km on WGS84
    assert geo.distance_m(lat1=0.0, lon1=0.0, lat2=1.0, lon2=0.0) == pytest.approx(110_574.4, abs=1.0)
    assert geo.azimuth_deg(lat1=0.0, lon1=0.0, lat2=0.0, lon2=1.0) == pytest.approx(90.0)
    lat, lon = geo.offset_m(lat=40.0, lon=-74.0, east_m=0.0, north_m=100.0)
    assert lat > 40.0 and lon == pytest.approx(-74.0)
    lat, lon = geo.offset_m(lat=40.0, lon=-74.0, east_m=100.0, north_m=0.0)
    assert lon > -74.0 and lat == pytest.approx(40.0, abs=1e-6)


@pytest.mark.parametrize(
    ("lat", "lon", "epsg"),
    [
        (40.7128, -74.0060, 32618),  # New York
        (47.6062, -122.3321, 32610),  # Seattle
        (-33.8688, 151.2093, 32756),  # Sydney, southern hemisphere
        (60.39, 5.32, 32632),  # Bergen: Norway exception
        (78.2, 15.6, 32633),  # Svalbard exception
    ],
)
def test_utm_zone(lat: float, lon: float, epsg: int) -> None:
    assert geo.utm_crs_for(lat=lat, lon=lon).to_epsg() == epsg


def test_lat_lon_order_guard() -> None:
    # Seattle with the arguments swapped: -122 is not a latitude
    with pytest.raises(ValueError, match="swapped"):
        geo.utm_crs_for(lat=-122.33, lon=47.6)
    with pytest.raises(ValueError, match="swapped"):
        geo.distance_m(lat1=-122.33, lon1=47.6, lat2=47.6, lon2=-122.33)
    with pytest.raises(ValueError, match="longitude"):
        geo.to_utm(lat=47.6, lon=200.0)
    with pytest.raises(ValueError, match="finite"):
        geo.offset_m(lat=float("nan"), lon=0.0, east_m=1.0, north_m=1.0)
    # positional arguments are refused: the order can never be guessed wrong
    with pytest.raises(TypeError):
        geo.distance_m(47.6, -122.3, 47.7, -122.3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        geo.to_utm(47.6, -122.3)  # type: ignore[misc]


def test_from_utm_returns_lat_first() -> None:
    crs = geo.utm_crs_for(lat=47.6, lon=-122.3)
    e, n = geo.to_utm(lat=47.6, lon=-122.3, crs=crs)
    lat, lon = geo.from_utm(easting=e, northing=n, crs=crs)
    assert lat == pytest.approx(47.6) and lon == pytest.approx(-122.3)


def test_grid_centres_spacing() -> None:
    grid = geo.LocalGrid.at(lat=41.88, lon=-87.63)
    lat, lon = grid.centres(width_m=200.0, height_m=100.0, step_m=50.0)
    assert lat.shape == (15,)  # 5 columns x 3 rows
    # neighbours in a row are 50 m apart, rows run north to south
    assert geo.distance_m(lat1=lat[0], lon1=lon[0], lat2=lat[1], lon2=lon[1]) == pytest.approx(50.0, abs=0.05)
    assert lat[0] > lat[5]
    assert float(np.mean(lat)) == pytest.approx(41.88, abs=1e-6)
    with pytest.raises(ValueError):
        grid.centres(width_m=1, height_m=1, step_m=0)
