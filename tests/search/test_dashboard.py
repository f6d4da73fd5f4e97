"""The Streamlit dashboard through `streamlit.testing.v1.AppTest`, on a miniature demo folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


def _app() -> object:
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=180)


def _deck(at: object) -> dict:
    charts = at.get("deck_gl_json_chart")  # type: ignore[attr-defined]
    assert charts, "no map on the page"
    return json.loads(charts[0].proto.json)


def _layer(spec: dict, layer_id: str) -> dict | None:
    return next((layer for layer in spec["layers"] if layer.get("id") == layer_id), None)


def _photo() -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(3)
    img = np.kron(rng.integers(0, 255, (4, 16, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


def test_upload_choose_city_ranked_table_and_map(demo_settings: Path) -> None:
    at = _app()
    at.run()
    assert not at.exception, at.exception
    assert any("Upload a ground photo" in i.value for i in at.info)
    at.file_uploader(key="upload").upload("street.jpg", _photo(), "image/jpeg").run()
    at.multiselect(key="cities").set_value(["beta"]).run()
    at.slider(key="k").set_value(4).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["city"].unique()) == ["beta"]
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert list(table["score"]) == sorted(table["score"], reverse=True)
    spec = _deck(at)
    candidates = _layer(spec, "candidates")
    assert candidates is not None
    points = sorted(candidates["data"], key=lambda p: p["rank"])
    assert [p["tile_id"] for p in points] == list(table["tile_id"])
    assert [(round(p["lat"], 6), round(p["lon"], 6)) for p in points] == [
        (round(a, 6), round(b, 6)) for a, b in zip(table["lat"], table["lon"], strict=True)
    ]
    # pydeck's "default" sentinel: Streamlit fetches no web basemap (with no mapStyle it fetches carto's)
    assert spec.get("mapStyle") == "__MAP_STYLE__"
    aerial = _layer(spec, "aerial")  # the city's own mosaic, warped to WGS84
    assert aerial is not None and aerial["image"].startswith("data:image/png;base64,")
    left, bottom, right, top = aerial["bounds"]
    assert left < min(table["lon"]) < max(table["lon"]) < right and bottom < min(table["lat"]) < top
    assert _layer(spec, "heatmap") is not None
    assert not [c.value for c in at.caption if "unavailable" in c.value]  # tiles and activation maps shown
    labels = {b.label for b in at.get("download_button")}
    assert {"Download GeoJSON", "Download CSV"} <= labels
    at.toggle(key="heat").set_value(False).run()
    assert _layer(_deck(at), "heatmap") is None


def test_the_map_follows_each_new_search_unless_the_user_picks_a_city(demo_settings: Path) -> None:
    at = _app()
    at.run()
    at.file_uploader(key="upload").upload("street.jpg", _photo(), "image/jpeg").run()
    assert not at.exception, at.exception
    best = next(m.value for m in at.metric if m.label == "Best guess")
    assert at.selectbox(key="map_city").value == best
    other = next(c for c in at.selectbox(key="map_city").options if c != best)
    at.selectbox(key="map_city").set_value(other).run()
    assert at.selectbox(key="map_city").value == other  # the user's pick holds while the search is the same
    assert {p["city"] for p in _layer(_deck(at), "candidates")["data"]} == {other}
    assert any(h.value == f"Top 5 in {other}" for h in at.subheader)
    at.slider(key="k").set_value(3).run()  # a new search: the map goes to its best guess
    assert at.selectbox(key="map_city").value == best
    assert any(h.value == f"Top 3 in {best}" for h in at.subheader)
    # no heading given: it is estimated, shown, and drawn as a cone at the best guess
    assert next(m.value for m in at.metric if m.label == "Heading").endswith("°")
    assert any("(estimated" in md.value for md in at.markdown)
    cone = _layer(_deck(at), "view_cone")
    assert cone is not None and len(cone["data"][0]["polygon"]) > 3


def test_ticking_heading_known_does_not_search_at_zero(demo_settings: Path) -> None:
    at = _app()
    at.run()
    at.file_uploader(key="upload").upload("street.jpg", _photo(), "image/jpeg").run()
    at.checkbox(key="heading_known").check().run()
    assert not at.exception, at.exception
    assert at.number_input(key="heading").value is None
    assert any("(estimated" in md.value for md in at.markdown)  # still estimated until a heading is typed
    at.number_input(key="heading").set_value(135.0).run()
    assert any("(refined" in md.value for md in at.markdown)


def test_sample_capture_shows_truth(demo_settings: Path) -> None:
    at = _app()
    at.run()
    at.radio(key="source").set_value("Sample from the dataset").run()
    assert not at.exception, at.exception
    spec = _deck(at)
    truth = _layer(spec, "truth")
    assert truth is not None and len(truth["data"]) == 1
    import pandas as pd

    captures = pd.read_parquet(demo_settings / "data" / "captures.parquet")
    chosen = at.selectbox(key="sample").value
    row = captures[captures["capture_id"] == chosen].iloc[0]
    assert truth["data"][0]["lat"] == pytest.approx(row["lat"])
    table = at.dataframe[0].value
    assert "distance_m" in table.columns
    assert list(table["score"]) == sorted(table["score"], reverse=True) or "tile_centre" in set(
        table["position_source"]
    )
    assert any(m.label == "Error vs truth" for m in at.metric)


def test_no_index_says_how_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wherecnn.config import reset_settings_cache

    monkeypatch.setenv("WHERECNN_STORE", f"edge://{tmp_path / 'nothing'}")
    monkeypatch.setenv("WHERECNN_CHECKPOINT", str(tmp_path / "no-checkpoint"))
    monkeypatch.setenv("WHERECNN_DATA_DIR", str(tmp_path))
    reset_settings_cache()
    try:
        at = _app()
        at.run()
        assert not at.exception, at.exception
        assert any("No search index yet" in i.value for i in at.info)
    finally:
        reset_settings_cache()
