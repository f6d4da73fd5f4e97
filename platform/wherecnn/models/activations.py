"""What the network looks at: Grad-CAM of the ground↔aerial match score over both images.

For a matching pair the target is the similarity ``<g, a>`` of the two embeddings; its gradient with respect
to the last convolution of each branch weights that layer's channels (Grad-CAM, Selvaraju et al.), so the map
shows which parts of the panorama and of the tile make them match. The mean absolute activation of the same
layer ("strong activations", as in the Where-CNN paper) is returned beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class PairMaps:
    ground: np.ndarray  # the ground image as the model saw it (HxWx3 uint8, north-aligned canvas)
    aerial: np.ndarray  # the tile as the model saw it
    ground_cam: np.ndarray  # HxW in [0, 1]
    aerial_cam: np.ndarray
    ground_activation: np.ndarray  # HxW in [0, 1]
    aerial_activation: np.ndarray
    score: float


def _last_conv(fn: Any, model: Any, x: Any) -> Any:
    """The last Conv2d module with a 2-D output map that runs when ``fn(x)`` runs (the branch's deepest
    spatial layer; a head's per-bearing column conv, one row high, is no map to show)."""
    import torch

    order: list[torch.nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: order.append(mod) if min(out.shape[-2:]) > 1 else None)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            fn(x)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError(f"{type(model).__name__}: no Conv2d layer runs in this branch; Grad-CAM needs one")
    return order[-1]


def _normalise_map(m: Any, size: tuple[int, int], polar: bool = False) -> np.ndarray:
    import torch.nn.functional as F

    if polar:
        from wherecnn.models.backbones import tile_grid

        grid = tile_grid(size).to(m.device, m.dtype)
        up = F.grid_sample(m[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        up = up[0, 0]
    else:
        up = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    peak = float(up.max())
    return (up / peak).cpu().numpy() if peak > 0 else up.cpu().numpy()


def pair_maps(
    embedder: Any,
    ground: np.ndarray,
    aerial: np.ndarray,
    *,
    heading_deg: float | None = None,
    fov_deg: float | None = None,
) -> PairMaps:
    """Grad-CAM and activation maps for one (ground, aerial) pair of an `Embedder` (needs ``.model``)."""
    import torch

    from wherecnn.data.ground import resize
    from wherecnn.data.normalise import to_tensor
    from wherecnn.models.embedder import _rgb

    model = getattr(embedder, "model", None)
    if model is None:
        raise TypeError(f"{embedder!r} has no .model: activation maps need a learned TwoBranchModel")
    g_view = embedder.ground_input(ground, heading_deg, fov_deg)
    a_view = resize(_rgb(aerial), embedder.aerial_size)
    device = next(model.parameters()).device
    xg = to_tensor(g_view, embedder.mean, embedder.std)[None].to(device)
    xa = to_tensor(a_view, embedder.mean, embedder.std)[None].to(device)
    conv_g = _last_conv(model.embed_ground, model, xg)
    conv_a = _last_conv(model.embed_aerial, model, xa)

    store: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_m: Any, _i: Any, out: torch.Tensor) -> None:
            out.retain_grad()
            store[name] = out

        return hook

    with torch.enable_grad():
        xg.requires_grad_(True)
        xa.requires_grad_(True)
        h = conv_g.register_forward_hook(keep("g"))
        try:
            eg = model.embed_ground(xg)
        finally:
            h.remove()
        h = conv_a.register_forward_hook(keep("a"))
        try:
            ea = model.embed_aerial(xa)
        finally:
            h.remove()
        score = (eg * ea).sum()
        model.zero_grad(set_to_none=True)
        score.backward()

    def cam(name: str, size: tuple[int, int], polar: bool = False) -> tuple[np.ndarray, np.ndarray]:
        act = store[name].detach()[0]
        grad = store[name].grad
        weights = (
            grad[0].mean(dim=(1, 2)) if grad is not None else torch.ones(act.shape[0], device=act.device)
        )
        gradcam = torch.relu((weights[:, None, None] * act).sum(0))
        if float(gradcam.max()) <= 0:  # nothing pushes the score up: show where it is pulled down instead
            gradcam = torch.relu(-(weights[:, None, None] * act).sum(0))
        return _normalise_map(gradcam, size, polar), _normalise_map(act.abs().mean(0), size, polar)

    g_cam, g_act = cam("g", g_view.shape[:2])
    # a polar-transformed tile's maps are in (distance, bearing): drawn back onto the tile
    a_cam, a_act = cam("a", a_view.shape[:2], polar=bool(getattr(model, "polar", False)))
    return PairMaps(
        ground=g_view,
        aerial=a_view,
        ground_cam=g_cam,
        aerial_cam=a_cam,
        ground_activation=g_act,
        aerial_activation=a_act,
        score=float(score.detach()),
    )
