"""Baselines: descriptors, the closed-form CCA, and the Embedder-like interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wherecnn.evaluate.baselines import KINDS, BaselineEmbedder, CrossViewCCA, fit_baseline
from wherecnn.evaluate.metrics import retrieval_metrics


def test_cca_aligns_two_linear_views_of_one_latent() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 8))
    ground = z @ rng.normal(size=(8, 40)) + 0.05 * rng.normal(size=(400, 40))
    aerial = z @ rng.normal(size=(8, 30)) + 0.05 * rng.normal(size=(400, 30))
    cca = CrossViewCCA(dim=8).fit(ground[:300], aerial[:300])
    g = cca.transform(ground[300:].astype(np.float32), "ground")
    a = cca.transform(aerial[300:].astype(np.float32), "aerial")
    assert g.shape == a.shape == (100, 8)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, rtol=1e-5)
    assert retrieval_metrics(g, a, np.arange(100))["R@1"] > 0.9  # chance is 0.01
    assert cca.correlations[0] > 0.9


def test_cca_rejects_unpaired_or_tiny_input() -> None:
    with pytest.raises(ValueError, match="paired"):
        CrossViewCCA().fit(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 3"):
        CrossViewCCA().fit(np.zeros((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("kind", KINDS)
def test_every_baseline_fits_and_embeds_like_an_embedder(kind: str) -> None:
    rng = np.random.default_rng(1)
    panos = [rng.integers(0, 255, (40, 160, 3), dtype=np.uint8) for _ in range(12)]
    tiles = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(12)]
    emb = BaselineEmbedder(kind, dim=6).fit(panos, tiles, heading_deg=[0.0] * 12, fov_deg=[360.0] * 12)
    a = emb.aerial(tiles[:3])
    g = emb.ground(panos[:2], heading_deg=[0.0, None], fov_deg=[360.0, 360.0])
    assert a.shape == (3, emb.embed_dim) and g.shape == (2, emb.embed_dim)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, rtol=1e-5)
    assert emb.model_id.startswith(f"baseline-{kind}")
    assert emb.aerial([]).shape == (0, emb.embed_dim)
    if kind == "deep-generic":
        assert "random-init" in emb.model_id  # no weights file given: says so


def test_unknown_baseline_is_named() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'sift'"):
        BaselineEmbedder("sift")


def test_fit_baseline_on_training_pairs(fake_world: Path) -> None:
    emb = fit_baseline("color-hist", fake_world, protocol="same-area", track="aligned", dim=4)
    assert emb.fitted_pairs == 8  # 4 train places in each of 2 cities
    assert emb.card["projection"] == "regularised CCA"
