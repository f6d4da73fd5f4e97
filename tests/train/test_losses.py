"""Losses: they rank matched pairs below mismatched ones, train the temperature, and gather correctly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from wherecnn.train.losses import (
    EmbeddingMemory,
    contrastive_loss,
    gather_with_grad,
    infonce_loss,
    infonce_with_memory,
    make_loss,
    soft_margin_triplet_loss,
    tile_codes,
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
        assert float(make_loss({"loss": {"name": name}})(g, a, m)) >= 0
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss({"loss": {"name": "hinge"}})


def test_gather_without_a_process_group_is_identity() -> None:
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


def test_memory_adds_negatives_and_never_a_rows_own_tile() -> None:
    g, a = _pair(n=8, noise=0.3)
    scale = torch.tensor(math.log(1 / 0.07))
    keys = tile_codes([frozenset([f"t{i}"]) for i in range(8)])
    # the batch itself in memory under its tile ids: row i gets every other row's copy as a second negative
    memory = EmbeddingMemory(16)
    memory.push(g, a, keys)
    logits = scale.exp() * g @ a.t()
    own = torch.eye(8, dtype=torch.bool)
    labels = torch.arange(8)
    expected = 0.5 * sum(
        F.cross_entropy(torch.cat([x, x.masked_fill(own, float("-inf"))], dim=1), labels)
        for x in (logits, logits.t())
    )
    assert float(infonce_with_memory(g, a, scale, memory, keys)) == pytest.approx(float(expected), rel=1e-5)
    # one entry, a copy of pair 0 under another tile: a near-duplicate of row 0's positive, a hard negative
    # for every row -- unless the rows share that tile (a semi-positive), when it is left out of all of them
    memory = EmbeddingMemory(16)
    memory.push(g[:1], a[:1], tile_codes([frozenset(["u"])]))
    shared = tile_codes([frozenset([f"t{i}", "u"]) for i in range(8)])
    for smoothing in (0.0, 0.1):
        plain = float(infonce_loss(g, a, scale, label_smoothing=smoothing))
        hard = infonce_with_memory(g, a, scale, memory, keys, label_smoothing=smoothing)
        left_out = infonce_with_memory(g, a, scale, memory, shared, label_smoothing=smoothing)
        assert float(hard) > plain + 0.05
        assert float(left_out) == pytest.approx(plain, rel=1e-5)


def test_memory_keeps_the_newest_entries_and_round_trips() -> None:
    memory = EmbeddingMemory(5)
    for step in range(3):
        x = torch.full((2, 4), float(step))
        memory.push(x, x + 10, tile_codes([frozenset([f"{step}a"]), frozenset([f"{step}b", f"{step}c"])]))
    assert len(memory) == 5 and memory.ground[:, 0].tolist() == [0, 1, 1, 2, 2]
    assert memory.keys.shape == (5, 2) and int(memory.keys[1, 1]) == -1  # padded to the widest
    again = EmbeddingMemory(5)
    again.load(memory.state(), torch.device("cpu"))
    assert torch.equal(again.aerial, memory.aerial) and torch.equal(again.keys, memory.keys)
    assert tile_codes([frozenset(["x"])])[0, 0] == tile_codes([frozenset(["x"])])[0, 0] >= 0
    with pytest.raises(ValueError, match="memory size"):
        EmbeddingMemory(0)
