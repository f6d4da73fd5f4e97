"""The retrieval path: coarse store ranking (with the hub correction), then the fine stage in metres."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from wherecnn.geo import distance_m
from wherecnn.index.store import Hit
from wherecnn.index.tiles import tile_payload
from wherecnn.retrieval.headings import Headings
from wherecnn.retrieval.path import POSITION_REFINED, POSITION_TILE_CENTRE, Candidate, Retriever
from wherecnn.retrieval.settings import RetrievalSettings
from wherecnn.retrieval.views import TileWindow, cut_views, pixel_latlon
from wherecnn.storage import load_image

from .conftest import pixel_vectors


class ListStore:
    """Exact cosine search over a list of points: what `Retriever` asks of a vector store."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.payloads = [tile_payload(r, "pixel") for r in rows.to_dict("records")]
        self.vectors = pixel_vectors([load_image(str(u)) for u in rows["uri"]])
        self.calls: list[dict[str, Any]] = []

    def query(self, vector: np.ndarray, k: int = 10, *, cities: Any = None, **kw: Any) -> list[Hit]:
        self.calls.append({"k": k, "cities": cities, **kw})
        keep = [i for i, p in enumerate(self.payloads) if not cities or p["city"] in cities]
        scores = self.vectors[keep] @ vector
        order = np.argsort(-scores)[:k]
        return [
            Hit(self.payloads[keep[i]]["tile_id"], float(scores[i]), self.payloads[keep[i]]) for i in order
        ]


@pytest.fixture(scope="module")
def store(grid: pd.DataFrame) -> ListStore:
    return ListStore(grid)


def _middle(grid: pd.DataFrame) -> dict[str, Any]:
    """A tile in the middle of its city's grid: every view of its cell lies inside the raster."""
    city = grid[grid["city"] == grid["city"].iloc[0]]
    mid = city[
        (city["grid_row"] == city["grid_row"].max() // 2) & (city["grid_col"] == city["grid_col"].max() // 2)
    ]
    return mid.iloc[0].to_dict()


def _view(row: dict[str, Any], shift: tuple[int, int]) -> np.ndarray:
    window = TileWindow.from_row(row)
    assert window is not None
    return cut_views([window], [[shift]])[0][0]


def _candidates(store: ListStore, query: np.ndarray, row: dict[str, Any], n: int) -> list[Candidate]:
    """The true tile and the coarse stage's other best ones (a shifted view need not rank its tile first)."""
    cands = Retriever(store, pixel_vectors).coarse(query, [row["city"]], 50)[row["city"]]
    true = (
        next(c for c in cands if c.tile_id == row["tile_id"])
        if any(c.tile_id == row["tile_id"] for c in cands)
        else None
    )
    others = [c for c in cands if c.tile_id != row["tile_id"]][: n - 1]
    if true is None:
        lat, lon = row["lat"], row["lon"]
        true = Candidate(row["city"], row["tile_id"], 0.0, lat, lon, tile_payload(row, "pixel"))
    return [true, *others]


def test_the_fine_stage_finds_the_view_centred_on_the_camera(grid: pd.DataFrame, store: ListStore) -> None:
    row = _middle(grid)
    window = TileWindow.from_row(row)
    assert window is not None
    shift = (40, -20)  # on the first level's 5 x 5 lattice over the 100-pixel cell
    query = pixel_vectors([_view(row, shift)])[0]
    settings = RetrievalSettings(candidates=4, refine_centres=5, refine_keep=1, refine_local=1, view_pool=1)
    cands = _candidates(store, query, row, 4)
    Retriever(store, pixel_vectors, settings).refine(query, cands)
    top = max(cands, key=lambda c: c.score)
    assert top.tile_id == row["tile_id"] and top.position_source == POSITION_REFINED
    assert top.score == pytest.approx(1.0, abs=1e-5) and len(top.view_scores) == 25
    assert all(c.score < 0.99 for c in cands if c is not top)
    lat, lon = pixel_latlon(window.source_uri, *(np.array([v]) for v in window.centre(shift)))
    assert float(distance_m(lat1=top.lat, lon1=top.lon, lat2=lat[0], lon2=lon[0])) < 0.01


def test_the_second_level_places_the_camera_between_first_level_centres(
    grid: pd.DataFrame, store: ListStore
) -> None:
    row = _middle(grid)
    window = TileWindow.from_row(row)
    assert window is not None
    shift = (33, -13)  # a second-level centre around the first level's (40, -20): spacing 20 / 3 pixels
    query = pixel_vectors([_view(row, shift)])[0]
    truth = pixel_latlon(window.source_uri, *(np.array([v]) for v in window.centre(shift)))

    def error(settings: RetrievalSettings) -> float:
        cands = _candidates(store, query, row, 3)
        Retriever(store, pixel_vectors, settings).refine(query, cands)
        top = max(cands, key=lambda c: c.score)
        assert top.tile_id == row["tile_id"]
        return float(distance_m(lat1=top.lat, lon1=top.lon, lat2=truth[0][0], lon2=truth[1][0]))

    one = RetrievalSettings(candidates=3, refine_centres=5, refine_keep=1, refine_local=1, view_pool=1)
    two = RetrievalSettings(candidates=3, refine_centres=5, refine_keep=1, refine_local=3, view_pool=1)
    assert error(two) < 0.01 < error(one)


def test_refined_answers_rank_ahead_of_tile_centres(grid: pd.DataFrame, store: ListStore) -> None:
    row = _middle(grid)
    query = pixel_vectors([load_image(str(row["uri"]))])[0]
    settings = RetrievalSettings(candidates=3, refine_centres=3, refine_keep=1, refine_local=1, view_pool=1)
    per_city = Retriever(store, pixel_vectors, settings).retrieve(query, [row["city"]], 6)
    sources = [c.position_source for c in per_city[row["city"]]]
    assert sources == [POSITION_REFINED] * 3 + [POSITION_TILE_CENTRE] * 3
    top = per_city[row["city"]][0]
    assert top.tile_id == row["tile_id"] and top.score > 0.999  # the (0, 0) view, the tile as cut


def test_without_the_fine_stage_answers_are_tile_centres_by_coarse_score(
    grid: pd.DataFrame, store: ListStore
) -> None:
    row = grid.iloc[3].to_dict()
    query = pixel_vectors([load_image(str(row["uri"]))])[0]
    per_city = Retriever(store, pixel_vectors, RetrievalSettings(candidates=0)).retrieve(
        query, [row["city"]], 3
    )
    top = per_city[row["city"]][0]
    assert (top.tile_id, top.position_source) == (row["tile_id"], POSITION_TILE_CENTRE)
    assert (top.lat, top.lon) == (row["lat"], row["lon"]) and top.score == pytest.approx(1.0, abs=1e-5)
    assert [c.score for c in per_city[row["city"]]] == sorted(
        (c.score for c in per_city[row["city"]]), reverse=True
    )


def test_the_hub_correction_reranks_a_wider_pool(grid: pd.DataFrame, store: ListStore) -> None:
    row = grid.iloc[3].to_dict()
    query = pixel_vectors([load_image(str(row["uri"]))])[0]
    hubness = {t: (1.0 if t == row["tile_id"] else 0.0) for t in grid["tile_id"]}
    retriever = Retriever(store, pixel_vectors, RetrievalSettings(candidates=0), hub_weight=1.0)
    cands = retriever.retrieve(query, [row["city"]], 3, hubness=lambda city: hubness)[row["city"]]
    assert cands[0].tile_id != row["tile_id"]  # its score less its hubness (1.0) no longer wins
    assert store.calls[-1]["k"] >= 200


def test_settings_refuse_unknown_keys_and_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="refine_centers"):
        RetrievalSettings.from_dict({"refine_centers": 3})
    with pytest.raises(ValueError, match="refine_keep"):
        RetrievalSettings(candidates=2, refine_keep=3)
    recorded = RetrievalSettings(candidates=4).as_dict()
    assert RetrievalSettings.from_dict(recorded, candidates=None).candidates == 4
    assert RetrievalSettings.from_dict(recorded, candidates=0).refines is False


def test_an_unknown_heading_is_estimated_with_the_position(grid: pd.DataFrame, store: ListStore) -> None:
    """The query's view is turned a quarter: only the 90-degree hypothesis sees the tile as stored."""
    row = _middle(grid)
    turned = np.ascontiguousarray(np.rot90(_view(row, (0, 0)), k=-1))
    settings = RetrievalSettings(
        candidates=4, refine_centres=3, refine_keep=1, refine_local=1, heading_step_deg=90, coarse_headings=4
    )
    plan = Headings.plan(settings, None)
    vectors = pixel_vectors([np.ascontiguousarray(np.rot90(turned, k=int(d // 90))) for d in plan.degrees])
    retriever = Retriever(store, pixel_vectors, settings)
    before = len(store.calls)
    top = retriever.retrieve(vectors, [row["city"]], 5, headings=plan)[row["city"]][0]
    assert len(store.calls) - before == 4  # one store query per coarse heading
    assert (top.tile_id, top.heading_deg, top.position_source) == (row["tile_id"], 90.0, POSITION_REFINED)
    assert len(top.heading_scores) == 4 and int(np.argmax(top.heading_scores)) == 1
    # at heading 0 alone the tile scores lower
    alone = retriever.retrieve(vectors[:1], [row["city"]], 5)[row["city"]][0]
    assert alone.heading_deg is None and alone.score < top.score


def test_the_retriever_refuses_vectors_that_do_not_match_the_headings(
    grid: pd.DataFrame, store: ListStore
) -> None:
    plan = Headings.plan(RetrievalSettings(), None)
    with pytest.raises(ValueError, match="headings"):
        Retriever(store, pixel_vectors).retrieve(np.ones((2, 3), np.float32), ["x"], 5, headings=plan)
