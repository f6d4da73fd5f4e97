"""Every registered model builds and runs on a tiny batch; weights loading never downloads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from wherecnn.models import (
    build_model,
    config_digest,
    list_models,
    load_config,
    merge,
    model_from_config,
    registered_config,
)
from wherecnn.models.backbones import polar_grid, tile_grid
from wherecnn.models.compact import MixStyle

# small inputs keep the big backbones fast on 2 cores; the architecture is the registered one
SMALL = {
    "dual-cpu": {},
    "where-cnn": {"ground_size": [64, 256], "aerial_size": [64, 64]},
    "dual-resnet": {"ground_size": [32, 128], "aerial_size": [32, 32], "polar_size": [32, 128]},
    "dual-convnext": {
        "ground_size": [32, 128],
        "aerial_size": [32, 32],
        "polar_size": [32, 128],
        "shared": True,
    },
}


def test_registry_lists_the_issue_models() -> None:
    assert {"where-cnn", "dual-resnet", "dual-convnext", "dual-cpu"} <= set(list_models())
    with pytest.raises(ValueError, match="registered models"):
        load_config("nope")


def test_overrides_merge_nested_and_dotted_keys() -> None:
    base = {"train": {"lr": 1.0, "batch_size": 64}, "embed_dim": 128}
    dotted = merge(base, {"train.lr": 0.5, "offset.pairs": "centred", "embed_dim": 64})
    nested = merge(base, {"train": {"lr": 0.5}, "offset": {"pairs": "centred"}, "embed_dim": 64})
    assert (
        dotted
        == nested
        == {
            "train": {"lr": 0.5, "batch_size": 64},
            "embed_dim": 64,
            "offset": {"pairs": "centred"},
        }
    )
    assert base["train"]["lr"] == 1.0  # the base is not modified
    assert build_model("dual-cpu", **{"train.augment_shift": 0.1}).config["train"]["augment_shift"] == 0.1


def test_misspelt_overrides_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown key train.agument_scale.*known:.*train.augment_scale"):
        build_model("dual-cpu", **{"train.agument_scale": [0.8, 1.2]})


def test_a_config_digest_names_the_settings_not_the_prose() -> None:
    written = registered_config("dual-cpu")
    digest = config_digest(written)
    assert digest == config_digest(load_config("dual-cpu"))  # defaults filled or not: the same settings
    assert config_digest({**written, "description": "reworded"}) == digest
    assert config_digest(merge(written, {"offset.augment_heading": 25.0})) != digest
    # a setting at its default, written out (an older checkpoint's config, before the setting existed)
    assert config_digest(merge(written, {"offset.photo_share": 0.0})) == digest


def test_a_track_section_can_change_the_model_trained_on_that_track() -> None:
    # dual-cpu's photo section: 16 bearing columns (a 90 degree photo fills four) of 16 values each; the
    # other tracks 8 columns of 16 (128 values)
    assert build_model("dual-cpu").bearing_column_px == 32
    assert build_model("dual-cpu", track="aligned").bearing_column_px == 32
    assert build_model("dual-cpu", track="aligned").embed_dim == 128
    photo = build_model("dual-cpu", track="photo")
    assert photo.bearing_column_px == 16 and photo.config["strides"] == [2, 2, 2, 2, 1, 1]
    assert photo.embed_dim == 256
    assert model_from_config(photo.config).bearing_column_px == 16  # a checkpoint stores the result
    # an explicit override still wins over the section's setting
    assert build_model("dual-cpu", track="photo", strides=[2, 2, 2, 2, 1, 2]).bearing_column_px == 32
    own = build_model("dual-cpu", track="offset", **{"offset.model": {"embed_dim": 64}})
    assert own.embed_dim == 64
    assert build_model("dual-cpu", track="aligned", **{"offset.model.embed_dim": 64}).embed_dim == 128
    with pytest.raises(ValueError, match="unknown key photo.model.stride"):
        build_model("dual-cpu", track="photo", **{"photo.model": {"stride": [1]}})


@pytest.mark.parametrize("name", list_models())
def test_every_model_embeds_normalised_vectors(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, **SMALL.get(name, {})).eval()
    g = torch.randn(2, 3, *model.ground_size)
    a = torch.randn(2, 3, *model.aerial_size)
    with torch.no_grad():
        eg, ea = model(g, a)
    assert eg.shape == ea.shape == (2, model.embed_dim)
    assert torch.allclose(eg.norm(dim=1), torch.ones(2), atol=1e-4)
    assert torch.allclose(ea.norm(dim=1), torch.ones(2), atol=1e-4)
    assert not torch.allclose(eg[0], eg[1])
    assert model.config["name"] == name and isinstance(model.config, dict)


def test_dual_cpu_is_compact_and_can_share_its_trunk() -> None:
    model = build_model("dual-cpu")
    assert 2.0e6 < model.num_parameters() < 3.0e6  # compact: the 24-256-channel trunk, ~2.5M
    assert math.isclose(model.temperature, load_config("dual-cpu")["loss"]["temperature"], rel_tol=1e-4)
    shared = build_model("dual-cpu", shared=True)
    assert shared.ground_trunk is shared.aerial_trunk
    assert shared.num_parameters() < model.num_parameters()


def test_mixstyle_mixes_feature_statistics_only_while_training() -> None:
    torch.manual_seed(0)
    mix = MixStyle(p=1.0, alpha=0.1)
    x = torch.randn(6, 4, 5, 7) * torch.arange(1.0, 7.0).view(6, 1, 1, 1) + torch.arange(6.0).view(6, 1, 1, 1)
    mix.eval()
    assert torch.equal(mix(x), x)
    mix.train()
    y = mix(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    # each sample keeps its normalised pattern; its mean lies between the batch's means
    norm = lambda t: (t - t.mean((2, 3), keepdim=True)) / t.std((2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(norm(y), norm(x), atol=1e-3)
    assert x.mean((1, 2, 3)).min() - 1e-4 <= y.mean((1, 2, 3)).min()
    assert y.mean((1, 2, 3)).max() <= x.mean((1, 2, 3)).max() + 1e-4
    assert torch.equal(MixStyle(p=0.0, alpha=0.1).train()(x), x)
    model = build_model("dual-cpu", mixstyle={"p": 0.5, "alpha": 0.1, "after": [0, 1, 2]})
    assert model.ground_trunk.mix_after == {0, 1, 2} and model.aerial_trunk.mix is not None
    assert build_model("dual-cpu").ground_trunk.mix is None  # off unless the config asks
    with pytest.raises(ValueError, match="blocks"):
        build_model("dual-cpu", mixstyle={"after": [6]})


def test_dual_cpu_ground_branch_has_no_seam_at_north() -> None:
    """Circular padding: rolling the panorama by a quarter rotates the features, not more."""
    torch.manual_seed(0)
    model = build_model("dual-cpu").eval()
    x = torch.randn(1, 3, *model.ground_size)
    with torch.no_grad():
        f = model.ground_trunk(x, circular=True)
        fr = model.ground_trunk(torch.roll(x, model.ground_size[1] // 4, dims=3), circular=True)
    assert torch.allclose(torch.roll(f, f.shape[3] // 4, dims=3), fr, atol=1e-4)


def test_dual_cpu_azimuth_head_matches_a_photo_to_its_bearings() -> None:
    """Azimuth head: a photo fills only its bearings; a quarter turn of the tile is a quarter roll of its
    embedding's bearings, so one tile vector serves every heading."""
    from wherecnn.data.ground import ground_view
    from wherecnn.data.normalise import MEAN_RGB, to_tensor

    torch.manual_seed(0)
    model = build_model("dual-cpu").eval()  # the default head
    cfg = model.config
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    canvas = ground_view(photo, model.ground_size, heading_deg=90.0, fov_deg=90.0)
    assert (canvas[:, :32] == MEAN_RGB).all() and (canvas[:, 96:] == MEAN_RGB).all()
    tile = rng.integers(0, 255, size=(*model.aerial_size, 3), dtype=np.uint8)
    tiles = np.stack([tile, np.rot90(tile, 1)])
    with torch.no_grad():
        g = model.embed_ground(to_tensor(canvas[None], cfg["mean"], cfg["std"])).view(16, 8)
        a = model.embed_aerial(to_tensor(tiles, cfg["mean"], cfg["std"])).view(2, 16, 8)
    seen = g.norm(dim=0) > 0
    assert seen.tolist() == [False, True, True, False, False, False, False, False]  # 45..135 deg
    assert torch.allclose(torch.roll(a[0], -2, dims=1), a[1], atol=1e-4)  # rot90 = turn by -90 deg
    with pytest.raises(ValueError, match="polar"):
        build_model("dual-cpu", polar=False)
    spatial = build_model("dual-cpu", head="spatial", polar=False)  # the prototype's flattened head
    assert spatial.embed_aerial(torch.zeros(1, 3, *spatial.aerial_size)).shape == (1, 128)


def test_polar_grid_maps_north_to_the_left_edge() -> None:
    grid = polar_grid((4, 16))
    top_left = grid[0, 0, 0]  # far radius, azimuth ~0 (north): x ~ 0, y ~ -1 (top of the tile)
    assert abs(float(top_left[0])) < 0.25 and float(top_left[1]) < -0.8
    quarter = grid[0, 0, 4]  # azimuth ~ 90 deg: east = right of the tile
    assert float(quarter[0]) > 0.8


def test_tile_grid_inverts_the_polar_transform() -> None:
    tile = torch.zeros(1, 1, 64, 64)
    tile[..., 24:40, 48:60] = 1.0  # a blob east of the centre
    polar = F.grid_sample(tile, polar_grid((32, 128)), align_corners=False)
    back = F.grid_sample(polar, tile_grid((64, 64)), align_corners=False)[0, 0]
    assert float(polar[0, 0, :, 24:40].mean()) > 0.3  # east = a quarter of the way along the bearings
    assert float(back[24:40, 48:60].mean()) > 0.8 and float(back[:, :32].mean()) < 0.02


def test_local_weights_file_initialises_where_cnn(tmp_path: Path) -> None:
    torch.manual_seed(1)
    donor = build_model("where-cnn")
    features = {f"features.{k}": v + 1.0 for k, v in donor.ground_trunk.state_dict().items()}
    path = tmp_path / "alexnet-places.pth"
    torch.save({"state_dict": features}, path)  # the layout of torchvision's AlexNet checkpoints
    model = build_model("where-cnn", weights=str(path))
    assert torch.equal(model.ground_trunk[0].weight, features["features.0.weight"])
    assert torch.equal(model.aerial_trunk[3].weight, features["features.3.weight"])
    # batch norm sits in the ReLUs' slots: the conv layers keep their names, so the weights still load
    normed = build_model("where-cnn", weights=str(path), batch_norm=True)
    assert torch.equal(normed.ground_trunk[3].weight, features["features.3.weight"])
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in normed.ground_trunk.modules()) == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("where-cnn", weights=str(tmp_path / "missing.pth"))


def test_weight_enum_is_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not cached"):
        build_model("where-cnn", weights_enum="IMAGENET1K_V1")


def _score(g: torch.Tensor, a: torch.Tensor) -> float:
    return float((g * a).sum())


def test_dual_cpu_test_time_views_average_the_views_cosines() -> None:
    """tta: mirrored x two bearing phases; the concatenated vectors' dot is the mean of the 4 views' cosines,
    a turn of the polar map is a turn of the tile, and mirroring both inputs leaves the score unchanged."""
    from wherecnn.data.normalise import to_tensor

    torch.manual_seed(0)
    model = build_model("dual-cpu").eval()
    cfg = model.config
    assert model.test_views() == [(False, 0), (False, 16), (True, 0), (True, 16)]
    assert model.output_dim == 4 * model.embed_dim == 512
    rng = np.random.default_rng(3)
    canvas = rng.integers(0, 255, size=(*model.ground_size, 3), dtype=np.uint8)
    tile = rng.integers(0, 255, size=(*model.aerial_size, 3), dtype=np.uint8)

    def t(im: np.ndarray) -> torch.Tensor:
        return to_tensor(np.ascontiguousarray(im)[None], cfg["mean"], cfg["std"])

    with torch.no_grad():
        # a turn by a quarter of the bearings is the tile turned a quarter (as `augment_pair` pairs them)
        quarter = model.ground_size[1] // 4
        assert torch.allclose(
            model.turned_aerial_features(t(tile), quarter),
            model.aerial_features(t(np.rot90(tile))),
            atol=1e-4,
        )
        g, a = model.embed_ground_views(t(canvas)), model.embed_aerial_views(t(tile))
        assert g.shape == a.shape == (1, 512)
        assert torch.allclose(g.norm(dim=1), torch.ones(1)) and torch.allclose(a.norm(dim=1), torch.ones(1))
        expected = []
        for mirror, turn in model.test_views():
            c, tl = (np.roll(canvas[:, ::-1], 1, axis=1), tile[:, ::-1]) if mirror else (canvas, tile)
            gv = model.embed_ground(t(np.roll(c, -turn, axis=1)))
            av = F.normalize(model.turned_aerial_features(t(tl), turn), dim=-1)
            expected.append(_score(gv, av))
        assert math.isclose(_score(g, a), float(np.mean(expected)), abs_tol=1e-5)
        assert expected[0] != pytest.approx(expected[1], abs=1e-4)  # a half-column turn is another view
        mirrored = _score(
            model.embed_ground_views(t(np.roll(canvas[:, ::-1], 1, axis=1))),
            model.embed_aerial_views(t(tile[:, ::-1])),
        )
        assert math.isclose(mirrored, _score(g, a), abs_tol=1e-5)


def test_test_time_views_are_checked() -> None:
    assert build_model("dual-cpu", tta={"flip": False, "phases": 1}).test_views() == [(False, 0)]
    assert build_model("dual-cpu", tta={"phases": 1}).output_dim == 256  # overrides merge: still mirrored
    with pytest.raises(ValueError, match="phases 3"):
        build_model("dual-cpu", tta={"phases": 3}).test_views()  # 32-pixel columns
    with pytest.raises(ValueError, match="canvas"):
        build_model("dual-cpu", ground_layout="resize").test_views()
    with pytest.raises(ValueError, match="unknown key tta.flips"):
        model_from_config({**load_config("dual-cpu"), "tta": {"flips": True}})
    with pytest.raises(ValueError, match="bearing columns"):  # no polar map to turn
        build_model("where-cnn", **SMALL["where-cnn"], tta={"phases": 2}).test_views()
    wcnn = build_model("where-cnn", **SMALL["where-cnn"], tta={"flip": True}).eval()
    with torch.no_grad():
        v = wcnn.embed_aerial_views(torch.zeros(2, 3, *wcnn.aerial_size))
    assert v.shape == (2, 2 * wcnn.embed_dim)


def test_a_train_override_that_the_tracks_own_section_shadows_is_named() -> None:
    from wherecnn.models import recipe_on_track, resolve_config, shadowed_overrides

    overrides = {"train.lr": 0.01, "train.batch_size": 32}
    # dual-cpu's offset section sets its own lr: train.lr changes nothing there, batch_size does
    assert shadowed_overrides("dual-cpu", "offset", overrides) == {"lr": 0.002}
    recipe, sources = recipe_on_track(resolve_config("dual-cpu", "offset", overrides)[0], "offset")
    assert (recipe["lr"], sources["lr"]) == (0.002, "offset") and recipe["batch_size"] == 32
    assert shadowed_overrides("dual-cpu", "aligned", overrides) == {}
    assert shadowed_overrides("dual-cpu", "offset", {"offset.lr": 0.01}) == {}
