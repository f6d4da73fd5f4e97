"""Model registry: name -> config (JSON data under ``models/configs/``) -> `TwoBranchModel`.

``build_model("dual-cpu", embed_dim=64)`` merges overrides into the config (nested dicts merge key by key), so
every experiment is a config plus overrides and a checkpoint can rebuild its model from the stored config.

Config keys shared by every model:
- ``embed_dim``, ``ground_size`` [H, W], ``aerial_size`` [H, W], ``mean``/``std`` (input normalisation);
- ``shared``: one trunk for both views (heads stay per view) instead of two;
- ``ground_layout``: ``"canvas"`` (default) puts a limited-FOV photo on a 360-degree canvas centred on its
  compass heading, i.e. the heading is used exactly as if the tile were rotated heading-up, while the gallery
  stays north-up and is embedded once; ``"cylinder"`` does the same but reprojects the photo so each canvas
  pixel shows the bearing and elevation a panorama shows there (the canvas spanning ``canvas_vfov_deg``,
  default 90, about the horizon), so photos of any field of view or aspect line up with the bearings;
  ``"resize"`` ignores the heading (unknown-orientation training);
- ``polar``: SAFA-style polar transform of the aerial tile (torchvision family: to ``polar_size``; compact:
  to ``ground_size``), and for `dual-cpu` ``head`` (``"spatial"`` or ``"azimuth"``, see `models.compact`);
- ``weights`` (local state-dict file) / ``weights_enum`` (torchvision enum, only if already cached);
- ``loss`` (``contrastive`` | ``triplet`` | ``infonce`` and their parameters) and ``train`` (batch size, lr,
  optimizer, warmup, augmentation, hard-negative sampling, ``mine_every`` for Sample4Geo-style mining,
  ``ema``: publish a moving average of the weights with this decay per step);
- ``offset`` (the `offset` track): ``pairs`` (``"centred"``: train on the same panoramas' camera-centred
  tiles), ``augment_shift`` (their random shift, a fraction of the side), ``shift_start``/``shift_anneal``
  (curriculum: that shift at first, moving to ``augment_shift`` over that share of training; ``dual-cpu``:
  0 over the first half),
  ``gallery_centres`` (K: evaluate each gallery tile from K x K centres over its grid cell;
  docs/evaluation.md), ``gallery_scales`` (those views cut at each of these ground scales as well, 1 being
  the tile's side), ``view_pool`` (P: such a tile scores as the mean of its P best views; 1: the best);
- ``photo`` (the `photo` track): ``pairs`` (``"panorama"``: photos cut from the training panoramas at a random
  heading each time), ``fov_deg``, ``fov_start_deg``/``fov_anneal`` (curriculum: panorama sectors that
  wide at first, narrowing to ``fov_deg`` over that share of training; ``dual-cpu``: 360 over the first half);
- in either track section, an ``augment_*`` key replaces ``train.augment_*`` on that track (``dual-cpu``:
  ``augment_scale`` null, no zoom on offset and photo), as do ``fresh_places``/``fresh_epochs`` (the fresh
  places' pool) and ``lr`` (``dual-cpu``: 2e-3 on offset, 1e-3 elsewhere), and ``model`` holds config
  settings that replace the top-level ones for a model trained on that track (``dual-cpu``'s photo:
  ``strides`` for 16 bearing columns); `build_model(name, track=...)` applies it, and the checkpoint stores
  the result;
- ``tta``: test-time views ``{"flip": bool, "phases": n}`` (`TwoBranchModel.test_views`): what `Embedder`
  and so the index embed; training and its validation use the plain view. ``dual-cpu``: mirrored x 2 phases;
- ``hub_correction``: ``{"weight": w, "neighbours": k}``: evaluation and search score each gallery view
  minus w times its mean similarity to its k most similar other tiles of the city (`similarity.
  hub_scores`), so generic views stop outranking particular ones; ``dual-cpu`` sets it on the offset track
  (``offset.model``: w 0.5, k 200).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from wherecnn.models.base import TwoBranchModel

__all__ = [
    "TwoBranchModel",
    "build_model",
    "check_overrides",
    "config_keys",
    "list_models",
    "load_config",
    "model_from_config",
    "recipe_on_track",
    "resolve_config",
    "shadowed_overrides",
    "track_config",
    "unknown_keys",
]

# settings the code reads that no registered config spells out (their defaults live in the code)
OPTIONAL_KEYS = frozenset(
    {
        "hidden",
        "canvas_vfov_deg",
        "batch_norm",
        "mixstyle",
        "mixstyle.p",
        "mixstyle.alpha",
        "mixstyle.after",
        "train.augment_color",
        "train.augment_shift",
        "train.ema",
        "train.fresh_epochs",
        "train.fresh_worlds",
        "train.fresh_area_share",
        "offset.gallery_scales",
        "train.precision",
        "loss.alpha",
        "hub_correction",
        "hub_correction.weight",
        "hub_correction.neighbours",
    }
)


def list_models() -> list[str]:
    """Names of every registered model (one JSON config each)."""
    files = resources.files("wherecnn.models").joinpath("configs")
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def load_config(name: str) -> dict[str, Any]:
    """The stored config of a registered model."""
    names = list_models()
    if name not in names:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(names)}")
    text = resources.files("wherecnn.models").joinpath("configs", f"{name}.json").read_text()
    return json.loads(text)


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


def config_keys() -> frozenset[str]:
    """Every setting a model config may hold: top-level keys, and ``section.key`` for nested sections."""
    keys = set(OPTIONAL_KEYS)
    for name in list_models():
        for key, value in load_config(name).items():
            keys.add(key)
            if isinstance(value, dict):
                keys.update(f"{key}.{sub}" for sub in value)
    augment = [k.split(".", 1)[1] for k in keys if k.startswith("train.augment_")]
    # what training reads from a track section over train's (`train.loop`), and the section's model settings
    on_track = [*augment, "lr", "fresh_places", "fresh_epochs", "fresh_area_share", "model"]
    on_track += ["shift_start", "shift_anneal"]  # the shift curriculum of tracks on camera-centred tiles
    keys.update(f"{track}.{sub}" for track in ("offset", "photo") for sub in on_track)
    return frozenset(keys)


def unknown_keys(overrides: dict[str, Any]) -> list[str]:
    """The override keys (dotted or nested) that no model reads, e.g. a misspelt ``train.augment_scal``."""
    known = config_keys()
    sections = {k.split(".", 1)[0] for k in known if "." in k}
    bad = []
    for key, value in merge({}, overrides).items():
        if key not in known:
            bad.append(key)
        elif key in sections and isinstance(value, dict):
            bad.extend(f"{key}.{sub}" for sub in value if f"{key}.{sub}" not in known)
    return bad


def check_overrides(overrides: dict[str, Any]) -> None:
    """ValueError naming the override keys no model reads, and listing the known ones."""
    bad = unknown_keys(overrides)
    if bad:
        raise ValueError(
            f"unknown model config key(s) {', '.join(bad)}; known: {', '.join(sorted(config_keys()))}"
        )


def build_model(name: str, track: str | None = None, **overrides: Any) -> TwoBranchModel:
    """Build a registered model; keyword overrides are merged into its config. An override no model
    reads is an error (a misspelt key would otherwise change nothing, silently). With ``track``, that
    track section's ``model`` settings are merged in too (`track_config`)."""
    return model_from_config(resolve_config(name, track, overrides)[0])


def track_config(
    config: dict[str, Any], track: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``config`` with its ``track`` section's ``model`` settings merged in (e.g. `dual-cpu`'s photo track:
    finer bearing columns); ``overrides`` given explicitly still win over them."""
    section = dict((config.get(track) or {}).get("model") or {})
    check_overrides(section)
    return merge(merge(config, section), overrides or {})


def resolve_config(
    name: str, track: str | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The config a model of ``name`` trained on ``track`` gets (`build_model`'s), and where each setting
    came from, by dotted key: the registered config file, its track section's ``model`` settings, or an
    override."""
    check_overrides(overrides or {})
    base = load_config(name)
    section = dict((base.get(track) or {}).get("model") or {}) if track else {}
    config = (
        track_config(merge(base, overrides or {}), track, overrides)
        if track
        else merge(base, overrides or {})
    )
    origin = f"configs/{name}.json"
    sources = dict.fromkeys(flatten(base), origin)
    sources.update(dict.fromkeys(flatten(section), f"{origin} {track}.model"))
    sources.update(dict.fromkeys(flatten(merge({}, overrides or {})), "override"))
    return config, {key: sources.get(key, origin) for key in flatten(config)}


def recipe_on_track(config: dict[str, Any], track: str) -> tuple[dict[str, Any], dict[str, str]]:
    """What training reads on ``track``: the ``train`` section with the track section's keys over it (e.g.
    `dual-cpu`'s ``lr``, zoom and fresh places on offset and photo), and which section each came from."""
    train = dict(config.get("train") or {})
    section = {k: v for k, v in dict(config.get(track) or {}).items() if k != "model"}
    recipe = train | section
    return recipe, {k: (track if k in section else "train") for k in recipe}


def shadowed_overrides(name: str, track: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``train.*`` overrides that change nothing on ``track`` because its own section sets the same key
    (e.g. ``train.lr`` on `dual-cpu`'s offset track, whose ``offset.lr`` wins), with the value that wins."""
    recipe, sections = recipe_on_track(merge(load_config(name), overrides), track)
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
    """Rebuild a model from a full config (as stored in a checkpoint)."""
    family = config.get("family")
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
