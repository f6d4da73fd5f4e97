"""`Embedder`: the one object index and search use to turn images into vectors (docs/contracts.md).

It hides the model's input sizes, normalisation and the ground layout (photos placed on a 360-degree canvas
at their compass heading), so callers pass plain HxWx3 uint8 images.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from wherecnn.data.ground import ground_view, image_fov, resize
from wherecnn.data.normalise import to_tensor
from wherecnn.models import TwoBranchModel, build_model, model_from_config
from wherecnn.models.schema import validate_config

MODEL_FILE = "model.pt"
CARD_FILE = "model_card.json"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Embedder:
    """Inference wrapper around a `TwoBranchModel` (eval mode, no grad, batched)."""

    def __init__(
        self,
        model: TwoBranchModel,
        *,
        model_id: str,
        card: dict[str, Any] | None = None,
        device: str = "auto",
        batch_size: int = 64,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.place(self.device).eval()
        self.model_id = model_id
        self.card: dict[str, Any] = card or {"model_id": model_id, "config": model.config}
        self.batch_size = batch_size
        cfg = model.config
        self.mean, self.std = cfg["mean"], cfg["std"]
        self.ground_layout = str(cfg["ground_layout"])
        self.canvas_vfov_deg = float(cfg["canvas_vfov_deg"])

    # ------------------------------------------------------------ construction
    @classmethod
    def untrained(cls, name: str = "dual-cpu", seed: int = 0, device: str = "cpu") -> Embedder:
        """A randomly initialised model (seeded): for tests and benchmarks, never for results."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(name)
        return cls(model, model_id=f"{name}-untrained-s{seed}", device=device)

    @classmethod
    def from_checkpoint(cls, uri: str, device: str = "auto", tta: dict[str, Any] | None = None) -> Embedder:
        """Load ``model.pt`` (+ ``model_card.json``) from a local checkpoint dir or an s3:// prefix.

        ``tta`` replaces the stored config's test-time views (`TwoBranchModel.test_views`; ``{}``: one plain
        view); the model id then says so, since the vectors change."""
        from wherecnn import storage

        model_uri = storage.join(str(uri), MODEL_FILE)
        try:
            blob = storage.read_bytes(model_uri)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"checkpoint {uri}: no {MODEL_FILE} (is this a `wherecnn train --out` dir?)"
            ) from exc
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
        if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
            raise ValueError(f"{model_uri}: expected a dict with 'state_dict' and 'config'")
        config = dict(payload["config"])
        if tta is not None:
            config["tta"] = dict(tta)
        model = model_from_config(config)
        model.test_views()  # a bad tta fails here, not at the first image
        model.load_state_dict(payload["state_dict"])
        card: dict[str, Any] = {}
        card_uri = storage.join(str(uri), CARD_FILE)
        if storage.exists(card_uri):
            card = json.loads(storage.read_bytes(card_uri))
        model_id = str(
            card.get("model_id") or f"{payload['config']['name']}-{hashlib.sha256(blob).hexdigest()[:12]}"
        )
        if tta is not None and model.config["tta"] != validate_config(payload["config"])["tta"]:
            model_id = f"{model_id}-tta{len(model.test_views())}"
            card = {**card, "model_id": model_id}
        card.setdefault("model_id", model_id)
        # the config as the model reads it: checked, each setting a stored config predates at its default
        card = {**card, "config": model.config}
        return cls(model, model_id=model_id, card=card, device=device)

    # ------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """Vector length: the model's ``embed_dim`` per test-time view (config ``tta``)."""
        return self.model.output_dim

    @property
    def ground_size(self) -> tuple[int, int]:
        return self.model.ground_size

    @property
    def aerial_size(self) -> tuple[int, int]:
        return self.model.aerial_size

    # ------------------------------------------------------------ embedding
    def aerial(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """North-up tiles (any size) -> [N, d] float32, L2-normalised."""
        prepared = [resize(_rgb(im), self.aerial_size) for im in images]
        return self._run(prepared, self.model.embed_aerial_views)

    def aerial_first_view(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """North-up tiles -> [N, embed_dim]: the first test-time view alone (as is, unturned), L2-normalised.

        A quarter of `aerial`'s work with `dual-cpu`'s four views; compare with `first_view(query)`."""
        prepared = [resize(_rgb(im), self.aerial_size) for im in images]
        return self._run(prepared, self._first_aerial)

    def _first_aerial(self, x: torch.Tensor) -> torch.Tensor:
        mirror, turn = self.model.test_views()[0]
        v = torch.flip(x, dims=[3]) if mirror else x
        return torch.nn.functional.normalize(self.model.turned_aerial_features(v, turn).float(), dim=-1)

    def first_view(self, vector: np.ndarray) -> np.ndarray:
        """The first test-time view's part of a vector `ground` or `aerial` made, L2-normalised."""
        part = np.asarray(vector, dtype=np.float32).reshape(-1)[: int(self.model.config["embed_dim"])]
        return part / max(float(np.linalg.norm(part)), 1e-12)

    def ground(
        self,
        images: Sequence[np.ndarray],
        *,
        heading_deg: Sequence[float | None] | float | None = None,
        fov_deg: Sequence[float | None] | float | None = None,
    ) -> np.ndarray:
        """Panoramas (left edge = heading, default north) or photos (fov < 360, centred on heading).

        ``fov_deg`` None means: a panorama when the image is at least twice as wide as tall, else a 90-degree
        photo. A photo's heading, when known, places it on the canvas where the tile's bearings are.
        """
        n = len(images)
        headings = _per_image(heading_deg, n, "heading_deg")
        fovs = _per_image(fov_deg, n, "fov_deg")
        prepared = [self.ground_input(im, h, f) for im, h, f in zip(images, headings, fovs, strict=True)]
        return self._run(prepared, self.model.embed_ground_views)

    def ground_headings(
        self, image: np.ndarray, headings_deg: Sequence[float], *, fov_deg: float | None = None
    ) -> np.ndarray:
        """One ground image embedded at each of ``headings_deg`` ([len(headings), output_dim], as `ground`
        would give one by one). A model with bearing columns turns by whole columns without a forward pass
        (`TwoBranchModel.turn_ground_vectors`): one pass per distinct remainder of a column."""
        headings = [float(h) % 360.0 for h in headings_deg]
        cols = self.model.embedding_columns
        if cols is None:
            return self.ground([image] * len(headings), heading_deg=headings, fov_deg=fov_deg)
        step = 360.0 / cols
        turns = [int(h // step) for h in headings]
        remainders = [round(h - t * step, 6) for h, t in zip(headings, turns, strict=True)]
        distinct = sorted(set(remainders))
        vectors = self.ground([image] * len(distinct), heading_deg=distinct, fov_deg=fov_deg)
        base = dict(zip(distinct, vectors, strict=True))
        out = np.empty((len(headings), self.embed_dim), dtype=np.float32)
        for i, (r, t) in enumerate(zip(remainders, turns, strict=True)):
            out[i] = self.model.turn_ground_vectors(base[r][None], t)[0] if t else base[r]
        return out

    def ground_input(
        self, image: np.ndarray, heading_deg: float | None = None, fov_deg: float | None = None
    ) -> np.ndarray:
        """One ground image as the model sees it (uint8 canvas, `ground_view` with the config's layout);
        ``fov_deg`` None as in `ground`."""
        im = _rgb(image)
        return ground_view(
            im,
            self.ground_size,
            heading_deg=heading_deg,
            fov_deg=image_fov(im, fov_deg),
            layout=self.ground_layout,
            canvas_vfov_deg=self.canvas_vfov_deg,
        )

    @torch.inference_mode()
    def _run(self, images: list[np.ndarray], fn: Any) -> np.ndarray:
        if not images:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = []
        for start in range(0, len(images), self.batch_size):
            x = to_tensor(np.stack(images[start : start + self.batch_size]), self.mean, self.std).to(
                self.device
            )
            out.append(fn(x).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Embedder({self.model_id!r}, dim={self.embed_dim}, device={self.device})"


def _rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _per_image(value: Sequence[float | None] | float | None, n: int, name: str) -> list[float | None]:
    if value is None or isinstance(value, int | float):
        v = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        return [v] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name}: got {len(values)} values for {n} images")
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]
