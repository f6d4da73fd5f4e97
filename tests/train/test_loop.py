"""The training function: it learns, is deterministic on CPU, checkpoints every epoch and resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from wherecnn.data.datasets import PairDataset
from wherecnn.data.samplers import MinedBatchSampler
from wherecnn.models.embedder import Embedder
from wherecnn.train.checkpoint import load_checkpoint
from wherecnn.train.loop import train_func
from wherecnn.train.options import TrainOptions

from .tiny import TINY_DUAL_CPU

TINY = {**TINY_DUAL_CPU, "train": {"warmup_steps": 0}}


def _opts(data: Path, out: Path, **kw: object) -> dict:
    base = dict(
        data=str(data),
        out=str(out),
        model="dual-cpu",
        epochs=2,
        batch_size=16,
        val_size=16,
        overrides=TINY,
        progress=False,
        lr=3e-3,
    )
    base.update(kw)
    return asdict(TrainOptions(**base))  # type: ignore[arg-type]


def test_training_lowers_the_loss_and_writes_a_checkpoint(fake_pairs: Path, tmp_path: Path) -> None:
    # fp32 whatever the CPU (bf16 is chosen only where the CPU has it), so every machine runs the same sums
    fp32 = {**TINY, "train": {**TINY["train"], "precision": "fp32"}}
    summary = train_func(_opts(fake_pairs, tmp_path / "ck", epochs=6, overrides=fp32))
    history = [json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    epochs = [h for h in history if h["kind"] == "epoch"]
    assert [h["epoch"] for h in epochs] == list(range(1, 7))
    # chance level is log(16) = 2.77 for a batch of 16; learning takes the loss well below the first epoch's
    assert epochs[-1]["loss"] < 0.9 * epochs[0]["loss"]
    assert summary["epochs"] == 6 and summary["train_pairs"] == 64  # 80 train places, 16 held out
    card = json.loads((tmp_path / "ck" / "model_card.json").read_text())
    assert card["data"]["track"] == "aligned" and len(card["data"]["manifest_digest"]) == 64
    assert card["train"]["precision"] == "fp32"
    assert card["metrics"]["val"]["R@1"] >= 0 and card["config"]["embed_dim"] == 32
    emb = Embedder.from_checkpoint(str(tmp_path / "ck"), device="cpu")
    assert emb.model_id == card["model_id"] and emb.embed_dim == 4 * 32  # dual-cpu's 4 test-time views


def test_same_seed_same_weights_on_cpu(fake_pairs: Path, tmp_path: Path) -> None:
    train_func(_opts(fake_pairs, tmp_path / "a", epochs=1, seed=5))
    train_func(_opts(fake_pairs, tmp_path / "b", epochs=1, seed=5))
    train_func(_opts(fake_pairs, tmp_path / "c", epochs=1, seed=6))
    a, b, c = (torch.load(tmp_path / x / "model.pt", weights_only=False)["state_dict"] for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert "train_state" not in torch.load(tmp_path / "a" / "optimizer.pt", weights_only=False)  # no average


def _run_dying_after(opts: dict, monkeypatch: pytest.MonkeyPatch, checkpoints: int = 2) -> None:
    """Run ``opts`` and let it die (KeyboardInterrupt) right after that many epochs' checkpoints."""
    import wherecnn.train.loop as loop_module

    saved, calls = loop_module.save_checkpoint, []

    def crash(*args: object, **kwargs: object) -> object:
        out = saved(*args, **kwargs)
        calls.append(1)
        if len(calls) == checkpoints:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(loop_module, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        train_func(opts)
    monkeypatch.setattr(loop_module, "save_checkpoint", saved)


def test_weight_average_is_what_the_checkpoint_publishes_and_a_resumed_run_matches(
    fake_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ema = {**TINY, "train": {"warmup_steps": 0, "ema": 0.9}}
    train_func(_opts(fake_pairs, tmp_path / "a", epochs=3, overrides=ema))
    published = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"]
    trained = torch.load(tmp_path / "a" / "optimizer.pt", weights_only=False)["train_state"]
    assert published.keys() == trained.keys()
    assert not torch.equal(published["ground_head.column.weight"], trained["ground_head.column.weight"])

    # a run that dies after epoch 2's checkpoint, resumed, ends with the same average and trained weights
    _run_dying_after(_opts(fake_pairs, tmp_path / "b", epochs=3, overrides=ema), monkeypatch)
    train_func(_opts(fake_pairs, tmp_path / "b", epochs=3, overrides=ema, resume=True))
    for name in ("model.pt", "optimizer.pt"):
        key = "state_dict" if name == "model.pt" else "train_state"
        a, b = (torch.load(tmp_path / x / name, weights_only=False)[key] for x in "ab")
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_budget_mode_stops_and_photo_track_trains(fake_pairs: Path, tmp_path: Path) -> None:
    summary = train_func(
        _opts(fake_pairs, tmp_path / "p", epochs=None, minutes=0.05, track="photo", protocol="cross-area")
    )
    assert summary["epochs"] >= 1 and summary["elapsed_s"] < 60
    card = json.loads((tmp_path / "p" / "model_card.json").read_text())
    assert card["data"]["protocol"] == "cross-area" and card["data"]["track"] == "photo"


def test_offset_track_can_train_on_camera_centred_tiles(fake_pairs: Path, tmp_path: Path) -> None:
    from wherecnn.evaluate.evaluation import model_gallery_centres

    offset = {"pairs": "centred", "augment_shift": 0.05, "gallery_centres": 3}
    train_func(
        _opts(fake_pairs, tmp_path / "o", epochs=1, track="offset", overrides={**TINY, "offset": offset})
    )
    card = json.loads((tmp_path / "o" / "model_card.json").read_text())
    assert card["data"]["track"] == "offset" and card["data"]["pairs_track"] == "aligned"
    assert model_gallery_centres(card["config"], "offset") == 3
    assert model_gallery_centres(card["config"], "aligned") == 1
    plain = {"pairs": "track", "gallery_centres": 1}
    train_func(
        _opts(fake_pairs, tmp_path / "p", epochs=1, track="offset", overrides={**TINY, "offset": plain})
    )
    card = json.loads((tmp_path / "p" / "model_card.json").read_text())
    assert card["data"]["pairs_track"] == "offset" and model_gallery_centres(card["config"], "offset") == 1


@pytest.mark.parametrize(("track", "pairs"), [("offset", "centred"), ("photo", "panorama")])
def test_shift_curriculum_moves_the_shift_epoch_by_epoch(
    track: str, pairs: str, fake_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both tracks that train on camera-centred tiles (offset's; photo's, cut from the same panoramas) can
    shift them, with the curriculum from their own section."""
    shifts: list[float] = []

    class Spy(PairDataset):
        def batch(self, indices: Sequence[int], augment: bool = True) -> dict:
            if augment and self.augment:
                shifts.append(float(self.augment["shift"]))
            return super().batch(indices, augment)

    monkeypatch.setattr("wherecnn.train.data.PairDataset", Spy)
    section = {"pairs": pairs, "augment_shift": 0.05, "shift_start": 0.0, "shift_anneal": 0.5}
    train_func(_opts(fake_pairs, tmp_path / "o", epochs=2, track=track, overrides={**TINY, track: section}))
    # epoch 1 of 2 starts at shift_start, epoch 2 (half-way, the end of the anneal) at augment_shift
    assert shifts and sorted(set(shifts)) == [0.0, 0.05] and shifts[0] == 0.0 and shifts[-1] == 0.05


def test_turned_negatives_follow_the_track_section(
    fake_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """offset.turned_negatives turns them on for a model trained on offset, not on another track."""
    import wherecnn.train.loop as loop

    asked: list[bool] = []
    make_loss = loop.make_loss

    def spy(config: dict, *, turned_negatives: bool = False):  # type: ignore[no-untyped-def]
        asked.append(turned_negatives)
        return make_loss(config, turned_negatives=turned_negatives)

    monkeypatch.setattr(loop, "make_loss", spy)
    overrides = {**TINY, "offset": {"pairs": "track", "turned_negatives": True}}
    train_func(_opts(fake_pairs, tmp_path / "o", epochs=1, track="offset", overrides=overrides))
    train_func(_opts(fake_pairs, tmp_path / "a", epochs=1, track="aligned", overrides=overrides))
    assert asked == [True, False]


def test_photo_track_can_train_on_photos_cut_from_panoramas(fake_pairs: Path, tmp_path: Path) -> None:
    for pairs, trained_on in (("panorama", "aligned"), ("track", "photo")):
        # with a field-of-view curriculum (from panoramas: epoch 1 of 2 cuts whole canvases, epoch 2 photos)
        overrides = {**TINY, "photo": {"pairs": pairs, "fov_start_deg": 360, "fov_anneal": 0.5}}
        train_func(_opts(fake_pairs, tmp_path / pairs, epochs=2, track="photo", overrides=overrides))
        card = json.loads((tmp_path / pairs / "model_card.json").read_text())
        assert card["data"]["track"] == "photo" and card["data"]["pairs_track"] == trained_on


def test_killed_run_resumes_to_the_end(fake_pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "wherecnn",
        "train",
        "--data",
        str(fake_pairs),
        "--out",
        str(out),
        "--epochs",
        "5",
        "--batch-size",
        "16",
        "--val-size",
        "16",
        "--no-progress",
        "--seed",
        "1",
    ]
    for key, value in TINY.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    card = out / "model_card.json"
    deadline = time.time() + 240
    while not card.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert card.exists(), proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    # killed as soon as the first checkpoint lands: the run is inside a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resume_point = load_checkpoint(str(out))  # the card lags when the kill came while it was being written
    assert resume_point is not None
    done_before = resume_point["loop"]["epoch"]
    assert done_before < 5
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from epoch {done_before}" in resumed.stdout + resumed.stderr
    final = json.loads(card.read_text())
    assert final["epoch"] == 5
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["kind"] == "epoch"] == [1, 2, 3, 4, 5]


def test_bad_inputs_fail_clearly(fake_pairs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of epochs or minutes"):
        TrainOptions(data=str(fake_pairs), out=str(tmp_path), epochs=1, minutes=1.0)
    with pytest.raises(ValueError, match="fewer than|< batch"):
        train_func(_opts(fake_pairs, tmp_path / "x", batch_size=512))


def test_fresh_places_train_and_resume_the_same_pool(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New places per epoch: a resumed run rebuilds the same pool -- and the neighbour table mined at epoch
    2, carried over to epoch 3's pool -- and ends where a straight run does."""
    mining = {**TINY, "train": {"warmup_steps": 0, "mine_every": 2, "mine_k": 8}}
    kw = dict(fresh_places=32, fresh_epochs=2, protocol="same-area", val_size=8, epochs=4, overrides=mining)
    straight = train_func(_opts(tiny_world, tmp_path / "a", **kw))
    assert straight["train_pairs"] == 64 and straight["fresh_places_per_epoch"] == 32
    card = json.loads((tmp_path / "a" / "model_card.json").read_text())
    assert card["data"]["fresh_places"] == 32 and card["data"]["fresh_epochs"] == 2

    _run_dying_after(_opts(tiny_world, tmp_path / "b", **kw), monkeypatch, checkpoints=3)
    resumed = train_func(_opts(tiny_world, tmp_path / "b", resume=True, **kw))
    assert resumed["epochs"] == 4 and resumed["train_pairs"] == 64
    a, b = (torch.load(tmp_path / x / "model.pt", weights_only=False)["state_dict"] for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fresh_pools_keep_mined_batches_between_minings(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mined every 2 epochs on a pool that renews a share every epoch: the epoch between minings still
    trains on mined batches, the table carried over to it -- the new places without mined neighbours."""
    import wherecnn.train.data as data_module

    tables: dict[int, np.ndarray] = {}

    class Recording(MinedBatchSampler):
        def set_epoch(self, epoch: int) -> None:
            tables[epoch] = self.neighbours
            super().set_epoch(epoch)

    monkeypatch.setattr(data_module, "MinedBatchSampler", Recording)
    overrides = {**TINY, "train": {"mine_every": 2, "mine_k": 8, "neighbours_per_group": 4}}
    kw = dict(
        fresh_places=32, fresh_epochs=2, protocol="same-area", val_size=8, epochs=4, overrides=overrides
    )
    train_func(_opts(tiny_world, tmp_path / "m", **kw))
    assert sorted(tables) == [2, 3]  # epochs 0-1 group by GPS, then every epoch is mined
    mined, carried = tables[2], tables[3]
    assert mined.shape == carried.shape == (64, 8) and (mined >= 0).all()
    assert (carried[32:] == -1).all()  # epoch 3's new places: no neighbours until the next mining
    # epoch 2's places (rows 32-63 then, 0-31 now) keep their neighbours among them, which moved up too
    kept = mined[32:]
    assert (carried[:32] == np.where(kept >= 32, kept - 32, -1)).all()


def test_a_track_section_sets_its_own_fresh_pool_and_lr(tiny_world: Path, tmp_path: Path) -> None:
    """dual-cpu's offset and photo sections render fewer places an epoch and keep each longer, and its
    offset section trains at a higher learning rate."""
    section = {"fresh_places": 32, "fresh_epochs": 2, "lr": 0.002}
    for track in ("offset", "aligned"):
        overrides = {**TINY, "train": {"warmup_steps": 0, "fresh_places": 48, "lr": 0.001}, "offset": section}
        kw = dict(track=track, protocol="same-area", val_size=8, epochs=1, overrides=overrides, lr=None)
        train_func(_opts(tiny_world, tmp_path / track, **kw))
        card = json.loads((tmp_path / track / "model_card.json").read_text())
        got = (card["data"]["fresh_places"], card["data"]["fresh_epochs"], card["train"]["lr"])
        assert got == ((32, 2, 0.002) if track == "offset" else (48, 3, 0.001))  # aligned: train's


def test_fresh_places_for_photos_are_panoramas(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The photo track cuts its photos from fresh panoramas (not from already-cut 90-degree photos); the
    config's train.fresh_worlds sets how many new cities each epoch builds."""
    from wherecnn.data.synthetic import fresh as fresh_module

    drawn: list[tuple[str, tuple[int, ...], int]] = []

    class Recording(fresh_module.FreshPlaces):
        def sample(self, n: int, *, epoch: int):  # type: ignore[no-untyped-def]
            frame, grounds, tiles = super().sample(n, epoch=epoch)
            drawn.append((self.track, grounds[0].shape, self.new_worlds))
            return frame, grounds, tiles

    monkeypatch.setattr(fresh_module, "FreshPlaces", Recording)
    kw = dict(fresh_places=16, track="photo", protocol="same-area", val_size=8, epochs=1)
    train_func(
        _opts(
            tiny_world,
            tmp_path / "p",
            overrides=TINY | {"train": {"warmup_steps": 0, "fresh_worlds": 3}},
            **kw,
        )
    )
    assert drawn and all(track == "aligned" and worlds == 3 for track, _, worlds in drawn)
    height, width = drawn[0][1][:2]
    assert width == 4 * height  # a 360-degree panorama
