"""wherecnn dashboard: where was this ground photo taken? (thin: widgets and layout; logic in wherecnn.search)

Run with `wherecnn dashboard --demo-dir var/demo-small` (or `make dashboard`). Settings come from WHERECNN_*:
STORE, CHECKPOINT, DATA_DIR (manifests + aerial.tif), API_URL (use the search API instead of in-process),
API_KEY, BASEMAP_URL.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from wherecnn.config import get_settings
from wherecnn.search.client import BackendError, LocalBackend, RemoteBackend
from wherecnn.search.heatmap import HEATMAP_CMAP
from wherecnn.search.query import GeoPrior
from wherecnn.search.saliency import overlay
from wherecnn.search.views import aerial_overlay, build_deck, find_aerial, png_data_url

st.set_page_config(page_title="wherecnn · where was this photo taken?", page_icon="🌍", layout="wide")
settings = get_settings()

HOW_TO_BUILD = """
**No search index yet.** Build the demo (synthetic world → trained model → index), then open it here:

```bash
make demo                      # or: wherecnn demo --size small --out var/demo-small
wherecnn dashboard --demo-dir var/demo-small
```

Or index your own imagery with `wherecnn index` and set `WHERECNN_STORE` / `WHERECNN_CHECKPOINT`.
"""


# ---------------------------------------------------------------------------------------- cached resources


@st.cache_resource(show_spinner="Loading the model and the index…")
def get_backend(store: str, checkpoint: str, api_url: str | None, api_key: str | None) -> Any:
    if api_url:
        return RemoteBackend(api_url, api_key)
    return LocalBackend.from_settings(get_settings(store=store, checkpoint=checkpoint))


@st.cache_data(show_spinner=False)
def load_captures(data_dir: str) -> pd.DataFrame | None:
    path = Path(data_dir) / "captures.parquet"
    if not path.exists():
        return None
    from wherecnn.data.manifest import read_captures

    frame = pd.DataFrame(read_captures(path).drop(columns="geometry"))
    return frame.sort_values(["city", "capture_id"]).reset_index(drop=True)


@st.cache_data(show_spinner=False)
def read_uri(uri: str) -> bytes:
    from wherecnn import storage

    return storage.read_bytes(uri)


@st.cache_data(show_spinner="Preparing the aerial mosaic…")
def city_mosaic(data_dir: str, city: str) -> tuple[str, Any] | None:
    path = find_aerial(data_dir, city) if Path(data_dir).exists() else None
    if path is None:
        return None
    image, bounds = aerial_overlay(path)
    return png_data_url(image), bounds


@st.cache_data(show_spinner=False, max_entries=64)
def run_search(
    _backend: Any,
    key: str,
    data: bytes,
    cities: tuple[str, ...] | None,
    k: int,
    prior: GeoPrior | None,
    heading: float | None,
    fov: float | None,
    truth: tuple[float, float] | None,
):
    return _backend.search(
        data,
        cities=list(cities) if cities else None,
        k=k,
        prior=prior,
        heading_deg=heading,
        fov_deg=fov,
        true_lat=truth[0] if truth else None,
        true_lon=truth[1] if truth else None,
    )


@st.cache_data(show_spinner=False, max_entries=32)
def run_heatmap(_backend: Any, key: str, data: bytes, city: str, heading: float | None, fov: float | None):
    return _backend.heatmap(data, city, heading_deg=heading, fov_deg=fov)


@st.cache_data(show_spinner=False, max_entries=32)
def run_explain(_backend: Any, key: str, data: bytes, tile_id: str, heading: float | None, fov: float | None):
    return _backend.explain(data, tile_id, heading_deg=heading, fov_deg=fov)


@st.cache_data(show_spinner=False)
def colour_scale() -> np.ndarray:
    """The heat map's colour scale (the colormap `rasterise` paints it with), low → high."""
    from matplotlib import colormaps

    ramp = colormaps[HEATMAP_CMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.repeat((ramp[None] * 255).astype(np.uint8), 14, axis=0)


def _refined_first(column: pd.Series) -> pd.Series:
    """Sort key: answers placed in metres ahead of tile centres (their scores are their best views')."""
    return column.map(lambda v: 0 if v == "refined" else 1) if column.name == "position_source" else column


@st.cache_data(show_spinner=False, max_entries=256)
def tile_pixels(_backend: Any, key: str, tile_id: str) -> np.ndarray | None:
    return _backend.tile_image(tile_id)


# ---------------------------------------------------------------------------------------- page

st.title("wherecnn — where was this photo taken?")
st.caption(
    "A ground photo in; the likeliest places in each city out, matched against the city's aerial imagery."
)

backend_key = f"{settings.store}|{settings.checkpoint}|{settings.api_url}"
try:
    backend = get_backend(settings.store, settings.checkpoint, settings.api_url, settings.api_key)
    cities_info = backend.cities()
except BackendError as exc:
    st.error(str(exc))
    st.stop()
except Exception as exc:  # no checkpoint, no store: say how to build one
    st.info(HOW_TO_BUILD)
    st.caption(
        f"Store `{settings.store}` · checkpoint `{settings.checkpoint}` · reason: {type(exc).__name__}: {exc}"
    )
    st.stop()
if not cities_info:
    st.info(HOW_TO_BUILD)
    st.stop()

all_cities = [c["name"] for c in cities_info]
captures = load_captures(settings.data_dir)

with st.sidebar:
    st.header("Query")
    sources = ["Upload a photo", "Sample from the dataset"] if captures is not None else ["Upload a photo"]
    source = st.radio("Ground image", sources, key="source", horizontal=True)
    data: bytes | None = None
    name = ""
    truth: tuple[float, float] | None = None
    heading: float | None = None
    fov: float | None = None
    if source == "Upload a photo":
        upload = st.file_uploader(
            "Ground photo or panorama", type=["jpg", "jpeg", "png", "webp"], key="upload"
        )
        if upload is not None:
            data, name = upload.getvalue(), upload.name
        fov_choice = st.selectbox(
            "Field of view", ["auto (by aspect ratio)", "panorama (360°)", "photo (90°)"], key="fov"
        )
        fov = {"panorama (360°)": 360.0, "photo (90°)": 90.0}.get(fov_choice)
        if st.checkbox("Heading known", key="heading_known"):
            typed = st.number_input(
                "Heading (° from north)", 0.0, 359.9, value=None, placeholder="e.g. 135", key="heading"
            )
            heading = None if typed is None else float(typed)
            if heading is None:
                st.caption("Until a heading is typed it is estimated with the position.")
    else:
        assert captures is not None
        kinds = sorted(captures["kind"].dropna().unique()) if "kind" in captures else []
        pool = captures
        c1, c2 = st.columns(2)
        sample_city = c1.selectbox("City", sorted(pool["city"].unique()), key="sample_city")
        pool = pool[pool["city"] == sample_city]
        if kinds:
            kind = c2.selectbox("Kind", kinds, key="sample_kind")
            pool = pool[pool["kind"] == kind]
        if "split" in pool and (pool["split"] == "test").any():
            pool = pool[pool["split"] == "test"]
        capture_id = st.selectbox("Capture", pool["capture_id"].tolist(), key="sample")
        row = pool[pool["capture_id"] == capture_id].iloc[0]
        data, name = read_uri(str(row["uri"])), str(capture_id)
        truth = (float(row["lat"]), float(row["lon"]))
        heading = None if pd.isna(row.get("heading_deg")) else float(row["heading_deg"])
        fov = None if pd.isna(row.get("fov_deg")) else float(row["fov_deg"])
        st.caption(
            f"True location {truth[0]:.6f}, {truth[1]:.6f} · heading "
            f"{'unknown' if heading is None else f'{heading:.0f}°'} · fov {fov or 'auto'}"
        )
    st.header("Search")
    chosen = st.multiselect("Cities", all_cities, default=all_cities, key="cities")
    k = st.slider("Results per city (K)", 1, 20, 5, key="k")
    prior = None
    if st.checkbox("Only near a point", key="use_prior"):
        c1, c2 = st.columns(2)
        first = next((c for c in cities_info if c["name"] == (chosen or all_cities)[0]), cities_info[0])
        b = first.get("bounds") or {}
        plat = c1.number_input(
            "Lat",
            -90.0,
            90.0,
            float((b.get("min_lat", 0) + b.get("max_lat", 0)) / 2),
            format="%.6f",
            key="prior_lat",
        )
        plon = c2.number_input(
            "Lon",
            -180.0,
            180.0,
            float((b.get("min_lon", 0) + b.get("max_lon", 0)) / 2),
            format="%.6f",
            key="prior_lon",
        )
        radius = st.slider("Radius (m)", 50, 5000, 500, step=50, key="prior_radius")
        prior = GeoPrior.circle(lat=plat, lon=plon, radius_m=float(radius))
    show_heat = st.toggle("Heat map overlay", value=True, key="heat")
    st.divider()
    mode = f"search API {settings.api_url}" if settings.api_url else "in-process"
    st.caption(f"{len(all_cities)} cities · {sum(c['tiles'] for c in cities_info):,} tiles · {mode}")

if data is None:
    st.info("Upload a ground photo (or pick a sample capture) to see where it was taken.")
    st.dataframe(
        pd.DataFrame([{"city": c["name"], "tiles": c["tiles"]} for c in cities_info]), hide_index=True
    )
    st.stop()
if not chosen:
    st.warning("Choose at least one city.")
    st.stop()

digest = hashlib.sha1(data).hexdigest()
try:
    with st.spinner("Searching…"):
        view = run_search(
            backend, backend_key + digest, data, tuple(chosen), int(k), prior, heading, fov, truth
        )
except BackendError as exc:
    st.error(str(exc))
    st.stop()
except Exception as exc:  # a broken index or model: a message, not a stack trace
    st.error(f"Search failed: {type(exc).__name__}: {exc}")
    st.stop()

ranked = view.ranked
if ranked.empty or view.best is None:
    st.warning(
        "No tile matched: the prior or the city filter excluded every tile. Widen the radius or add cities."
    )
    st.stop()

best = view.best
query_fov = float(view.query.get("fov_deg") or 360.0)
m = st.columns(5)
m[0].metric("Best guess", best["city"])
m[1].metric(
    "Confidence", f"{best['confidence']:.0%}", help="From the score margin over the best other place."
)
heading_text = "-" if best.get("heading_deg") is None else f"{best['heading_deg']:.0f}°"
m[2].metric(
    "Heading",
    heading_text,
    help="given: as typed; refined: the best within the search window around it; estimated: no heading "
    "was given, the best all round",
)
m[3].metric("Score", f"{best['score']:.3f}")
if truth is not None:
    from wherecnn.search.geoutil import distance_m

    err = float(distance_m(lat1=truth[0], lon1=truth[1], lat2=best["lat"], lon2=best["lon"]))
    m[4].metric("Error vs truth", f"{err:,.0f} m")
else:
    m[4].metric("Search time", f"{view.timings.get('total_ms', 0):.0f} ms")
placed = "placed in metres" if best.get("position_source") == "refined" else "at the tile's centre"
heading_note = ""
if best.get("heading_deg") is not None:
    sure = "" if best.get("heading_confidence") is None else f", confidence {best['heading_confidence']:.0%}"
    heading_note = f" · heading {best['heading_deg']:.0f}° ({best.get('heading_source')}{sure})"
st.markdown(
    f"**Best guess:** {best['city']} at {best['lat']:.6f}, {best['lon']:.6f} (tile `{best['tile_id']}`, "
    f"{placed}){heading_note}"
)
if query_fov < 360 and view.query.get("trained_on") == "panorama":
    st.warning(
        "This index's model was trained on panoramas: a perspective photo gets close to random answers. "
        "Search with a panorama, or index with a model trained on photos."
    )

map_col, side_col = st.columns([3, 2], gap="medium")
with map_col:
    map_cities = list(dict.fromkeys(ranked["city"]))
    # A new search moves the map to its best guess; the user's pick holds until the next search.
    search_id = hashlib.sha1(repr((digest, chosen, k, prior, heading, fov)).encode()).hexdigest()
    if st.session_state.get("map_search") != search_id or st.session_state.get("map_city") not in map_cities:
        st.session_state["map_search"] = search_id
        st.session_state["map_city"] = best["city"] if best["city"] in map_cities else map_cities[0]
    map_city = st.selectbox("Map", map_cities, key="map_city")
    heat = None
    if show_heat:
        try:
            with st.spinner("Scoring every tile of the city…"):
                heat = run_heatmap(backend, backend_key + digest, data, map_city, heading, fov)
        except Exception as exc:  # the map still shows the candidates
            st.warning(f"Heat map unavailable: {exc}")
    try:
        mosaic = city_mosaic(settings.data_dir, map_city)
    except Exception as exc:  # an unreadable GeoTIFF must not take the page down
        st.warning(f"Aerial mosaic unavailable: {type(exc).__name__}: {exc}")
        mosaic = None
    if mosaic is None:
        st.caption("No aerial mosaic found for this city (set WHERECNN_DATA_DIR); showing candidates only.")
    deck = build_deck(
        ranked,
        city=map_city,
        aerial=mosaic,
        heatmap=heat,
        truth=truth,
        prior=prior.as_dict() if prior else None,
        basemap_url=settings.basemap_url,
        cone=None
        if best.get("heading_deg") is None or best["city"] != map_city
        else {
            "lat": best["lat"],
            "lon": best["lon"],
            "heading_deg": best["heading_deg"],
            "fov_deg": query_fov,
        },
    )
    st.pydeck_chart(deck, height=560, key="map")
    legend = "numbered markers = ranked candidates (brighter = higher score)"
    if best.get("heading_deg") is not None and best["city"] == map_city:
        legend += " · blue cone = the camera's heading at the best guess"
    if truth is not None:
        legend += " · green ring = true location"
    st.caption(legend)
    if heat is not None:
        st.image(
            colour_scale(), caption="heat map: the photo's similarity to each tile, low → high", width=260
        )

with side_col:
    st.subheader(f"Top {int(k)} in {map_city}")
    rows = ranked[ranked["city"] == map_city].sort_values("rank")
    grid = st.columns(3)
    for i, r in enumerate(rows.itertuples()):
        pixels = tile_pixels(backend, backend_key, str(r.tile_id))
        dist = "" if pd.isna(r.distance_m) else f" · {r.distance_m:,.0f} m"
        caption = f"#{r.rank} · {r.score:.3f}{dist}"
        with grid[i % 3]:
            if pixels is not None:
                st.image(pixels, caption=caption, width="stretch")
            else:
                st.caption(caption + " (image unavailable)")

q_col, a_col, b_col = st.columns(3)
with q_col:
    st.subheader("Query")
    st.image(data, caption=name or "query", width="stretch")
explained = None
if not getattr(backend, "remote", False):
    try:
        with st.spinner("Explaining the top match…"):
            top_tile = str(rows.iloc[0]["tile_id"])
            explained = run_explain(backend, backend_key + digest, data, top_tile, heading, fov)
    except Exception as exc:  # explanations are a nicety; never break the page
        st.caption(f"Activation maps unavailable: {type(exc).__name__}")
if explained is not None:
    with a_col:
        st.subheader("What the model looked at")
        st.image(
            overlay(explained["ground_view"], explained["ground_saliency"]),
            caption=f"query as the model saw it ({explained.get('method', 'saliency')})",
            width="stretch",
        )
    with b_col:
        st.subheader("…and in the top match")
        st.image(
            overlay(explained["aerial_view"], explained["aerial_saliency"]),
            caption=f"tile {top_tile}",
            width=260,
        )
else:
    a_col.caption("Activation overlays need the in-process model.")

st.subheader("Ranked locations")
table = pd.DataFrame(ranked.drop(columns=["uri", "geometry"], errors="ignore"))
# best first over every city (the table is per city in rank order otherwise)
table = table.sort_values(["position_source", "score"], key=_refined_first, ascending=[True, False])
if table["distance_m"].isna().all():
    table = table.drop(columns=["distance_m"])
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "score": st.column_config.ProgressColumn("score", min_value=-1.0, max_value=1.0, format="%.3f"),
        "distance_m": st.column_config.NumberColumn("distance to truth (m)", format="%.0f m"),
        "heading_deg": st.column_config.NumberColumn("heading (°)", format="%.0f°"),
        "position_source": st.column_config.TextColumn("position"),
    },
)
d1, d2, _ = st.columns([1, 1, 4])
d1.download_button(
    "Download GeoJSON",
    json.dumps(view.to_geojson(), indent=1),
    file_name="wherecnn-results.geojson",
    mime="application/geo+json",
    key="dl_geojson",
)
d2.download_button(
    "Download CSV", view.to_csv(), file_name="wherecnn-results.csv", mime="text/csv", key="dl_csv"
)
t = view.timings
st.caption(
    f"decode {t.get('decode_ms', 0):.0f} ms · embed {t.get('embed_ms', 0):.0f} ms · "
    f"store {t.get('query_ms', 0):.0f} ms · fine stage {t.get('refine_ms', 0):.0f} ms · "
    f"total {t.get('total_ms', 0):.0f} ms"
)
