"""The model config schema: every default once, unknown keys refused by path, track sections' own keys."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from wherecnn.data.ground import CANVAS_VFOV_DEG, DEFAULT_GROUND_LAYOUT
from wherecnn.data.normalise import IMAGENET_MEAN, IMAGENET_STD
from wherecnn.models import list_models, load_config, merge, recipe_on_track, resolve_config
from wherecnn.models.schema import FAMILIES, known_keys, validate_config


def written(name: str) -> dict:
    return json.loads(resources.files("wherecnn.models").joinpath("configs", f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["dual-cpu", "where-cnn", "dual-resnet", "dual-convnext"])
def test_a_registered_config_gets_every_default(name: str) -> None:
    config = load_config(name)
    assert list(config["mean"]) == list(IMAGENET_MEAN) and list(config["std"]) == list(IMAGENET_STD)
    assert config["canvas_vfov_deg"] == CANVAS_VFOV_DEG
    assert config["ground_layout"] in (DEFAULT_GROUND_LAYOUT, "cylinder")
    assert set(config["loss"]) >= {"name", "temperature", "learn_temperature", "label_smoothing"}
    assert config["train"]["fresh_epochs"] >= 1 and config["train"]["precision"] == "auto"
    # the file sets only what differs from the schema's defaults (one place for each default)
    file = written(name)
    assert "mean" not in file and "std" not in file
    assert validate_config(config) == config  # checking a checked config changes nothing


def test_unknown_keys_are_refused_with_their_path() -> None:
    base = written("dual-cpu")
    with pytest.raises(ValueError, match=r"unknown key train\.augment_scal;.*unknown key embed_dims"):
        validate_config(merge(base, {"train.augment_scal": 1, "embed_dims": 8}))
    with pytest.raises(ValueError, match=r"unknown key offset\.pair\b"):
        validate_config(merge(base, {"offset": {"pair": "centred"}}))
    with pytest.raises(ValueError, match=r"unknown key photo\.model\.stridez"):
        validate_config(merge(base, {"photo.model": {"stridez": [1]}}))
    with pytest.raises(ValueError, match=r"photo\.model cannot set train"):
        validate_config(merge(base, {"photo.model": {"train": {"lr": 1.0}}}))
    # keys of another family are unknown to this one
    with pytest.raises(ValueError, match="unknown key hidden"):
        validate_config(merge(base, {"hidden": 12}))


def test_values_are_checked() -> None:
    base = written("dual-cpu")
    with pytest.raises(ValueError, match=r"train\.optimizer"):
        validate_config(merge(base, {"train.optimizer": "adagrad"}))
    with pytest.raises(ValueError, match=r"tta\.phases"):
        validate_config(merge(base, {"tta.phases": 0}))
    with pytest.raises(ValueError, match="ground_layout"):
        validate_config(merge(base, {"ground_layout": "sphere"}))
    with pytest.raises(ValueError, match="family"):
        validate_config({**base, "family": "vit"})


def test_a_track_section_keeps_only_the_recipe_keys_it_sets() -> None:
    config = load_config("dual-cpu")
    # offset sets lr and augment_scale (explicitly null: no zoom); photo sets no lr
    assert config["offset"]["lr"] == 0.002 and config["offset"]["augment_scale"] is None
    assert "lr" not in config["photo"] and "augment_color" not in config["offset"]
    recipe, sections = recipe_on_track(config, "photo")
    assert recipe["lr"] == config["train"]["lr"] and sections["lr"] == "train"
    assert recipe["augment_scale"] is None and sections["augment_scale"] == "photo"
    recipe, sections = recipe_on_track(config, "offset")
    assert recipe["lr"] == 0.002 and sections["lr"] == "offset"
    # track-only settings have their defaults whether set or not
    assert config["photo"]["shift_anneal"] == 0.5 and config["offset"]["view_pool"] == 2


def test_where_each_setting_comes_from() -> None:
    config, sources = resolve_config("dual-cpu", "photo", {"train.lr": 0.01})
    assert config["embed_dim"] == 256 and sources["embed_dim"] == "configs/dual-cpu.json photo.model"
    assert sources["train.lr"] == "override" and config["train"]["lr"] == 0.01
    assert sources["mean"] == "default (models.schema)"
    assert sources["polar"] == "configs/dual-cpu.json"


def test_known_keys_cover_every_registered_config() -> None:
    for name in list_models():
        config = load_config(name)
        keys = known_keys(config["family"])
        for key, value in config.items():
            if isinstance(value, dict) and key not in ("offset", "photo"):
                assert {f"{key}.{sub}" for sub in value} <= set(keys)
            else:
                assert key in keys or f"{key}." in " ".join(keys)
    assert set(FAMILIES) == {load_config(n)["family"] for n in list_models()}
