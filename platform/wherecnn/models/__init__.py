"""Model registry: name -> config (JSON data under ``models/configs/``) -> `TwoBranchModel`.

``build_model("dual-cpu", embed_dim=64)`` merges overrides into the config (nested dicts merge key by key), so
every experiment is a config plus overrides and a checkpoint can rebuild its model from the stored config.

What a config may hold, what each setting means and its default are in `models.schema` (the architecture by
family, the loss, the ``train`` recipe, the ``offset`` and ``photo`` track sections, test-time views, the hub
correction); every config, override and stored checkpoint config is checked against it, and a config file
sets only what differs from its defaults. `resolve_config` says where each setting came from (what
``wherecnn config show`` prints).
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from typing import Any

from wherecnn.models.base import TwoBranchModel
from wherecnn.models.schema import TRACK_SECTIONS, validate_config

__all__ = [
    "TwoBranchModel",
    "build_model",
    "check_overrides",
    "config_digest",
    "list_models",
    "load_config",
    "model_from_config",
    "recipe_on_track",
    "resolve_config",
    "shadowed_overrides",
    "track_config",
]

SCHEMA = "default (models.schema)"  # where a setting no config file or override sets comes from


def list_models() -> list[str]:
    """Names of every registered model (one JSON config each)."""
    files = resources.files("wherecnn.models").joinpath("configs")
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def registered_config(name: str) -> dict[str, Any]:
    """A registered model's config file as written (the settings it sets itself)."""
    names = list_models()
    if name not in names:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(names)}")
    text = resources.files("wherecnn.models").joinpath("configs", f"{name}.json").read_text()
    return json.loads(text)


def load_config(name: str) -> dict[str, Any]:
    """A registered model's config, checked and with every default filled in (`models.schema`)."""
    return validate_config(registered_config(name))


def config_digest(config: dict[str, Any]) -> str:
    """A short digest of what a config trains and builds: ``config`` checked and with its defaults filled
    (`models.schema`), its prose ``description`` left out. A checkpoint's stored config has the digest of the
    config it was trained with (``resolve_config(name, track, overrides)``), whenever it was written."""
    settings = {k: v for k, v in validate_config(config).items() if k != "description"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts merge key by key, anything else replaces; a dotted key is a path
    (``{"train.lr": 0.01}`` is ``{"train": {"lr": 0.01}}``)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if "." in key:
            key, rest = key.split(".", 1)
            value = {rest: value}
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, dict):
            out[key] = merge({}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_overrides(name: str, overrides: dict[str, Any]) -> None:
    """ValueError naming each override key model ``name``'s config cannot hold (a misspelt
    ``train.augment_scal`` would otherwise change nothing, silently) or whose value it refuses."""
    validate_config(merge(registered_config(name), overrides))


def build_model(name: str, track: str | None = None, **overrides: Any) -> TwoBranchModel:
    """Build a registered model; keyword overrides are merged into its config. An override the config
    cannot hold is an error (`check_overrides`). With ``track``, that track section's ``model`` settings are
    merged in too (`track_config`)."""
    return model_from_config(resolve_config(name, track, overrides)[0])


def track_config(
    config: dict[str, Any], track: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``config`` with its ``track`` section's ``model`` settings merged in (e.g. `dual-cpu`'s photo track:
    finer bearing columns); ``overrides`` given explicitly still win over them."""
    section = dict(config[track]["model"]) if track in TRACK_SECTIONS else {}
    return validate_config(merge(merge(config, section), overrides or {}))


def resolve_config(
    name: str, track: str | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The config a model of ``name`` trained on ``track`` gets (`build_model`'s), and where each setting
    came from, by dotted key: the registered config file, its track section's ``model`` settings, an
    override, or the schema's default."""
    written = registered_config(name)
    base = validate_config(merge(written, overrides or {}))
    section = dict(base[track]["model"]) if track in TRACK_SECTIONS else {}
    config = track_config(base, track, overrides) if track else base
    origin = f"configs/{name}.json"
    sources = dict.fromkeys(flatten(written), origin)
    sources.update(dict.fromkeys(flatten(section), f"{origin} {track}.model"))
    sources.update(dict.fromkeys(flatten(merge({}, overrides or {})), "override"))
    return config, {key: sources.get(key, SCHEMA) for key in flatten(config)}


def recipe_on_track(config: dict[str, Any], track: str) -> tuple[dict[str, Any], dict[str, str]]:
    """What training reads on ``track``: the ``train`` section with the track section's keys over it (e.g.
    `dual-cpu`'s ``lr``, zoom and fresh places on offset and photo), and which section each came from."""
    train = dict(config["train"])
    section = {k: v for k, v in config[track].items() if k != "model"} if track in TRACK_SECTIONS else {}
    recipe = train | section
    return recipe, {k: (track if k in section else "train") for k in recipe}


def shadowed_overrides(name: str, track: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``train.*`` overrides that change nothing on ``track`` because its own section sets the same key
    (e.g. ``train.lr`` on `dual-cpu`'s offset track, whose ``offset.lr`` wins), with the value that wins."""
    recipe, sections = recipe_on_track(validate_config(merge(registered_config(name), overrides)), track)
    wanted = dict(merge({}, overrides).get("train") or {})
    return {key: recipe[key] for key in wanted if sections.get(key) == track}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def model_from_config(config: dict[str, Any]) -> TwoBranchModel:
    """Rebuild a model from a full config (as stored in a checkpoint; checked, and any setting it predates
    gets its default)."""
    config = validate_config(config)
    family = config["family"]
    if family == "compact":
        from wherecnn.models.compact import CompactTwoBranch

        return CompactTwoBranch(config)
    if family == "alexnet":
        from wherecnn.models.alexnet import WhereCNN

        return WhereCNN(config)
    if family == "torchvision":
        from wherecnn.models.backbones import DualBackbone

        return DualBackbone(config)
    raise ValueError(f"model config {config.get('name')!r}: unknown family {family!r}")
