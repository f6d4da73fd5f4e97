"""SearchEngine on a small seeded index: ranking, pushed-down filters, inputs, confidence, heat map."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from wherecnn.retrieval.settings import RetrievalSettings
from wherecnn.search import (
    BadParameterError,
    GeoPrior,
    ImageTooLargeError,
    NotAnImageError,
    SearchEngine,
    UnknownCityError,
)

if TYPE_CHECKING:
    from .conftest import TinyIndex


def test_ranked_per_city_with_true_tile_first(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    target = tiny_index.tile("alpha-g0203")
    result = engine.search(
        tiny_index.png(target["image"]), k=5, true_lat=target["lat"], true_lon=target["lon"]
    )
    ranked = result.ranked
    assert set(ranked["city"]) == set(tiny_index.city_centres)
    for _, group in ranked.groupby("city"):
        assert list(group["rank"]) == [1, 2, 3, 4, 5]
        assert list(group["score"]) == sorted(group["score"], reverse=True)
    top = ranked[(ranked.city == "alpha") & (ranked["rank"] == 1)].iloc[0]
    assert top.tile_id == "alpha-g0203"
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert top.distance_m == pytest.approx(0.0, abs=0.5)
    assert top.uri == target["uri"]
    assert top.geometry.x == pytest.approx(target["lon"]) and top.geometry.y == pytest.approx(target["lat"])
    assert ranked.crs.to_epsg() == 4326
    assert result.best is not None and result.best.tile_id == "alpha-g0203" and result.best.city == "alpha"
    assert set(result.timings) >= {"decode_ms", "embed_ms", "query_ms", "total_ms"}


def test_confidence_follows_the_margin(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    exact = engine.search(tiny_index.tile("beta-g0101")["image"], k=3).best
    noise = np.random.default_rng(7).integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    vague = engine.search(noise, k=3).best
    assert exact is not None and vague is not None
    assert 0.0 <= vague.confidence < exact.confidence <= 1.0
    assert exact.margin > vague.margin


def test_city_restriction_and_unknown_city(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    img = tiny_index.tile("alpha-g0000")["image"]
    result = engine.search(img, cities=["beta"], k=4)
    assert set(result.ranked["city"]) == {"beta"} and len(result.ranked) == 4
    assert result.best is not None and result.best.city == "beta"
    with pytest.raises(UnknownCityError, match="gamma"):
        engine.search(img, cities=["gamma"])


def test_radius_prior_is_honoured(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    centre = tiny_index.tile("alpha-g0303")
    prior = GeoPrior.circle(lat=centre["lat"], lon=centre["lon"], radius_m=60.0)
    far = tiny_index.tile("alpha-g0000")  # > 60 m away: must not be returned even though it matches exactly
    result = engine.search(far["image"], k=20, prior=prior)
    assert len(result.ranked) == 5  # the centre and its 4 neighbours at 50 m
    assert "alpha-g0000" not in set(result.ranked["tile_id"])
    assert all(prior.contains(lat=r.lat, lon=r.lon) for r in result.ranked.itertuples())
    assert set(result.ranked["city"]) == {"alpha"}


def test_bbox_and_polygon_priors_are_honoured(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    a, b = tiny_index.tile("beta-g0101"), tiny_index.tile("beta-g0202")
    pad = 1e-5
    bbox = GeoPrior.box(
        min_lat=a["lat"] - pad, min_lon=a["lon"] - pad, max_lat=b["lat"] + pad, max_lon=b["lon"] + pad
    )
    got = engine.search(a["image"], k=10, prior=bbox)
    assert set(got.ranked["tile_id"]) == {"beta-g0101", "beta-g0102", "beta-g0201", "beta-g0202"}
    tri = GeoPrior.polygon(
        [(a["lat"] - pad, a["lon"] - pad), (b["lat"] + pad, a["lon"] - pad), (a["lat"] - pad, b["lon"] + pad)]
    )
    got = engine.search(a["image"], k=10, prior=tri)
    assert "beta-g0101" in set(got.ranked["tile_id"])
    assert "beta-g0202" not in set(got.ranked["tile_id"])
    assert all(tri.contains(lat=r.lat, lon=r.lon) for r in got.ranked.itertuples())


def test_inputs_bytes_path_array_and_exif(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    from PIL import Image

    t = tiny_index.tile("alpha-g0405")
    for query in (t["uri"], tiny_index.png(t["image"]), t["image"], Image.fromarray(t["image"])):
        assert engine.search(query, cities="alpha", k=1).ranked.iloc[0].tile_id == "alpha-g0405"
    # A JPEG stored rotated with EXIF orientation 6 ("rotate 90° CW to view") must be turned upright first.
    stored = np.rot90(t["image"], k=1)  # what a phone writes: pixels rotated, orientation tag set
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif)
    assert engine.search(buf.getvalue(), cities="alpha", k=1).ranked.iloc[0].tile_id == "alpha-g0405"


def test_rejects_non_images_and_huge_images(
    engine: SearchEngine, tiny_index: TinyIndex, tmp_path: Path
) -> None:
    with pytest.raises(NotAnImageError, match="image"):
        engine.search(b"%PDF-1.4 definitely not a picture")
    with pytest.raises(NotAnImageError):
        engine.search(b"")
    with pytest.raises(NotAnImageError, match="shape"):
        engine.search(np.zeros((4, 4, 7), dtype=np.uint8))
    big = tiny_index.png(np.zeros((1100, 1000, 3), dtype=np.uint8))  # 1.1 MP > the engine's 1 MP limit
    with pytest.raises(ImageTooLargeError, match="1,100,000"):
        engine.search(big)
    with pytest.raises(Exception, match="no such file"):
        engine.search(str(tmp_path / "missing.jpg"))


@pytest.mark.parametrize("k", [0, -1, 1001, 2.5, "3", True])
def test_bad_k(engine: SearchEngine, tiny_index: TinyIndex, k: object) -> None:
    with pytest.raises(BadParameterError, match="k"):
        engine.search(tiny_index.pattern(1), k=k)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lat", "lon", "radius"),
    [
        (91.0, 0.0, 10.0),
        (0.0, 181.0, 10.0),
        (0.0, 0.0, 0.0),
        (0.0, 0.0, -5.0),
        (0.0, 0.0, float("nan")),
        (0.0, 0.0, 2e6),
    ],
)
def test_bad_prior(lat: float, lon: float, radius: float) -> None:
    with pytest.raises(BadParameterError):
        GeoPrior.circle(lat=lat, lon=lon, radius_m=radius)


def test_panorama_or_photo_by_aspect(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    emb = tiny_index.embedder
    engine.search(np.zeros((32, 128, 3), dtype=np.uint8), k=1)
    assert set(emb.calls[-1]["fov_deg"]) == {360.0}
    engine.search(np.zeros((64, 64, 3), dtype=np.uint8), k=1, heading_deg=30.0)
    # the given heading and the window around it (the default +/- 30 degrees, every 15)
    assert set(emb.calls[-1]["fov_deg"]) == {90.0} and emb.calls[-1]["heading_deg"] == [0, 15, 30, 45, 60]
    engine.search(np.zeros((64, 64, 3), dtype=np.uint8), k=1, fov_deg=60.0)
    assert set(emb.calls[-1]["fov_deg"]) == {60.0}


def test_every_answer_says_how_its_heading_was_found(tiny_index: TinyIndex) -> None:
    t = tiny_index.tile("alpha-g0202")
    for settings, heading, source, tried in (
        (RetrievalSettings(), None, "estimated", 24),
        (RetrievalSettings(), 100.0, "refined", 5),
        (RetrievalSettings(heading_window_deg=0), 100.0, "given", 1),
    ):
        engine = SearchEngine(tiny_index.store, tiny_index.embedder, retrieval=settings)
        result = engine.search(t["image"], k=3, heading_deg=heading)
        best = result.best
        assert best is not None and best.heading_source == source, settings
        assert len(tiny_index.embedder.calls[-1]["heading_deg"]) == tried
        assert best.heading_deg is not None and 0.0 <= best.heading_deg < 360.0
        if heading is not None:  # within the window
            assert abs((best.heading_deg - heading + 180.0) % 360.0 - 180.0) <= settings.heading_window_deg
        as_json = best.as_dict()
        assert {"heading_deg", "heading_source", "heading_confidence"} <= set(as_json)
        assert result.records()[0]["heading_deg"] is not None
        assert result.query["heading_source"] == source


def test_city_info_and_tile_payload(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    infos = {c.name: c for c in engine.city_info()}
    assert (
        set(infos) == set(tiny_index.city_centres)
        and infos["alpha"].tiles == tiny_index.grid * tiny_index.grid
    )
    lat0, lon0 = tiny_index.city_centres["alpha"]
    b = infos["alpha"].bounds
    assert b is not None and b.min_lat < lat0 < b.max_lat and b.min_lon < lon0 < b.max_lon
    payload = engine.tile_payload("beta-g0000")
    assert payload is not None and payload["uri"] == tiny_index.tile("beta-g0000")["uri"]
    assert engine.tile_payload("does-not-exist") is None


def test_hub_correction_scores_as_evaluation_does(tiny_index: TinyIndex) -> None:
    """A hub correction (the retrieval setting's weight, the model config's neighbours): every tile scores its
    cosine with the query minus the weight times its hubness among its city's tiles, in the ranking and the
    heat map alike. Off by default, whatever the model config says."""
    from wherecnn.similarity import hub_scores

    from .conftest import PixelEmbedder

    embedder = PixelEmbedder()
    embedder.card = {"name": "pixel-test", "config": {"hub_correction": {"weight": 0.9, "neighbours": 5}}}
    assert not SearchEngine(tiny_index.store, embedder).hub
    settings = RetrievalSettings(hub_weight=0.5)
    engine = SearchEngine(tiny_index.store, embedder, max_pixels=1_000_000, retrieval=settings)
    assert engine.hub.as_dict() == {"weight": 0.5, "neighbours": 5}
    image = tiny_index.pattern(99)  # no tile's own image: scores spread
    vector = embedder.ground([image])[0]
    for city in tiny_index.city_centres:
        ids, vectors, _ = engine.city_vectors(city)
        expected = vectors @ vector - 0.5 * hub_scores(vectors, 5)
        ranked = engine.search(image, cities=[city], k=5).ranked
        assert list(ranked["tile_id"]) == [ids[i] for i in np.argsort(-expected)[:5]]
        np.testing.assert_allclose(ranked["score"], np.sort(expected)[::-1][:5], atol=1e-4)
        assert np.nanmax(engine.heatmap(image, city).scores) == pytest.approx(expected.max(), abs=1e-4)


def test_the_engine_refuses_a_checkpoint_the_index_was_not_built_with(tiny_index: TinyIndex) -> None:
    from wherecnn.index.store import TilePoint, open_store
    from wherecnn.retrieval.settings import RetrievalSettings
    from wherecnn.search import SearchEngine
    from wherecnn.search.errors import IndexMismatchError

    embedder = tiny_index.embedder
    store = open_store(":memory:")
    try:
        store.begin_version("built-elsewhere", dim=embedder.embed_dim)
        recorded = RetrievalSettings(candidates=2, refine_keep=1)
        store.describe(
            {"model_id": "another-model", "dim": embedder.embed_dim, "retrieval": recorded.as_dict()}
        )
        t = tiny_index.tiles[0]
        store.upsert([TilePoint(t["tile_id"], embedder.aerial([t["image"]])[0], {"city": t["city"]})])
        store.switch()
        with pytest.raises(IndexMismatchError, match="another-model"):
            SearchEngine(store, embedder)
        store.describe(
            {"model_id": embedder.model_id, "dim": embedder.embed_dim, "retrieval": recorded.as_dict()},
            store.live_version(),
        )
        assert SearchEngine(store, embedder).retrieval == recorded  # the settings the version recorded
    finally:
        store.close()


@pytest.mark.parametrize(("size", "fmt"), [((5000, 1200), "JPEG"), ((3000, 3000), "PNG")])
def test_a_large_upload_is_decoded_no_larger_than_the_query_side(size: tuple[int, int], fmt: str) -> None:
    """What one request may hold in pixels is bounded whatever the upload (a panorama stays a panorama)."""
    from PIL import Image
    from wherecnn.search.query import QUERY_MAX_SIDE, decode_query, infer_fov

    w, h = size
    image = np.kron(
        np.random.default_rng(1).integers(0, 255, (h // 100, w // 100, 3), dtype=np.uint8),
        np.ones((100, 100, 1), np.uint8),
    )
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    out = decode_query(buf.getvalue(), max_pixels=40_000_000)
    assert max(out.shape[:2]) == QUERY_MAX_SIDE and out.shape[2] == 3
    assert abs(out.shape[1] / out.shape[0] - w / h) < 0.01
    assert infer_fov(out, None) == (360.0 if w / h >= 2 else 90.0)
