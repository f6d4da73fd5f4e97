"""Ray Train: the same training function on 2 gloo workers writes the same kind of checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wherecnn.models.embedder import Embedder
from wherecnn.train.loop import run_training
from wherecnn.train.options import TrainOptions

from .tiny import TINY_DUAL_CPU


@pytest.mark.slow
def test_ray_train_two_workers(fake_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("WHERECNN_NUM_CPUS", "2")
    from wherecnn.config import reset_settings_cache

    reset_settings_cache()
    out = tmp_path / "ckpt"
    try:
        summary = run_training(
            TrainOptions(
                data=str(fake_pairs),
                out=str(out),
                epochs=2,
                workers=2,
                batch_size=16,
                val_size=16,
                overrides=TINY_DUAL_CPU,
                progress=False,
            )
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        reset_settings_cache()
    assert summary["epochs"] == 2 and "R@1" in summary["val"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["train"]["workers"] == 2 and card["epoch"] == 2
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["kind"] == "epoch"] == [1, 2]
    # Ray also kept its own checkpoints under storage_path
    assert list((tmp_path / "ckpt-ray").rglob("model.pt"))
    # the checkpoint carries the tiny model: 32 values per test-time view (the config's tta)
    emb = Embedder.from_checkpoint(str(out), device="cpu")
    assert emb.model.embed_dim == 32 and emb.embed_dim == 32 * len(emb.model.test_views())
