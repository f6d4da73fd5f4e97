"""The three training losses. Inputs are L2-normalised embeddings; row i of ``ground`` matches row i of
``aerial``; every other row of the batch is a negative (the sampler guarantees no shared tiles).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def contrastive_loss(
    ground: Tensor, aerial: Tensor, *, margin: float = 0.5, negatives_per_positive: int = 4
) -> Tensor:
    """Hadsell et al. 2006, as Where-CNN trains: pull positive pairs together (d^2), push negatives beyond the
    margin (max(0, m - d)^2). Negatives are mined in the batch: for each ground view, the ``k`` closest wrong
    tiles (and symmetrically for each tile), the ones that still violate the margin.
    """
    n = ground.shape[0]
    dist = torch.cdist(ground.float(), aerial.float()).clamp_min(1e-9)
    pos = dist.diagonal().pow(2).mean()
    if n < 2:
        return pos
    k = max(1, min(negatives_per_positive, n - 1))
    off = dist + torch.eye(n, device=dist.device, dtype=dist.dtype) * 1e4  # mask the positives
    hard_rows = off.topk(k, dim=1, largest=False).values
    hard_cols = off.topk(k, dim=0, largest=False).values
    neg = 0.5 * (F.relu(margin - hard_rows).pow(2).mean() + F.relu(margin - hard_cols).pow(2).mean())
    return 0.5 * (pos + neg)


def soft_margin_triplet_loss(ground: Tensor, aerial: Tensor, *, alpha: float = 10.0) -> Tensor:
    """Weighted soft-margin triplet (CVM-Net/SAFA): log(1 + exp(alpha (d_neg - d_pos)))... over all in-batch
    negatives, both directions; no margin to tune."""
    n = ground.shape[0]
    sim = ground.float() @ aerial.float().t()
    dist = 2.0 - 2.0 * sim  # squared euclidean for unit vectors
    if n < 2:
        return dist.diagonal().mean() * 0
    pos = dist.diagonal()
    mask = ~torch.eye(n, dtype=torch.bool, device=dist.device)
    g2a = F.softplus(alpha * (pos[:, None] - dist))[mask].mean()
    a2g = F.softplus(alpha * (pos[None, :] - dist))[mask].mean()
    return 0.5 * (g2a + a2g)


def infonce_loss(
    ground: Tensor, aerial: Tensor, logit_scale: Tensor, *, label_smoothing: float = 0.0
) -> Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy over the batch both ways at temperature exp(-logit_scale)."""
    scale = logit_scale.float().clamp(max=4.6052).exp()  # temperature >= 0.01, as CLIP clamps
    logits = scale * ground.float() @ aerial.float().t()
    labels = torch.arange(ground.shape[0], device=ground.device)
    return 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.t(), labels, label_smoothing=label_smoothing)
    )


def infonce_with_memory(
    ground: Tensor,
    aerial: Tensor,
    logit_scale: Tensor,
    memory: EmbeddingMemory,
    keys: Tensor,
    *,
    label_smoothing: float = 0.0,
) -> Tensor:
    """`infonce_loss` with the memory's earlier embeddings as extra negatives both ways: each ground view
    against the batch's tiles and the memory's, each tile against the batch's views and the memory's. A
    memory entry sharing a tile with a row (``keys``: the rows' tile ids, -1 padded) is left out of that
    row; label smoothing spreads over the columns a row keeps, as over a larger batch."""
    scale = logit_scale.float().clamp(max=4.6052).exp()
    g, a = ground.float(), aerial.float()
    same = memory.overlaps(keys)  # [B, M]
    labels = torch.arange(g.shape[0], device=g.device)

    def direction(x: Tensor, batch_side: Tensor, memory_side: Tensor) -> Tensor:
        logits = scale * torch.cat([x @ batch_side.t(), x @ memory_side.t()], dim=1)
        keep = torch.cat([torch.ones_like(logits[:, : x.shape[0]], dtype=torch.bool), ~same], dim=1)
        logp = logits.masked_fill(~keep, float("-inf")).log_softmax(dim=1)
        nll = -logp.gather(1, labels[:, None]).squeeze(1)
        uniform = -logp.masked_fill(~keep, 0.0).sum(dim=1) / keep.sum(dim=1)
        return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()

    return 0.5 * (direction(g, a, memory.aerial) + direction(a, g, memory.ground))


def tile_codes(keys: Sequence[Iterable[str]]) -> Tensor:
    """[N, w] int64: each sample's tile ids (`PairDataset.tile_keys`) as stable 63-bit hashes, -1 padded, so
    memory entries from an earlier pool or a resumed run compare with the current batch's."""
    codes = [
        sorted(int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big") >> 1 for t in k)
        for k in keys
    ]
    out = torch.full((len(codes), max([1, *map(len, codes)])), -1, dtype=torch.long)
    for i, c in enumerate(codes):
        out[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    return out


class EmbeddingMemory:
    """Cross-batch memory (XBM, Wang et al. CVPR 2020): the last ``size`` training pairs' embeddings,
    detached, kept as extra negatives for the InfoNCE loss, with each pair's tile ids so a tile is never its
    own negative. Embeddings drift slowly once training settles, so a few thousand recent ones stand in for
    a batch that large at the cost of a matrix product."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"memory size {size} < 1")
        self.size = int(size)
        self.ground = torch.zeros(0)
        self.aerial = torch.zeros(0)
        self.keys = torch.zeros(0, 1, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def push(self, ground: Tensor, aerial: Tensor, keys: Tensor) -> None:
        """Add a batch (newest last), dropping the oldest beyond ``size``."""
        g, a = ground.detach().float(), aerial.detach().float()
        if len(self) == 0:
            self.ground, self.aerial = g[:0], a[:0]
        width = max(self.keys.shape[1], keys.shape[1])
        old, new = (F.pad(k, (0, width - k.shape[1]), value=-1) for k in (self.keys.to(keys), keys))
        self.ground = torch.cat([self.ground, g])[-self.size :]
        self.aerial = torch.cat([self.aerial, a])[-self.size :]
        self.keys = torch.cat([old, new])[-self.size :]

    def overlaps(self, keys: Tensor) -> Tensor:
        """[B, M]: row b shares a tile id with entry m (ids >= 0; -1 pads)."""
        hit = (keys[:, None, :, None] == self.keys[None, :, None, :]) & (keys[:, None, :, None] >= 0)
        return hit.flatten(2).any(dim=2)

    def state(self) -> dict[str, Any]:
        return {"ground": self.ground.cpu(), "aerial": self.aerial.cpu(), "keys": self.keys.cpu()}

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.ground = state["ground"].to(device)
        self.aerial = state["aerial"].to(device)
        self.keys = state["keys"].to(device)


def make_loss(config: dict[str, Any]) -> Any:
    """``fn(ground, aerial, model) -> loss`` for a model config's ``loss`` section."""
    spec = dict(config.get("loss") or {"name": "infonce"})
    name = spec.get("name", "infonce")
    if name == "contrastive":
        margin, k = float(spec.get("margin", 0.5)), int(spec.get("negatives_per_positive", 4))
        return lambda g, a, model: contrastive_loss(g, a, margin=margin, negatives_per_positive=k)
    if name == "triplet":
        alpha = float(spec.get("alpha", 10.0))
        return lambda g, a, model: soft_margin_triplet_loss(g, a, alpha=alpha)
    if name == "infonce":
        smoothing = float(spec.get("label_smoothing", 0.0))

        def infonce(
            g: Tensor, a: Tensor, model: nn.Module, memory: EmbeddingMemory | None = None, keys: Any = None
        ) -> Tensor:
            if memory is not None and len(memory):
                return infonce_with_memory(g, a, _logit_scale(model), memory, keys, label_smoothing=smoothing)
            return infonce_loss(g, a, _logit_scale(model), label_smoothing=smoothing)

        return infonce
    raise ValueError(
        f"model config {config.get('name')!r}: unknown loss {name!r} (contrastive|triplet|infonce)"
    )


def _logit_scale(model: nn.Module) -> Tensor:
    inner = getattr(model, "module", model)  # DDP wraps the model
    return inner.logit_scale


def gather_with_grad(x: Tensor) -> Tensor:
    """All workers' embeddings concatenated, gradients flowing back to each worker's own rows.

    torch.distributed.nn's all_gather sums the gradients of every worker's copy of the loss in its backward;
    with DDP averaging parameter gradients over workers, the result is exactly the gradient of the loss on
    the global batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)
