"""The three training losses. Inputs are L2-normalised embeddings; row i of ``ground`` matches row i of
``aerial``; every other row of the batch is a negative (the sampler guarantees no shared tiles).
"""

from __future__ import annotations

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
    ground: Tensor,
    aerial: Tensor,
    logit_scale: Tensor,
    *,
    label_smoothing: float = 0.0,
    turned: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy over the batch both ways at temperature exp(-logit_scale).

    ``turned`` ([n, turns, d]): each ground view at wrong headings (`turned_views`), extra negatives of the
    ground-to-tile direction against every tile of the batch, its own included."""
    scale = logit_scale.float().clamp(max=4.6052).exp()  # temperature >= 0.01, as CLIP clamps
    logits = scale * ground.float() @ aerial.float().t()
    labels = torch.arange(ground.shape[0], device=ground.device)
    to_tiles = logits
    if turned is not None:
        extra = scale * torch.einsum("ntd,md->nmt", turned.float(), aerial.float()).flatten(1)
        to_tiles = torch.cat([logits, extra], dim=1)
    return 0.5 * (
        F.cross_entropy(to_tiles, labels, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.t(), labels, label_smoothing=label_smoothing)
    )


def turned_views(ground: Tensor, columns: int) -> Tensor:
    """[n, d] embeddings of one part per bearing column (``d / columns`` values each, columns last) ->
    [n, columns - 1, d]: each turned by 1 .. columns - 1 whole columns (a roll of the parts: what turning the
    canvas does; `TwoBranchModel.turn_ground_vectors`)."""
    parts = ground.reshape(ground.shape[0], -1, columns)
    return torch.stack([torch.roll(parts, r, dims=-1).flatten(1) for r in range(1, columns)], dim=1)


def make_loss(config: dict[str, Any], *, turned_negatives: bool = False) -> Any:
    """``fn(ground, aerial, model) -> loss`` for a model config's ``loss`` section; ``turned_negatives`` (the
    recipe's, on the track trained): infonce with each ground view's wrong headings as negatives too."""
    spec = config["loss"]
    name = spec["name"]
    if turned_negatives and name != "infonce":
        raise ValueError(f"{config.get('name')!r}: turned_negatives needs the infonce loss, not {name!r}")
    if name == "contrastive":
        margin, k = float(spec["margin"]), int(spec["negatives_per_positive"])
        return lambda g, a, model: contrastive_loss(g, a, margin=margin, negatives_per_positive=k)
    if name == "triplet":
        alpha = float(spec["alpha"])
        return lambda g, a, model: soft_margin_triplet_loss(g, a, alpha=alpha)
    if name == "infonce":
        smoothing = float(spec["label_smoothing"])
        if not turned_negatives:
            return lambda g, a, model: infonce_loss(g, a, _logit_scale(model), label_smoothing=smoothing)

        def with_turns(g: Tensor, a: Tensor, model: nn.Module) -> Tensor:
            columns = getattr(model, "module", model).embedding_columns
            if not columns:
                raise ValueError(
                    f"{config.get('name')!r}: turned_negatives needs a model with bearing columns"
                )
            turned = turned_views(g, columns)
            return infonce_loss(g, a, _logit_scale(model), label_smoothing=smoothing, turned=turned)

        return with_turns
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
