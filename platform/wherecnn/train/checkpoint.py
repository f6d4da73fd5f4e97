"""Checkpoints: ``model.pt`` (weights + config), ``optimizer.pt`` (optimizer + loop state, and the trained
weights when ``model.pt`` holds their average),
``model_card.json``,
``metrics.jsonl``, written through `wherecnn.storage` so a local dir and an s3:// prefix work the same.

``optimizer.pt`` is the resume point: one file, written atomically (`storage.write_bytes`), that holds
everything ``--resume`` needs -- the published weights and config, the optimizer and loop state, the
history -- so a run killed while writing the other files resumes from it. It is written first; ``model.pt``,
``metrics.jsonl`` and the card, what consumers read, follow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from wherecnn import __version__, storage
from wherecnn.data.manifest import CAPTURES, PAIRS, TILES

MODEL_FILE, OPTIMIZER_FILE, CARD_FILE, METRICS_FILE = (
    "model.pt",
    "optimizer.pt",
    "model_card.json",
    "metrics.jsonl",
)


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(uri: str) -> Any:
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=False)


def manifest_digest(data_dir: str | Path) -> str:
    """sha256 over the three manifest files: which data a checkpoint was trained on."""
    h = hashlib.sha256()
    for name in (CAPTURES, TILES, PAIRS):
        h.update(name.encode())
        h.update(storage.read_bytes(storage.join(str(data_dir), name)))
    return h.hexdigest()


def git_sha() -> str | None:
    """The commit of the code that trained the model, when running from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_checkpoint(
    out: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loop_state: dict[str, Any],
    card: dict[str, Any],
    history: list[dict[str, Any]],
    train_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one epoch's checkpoint; returns the card (with ``model_id`` = name + weights digest).

    ``model`` is what consumers load (with weight averaging, the average); ``train_state``, when given, is the
    weights the optimizer is training, kept beside the optimizer for ``--resume``."""
    epoch = int(loop_state["epoch"])
    config = model.config  # type: ignore[attr-defined]
    weights = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        "epoch": epoch,
    }
    payload: dict[str, Any] = {
        "optimizer": optimizer.state_dict(),
        "loop": loop_state,
        "model": weights,
        "history": history,
    }
    if train_state is not None:
        payload["train_state"] = {k: v.detach().cpu() for k, v in train_state.items()}
    storage.write_bytes(storage.join(out, OPTIMIZER_FILE), _to_bytes(payload))
    blob = _to_bytes(weights)
    storage.write_bytes(storage.join(out, MODEL_FILE), blob)
    card = dict(card)
    card.update(
        model_id=f"{config['name']}-{hashlib.sha256(blob).hexdigest()[:12]}",
        epoch=epoch,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        code={"version": __version__, "git_sha": git_sha()},
    )
    storage.write_bytes(
        storage.join(out, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in history).encode()
    )
    storage.write_bytes(storage.join(out, CARD_FILE), json.dumps(card, indent=2, default=str).encode())
    return card


def load_checkpoint(out: str) -> dict[str, Any] | None:
    """The latest resume point under ``out`` (model, optimizer, loop, history; and the card), or None if no
    epoch finished. The weights, loop state and history come from ``optimizer.pt`` alone, so they agree even
    when the run died while writing the other files (the card may then be an epoch behind)."""
    if not storage.exists(storage.join(out, CARD_FILE)):
        return None
    card = json.loads(storage.read_bytes(storage.join(out, CARD_FILE)))
    opt = _load(storage.join(out, OPTIMIZER_FILE))
    if "model" in opt:
        model, history = opt["model"], list(opt["history"])
    else:  # written before optimizer.pt held the weights: the separate files must agree
        model = _load(storage.join(out, MODEL_FILE))
        if not (int(model["epoch"]) == int(opt["loop"]["epoch"]) == int(card["epoch"])):
            raise RuntimeError(
                f"checkpoint {out} is inconsistent (model epoch {model['epoch']}, "
                f"optimizer epoch {opt['loop']['epoch']}, card epoch {card['epoch']}): a run died while "
                "writing it; delete the folder or restore a copy"
            )
        history = []
        if storage.exists(storage.join(out, METRICS_FILE)):
            text = storage.read_bytes(storage.join(out, METRICS_FILE)).decode()
            history = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {
        "model": model,
        "optimizer": opt["optimizer"],
        "train_state": opt.get("train_state"),
        "loop": opt["loop"],
        "card": card,
        "history": history,
    }
