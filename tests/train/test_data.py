"""What a run trains on: curricula, the fresh places' settings, the augmentation a track section sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from wherecnn.models import load_config, resolve_config
from wherecnn.train.data import TrainingData, anneal, fresh_settings
from wherecnn.train.options import TrainOptions

from .tiny import TINY_DUAL_CPU


def test_curricula_move_linearly_over_the_first_share_of_training() -> None:
    assert anneal(360.0, 90.0, 0.5, 0.0) == 360.0
    assert anneal(360.0, 90.0, 0.5, 0.25) == 225.0
    assert anneal(360.0, 90.0, 0.5, 0.5) == 90.0 == anneal(360.0, 90.0, 0.5, 0.9)
    assert anneal(360.0, 90.0, 0.0, 0.0) == 90.0
    assert anneal(0.0, 0.05, 0.5, 0.25) == pytest.approx(0.025)  # offset's shift grows the same way


def test_fresh_places_default_from_the_model_config_on_synthetic_worlds(
    tiny_world: Path, fake_pairs: Path, tmp_path: Path
) -> None:
    """The config's train.fresh_places, fresh_epochs and style_spread apply on a synthetic world; the
    options win."""
    cfg = {"fresh_places": 2500, "fresh_epochs": 6, "style_spread": 1.5}

    def settings(data: Path, **kw: object) -> tuple[int, int, float | None]:
        return fresh_settings(TrainOptions(data=str(data), out=str(tmp_path), epochs=1, **kw), cfg)  # type: ignore[arg-type]

    assert settings(tiny_world) == (2500, 6, 1.5)
    assert settings(fake_pairs) == (0, 6, None)  # no synthetic.json: nothing to render new places from
    assert settings(tiny_world, fresh_places=0) == (0, 6, None)
    assert settings(tiny_world, fresh_places=64, fresh_epochs=2, style_spread=0) == (64, 2, None)
    assert settings(fake_pairs, fresh_places=64) == (64, 6, 1.5)  # asked for: FreshPlaces says what lacks
    recipe = load_config("where-cnn")["train"]  # no fresh places, their epochs at the schema's default
    assert fresh_settings(TrainOptions(data=str(tiny_world), out="x", epochs=1), recipe) == (0, 3, None)
    with pytest.raises(ValueError, match="needs fresh_places"):
        TrainOptions(data=str(tiny_world), out="x", epochs=1, fresh_places=0, style_spread=1.5)


def _augment(data: Path, track: str = "aligned", overrides: dict | None = None) -> dict:
    """The augmentation a run of the tiny dual-cpu on ``track`` trains with."""
    config, _ = resolve_config("dual-cpu", track, {**TINY_DUAL_CPU, **(overrides or {})})
    opts = TrainOptions(data=str(data), out="unused", epochs=1, track=track, val_size=16, progress=False)
    return TrainingData(opts, config, batch_size=16).augment


def test_a_track_section_replaces_the_train_augmentation_on_its_track(fake_pairs: Path) -> None:
    # dual-cpu's config: train.augment_scale [0.75, 1.6]; offset and photo.augment_scale null (zoom cost R@1)
    aligned = _augment(fake_pairs)
    assert aligned["scale"] == [0.75, 1.6] and aligned["shift"] == 0.0
    photo = _augment(fake_pairs, "photo")
    assert photo["scale"] is None and photo["photo_fov"] == 90.0
    offset = _augment(fake_pairs, "offset")
    assert offset["scale"] is None and offset["shift"] == 0.05 and offset["photo_fov"] is None
    zoomed = {"photo": {"augment_scale": [0.8, 1.25], "augment_flip": False}}
    photo = _augment(fake_pairs, "photo", zoomed)
    assert photo["scale"] == [0.8, 1.25] and photo["flip"] is False
    # offset's shift moves camera-centred tiles: on the track's own (offset) pairs train.augment_shift holds
    own = {"offset": {"pairs": "track"}, "train": {"augment_shift": 0.02}}
    offset = _augment(fake_pairs, "offset", own)
    assert offset["shift"] == 0.02 and offset["scale"] is None
    # a compass error: off unless set; a track section's replaces train's on its track alone
    assert _augment(fake_pairs, "offset")["heading"] == 0.0 and aligned["heading"] == 0.0
    compass = {"train": {"augment_heading": 10.0}, "offset": {"augment_heading": 20.0}}
    assert _augment(fake_pairs, "offset", compass)["heading"] == 20.0
    assert _augment(fake_pairs, "photo", compass)["heading"] == 10.0
    # offset's photo share: off unless set, and on the offset track's camera-centred panoramas only
    assert _augment(fake_pairs, "offset")["photo_share"] == 0.0
    mixed = {"offset": {"photo_share": 0.25, "photo_fovs": [45, 100]}}
    offset = _augment(fake_pairs, "offset", mixed)
    assert offset["photo_share"] == 0.25 and offset["photo_fovs"] == [45.0, 100.0]
    assert _augment(fake_pairs, "photo", mixed)["photo_share"] == 0.0


def test_curricula_follow_the_position_in_training(fake_pairs: Path) -> None:
    config, _ = resolve_config(
        "dual-cpu",
        "photo",
        {**TINY_DUAL_CPU, "photo": {"pairs": "panorama", "augment_shift": 0.05, "shift_start": 0.0}},
    )
    opts = TrainOptions(
        data=str(fake_pairs), out="unused", epochs=1, track="photo", val_size=16, progress=False
    )
    data = TrainingData(opts, config, batch_size=16)
    data.follow_curricula(0.0)
    assert data.augment["photo_sector"] == 360.0 and data.augment["shift"] == 0.0  # dual-cpu: 360 at first
    data.follow_curricula(0.25)
    assert data.augment["photo_sector"] == 225.0 and data.augment["shift"] == pytest.approx(0.025)
    data.follow_curricula(0.75)
    assert data.augment["photo_sector"] == 90.0 and data.augment["shift"] == 0.05


@pytest.mark.parametrize("section", ["train", "offset"])
def test_the_compass_error_can_shrink_to_the_exact_heading(fake_pairs: Path, section: str) -> None:
    """heading_start (train's, or a track section's): that compass error at first, moving to augment_heading
    over heading_anneal; without it the error stays augment_heading throughout."""
    overrides = {**TINY_DUAL_CPU, section: {"heading_start": 20.0, "heading_anneal": 0.8}}
    config, _ = resolve_config("dual-cpu", "offset", overrides)
    opts = TrainOptions(
        data=str(fake_pairs), out="unused", epochs=1, track="offset", val_size=16, progress=False
    )
    data = TrainingData(opts, config, batch_size=16)
    for progress, heading in ((0.0, 20.0), (0.4, 10.0), (0.8, 0.0), (1.0, 0.0)):
        data.follow_curricula(progress)
        assert data.augment["heading"] == pytest.approx(heading), progress
    config, _ = resolve_config("dual-cpu", "offset", {**TINY_DUAL_CPU, "offset": {"augment_heading": 15.0}})
    data = TrainingData(opts, config, batch_size=16)
    data.follow_curricula(0.9)
    assert data.augment["heading"] == 15.0
