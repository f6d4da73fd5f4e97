"""Checkpoints: optimizer.pt is the resume point, whole on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from wherecnn import storage
from wherecnn.models import build_model
from wherecnn.train import checkpoint as ck


class Killed(Exception):
    pass


def _save(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    ck.save_checkpoint(
        str(out),
        model=model,
        optimizer=optimizer,
        loop_state={"epoch": epoch, "step": 10 * epoch},
        card={"model": "dual-cpu"},
        history=[{"kind": "epoch", "epoch": e} for e in range(1, epoch + 1)],
    )


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_its_optimizer_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model("dual-cpu", channels=[8, 8, 8, 8, 8, 8], head_channels=4, embed_dim=16)
    optimizer = torch.optim.Adam(model.parameters())
    _save(tmp_path, model, optimizer, 1)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    write = storage.write_bytes

    def killed_after_the_optimizer_file(uri: str, data: bytes) -> None:
        if not str(uri).endswith(ck.OPTIMIZER_FILE):
            raise Killed
        write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", killed_after_the_optimizer_file)
    with pytest.raises(Killed):
        _save(tmp_path, model, optimizer, 2)
    monkeypatch.undo()

    assert json.loads((tmp_path / ck.CARD_FILE).read_text())["epoch"] == 1  # model.pt and card: epoch 1
    got = ck.load_checkpoint(str(tmp_path))
    assert got is not None
    assert got["loop"]["epoch"] == got["model"]["epoch"] == 2
    assert [h["epoch"] for h in got["history"]] == [1, 2]
    assert all(torch.equal(got["model"]["state_dict"][k], v) for k, v in model.state_dict().items())
