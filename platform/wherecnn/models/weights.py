"""Pretrained initialisation without downloads: a local weights file, or a torchvision enum already cached.

Machines here have no internet, so a torchvision weight enum is only honoured when torch hub's cache already
holds its file; anything else is a clear error naming what to provide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def load_weights_file(path: str) -> dict[str, Any]:
    """A state dict from a local file (plain state dict, or a dict holding ``state_dict``/``model``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} does not exist (expected a torch state dict .pt/.pth)")
    obj = torch.load(file, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"weights file {file}: expected a state dict, got {type(obj).__name__}")
    # checkpoints saved from DataParallel/DDP prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def cached_enum_weights(builder_name: str, enum_name: str) -> dict[str, Any]:
    """The state dict of a torchvision weight enum, only if torch hub's cache already holds it."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(builder_name)[enum_name]
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise FileNotFoundError(
            f"torchvision weights {builder_name}:{enum_name} are not cached at {cached} and downloads are "
            f"disabled; copy the file there or pass a local file with weights=PATH"
        )
    return weights.get_state_dict(progress=False, check_hash=False)


def init_from(module: nn.Module, state: dict[str, Any], prefix: str = "") -> int:
    """Copy matching tensors (by name and shape) into ``module``; returns how many were loaded."""
    own = module.state_dict()
    picked = {}
    for key, value in state.items():
        if prefix and not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in own and own[name].shape == value.shape:
            picked[name] = value
    if not picked:
        raise ValueError(f"no tensor in the weights matched the model (prefix {prefix!r}); wrong file?")
    module.load_state_dict(picked, strict=False)
    return len(picked)


def pretrained_state(config: dict[str, Any], builder_name: str) -> dict[str, Any] | None:
    """Weights requested by a config (``weights`` path wins over ``weights_enum``), or None (random)."""
    if config.get("weights"):
        return load_weights_file(str(config["weights"]))
    if config.get("weights_enum"):
        return cached_enum_weights(builder_name, str(config["weights_enum"]))
    return None
