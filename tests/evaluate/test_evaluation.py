"""Multi-centre galleries: each tile re-cut from its raster around a grid of centres over its grid cell."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from wherecnn.evaluate.evaluation import (
    centre_shifts,
    city_sets,
    embed_gallery,
    embed_gallery_views,
    parse_scales,
)


class MeanColour:
    """A stand-in embedder: a tile's normalised mean colour per 2x2 quadrant (position-sensitive)."""

    model_id = "mean-colour"

    def aerial(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for im in images:
            h, w = im.shape[0] // 2, im.shape[1] // 2
            quads = [im[:h, :w], im[:h, w:], im[h:, :w], im[h:, w:]]
            v = np.concatenate([q.reshape(-1, 3).mean(0) for q in quads]) + 1.0
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)

    def ground(self, images: Sequence[np.ndarray], **_: object) -> np.ndarray:
        return self.aerial(images)


def test_centre_shifts_span_one_grid_step() -> None:
    gallery = pd.DataFrame({"kind": ["grid"] * 3 + ["centred"], "col_off": [0, 100, 200, 37]})
    shifts = centre_shifts(gallery, 5)
    assert len(shifts) == 25 and sorted({c for c, _ in shifts}) == [-40, -20, 0, 20, 40]
    assert {r for _, r in shifts} == {c for c, _ in shifts} and centre_shifts(gallery, 1) == [(0, 0)]


def test_gallery_views_are_the_tiles_seen_from_other_centres(tiny_world: Path) -> None:
    cs = city_sets(tiny_world, protocol="same-area", track="offset")[0]
    gallery = cs.gallery.iloc[:12].reset_index(drop=True)
    views = embed_gallery_views(MeanColour(), gallery, 3)
    assert views.shape == (12, 9, 12)
    plain = embed_gallery(MeanColour(), list(gallery["uri"]))
    centre = views[:, 4]  # shift (0, 0): the tile itself, re-cut (resampling and JPEG differ slightly)
    assert np.abs(centre - plain).max() < 0.01
    assert np.abs(views[:, 0] - plain).max() > 5 * np.abs(centre - plain).max()  # a corner view moved


def test_gallery_views_at_other_ground_scales_follow_the_tiles_own(tiny_world: Path) -> None:
    """Scale-major views: the first K² as at the tile's own scale; a smaller scale shows the centre's
    ground magnified (the same as cutting that smaller window around the same centre)."""
    cs = city_sets(tiny_world, protocol="same-area", track="offset")[0]
    gallery = cs.gallery.iloc[:6].reset_index(drop=True)
    own = embed_gallery_views(MeanColour(), gallery, 3)
    both = embed_gallery_views(MeanColour(), gallery, 3, scales=(1.0, 0.5))
    assert both.shape == (6, 18, 12) and np.array_equal(both[:, :9], own)
    half = gallery.assign(
        col_off=gallery["col_off"] + gallery["width"] // 4,
        row_off=gallery["row_off"] + gallery["height"] // 4,
        width=gallery["width"] // 2,
        height=gallery["height"] // 2,
    )
    assert centre_shifts(half, 3) == centre_shifts(gallery, 3)  # the same centres, on the same grid
    assert np.array_equal(both[:, 9:], embed_gallery_views(MeanColour(), half, 3))
    assert np.abs(both[:, 13] - own[:, 4]).max() > 0.01  # the centre view magnified
    with pytest.raises(ValueError, match="positive"):
        embed_gallery_views(MeanColour(), gallery, 3, scales=(1.0, 0.0))
    # the flags' form (`wherecnn evaluate` and benchmarks/accuracy.py --gallery-scales)
    assert parse_scales("1, 0.85,") == (1.0, 0.85)
    for bad in ("1,a", "0.85,-1", ""):
        with pytest.raises(ValueError, match="positive"):
            parse_scales(bad)


def test_tiles_without_raster_windows_fall_back_to_one_view(fake_world: Path) -> None:
    from wherecnn.evaluate.evaluation import evaluate_embedder

    sets = city_sets(fake_world, protocol="same-area", track="offset")
    with pytest.warns(UserWarning, match="no raster windows"):
        run = evaluate_embedder(
            MeanColour(), sets, name="m", protocol="same-area", track="offset", gallery_centres=5
        )
    assert run.cities[0].gallery_emb.ndim == 2 and run.gallery_centres == 1


def test_a_models_card_sets_its_gallery_centres_and_view_pool(tiny_world: Path) -> None:
    from wherecnn.evaluate.evaluation import evaluate_embedder
    from wherecnn.evaluate.metrics import retrieval_metrics
    from wherecnn.models.schema import Offset

    class Carded(MeanColour):  # a model card's config holds every offset setting (models.schema)
        card = {"config": {"offset": Offset(gallery_centres=3, view_pool=9).model_dump()}}

    class TwoScales(MeanColour):
        offset = Offset(gallery_centres=3, gallery_scales=[1.0, 0.8], view_pool=2)
        card = {"config": {"offset": offset.model_dump()}}

    sets = city_sets(tiny_world, protocol="same-area", track="offset", max_gallery=10, max_queries=4)[:1]
    run = evaluate_embedder(Carded(), sets, name="m", protocol="same-area", track="offset")
    assert run.gallery_centres == 3 and run.cities[0].gallery_emb.shape[1] == 9
    assert run.to_json()["gallery_centres"] == 3 and run.to_json()["view_pool"] == 9
    # every view pooled: a tile scores as the mean of its views, i.e. against their mean vector
    city = run.cities[0]
    mean_views = retrieval_metrics(city.query_emb, city.gallery_emb.mean(1), sets[0].positives)
    assert city.metrics["R@1"] == mean_views["R@1"] and city.metrics["R@5"] == mean_views["R@5"]
    best = evaluate_embedder(Carded(), sets, name="m", protocol="same-area", track="offset", view_pool=1)
    assert best.view_pool == 1
    plain = evaluate_embedder(MeanColour(), sets, name="m", protocol="same-area", track="offset")
    assert plain.gallery_centres == 1 and plain.view_pool == 1 and plain.cities[0].gallery_emb.ndim == 2
    scaled = evaluate_embedder(TwoScales(), sets, name="m", protocol="same-area", track="offset")
    assert scaled.gallery_scales == (1.0, 0.8) and scaled.cities[0].gallery_emb.shape[1] == 18
    assert scaled.to_json()["gallery_scales"] == [1.0, 0.8]
    one = evaluate_embedder(
        TwoScales(), sets, name="m", protocol="same-area", track="offset", gallery_scales=[1]
    )
    assert one.gallery_scales == (1.0,) and one.cities[0].gallery_emb.shape[1] == 9


def test_a_models_card_sets_its_hub_correction(fake_world: Path) -> None:
    from wherecnn.evaluate.evaluation import evaluate_embedder
    from wherecnn.evaluate.metrics import retrieval_metrics
    from wherecnn.similarity import hub_scores

    class Carded(MeanColour):
        card = {"config": {"hub_correction": {"weight": 0.5, "neighbours": 3}}}

    sets = city_sets(fake_world, protocol="same-area", track="aligned")
    kw = dict(name="m", protocol="same-area", track="aligned")
    plain = evaluate_embedder(MeanColour(), sets, **kw)
    hub = evaluate_embedder(Carded(), sets, **kw)
    off = evaluate_embedder(Carded(), sets, hub_correction=0, **kw)
    assert not plain.hub and not off.hub and (hub.hub.weight, hub.hub.neighbours) == (0.5, 3)
    assert hub.to_json()["hub_correction"] == {"weight": 0.5, "neighbours": 3}
    for cs, p, h in zip(sets, plain.cities, hub.cities, strict=True):
        g = p.gallery_emb
        # each tile scores its plain score minus half its hubness among the city's tiles
        np.testing.assert_allclose(
            h.query_emb @ h.gallery_emb.T, p.query_emb @ g.T - 0.5 * hub_scores(g, 3)[None], atol=1e-5
        )
        assert h.metrics["R@1"] == retrieval_metrics(h.query_emb, h.gallery_emb, cs.positives)["R@1"]
