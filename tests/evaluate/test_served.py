"""The anywhere protocol through the product: an index built by `run_index`, queries through the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from wherecnn.evaluate.served import ServedRun, answer_queries, anywhere_queries, grid_tiles, served_metrics
from wherecnn.retrieval.settings import RetrievalSettings

SMALL = RetrievalSettings(candidates=3, refine_centres=3, refine_keep=1, refine_local=3)


@pytest.fixture(scope="module")
def served(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from wherecnn.evaluate.served import index_grid
    from wherecnn.index.store import open_store
    from wherecnn.models.embedder import Embedder

    root = tmp_path_factory.mktemp("served")
    store = f"edge://{root}/index"
    index_grid(tiny_world, "untrained:dual-cpu", store, run_dir=root / "run", retrieval=SMALL)
    vs = open_store(store, read_only=True)
    try:
        yield {"store": vs, "tiles": grid_tiles(tiny_world), "embedder": Embedder.untrained("dual-cpu")}
    finally:
        vs.close()


def test_the_gallery_is_grid_tiles_and_queries_are_held_out(tiny_world: Path) -> None:
    tiles = grid_tiles(tiny_world)
    assert set(tiles["kind"]) == {"grid"} and tiles["uri"].map(lambda u: Path(u).is_absolute()).all()
    q = anywhere_queries(tiny_world, protocol="cross-area", per_city=3)
    caps = pd.read_parquet(tiny_world / "captures.parquet")
    held = caps.set_index("capture_id").loc[q["capture_id"]]
    assert (held["split_cross_area"] == "test").all() and (held["kind"] == "panorama").all()
    assert q.groupby("city").size().max() <= 3


def test_served_answers_are_refined_positions_and_match_the_exact_reference(
    tiny_world: Path, served: dict[str, Any]
) -> None:
    from wherecnn.search.engine import SearchEngine

    queries = anywhere_queries(tiny_world, protocol="cross-area", per_city=2)
    engine = SearchEngine(served["store"], served["embedder"])
    assert engine.retrieval == SMALL  # the settings the index version recorded
    outcomes = answer_queries(engine, queries, served["tiles"])
    reference = answer_queries(
        SearchEngine(served["store"], served["embedder"], exact=True), queries, served["tiles"]
    )
    assert (outcomes["position_source"] == "refined").all()
    # a few hundred points: the HNSW search is exact here, so the served answers are the reference's
    assert np.allclose(outcomes[["lat", "lon"]], reference[["lat", "lon"]])
    run = ServedRun("cross-area", True, outcomes, retrieval=SMALL.as_dict()).to_json()
    assert run["through_store"] is True and set(run["cities"]) == set(queries["city"])
    for key in ("hit@1", "hit@10", "within_5m", "within_10m", "within_25m", "within_50m"):
        assert 0.0 <= run["overall"][key] <= 1.0
    assert run["overall"]["median_error_m"] >= 0.0
    assert run["overall"]["queries"] == len(queries)


def test_city_unknown_searches_every_city_and_scores_the_guess(
    tiny_world: Path, served: dict[str, Any]
) -> None:
    from wherecnn.search.engine import SearchEngine

    queries = anywhere_queries(tiny_world, protocol="cross-area", per_city=1)
    outcomes = answer_queries(
        SearchEngine(served["store"], served["embedder"]), queries, served["tiles"], city_given=False
    )
    metrics = served_metrics(outcomes, city_given=False)
    assert metrics["city_right"] == float(np.mean(outcomes["best_city"] == outcomes["city"]))


def test_served_metrics_count_hits_and_errors() -> None:
    outcomes = pd.DataFrame(
        {
            "hit_rank": [1.0, 3.0, float("inf"), 1.0],
            "error_m": [4.0, 12.0, 300.0, 30.0],
            "city_right": [True, True, False, True],
            "search_ms": [10.0, 20.0, 30.0, 40.0],
        }
    )
    m = served_metrics(outcomes, city_given=False)
    assert (m["hit@1"], m["hit@10"], m["city_right"]) == (0.5, 0.75, 0.75)
    assert (m["within_5m"], m["within_10m"], m["within_25m"], m["within_50m"]) == (0.25, 0.25, 0.5, 0.75)
    assert m["median_error_m"] == 21.0


def test_the_http_api_answers_as_the_engine_does(tiny_world: Path, served: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient
    from wherecnn.config import get_settings
    from wherecnn.search.api import create_app
    from wherecnn.search.engine import SearchEngine

    engine = SearchEngine(served["store"], served["embedder"])
    client = TestClient(create_app(get_settings(api_key=None), engine=engine))
    for q in anywhere_queries(tiny_world, protocol="cross-area", per_city=2).itertuples():
        direct = engine.search(q.uri, cities=[q.city], k=5, heading_deg=q.heading_deg, fov_deg=q.fov_deg)
        with open(q.uri, "rb") as fh:
            body = client.post(
                "/v1/search",
                files={"image": ("q.jpg", fh.read(), "image/jpeg")},
                data={"city": q.city, "k": "5", "heading_deg": str(q.heading_deg), "fov_deg": str(q.fov_deg)},
            ).json()
        assert body["best"]["position_source"] == direct.best.position_source == "refined"
        assert (body["best"]["lat"], body["best"]["lon"]) == pytest.approx((direct.best.lat, direct.best.lon))
        rows = [(r["tile_id"], r["position_source"]) for r in body["results"]]
        assert rows == [(r["tile_id"], r["position_source"]) for r in direct.records()]


def test_a_turned_panorama_faces_where_it_says(tmp_path: Path) -> None:
    """The unknown-heading protocol turns each panorama to a random yaw; the bearing it reports is the one
    the model's canvas needs to see the original view again."""
    from PIL import Image
    from wherecnn.data.ground import ground_view
    from wherecnn.evaluate.served import turned_panorama

    pano = np.random.default_rng(0).integers(0, 255, (64, 256, 3), dtype=np.uint8)
    path = tmp_path / "pano.png"
    Image.fromarray(pano).save(path)
    for yaw in (0.0, 37.0, 200.0, 359.0):
        turned, heading = turned_panorama(str(path), 10.0, yaw)
        assert heading == pytest.approx((10.0 + round(yaw / 360 * 256) * 360 / 256) % 360)
        same = ground_view(turned, (64, 256), heading_deg=heading, fov_deg=360.0)
        assert np.array_equal(same, ground_view(pano, (64, 256), heading_deg=10.0, fov_deg=360.0)), yaw


def test_a_photo_cut_from_a_panorama_faces_where_it_says(tmp_path: Path) -> None:
    """The 60-degree protocol cuts photos from the panoramas: the photo's centre shows the panorama's column
    in the direction it was cut, and the bearing it reports adds that direction to the panorama's."""
    from PIL import Image
    from wherecnn.evaluate.served import photo_from_panorama

    pano = np.zeros((64, 256, 3), dtype=np.uint8)
    pano[..., 0] = np.arange(256, dtype=np.uint8)[None, :]  # red = the column
    path = tmp_path / "pano.png"
    Image.fromarray(pano).save(path)
    for direction in (100.0, 200.0, 300.0):  # away from the seam, where red jumps from 255 to 0
        photo, bearing = photo_from_panorama(str(path), 10.0, direction, 60.0, size=64)
        assert photo.shape == (64, 64, 3) and bearing == pytest.approx((10.0 + direction) % 360)
        centre = float(photo[32, 31:33, 0].mean())
        expected = direction / 360 * 256
        assert abs(centre - expected) <= 2.0, direction
        # 60 degrees wide: the left edge is 30 degrees (about 21 columns) left of the centre, not 45
        assert abs(expected - float(photo[32, 0, 0]) - 30 / 360 * 256) <= 3.0, direction
