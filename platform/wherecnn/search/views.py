"""Map pieces for the dashboard: the city's own aerial mosaic as a WGS84 bitmap, and the pydeck deck.

The base layer is the city's `aerial.tif`, read at a downsampled overview and warped to EPSG:4326, so the map
works offline and shows exactly the imagery the index was built from. A web basemap is used only when
`settings.basemap_url` names one.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.search.results import Bounds

TRUE_COLOUR = [40, 220, 90]
CONE_COLOUR = [60, 200, 255]
HEAT_OPACITY = 0.8
# A panorama's heading is its left edge's bearing; the map shows it as a narrow cone.
PANORAMA_CONE_DEG = 30.0


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def find_aerial(data_dir: str | Path, city: str) -> Path | None:
    """The city's orthomosaic: the tiles manifest's `source_uri`, else `**/<city>/**/aerial*.tif`."""
    root = Path(data_dir)
    tiles_file = root / "tiles.parquet"
    if tiles_file.exists():
        import pyarrow.parquet as pq

        if "source_uri" in pq.read_schema(tiles_file).names:
            frame = pd.read_parquet(tiles_file, columns=["city", "source_uri"])
            found = frame.loc[(frame["city"] == city) & frame["source_uri"].notna(), "source_uri"]
            for uri in found.unique():
                path = Path(uri) if Path(uri).is_absolute() else root / uri
                if path.exists():
                    return path
    candidates = sorted(p for p in root.rglob("aerial*.tif") if city in p.relative_to(root).parts[:-1])
    if candidates:
        return candidates[0]
    direct = sorted(root.rglob(f"*{city}*.tif"))
    return direct[0] if direct else None


def aerial_overlay(path: str | Path, *, max_side: int = 1400) -> tuple[np.ndarray, Bounds]:
    """A downsampled RGB(A) view of a GeoTIFF warped to WGS84, with its bounds (for a BitmapLayer)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with rasterio.open(path) as src:
        vrt_ctx = (
            WarpedVRT(src, crs="EPSG:4326", resampling=Resampling.bilinear, add_alpha=True)
            if src.crs is not None and src.crs.to_epsg() != 4326
            else None
        )
        ds = vrt_ctx or src
        try:
            scale = max(ds.width, ds.height) / max_side
            out_h, out_w = max(1, round(ds.height / max(scale, 1))), max(1, round(ds.width / max(scale, 1)))
            bands = min(src.count, 3)
            data = ds.read(
                indexes=list(range(1, bands + 1)),
                out_shape=(bands, out_h, out_w),
                resampling=Resampling.average,
            )
            # the warp's own alpha band: the corners outside the source raster stay transparent, not black
            mask = (
                ds.read(ds.count, out_shape=(out_h, out_w), resampling=Resampling.nearest)
                if vrt_ctx is not None
                else None
            )
            left, bottom, right, top = ds.bounds
        finally:
            if vrt_ctx is not None:
                vrt_ctx.close()
    img = np.moveaxis(data, 0, -1)
    if img.dtype != np.uint8:
        hi = float(np.percentile(img, 99.5)) or 1.0
        img = np.clip(img / hi * 255, 0, 255).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    alpha = np.full(img.shape[:2], 255, np.uint8) if mask is None else mask.astype(np.uint8)
    rgba = np.dstack([img, alpha])
    return rgba, Bounds(min_lat=float(bottom), min_lon=float(left), max_lat=float(top), max_lon=float(right))


def _literal(text: str) -> str:
    """pydeck treats bare strings as JS expressions; a quoted string is passed through as a value."""
    return f"'{text}'"


def zoom_for(bounds: Bounds, *, width_px: int = 540) -> float:
    """Web-mercator zoom (deck.gl: 512-px world at zoom 0) fitting the larger side into ~`width_px` pixels."""
    lat = (bounds.min_lat + bounds.max_lat) / 2
    metres = max(
        (bounds.max_lon - bounds.min_lon) * 111_320 * math.cos(math.radians(lat)),
        (bounds.max_lat - bounds.min_lat) * 110_540,
        50.0,
    )
    return float(np.clip(math.log2(78_271.52 * math.cos(math.radians(lat)) * width_px / metres), 1, 20))


def score_colours(scores: Sequence[float]) -> list[list[int]]:
    """Best → warm yellow, weakest → deep red-purple (inferno), so rank reads at a glance."""
    from matplotlib import colormaps

    s = np.asarray(scores, dtype=float)
    norm = (s - s.min()) / (s.max() - s.min()) if len(s) and s.max() > s.min() else np.ones_like(s)
    return [[int(c * 255) for c in colormaps["inferno"](0.35 + 0.63 * v)[:3]] + [235] for v in norm]


def view_cone(
    lat: float, lon: float, heading_deg: float, fov_deg: float, *, length_m: float = 60.0, steps: int = 12
) -> list[list[float]]:
    """A camera's view on the map: a wedge from (lat, lon) centred on the heading, ``fov_deg`` wide (a
    panorama's narrower, `PANORAMA_CONE_DEG`), as a closed [lon, lat] ring."""
    from wherecnn.geo import offset_m

    width = PANORAMA_CONE_DEG if fov_deg >= 360 else float(np.clip(fov_deg, 1.0, 359.0))
    ring = [[lon, lat]]
    for b in np.linspace(heading_deg - width / 2, heading_deg + width / 2, steps + 1):
        east, north = length_m * math.sin(math.radians(b)), length_m * math.cos(math.radians(b))
        p_lat, p_lon = offset_m(lat=lat, lon=lon, east_m=east, north_m=north)
        ring.append([float(p_lon), float(p_lat)])
    ring.append([lon, lat])
    return ring


def build_deck(
    ranked: pd.DataFrame,
    *,
    city: str,
    aerial: tuple[str, Bounds] | None = None,
    heatmap: tuple[str, Bounds] | None = None,
    truth: tuple[float, float] | None = None,
    prior: dict[str, Any] | None = None,
    basemap_url: str | None = None,
    cone: dict[str, float] | None = None,
) -> Any:
    """The pydeck map of one city: aerial base, optional heat map, the camera's view cone at the answer
    (``cone``: lat, lon, heading_deg, fov_deg), ranked candidates (#1 on top), the true location (a ring, so
    it never hides the answer)."""
    import pydeck as pdk

    rows = ranked[ranked["city"] == city].sort_values("rank")
    layers: list[Any] = []
    if aerial is not None:
        layers.append(
            pdk.Layer("BitmapLayer", id="aerial", image=_literal(aerial[0]), bounds=aerial[1].as_deck())
        )
    if heatmap is not None:
        layers.append(
            pdk.Layer(
                "BitmapLayer",
                id="heatmap",
                image=_literal(heatmap[0]),
                bounds=heatmap[1].as_deck(),
                opacity=HEAT_OPACITY,
            )
        )
    if prior and prior.get("kind") == "radius":
        layers.append(
            pdk.Layer(
                "ScatterplotLayer",
                id="prior",
                data=[prior],
                get_position=["lon", "lat"],
                get_radius="radius_m",
                stroked=True,
                filled=False,
                get_line_color=[80, 170, 255],
                line_width_min_pixels=2,
            )
        )
    points = []
    colours = score_colours(rows["score"].tolist()) if len(rows) else []
    top = float(rows["score"].max()) if len(rows) else 0.0
    low = float(rows["score"].min()) if len(rows) else 0.0
    for (_, row), colour in zip(rows.iterrows(), colours, strict=True):
        rel = (row["score"] - low) / (top - low) if top > low else 1.0
        dist = row.get("distance_m")
        points.append(
            {
                "lat": float(row["lat"]),
                "lon": float(row["lon"]),
                "rank": int(row["rank"]),
                "score": round(float(row["score"]), 4),
                "tile_id": str(row["tile_id"]),
                "city": city,
                "radius": 8.0 + 8.0 * rel,
                "color": colour,
                # dark digits on the bright (high-score) markers, light on the dark ones
                "text_color": [20, 20, 30] if sum(colour[:3]) > 380 else [255, 255, 255],
                "label": str(int(row["rank"])),
                "distance": ""
                if dist is None or (isinstance(dist, float) and math.isnan(dist))
                else f"{dist:.0f} m",
            }
        )
    if cone is not None:
        layers.append(
            pdk.Layer(
                "PolygonLayer",
                id="view_cone",
                data=[{"polygon": view_cone(cone["lat"], cone["lon"], cone["heading_deg"], cone["fov_deg"])}],
                get_polygon="polygon",
                get_fill_color=[*CONE_COLOUR, 90],
                get_line_color=[*CONE_COLOUR, 255],
                line_width_min_pixels=2,
                stroked=True,
                filled=True,
            )
        )
    if truth is not None:
        layers.append(
            pdk.Layer(
                "ScatterplotLayer",
                id="truth",
                data=[{"lat": truth[0], "lon": truth[1], "label": "true location"}],
                get_position=["lon", "lat"],
                get_radius=14,
                radius_units="'pixels'",
                get_line_color=TRUE_COLOUR,
                stroked=True,
                filled=False,
                line_width_min_pixels=3,
                pickable=True,
            )
        )
    points = points[::-1]  # drawn last = on top: #1 above the others where they overlap
    if points:
        layers.append(
            pdk.Layer(
                "ScatterplotLayer",
                id="candidates",
                data=points,
                get_position=["lon", "lat"],
                get_radius="radius",
                radius_units="'pixels'",
                get_fill_color="color",
                get_line_color=[20, 20, 30],
                stroked=True,
                line_width_min_pixels=2,
                pickable=True,
            )
        )
        layers.append(
            pdk.Layer(
                "TextLayer",
                id="ranks",
                data=points,
                get_position=["lon", "lat"],
                get_text="label",
                get_size=13,
                get_color="text_color",
                get_text_anchor="'middle'",
                get_alignment_baseline="'center'",
                font_weight=700,
                pickable=False,
            )
        )
    bounds = aerial[1] if aerial is not None else (heatmap[1] if heatmap is not None else None)
    if bounds is None and points:
        lats, lons = [p["lat"] for p in points], [p["lon"] for p in points]
        bounds = Bounds(min(lats) - 0.002, min(lons) - 0.002, max(lats) + 0.002, max(lons) + 0.002)
    if bounds is not None:
        centre_lat, centre_lon = (bounds.min_lat + bounds.max_lat) / 2, (bounds.min_lon + bounds.max_lon) / 2
    elif points:
        centre_lat, centre_lon = points[0]["lat"], points[0]["lon"]
    else:
        centre_lat, centre_lon = 0.0, 0.0
    view = pdk.ViewState(
        latitude=centre_lat,
        longitude=centre_lon,
        zoom=zoom_for(bounds) if bounds is not None else 14,
        pitch=0,
    )
    tooltip = {
        "html": "<b>#{rank}</b> {tile_id}<br/>score {score}<br/>{distance}",
        "style": {"backgroundColor": "#1f2430", "color": "white", "fontSize": "12px"},
    }
    if basemap_url:
        return pdk.Deck(
            layers=layers,
            initial_view_state=view,
            tooltip=tooltip,
            map_style=basemap_url,
            map_provider="carto",
        )
    return pdk.Deck(
        layers=layers,
        initial_view_state=view,
        tooltip=tooltip,
        # No web basemap unless settings.basemap_url names one. map_style stays pydeck's default sentinel:
        # Streamlit then draws no basemap, where map_style=None makes it fetch one from basemaps.cartocdn.com.
        map_provider=None,
    )
