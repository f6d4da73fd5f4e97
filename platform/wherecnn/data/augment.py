"""Augmentation of a training pair: the ground view and its tile turned, mirrored, zoomed and shifted
together so the pair still matches; and the one change that does not, a compass error (the ground view
turned alone)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from wherecnn.data.normalise import MEAN_RGB


def zoom_range(scale: Sequence[float], *, has_windows: bool) -> tuple[float, float]:
    """The zoom augmentation's range (lo, hi) that pairs can use: showing more ground than a tile (hi > 1)
    needs the raster window around it, so pairs without one zoom in only (hi capped at 1)."""
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi:
        raise ValueError(f"augment scale must be 0 < lo <= hi, got {list(scale)}")
    return (lo, hi) if has_windows else (min(lo, 1.0), min(hi, 1.0))


def zoom_tile(context: np.ndarray, context_scale: float, scale: float, size: tuple[int, int]) -> np.ndarray:
    """The tile seen at ``scale`` times its ground side, from ``context``: the same centre seen at
    ``context_scale`` times the side (``scale`` <= ``context_scale``), resized to ``size``.

    A world scaled uniformly (streets, blocks and building heights) gives the same panorama from a camera at
    the same place: only the camera's height does not scale. So a tile showing more ground (``scale`` > 1)
    with the same panorama is a city whose streets and blocks are that much smaller, and ``scale`` < 1 a
    bigger one: the model learns layouts at scales its training cities lack.
    """
    if scale > context_scale + 1e-6:
        raise ValueError(f"zoom {scale} needs context of at least that many tile sides, not {context_scale}")
    side = context.shape[0] * scale / context_scale
    r0 = (context.shape[0] - side) / 2
    c0 = (context.shape[1] - side * context.shape[1] / context.shape[0]) / 2
    box = (c0, r0, context.shape[1] - c0, context.shape[0] - r0)
    pil = Image.fromarray(np.ascontiguousarray(context))
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box))


# the changes `augment_pair` takes from a dataset's ``augment`` settings, and the defaults of the two that
# are on unless set (a model config's ``train.augment_rotation``/``augment_flip``: models.schema)
PAIR_AUGMENTS = ("rotation", "flip", "color", "shift", "heading")
DEFAULT_ROTATION = "quarter"
DEFAULT_FLIP = True


def augment_pair(
    ground: np.ndarray,
    aerial: np.ndarray,
    rng: np.random.Generator,
    *,
    rotation: str = DEFAULT_ROTATION,
    flip: bool = DEFAULT_FLIP,
    color: float = 0.0,
    shift: float = 0.0,
    heading: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random change of viewpoint (and of palette) to both views, so the pair still matches.

    A roll of the north-aligned canvas by angle a (its left edge now faces a) goes with rotating the tile
    counter-clockwise by a (bearing a now points up). A mirror of the canvas (heading h -> -h) goes with a
    left-right mirror of the tile. ``rotation``: "none", "quarter" (exact 90-degree steps), "any".
    ``color`` > 0 scales the RGB channels of both views by the same random gains (log-normal, that sigma):
    a city with another palette looks like this, so the model learns to match colours rather than know them.
    ``shift`` > 0 moves the tile by up to that fraction of its side along each axis (edges repeated): the
    camera is then that far off the tile's centre, so the model tolerates a gallery view centred near, not
    on, the camera (the `offset` track's multi-centre gallery).
    ``heading`` > 0 then turns the ground view alone by a uniform angle within +/- that many degrees (whole
    canvas columns): the heading the canvas was placed at is that far off, as a phone compass's often is, so
    the model learns to match a view whose heading is not exact. Drawn last: the other changes draw the same.
    """
    w = ground.shape[1]
    if rotation == "quarter":
        k = int(rng.integers(4))
        if k:
            ground = np.roll(ground, -k * w // 4, axis=1)
            aerial = np.rot90(aerial, k)
    elif rotation == "any":
        roll = int(rng.integers(w))
        if roll:
            ground = np.roll(ground, -roll, axis=1)
            angle = 360.0 * roll / w
            pil = Image.fromarray(np.ascontiguousarray(aerial))
            aerial = np.asarray(pil.rotate(angle, Image.Resampling.BILINEAR, fillcolor=MEAN_RGB))
    elif rotation != "none":
        raise ValueError(f"augment rotation must be none|quarter|any, got {rotation!r}")
    if flip and rng.random() < 0.5:
        ground = np.roll(ground[:, ::-1], 1, axis=1)
        aerial = aerial[:, ::-1]
    if shift > 0:
        side = aerial.shape[0]
        m = max(1, round(shift * side))
        dy, dx = (int(v) for v in rng.integers(-m, m + 1, size=2))
        padded = np.pad(aerial, ((m, m), (m, m), (0, 0)), mode="edge")
        aerial = padded[m + dy : m + dy + side, m + dx : m + dx + aerial.shape[1]]
    if color > 0:
        gains = np.exp(rng.normal(0.0, color, 3)).astype(np.float32)
        ground = np.clip(ground * gains, 0, 255).astype(np.uint8)
        aerial = np.clip(aerial * gains, 0, 255).astype(np.uint8)
    if heading > 0:
        cols = int(round(rng.uniform(-heading, heading) * w / 360.0))
        if cols:
            ground = np.roll(ground, -cols, axis=1)
    return np.ascontiguousarray(ground), np.ascontiguousarray(aerial)
