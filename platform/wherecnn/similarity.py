"""How a query vector scores against gallery vectors: shared by evaluation and search (numpy only).

- ``tile_scores``/``pool_views``: a gallery item may hold several views (an (N, V, d) gallery: the tile seen
  from V centres, for queries taken anywhere inside it); it scores its best view, or the mean of its
  ``view_pool`` best;
- the hub correction (``HubCorrection``, ``hub_scores``, ``hub_corrected``): a gallery vector's score may be
  its dot product with the query minus a weight times its hubness (its mean similarity to its nearest other
  gallery items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def tile_scores(query: np.ndarray, rows: np.ndarray, view_pool: int = 1) -> np.ndarray:
    """Scores (Q, n) of queries (Q, d) against gallery rows: (n, d) dot products, or for multi-view rows
    (n, V, d) each item's views pooled by `pool_views`."""
    if rows.ndim == 2:
        return query @ rows.T
    n, v, d = rows.shape
    return pool_views((query @ rows.reshape(n * v, d).T).reshape(query.shape[0], n, v), view_pool)


def pool_views(scores: np.ndarray, view_pool: int = 1) -> np.ndarray:
    """An item's score from its views' scores (last axis): the mean of its ``view_pool`` best (1: the best).

    A camera between two view centres is seen about equally well by both; a generic tile that happens to
    have one look-alike view rarely has two, so pooling two views ranks the true tile up (`offset`)."""
    k = min(int(view_pool), scores.shape[-1])
    if k < 1:
        raise ValueError(f"view_pool must be >= 1, got {view_pool}")
    if k == 1:
        return scores.max(axis=-1)
    return np.partition(scores, -k, axis=-1)[..., -k:].mean(axis=-1, dtype=np.float32)


HUB_NEIGHBOURS = 200
HUB_REFERENCE = 50_000  # bigger galleries: each vector compared with a seeded sample of this many


@dataclass(frozen=True)
class HubCorrection:
    """Score each gallery vector minus ``weight`` times its hubness (`hub_scores`, ``neighbours``)."""

    weight: float = 0.0
    neighbours: int = HUB_NEIGHBOURS

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0 or self.neighbours < 1:
            raise ValueError(f"hub correction needs weight in [0, 1] and neighbours >= 1, got {self}")

    def __bool__(self) -> bool:
        return self.weight > 0

    @classmethod
    def from_config(cls, config: dict[str, Any], weight: float | None = None) -> HubCorrection:
        """A model config's ``hub_correction`` ({"weight", "neighbours"}; none: off); ``weight`` overrides."""
        spec = dict(config.get("hub_correction") or {})
        if weight is not None:
            spec["weight"] = weight
        return cls(float(spec.get("weight", 0.0)), int(spec.get("neighbours", HUB_NEIGHBOURS)))

    def as_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "neighbours": self.neighbours}


def hub_scores(
    gallery: np.ndarray, neighbours: int, *, reference: int = HUB_REFERENCE, seed: int = 0, chunk: int = 1024
) -> np.ndarray:
    """Each gallery vector's hubness: the mean of its ``neighbours`` highest dot products with the vectors of
    the gallery's *other* items (an (N, V, d) gallery: every view, its own item's views left out), shape (N,)
    or (N, V). Galleries of more than ``reference`` vectors are compared with a seeded sample of that many.

    In an unseen city the generic views (a roof, a block interior like a hundred others) sit in dense
    regions of the embedding space and come out on top for many queries: hubs. Cross-domain similarity
    local scaling (CSLS, Conneau et al. 2018) takes a gallery item's mean similarity to its nearest
    *queries* off its score; the gallery's own neighbourhood stands in for the queries here, so the
    correction needs nothing but the gallery the index holds.
    """
    g = np.asarray(gallery, dtype=np.float32)
    views = 1 if g.ndim == 2 else g.shape[1]
    flat = g.reshape(-1, g.shape[-1])
    item = np.repeat(np.arange(g.shape[0]), views)
    ref = np.arange(len(flat))
    if len(flat) > reference:
        ref = np.sort(np.random.default_rng(seed).choice(len(flat), size=reference, replace=False))
    out = np.zeros(len(flat), dtype=np.float32)
    k = min(int(neighbours), len(ref) - views)  # a row's own item leaves at least this many
    if k >= 1:
        ref_vectors, ref_item = flat[ref], item[ref]
        for a in range(0, len(flat), chunk):
            sims = flat[a : a + chunk] @ ref_vectors.T
            sims[item[a : a + chunk, None] == ref_item[None]] = -np.inf
            out[a : a + chunk] = np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
    return out.reshape(g.shape[:-1])


def hub_corrected(
    query: np.ndarray, gallery: np.ndarray, hub: HubCorrection
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, gallery) with one more coordinate each -- 1 for a query, ``-weight * hubness`` for a
    gallery vector (`hub_scores`) -- so that every dot product, and so every metric, is the score minus
    the weighted hubness. Unchanged when the correction is off."""
    q = np.asarray(query, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    if not hub:
        return q, g
    penalty = -np.float32(hub.weight) * hub_scores(g, hub.neighbours)
    return (
        np.concatenate([q, np.ones((len(q), 1), dtype=np.float32)], axis=1),
        np.concatenate([g, penalty[..., None]], axis=-1),
    )
