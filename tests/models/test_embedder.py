"""Embedder: the contract index/search rely on, and a round trip through a checkpoint (local and S3)."""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from wherecnn.data.ground import ground_view
from wherecnn.data.normalise import to_tensor
from wherecnn.models import build_model
from wherecnn.models.embedder import Embedder
from wherecnn.train.checkpoint import save_checkpoint


def _images(rng: np.random.Generator, n: int, h: int, w: int) -> list[np.ndarray]:
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_untrained_embedder_contract() -> None:
    emb = Embedder.untrained("dual-cpu", seed=0)
    rng = np.random.default_rng(0)
    tiles = emb.aerial(_images(rng, 3, 128, 128))
    panos = emb.ground(_images(rng, 2, 128, 512))
    photos = emb.ground(_images(rng, 2, 128, 128), heading_deg=[10.0, None], fov_deg=90.0)
    for out in (tiles, panos, photos):
        assert out.dtype == np.float32 and out.shape[1] == emb.embed_dim == 4 * 128  # 4 test-time views
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    assert emb.ground_size == (64, 256) and emb.aerial_size == (96, 96)
    assert emb.aerial([]).shape == (0, 512)
    same = Embedder.untrained("dual-cpu", seed=0)
    assert same.model_id == emb.model_id and np.allclose(
        same.aerial(_images(np.random.default_rng(0), 3, 128, 128)), tiles
    )
    assert not np.allclose(
        Embedder.untrained("dual-cpu", seed=1).aerial(_images(np.random.default_rng(0), 3, 128, 128)), tiles
    )


def test_photo_heading_changes_the_embedding() -> None:
    emb = Embedder.untrained("dual-cpu", seed=0)
    photo = _images(np.random.default_rng(2), 1, 128, 128)
    north = emb.ground(photo, heading_deg=[0.0], fov_deg=[90.0])
    east = emb.ground(photo, heading_deg=[90.0], fov_deg=[90.0])
    assert not np.allclose(north, east, atol=1e-3)
    with pytest.raises(ValueError, match="heading_deg"):
        emb.ground(photo, heading_deg=[0.0, 1.0])


@pytest.mark.parametrize(("size", "fov"), [((64, 256), None), ((128, 128), 90.0)], ids=["panorama", "photo"])
def test_turning_by_whole_bearing_columns_is_a_roll_of_the_embedding(
    size: tuple[int, int], fov: float | None
) -> None:
    """`ground_headings` turns by whole columns (45 degrees for dual-cpu) without a forward pass: the same
    vectors as embedding the image at each heading."""
    emb = Embedder.untrained("dual-cpu", seed=0)
    assert emb.model.embedding_columns == 8
    image = _images(np.random.default_rng(3), 1, *size)[0]
    headings = [0.0, 15.0, 45.0, 100.0, 180.0, 337.5, 359.0, 405.0]
    turned = emb.ground_headings(image, headings, fov_deg=fov)
    direct = emb.ground([image] * len(headings), heading_deg=[h % 360 for h in headings], fov_deg=fov)
    assert turned.shape == direct.shape == (len(headings), emb.embed_dim)
    assert np.allclose(turned, direct, atol=1e-4)
    assert not np.allclose(turned[0], turned[2], atol=1e-3)  # a turn does change the vector


def test_models_without_bearing_columns_embed_each_heading() -> None:
    emb = Embedder.untrained("where-cnn", seed=0)
    assert emb.model.embedding_columns is None
    image = _images(np.random.default_rng(4), 1, 128, 128)[0]
    turned = emb.ground_headings(image, [0.0, 90.0], fov_deg=90.0)
    assert np.allclose(turned, emb.ground([image] * 2, heading_deg=[0.0, 90.0], fov_deg=90.0), atol=1e-5)


def test_photos_are_laid_out_as_the_model_config_says() -> None:
    """`dual-cpu` reprojects a photo onto the canvas (``ground_layout`` "cylinder", over its
    ``canvas_vfov_deg``); a checkpoint trained with the older "canvas" layout keeps it."""
    assert build_model("dual-cpu").config["ground_layout"] == "cylinder"
    photo = _images(np.random.default_rng(3), 1, 96, 128)  # 4:3, 70 degrees across
    for layout, vfov in (("cylinder", 90.0), ("cylinder", 120.0), ("canvas", 90.0)):
        torch.manual_seed(0)
        model = build_model("dual-cpu", ground_layout=layout, canvas_vfov_deg=vfov)
        emb = Embedder(model, model_id="layout", device="cpu")
        view = ground_view(
            photo[0], emb.ground_size, heading_deg=30.0, fov_deg=70.0, layout=layout, canvas_vfov_deg=vfov
        )
        with torch.no_grad():
            want = model.embed_ground_views(to_tensor(view[None], emb.mean, emb.std)).numpy()
        got = emb.ground(photo, heading_deg=[30.0], fov_deg=[70.0])
        assert np.allclose(got, want, atol=1e-5), layout


def _write(model: torch.nn.Module, out: str) -> dict:
    opt = torch.optim.Adam(model.parameters())
    return save_checkpoint(
        out,
        model=model,
        optimizer=opt,
        loop_state={"epoch": 1, "step": 3},
        card={"model": model.config["name"], "config": model.config},
        history=[{"epoch": 1}],
    )


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    emb = Embedder.untrained("dual-cpu", seed=3)
    card = _write(emb.model, str(tmp_path / "ckpt"))
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {
        "model.pt",
        "model_card.json",
        "optimizer.pt",
        "metrics.jsonl",
    }
    loaded = Embedder.from_checkpoint(str(tmp_path / "ckpt"), device="cpu")
    assert loaded.model_id == card["model_id"] and loaded.model_id.startswith("dual-cpu-")
    assert loaded.card["epoch"] == 1 and "git_sha" in loaded.card["code"]
    rng = np.random.default_rng(1)
    tiles, panos = _images(rng, 2, 100, 100), _images(rng, 2, 64, 256)
    assert np.allclose(loaded.aerial(tiles), emb.aerial(tiles), atol=1e-5)
    assert np.allclose(loaded.ground(panos), emb.ground(panos), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        Embedder.from_checkpoint(str(tmp_path / "nothing"))


def test_a_checkpoint_can_be_loaded_with_other_test_time_views(tmp_path: Path) -> None:
    emb = Embedder.untrained("dual-cpu", seed=3)
    _write(emb.model, str(tmp_path / "ckpt"))
    one = Embedder.from_checkpoint(str(tmp_path / "ckpt"), device="cpu", tta={})
    assert one.embed_dim == 128 and one.model_id.endswith("-tta1")
    assert one.card["config"]["tta"] == {"flip": False, "phases": 1}  # {}: the schema's one plain view
    same = Embedder.from_checkpoint(str(tmp_path / "ckpt"), device="cpu", tta=emb.model.config["tta"])
    assert same.model_id == Embedder.from_checkpoint(str(tmp_path / "ckpt"), device="cpu").model_id
    tiles = _images(np.random.default_rng(4), 2, 96, 96)
    # the first of the 4 views is the plain one, scaled by 1/sqrt(4)
    assert np.allclose(emb.aerial(tiles)[:, :128] * 2, one.aerial(tiles), atol=1e-5)
    with pytest.raises(ValueError, match="phases 5"):
        Embedder.from_checkpoint(str(tmp_path / "ckpt"), device="cpu", tta={"phases": 5})


def test_checkpoint_round_trip_through_s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from wherecnn.config import reset_settings_cache

    monkeypatch.setenv("WHERECNN_S3_ENDPOINT_URL", s3_server)
    reset_settings_cache()
    try:
        boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="models")
        emb = Embedder.untrained("dual-cpu", seed=4)
        card = _write(emb.model, "s3://models/runs/a")
        loaded = Embedder.from_checkpoint("s3://models/runs/a", device="cpu")
        assert loaded.model_id == card["model_id"]
        tiles = _images(np.random.default_rng(5), 2, 96, 96)
        assert np.allclose(loaded.aerial(tiles), emb.aerial(tiles), atol=1e-5)
    finally:
        reset_settings_cache()
