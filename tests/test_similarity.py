"""The hub correction: hubness is the mean similarity to the nearest other items; it demotes generic views."""

from __future__ import annotations

import numpy as np
import pytest
from wherecnn.similarity import HubCorrection, hub_corrected, hub_scores


def test_hub_scores_are_the_mean_of_the_nearest_other_items() -> None:
    rng = np.random.default_rng(5)
    g = rng.normal(size=(7, 3, 4)).astype(np.float32)
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    got = hub_scores(g, 4)
    assert got.shape == (7, 3)
    flat = g.reshape(-1, 4)
    for n in range(7):
        for v in range(3):
            others = np.delete(flat, range(3 * n, 3 * n + 3), axis=0) @ g[n, v]  # its own item's views out
            assert got[n, v] == pytest.approx(np.sort(others)[-4:].mean(), abs=1e-5)
    assert hub_scores(g[:, 0], 2).shape == (7,)
    assert hub_scores(g, 4, reference=10).shape == (7, 3)  # compared with a sample of the gallery
    assert not hub_scores(g[:1], 4).any()  # one item: no others, no correction


def test_hub_correction_demotes_the_gallerys_generic_views() -> None:
    def unit(*v: float) -> np.ndarray:
        return (np.asarray(v) / np.linalg.norm(v)).astype(np.float32)

    # two particular tiles and three generic ones close together around the x axis
    g = np.stack([unit(0.6, 0.8, 0), unit(0.6, -0.8, 0), unit(1, 0, 0), unit(1, 0, 0.2), unit(1, 0, -0.2)])
    q = unit(0.95, 0.3, 0)[None]  # taken at tile 0, but nearer the generic views than tile 0
    assert int(np.argmax(q @ g.T)) == 2  # a hub wins on plain scores
    hub = HubCorrection(weight=0.5, neighbours=2)
    qc, gc = hub_corrected(q, g, hub)
    assert qc.shape == (1, 4) and gc.shape == (5, 4)
    np.testing.assert_allclose(qc @ gc.T, q @ g.T - 0.5 * hub_scores(g, 2)[None], atol=1e-6)
    assert int(np.argmax(qc @ gc.T)) == 0
    # multi-view galleries get the coordinate per view; off returns the inputs as they are
    _, views = hub_corrected(q, np.stack([g, g[::-1]], axis=1), hub)
    assert views.shape == (5, 2, 4)
    same_q, same_g = hub_corrected(q, g, HubCorrection())
    assert np.array_equal(same_q, q) and np.array_equal(same_g, g)


def test_hub_correction_from_a_model_config() -> None:
    assert not HubCorrection.from_config({})
    hub = HubCorrection.from_config({"hub_correction": {"weight": 0.5, "neighbours": 50}})
    assert (hub.weight, hub.neighbours) == (0.5, 50) and hub.as_dict() == {"weight": 0.5, "neighbours": 50}
    assert HubCorrection.from_config({"hub_correction": {"weight": 0.5}}, weight=0.0).weight == 0.0
    assert HubCorrection.from_config({}, weight=0.25) == HubCorrection(0.25)
    with pytest.raises(ValueError, match="weight in"):
        HubCorrection(weight=1.5)
