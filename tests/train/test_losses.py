"""Losses: they rank matched pairs below mismatched ones, train the temperature, and gather correctly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from wherecnn.models import load_config, merge
from wherecnn.train.losses import (
    contrastive_loss,
    gather_with_grad,
    infonce_loss,
    make_loss,
    soft_margin_triplet_loss,
    turned_views,
)


def _pair(n: int = 16, d: int = 32, noise: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1)
    y = F.normalize(x + noise * torch.randn(n, d, generator=g), dim=1)
    return x, y


@pytest.mark.parametrize(
    "fn",
    [
        lambda g, a: contrastive_loss(g, a, margin=0.5),
        lambda g, a: soft_margin_triplet_loss(g, a),
        lambda g, a: infonce_loss(g, a, torch.tensor(math.log(1 / 0.05))),
    ],
    ids=["contrastive", "triplet", "infonce"],
)
def test_matched_pairs_score_lower_than_shuffled(fn) -> None:  # noqa: ANN001
    g, a = _pair()
    assert float(fn(g, a)) < 0.5 * float(fn(g, a.roll(1, dims=0)))


def test_contrastive_is_zero_when_positives_coincide_and_negatives_are_far() -> None:
    e = torch.eye(8)  # orthogonal: distance sqrt(2) > margin
    assert float(contrastive_loss(e, e, margin=1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(contrastive_loss(e, e, margin=2.0)) > 0  # now negatives violate the margin


def test_infonce_is_symmetric_and_trains_the_temperature() -> None:
    g, a = _pair(noise=0.3)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = infonce_loss(g, a, scale)
    assert float(loss.detach()) == pytest.approx(float(infonce_loss(a, g, scale).detach()), rel=1e-5)
    loss.backward()
    assert scale.grad is not None and float(scale.grad) != 0.0


def test_label_smoothing_keeps_loss_above_zero() -> None:
    e = torch.eye(8)
    scale = torch.tensor(math.log(100.0))
    assert float(infonce_loss(e, e, scale)) < 1e-3
    assert float(infonce_loss(e, e, scale, label_smoothing=0.1)) > 0.1


def test_make_loss_reads_the_config() -> None:
    g, a = _pair()

    class M(torch.nn.Module):
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))

    m = M()
    for name in ("contrastive", "triplet", "infonce"):
        config = merge(load_config("dual-cpu"), {"loss": {"name": name}})
        assert float(make_loss(config)(g, a, m)) >= 0
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss({"loss": {"name": "hinge"}})


def test_turned_views_roll_the_bearing_parts_as_turning_the_canvas_does() -> None:
    from wherecnn.models.base import TwoBranchModel

    g, _ = _pair(n=3, d=32)
    turned = turned_views(g, columns=8)
    assert turned.shape == (3, 7, 32)
    parts = g.reshape(3, 4, 8)
    assert torch.equal(turned[:, 0].reshape(3, 4, 8)[..., 1:], parts[..., :-1])  # one column further
    assert torch.allclose(turned.norm(dim=-1), torch.ones(3, 7))

    class OneView:  # turn_ground_vectors on the first (unmirrored) test-time view: the same roll
        embedding_columns = 8

        def test_views(self) -> list[tuple[bool, int]]:
            return [(False, 0)]

    by_model = TwoBranchModel.turn_ground_vectors(OneView(), g.numpy(), 2)  # type: ignore[arg-type]
    assert torch.allclose(turned[:, 1], torch.from_numpy(by_model))


def test_turned_negatives_make_a_wrong_heading_of_the_right_tile_a_negative() -> None:
    """A ground view that matches its tile at every heading (all columns alike) is not told apart by the plain
    loss, and is by the turned one; a view that matches at one heading only loses almost nothing."""
    scale = torch.tensor(math.log(20.0))
    n, columns, values = 8, 8, 4
    gen = torch.Generator().manual_seed(0)
    alike = F.normalize(
        torch.randn(n, values, 1, generator=gen).expand(n, values, columns).reshape(n, -1), dim=1
    )
    plain, turned = (
        infonce_loss(alike, alike, scale),
        infonce_loss(alike, alike, scale, turned=turned_views(alike, columns)),
    )
    assert float(turned) > float(plain) + 0.5
    # one heading: each bearing's part different, so turning the view moves it away from its tile
    distinct = F.normalize(torch.randn(n, values * columns, generator=gen), dim=1)
    sharp = torch.tensor(math.log(100.0))
    assert float(infonce_loss(distinct, distinct, sharp, turned=turned_views(distinct, columns))) < 0.05
    # the recipe switch: a model with bearing columns, else refused
    config = load_config("dual-cpu")

    class M(torch.nn.Module):
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))
        embedding_columns: int | None = columns

    loss = make_loss(config, turned_negatives=True)(alike, alike, M())
    smoothing = config["loss"]["label_smoothing"]
    expected = infonce_loss(
        alike, alike, scale, label_smoothing=smoothing, turned=turned_views(alike, columns)
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="needs the infonce loss"):
        make_loss(merge(config, {"loss": {"name": "triplet"}}), turned_negatives=True)
    M.embedding_columns = None
    with pytest.raises(ValueError, match="bearing columns"):
        make_loss(config, turned_negatives=True)(alike, alike, M())


def test_gather_without_a_process_group_is_identity() -> None:
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x
