"""Chunked metrics against brute-force references (full similarity matrix), ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score
from wherecnn.evaluate.metrics import (
    average_precision,
    balanced_pair_ap,
    evaluate_retrieval,
    localisation_error,
    pr_curve,
    recall_at_k,
    retrieval_metrics,
)
from wherecnn.similarity import pool_views, tile_scores


def brute_ranks(q: np.ndarray, g: np.ndarray, pos: np.ndarray) -> np.ndarray:
    s = q.astype(np.float64) @ g.astype(np.float64).T
    return (s > s[np.arange(len(q)), pos][:, None]).sum(1)


def quantised_world(seed: int, n_q: int, n_g: int, d: int, levels: int) -> tuple[np.ndarray, ...]:
    """Small-integer vectors scaled by a power of two: every dot product is exact, so ties are real ties."""
    rng = np.random.default_rng(seed)
    g = rng.integers(-levels, levels + 1, size=(n_g, d)).astype(np.float32) / 8
    if n_g > 3:
        g[1] = g[0]  # duplicate tiles
    pos = rng.integers(0, n_g, size=n_q)
    q = g[pos] + rng.integers(-1, 2, size=(n_q, d)).astype(np.float32) / 8
    return q.astype(np.float32), g, pos


world = st.tuples(
    st.integers(0, 10_000),
    st.integers(1, 12),
    st.integers(1, 40),
    st.integers(1, 5),
    st.integers(0, 2),
)


@settings(max_examples=40, deadline=None)
@given(world, st.integers(1, 7), st.integers(1, 64))
def test_ranks_and_recalls_match_brute_force(params: tuple, g_chunk: int, block: int) -> None:
    seed, n_q, n_g, d, levels = params
    q, g, pos = quantised_world(seed, n_q, n_g, d, levels)
    res = evaluate_retrieval(q, g, pos, gallery_chunk=g_chunk, block_elements=block, topk=3)
    ref = brute_ranks(q, g, pos)
    np.testing.assert_array_equal(res.ranks, ref)
    s = q.astype(np.float64) @ g.astype(np.float64).T
    np.testing.assert_array_equal(res.top1, s.argmax(1))  # first index among tied maxima
    np.testing.assert_allclose(np.sort(res.topk_scores, 1), np.sort(-np.sort(-s, 1)[:, :3], 1))
    exact_ap = average_precision_score(np.eye(n_g)[pos].ravel(), s.ravel())
    assert res.pair_ap == pytest.approx(exact_ap, abs=1e-9)
    assert retrieval_metrics(q, g, pos) == recall_at_k(ref, n_g)


@settings(max_examples=40, deadline=None)
@given(world, st.integers(1, 7))
def test_hit_rate_counts_semi_positives(params: tuple, g_chunk: int) -> None:
    seed, n_q, n_g, d, levels = params
    q, g, pos = quantised_world(seed, n_q, n_g, d, levels)
    rng = np.random.default_rng(seed + 1)
    semi = [rng.choice(n_g, size=rng.integers(0, min(3, n_g) + 1), replace=False) for _ in range(n_q)]
    res = evaluate_retrieval(q, g, pos, semi_positives=semi, gallery_chunk=g_chunk, pair_ap=False)
    s = q.astype(np.float64) @ g.astype(np.float64).T
    best = np.array([max([s[i, pos[i]], *(s[i, j] for j in semi[i])]) for i in range(n_q)])
    ref_hit = np.mean((s > best[:, None]).sum(1) == 0)
    assert res.hit_rate == pytest.approx(ref_hit)
    assert res.hit_rate >= res.recalls()["R@1"]


@settings(max_examples=40, deadline=None)
@given(world, st.integers(1, 4), st.integers(1, 9), st.integers(1, 64), st.integers(1, 3))
def test_multi_view_gallery_scores_each_item_by_its_best_views(
    params: tuple, views: int, g_chunk: int, block: int, pool: int
) -> None:
    seed, n_q, n_g, d, levels = params
    q, g, pos = quantised_world(seed, n_q, n_g * views, d, levels)
    g3 = g.reshape(n_g, views, d)
    pos = pos // views  # the item holding the view the query was drawn near
    res = evaluate_retrieval(
        q,
        g3,
        pos,
        semi_positives=[[]] * n_q,
        gallery_chunk=g_chunk,
        block_elements=block,
        topk=2,
        view_pool=pool,
    )
    per_view = (q.astype(np.float64) @ g.astype(np.float64).T).reshape(n_q, n_g, views)
    s = -np.sort(-per_view, axis=2)[:, :, :pool].mean(2)  # the mean of the `pool` best views
    np.testing.assert_array_equal(res.ranks, (s > s[np.arange(n_q), pos][:, None]).sum(1))
    np.testing.assert_array_equal(res.set_ranks, res.ranks)
    np.testing.assert_array_equal(res.top1, s.argmax(1))
    np.testing.assert_allclose(tile_scores(q, g3, pool), s, rtol=1e-6)
    exact_ap = average_precision_score(np.eye(n_g)[pos].ravel(), s.ravel())
    assert res.pair_ap == pytest.approx(exact_ap, abs=1e-9)
    if (
        n_g > 1 and pool == 1
    ):  # the 1:1 sample scores pairs by the best view too: a view doubled changes nothing
        best = g3[np.arange(n_g)[:, None], (q[:1] @ g.T).reshape(n_g, views).argmax(1)[:, None]][:, 0]
        doubled = np.stack([best, best], axis=1)
        assert balanced_pair_ap(q[:1], doubled, pos[:1])[0] == balanced_pair_ap(q[:1], best, pos[:1])[0]


def test_pooling_two_views_outranks_a_single_look_alike_view() -> None:
    scores = np.array([[[0.9, 0.88, 0.1], [0.95, 0.2, 0.1]]], dtype=np.float32)  # true tile, look-alike
    assert pool_views(scores).argmax() == 1  # the best view alone: the look-alike wins
    np.testing.assert_allclose(pool_views(scores, 2), [[0.89, 0.575]], rtol=1e-6)
    np.testing.assert_allclose(pool_views(scores, 9), scores.mean(2), rtol=1e-6)  # capped at the views held
    with pytest.raises(ValueError, match="view_pool"):
        pool_views(scores, 0)
    # pooling every view is scoring against the views' mean vector, balanced AP included
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(30, 5, 4)).astype(np.float32)
    pos = rng.integers(0, 30, size=20)
    pooled = evaluate_retrieval(q, g, pos, view_pool=5)
    mean = evaluate_retrieval(q, g.mean(1), pos)
    np.testing.assert_array_equal(pooled.ranks, mean.ranks)
    assert pooled.pair_ap == pytest.approx(mean.pair_ap, abs=1e-6)
    assert balanced_pair_ap(q, g, pos, view_pool=5)[0] == pytest.approx(
        balanced_pair_ap(q, g.mean(1), pos)[0]
    )


def test_recall_definitions() -> None:
    ranks = np.array([0, 1, 4, 5, 9, 10, 250])
    r = recall_at_k(ranks, n_gallery=500)
    assert r["R@1"] == pytest.approx(1 / 7)
    assert r["R@5"] == pytest.approx(3 / 7)
    assert r["R@10"] == pytest.approx(5 / 7)
    assert r["R@1%"] == pytest.approx(3 / 7)  # K = 500 // 100 = 5
    assert recall_at_k(ranks, n_gallery=50)["R@1%"] == pytest.approx(1 / 7)  # K = max(1, 0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=1, max_size=40))
def test_average_precision_matches_sklearn_with_ties(pairs: list) -> None:
    scores = np.array([p[0] for p in pairs], dtype=float) / 2
    labels = np.array([p[1] for p in pairs])
    if not labels.any():
        assert np.isnan(average_precision(scores, labels))
        return
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores))


def test_chunked_ap_equals_exact_on_float_scores() -> None:
    rng = np.random.default_rng(3)
    g = rng.normal(size=(300, 16)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    pos = rng.integers(0, 300, size=120)
    q = g[pos] + 0.8 * rng.normal(size=(120, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = evaluate_retrieval(q, g, pos, gallery_chunk=37, block_elements=500, bins=1 << 10)
    s = q @ g.T
    labels = np.zeros_like(s, dtype=bool)
    labels[np.arange(120), pos] = True
    exact = average_precision(s.ravel(), labels.ravel())
    assert res.pair_ap == pytest.approx(exact, abs=1e-6)
    assert 0.0 < exact < 1.0
    curve = res.pair_pr
    assert curve["recall"][-1] == pytest.approx(1.0)
    assert len(curve["recall"]) == len(curve["precision"]) <= 512
    full = pr_curve(s.ravel(), labels.ravel(), max_points=10**6)
    first_full_recall = full["recall"].index(1.0)
    assert curve["precision"][-1] == pytest.approx(full["precision"][first_full_recall])


def test_balanced_ap_is_one_when_positives_dominate() -> None:
    g = np.eye(8, dtype=np.float32)
    pos = np.arange(8)
    ap, curve = balanced_pair_ap(g, g, pos, seed=1)
    assert ap == pytest.approx(1.0)
    assert curve["recall"][-1] == pytest.approx(1.0)


def test_bad_inputs_are_named() -> None:
    g = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="positives"):
        retrieval_metrics(g, g, [0, 1, 2])
    with pytest.raises(ValueError, match="gallery"):
        retrieval_metrics(g, g[:, :3], [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        retrieval_metrics(g, g, [0, 1, 2, 9])


def test_localisation_error_shares() -> None:
    lat = np.full(4, 40.0)
    lon = np.full(4, -74.0)
    dlat = np.array([0, 20, 80, 5000]) / 111_000
    out = localisation_error(pred_lat=lat + dlat, pred_lon=lon, true_lat=lat, true_lon=lon)
    assert out["within_25m"] == pytest.approx(0.5)
    assert out["within_100m"] == pytest.approx(0.75)
    assert out["within_1000m"] == pytest.approx(0.75)
    assert 20 < out["median_m"] < 80
