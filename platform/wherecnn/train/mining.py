"""Embedding a dataset (in-loop validation, mining) and Sample4Geo-style neighbour tables."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from wherecnn.data.datasets import PairDataset


@torch.inference_mode()
def embed_dataset(
    model: Any, dataset: PairDataset, device: torch.device, batch_size: int = 128, bf16: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(ground, aerial) embeddings of every pair in eval mode (train mode restored after): the ground view
    each sample shows this epoch (`PairDataset.query_views`: the photo cut for it, when the photo track cuts
    photos from panoramas), otherwise un-augmented. ``bf16``: under bf16 autocast (mining in mixed-precision
    training: ranking neighbours needs no more)."""
    inner = getattr(model, "module", model)
    was_training = inner.training
    inner.eval()
    gs, aes = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = dataset.batch(range(start, min(len(dataset), start + batch_size)), augment=False)
            g, a = batch["ground"].to(device), batch["aerial"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                gs.append(inner.embed_ground(g).float().cpu().numpy())
                aes.append(inner.embed_aerial(a).float().cpu().numpy())
    finally:
        inner.train(was_training)
    return np.concatenate(gs), np.concatenate(aes)


def neighbour_table(ground: np.ndarray, aerial: np.ndarray, k: int = 32) -> np.ndarray:
    """For each sample i, the k other samples whose tiles its ground view confuses most."""
    n = len(ground)
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, 1024):
        sim = ground[s : s + 1024] @ aerial.T
        rows = np.arange(sim.shape[0])
        sim[rows, rows + s] = -np.inf
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1)
        out[s : s + 1024] = np.take_along_axis(part, order, axis=1)
    return out


def carry_neighbours(table: np.ndarray, old: Sequence[Hashable], new: Sequence[Hashable]) -> np.ndarray:
    """A neighbour table mined on samples ``old`` (one key per row), re-indexed for the samples ``new``: each
    sample keeps its row and its neighbours their places; a neighbour no longer there becomes -1, and a new
    sample's row is all -1 (no mined neighbours until the next mining). A fresh pool drops its oldest places
    and adds new ones every epoch, so the table mined every few epochs can still group the batches between."""
    where = {key: i for i, key in enumerate(new)}
    moved = np.array([where.get(key, -1) for key in old] + [-1], dtype=np.int64)
    out = np.full((len(new), table.shape[1]), -1, dtype=np.int64)
    kept = moved[:-1] >= 0
    out[moved[:-1][kept]] = moved[table[kept]]  # -1 (gone before) indexes the trailing -1
    return out
