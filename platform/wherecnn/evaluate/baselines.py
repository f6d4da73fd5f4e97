"""Baselines for the paper's feature comparison, with the `Embedder` interface (``.aerial``, ``.ground``).

Raw cross-view descriptors are not comparable (a HOG of a panorama and a HOG of a roof share no space), so
each baseline is a descriptor plus a linear map of both views into one space, fitted on training pairs with
regularised CCA (closed form: PCA-whiten each view, SVD of the cross-covariance). Descriptors:

- ``hog`` — histograms of oriented gradients (scikit-image);
- ``color-hist`` — HSV colour histograms, global and per strip (ground: 4 compass sectors; aerial: 2×2);
- ``gist`` — a GIST-like descriptor: Gabor filter-bank energy (4 scales × 6 orientations) on a coarse grid;
- ``deep-generic`` — a torchvision ResNet-18's globally pooled features with generic weights: ImageNet
  weights when a local weights file is given (never downloaded), else a seeded random initialisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HANDCRAFTED = ("hog", "color-hist", "gist")
DEEP = ("deep-generic",)
KINDS = (*HANDCRAFTED, *DEEP)
GROUND_SIZE = (64, 256)  # north-aligned 360° canvas, as the learned models see it
AERIAL_SIZE = (64, 64)
DEEP_GROUND_SIZE = (64, 256)
DEEP_AERIAL_SIZE = (96, 96)


# ---------------------------------------------------------------------------------------------- descriptors


def _gray(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0


def hog_descriptor(image: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    return hog(
        _gray(image), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True
    )


def color_hist_descriptor(image: np.ndarray, *, strips: tuple[int, int]) -> np.ndarray:
    """Joint HSV histogram (8×4×4 bins), whole image plus each cell of a rows×cols grid, L1-normalised."""
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(image)
    q = (
        np.minimum((hsv[..., 0] * 8).astype(int), 7) * 16
        + np.minimum((hsv[..., 1] * 4).astype(int), 3) * 4
        + np.minimum((hsv[..., 2] * 4).astype(int), 3)
    )
    rows, cols = strips
    h, w = q.shape
    parts = [np.bincount(q.ravel(), minlength=128)]
    for r in range(rows):
        for c in range(cols):
            cell = q[r * h // rows : (r + 1) * h // rows, c * w // cols : (c + 1) * w // cols]
            parts.append(np.bincount(cell.ravel(), minlength=128))
    return np.concatenate([p / max(1, p.sum()) for p in parts]).astype(np.float32)


_GABOR_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _gabor_bank(shape: tuple[int, int]) -> np.ndarray:
    """Frequency responses of 4 scales × 6 orientations of Gabor filters, for FFT filtering."""
    if shape not in _GABOR_CACHE:
        from skimage.filters import gabor_kernel

        h, w = shape
        bank = []
        for freq in (0.05, 0.1, 0.2, 0.35):
            for k in range(6):
                kern = np.real(gabor_kernel(freq, theta=np.pi * k / 6))
                kern = kern[: min(h, kern.shape[0]), : min(w, kern.shape[1])]
                padded = np.zeros(shape)
                padded[: kern.shape[0], : kern.shape[1]] = kern
                bank.append(np.fft.rfft2(padded))
        _GABOR_CACHE[shape] = np.stack(bank)
    return _GABOR_CACHE[shape]


def gist_descriptor(image: np.ndarray, *, grid: tuple[int, int]) -> np.ndarray:
    """Mean Gabor energy per filter and grid cell (Oliva & Torralba's GIST, simplified)."""
    g = _gray(image)
    g = (g - g.mean()) / (g.std() + 1e-6)
    resp = np.abs(np.fft.irfft2(np.fft.rfft2(g)[None] * _gabor_bank(g.shape), s=g.shape))
    rows, cols = grid
    n, h, w = resp.shape
    cells = (
        resp[:, : h - h % rows, : w - w % cols].reshape(n, rows, h // rows, cols, w // cols).mean(axis=(2, 4))
    )
    return cells.ravel().astype(np.float32)


# ---------------------------------------------------------------------------------------------- projection


class CrossViewCCA:
    """Regularised linear CCA between ground and aerial descriptors (closed form, no iterations).

    Each view is centred, reduced by PCA to at most ``pca_dim`` components and whitened (eigenvalues plus a
    ridge ``reg`` × their mean); the SVD of the whitened cross-covariance gives the canonical directions.
    """

    def __init__(self, dim: int = 64, *, pca_dim: int = 128, reg: float = 0.1) -> None:
        self.dim, self.pca_dim, self.reg = dim, pca_dim, reg
        self.w_ground: np.ndarray | None = None
        self.w_aerial: np.ndarray | None = None

    def _whitener(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = x.mean(axis=0)
        xc = x - mean
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        k = min(self.pca_dim, vt.shape[0])
        var = s[:k] ** 2 / max(1, x.shape[0] - 1)
        var = var + self.reg * (var.mean() if var.size else 1.0) + 1e-12
        return mean, vt[:k].T / np.sqrt(var)

    def fit(self, ground: np.ndarray, aerial: np.ndarray) -> CrossViewCCA:
        if ground.shape[0] != aerial.shape[0]:
            raise ValueError(f"CCA needs paired rows: {ground.shape[0]} ground vs {aerial.shape[0]} aerial")
        if ground.shape[0] < 3:
            raise ValueError(f"CCA needs at least 3 training pairs, got {ground.shape[0]}")
        g = ground.astype(np.float64)
        a = aerial.astype(np.float64)
        self.mean_g, wg = self._whitener(g)
        self.mean_a, wa = self._whitener(a)
        zg, za = (g - self.mean_g) @ wg, (a - self.mean_a) @ wa
        u, s, vt = np.linalg.svd(zg.T @ za / (g.shape[0] - 1), full_matrices=False)
        k = min(self.dim, s.size)
        self.correlations = s[:k]
        self.w_ground = (wg @ u[:, :k]).astype(np.float32)
        self.w_aerial = (wa @ vt[:k].T).astype(np.float32)
        return self

    def transform(self, x: np.ndarray, view: str) -> np.ndarray:
        if self.w_ground is None or self.w_aerial is None:
            raise RuntimeError("CrossViewCCA used before fit()")
        mean, w = (self.mean_g, self.w_ground) if view == "ground" else (self.mean_a, self.w_aerial)
        z = (x - mean.astype(np.float32)) @ w
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- embedders


class _DeepFeatures:
    """A torchvision ResNet-18 trunk, globally average-pooled (512-d); one instance per baseline."""

    def __init__(self, weights: str | Path | None, seed: int) -> None:
        import torch
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torchvision.models.resnet18(weights=None)
        self.source = "random-init"
        if weights is not None:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            net.load_state_dict(state)
            self.source = f"weights:{Path(weights).name}"
        net.fc = torch.nn.Identity()
        self.net = net.eval()

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        from wherecnn.data.normalise import IMAGENET_MEAN, IMAGENET_STD, to_tensor

        out = []
        with torch.inference_mode():
            for a in range(0, len(images), 32):
                x = to_tensor(np.stack(images[a : a + 32]), IMAGENET_MEAN, IMAGENET_STD)
                out.append(self.net(x).numpy())
        return np.concatenate(out).astype(np.float32)


class BaselineEmbedder:
    """A descriptor + cross-view CCA, behaving like `Embedder` (L2-normalised float32 [N, d])."""

    def __init__(self, kind: str, *, dim: int = 64, weights: str | Path | None = None, seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown baseline {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self.projection = CrossViewCCA(dim)
        self.seed = seed
        self._deep = _DeepFeatures(weights, seed) if kind in DEEP else None
        deep = self._deep is not None
        self.ground_size = DEEP_GROUND_SIZE if deep else GROUND_SIZE
        self.aerial_size = DEEP_AERIAL_SIZE if deep else AERIAL_SIZE
        self.fitted_pairs = 0

    @property
    def model_id(self) -> str:
        tag = f"-{self._deep.source}" if self._deep is not None else ""
        return f"baseline-{self.kind}{tag}-cca{self.embed_dim}"

    @property
    def embed_dim(self) -> int:
        w = self.projection.w_ground
        return int(w.shape[1]) if w is not None else self.projection.dim

    @property
    def card(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "kind": self.kind,
            "projection": "regularised CCA",
            "fitted_pairs": self.fitted_pairs,
            "weights": self._deep.source if self._deep is not None else None,
        }

    # -- raw descriptors
    def _prep_ground(self, images: Sequence[np.ndarray], headings: Any, fovs: Any) -> list[np.ndarray]:
        from wherecnn.data.ground import ground_view, image_fov
        from wherecnn.models.embedder import _per_image, _rgb

        n = len(images)
        hs, fs = _per_image(headings, n, "heading_deg"), _per_image(fovs, n, "fov_deg")
        out = []
        for im, h, f in zip(images, hs, fs, strict=True):
            im = _rgb(im)
            out.append(ground_view(im, self.ground_size, heading_deg=h, fov_deg=image_fov(im, f)))
        return out

    def _prep_aerial(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        from wherecnn.data.ground import resize
        from wherecnn.models.embedder import _rgb

        return [resize(_rgb(im), self.aerial_size) for im in images]

    def _describe(self, images: list[np.ndarray], view: str) -> np.ndarray:
        if self._deep is not None:
            return self._deep(images)
        if self.kind == "hog":
            feats = [hog_descriptor(im) for im in images]
        elif self.kind == "color-hist":
            strips = (1, 4) if view == "ground" else (2, 2)
            feats = [color_hist_descriptor(im, strips=strips) for im in images]
        else:
            grid = (2, 8) if view == "ground" else (4, 4)
            feats = [gist_descriptor(im, grid=grid) for im in images]
        return np.stack(feats).astype(np.float32)

    def ground_features(
        self, images: Sequence[np.ndarray], *, heading_deg: Any = None, fov_deg: Any = None
    ) -> Any:
        return self._describe(self._prep_ground(images, heading_deg, fov_deg), "ground")

    def aerial_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._describe(self._prep_aerial(images), "aerial")

    # -- the Embedder interface
    def fit(
        self,
        ground_images: Sequence[np.ndarray],
        aerial_images: Sequence[np.ndarray],
        *,
        heading_deg: Any = None,
        fov_deg: Any = None,
    ) -> BaselineEmbedder:
        """Fit the CCA on matching (ground, aerial) training pairs."""
        g = self.ground_features(ground_images, heading_deg=heading_deg, fov_deg=fov_deg)
        a = self.aerial_features(aerial_images)
        self.projection.fit(g, a)
        self.fitted_pairs = len(ground_images)
        return self

    def aerial(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.embed_dim), np.float32)
        return self.projection.transform(self.aerial_features(images), "aerial")

    def ground(
        self, images: Sequence[np.ndarray], *, heading_deg: Any = None, fov_deg: Any = None
    ) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.embed_dim), np.float32)
        feats = self.ground_features(images, heading_deg=heading_deg, fov_deg=fov_deg)
        return self.projection.transform(feats, "ground")

    def __repr__(self) -> str:
        return f"BaselineEmbedder({self.model_id!r})"


def fit_baseline(
    kind: str,
    data_dir: str | Path,
    *,
    protocol: str,
    track: str,
    max_pairs: int = 1500,
    dim: int = 64,
    weights: str | Path | None = None,
    seed: int = 0,
) -> BaselineEmbedder:
    """A baseline fitted on (at most ``max_pairs``) training pairs of the track under the protocol."""
    from wherecnn.data.datasets import load_pairs
    from wherecnn.evaluate.evaluation import load_images, number_or_none

    pairs = load_pairs(data_dir, track=track, protocol=protocol, split="train")
    if len(pairs) < 3:
        raise ValueError(
            f"{data_dir}: {len(pairs)} training pairs for {track!r}/{protocol!r}; CCA needs >= 3"
        )
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = pairs.iloc[np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    emb = BaselineEmbedder(kind, dim=dim, weights=weights, seed=seed)
    return emb.fit(
        load_images(list(pairs["ground_uri"])),
        load_images(list(pairs["tile_uri"])),
        heading_deg=[number_or_none(v) for v in pairs["heading_deg"]],
        fov_deg=[number_or_none(v) for v in pairs["fov_deg"]],
    )


def digest(x: np.ndarray) -> str:
    """Short content hash (tests compare fitted projections across runs)."""
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:12]
