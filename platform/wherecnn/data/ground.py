"""Ground-image geometry: a panorama or photo as the model sees it (resized, on a 360-degree canvas at its
compass heading, or reprojected onto a cylinder of bearings and elevations), and photos cut from canvases.

Conventions (docs/contracts.md): a panorama's left edge faces its ``heading_deg`` (0 = north), azimuth grows
clockwise to the right; a photo's centre faces ``heading_deg``; aerial tiles are north-up. A photo is placed
on a 360-degree canvas at its compass heading (``ground_layout="canvas"``), so one north-up tile gallery
serves panoramas and photos alike: using the compass heading is then equivalent to rotating the tile
heading-up, without re-embedding the gallery per query. Training and the `Embedder` both prepare images here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from wherecnn.data.normalise import MEAN_RGB


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size (h, w), antialiased (box filter when shrinking)."""
    h, w = size
    if image.shape[0] == h and image.shape[1] == w:
        return np.ascontiguousarray(image)
    pil = Image.fromarray(image)
    shrinking = image.shape[0] >= h and image.shape[1] >= w
    return np.asarray(pil.resize((w, h), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR))


DEFAULT_GROUND_LAYOUT = "canvas"  # a model config's default ``ground_layout`` (models.schema)
CANVAS_LAYOUTS = ("canvas", "cylinder")  # ground layouts on a 360-degree canvas (bearings can be turned)
CANVAS_VFOV_DEG = 90.0  # the canvas's default span of elevation about the horizon (the synthetic panoramas')


def image_fov(image: np.ndarray, fov_deg: float | None) -> float:
    """A ground image's horizontal field of view: ``fov_deg`` when given, else 360 for a panorama (at least
    twice as wide as high) and 90 for a photo."""
    if fov_deg is not None:
        return float(fov_deg)
    return 360.0 if image.shape[1] >= 2 * image.shape[0] else 90.0


def ground_view(
    image: np.ndarray,
    size: tuple[int, int],
    *,
    heading_deg: float | None = None,
    fov_deg: float | None = None,
    layout: str = DEFAULT_GROUND_LAYOUT,
    canvas_vfov_deg: float = CANVAS_VFOV_DEG,
) -> np.ndarray:
    """A ground image as the ground branch expects it: north at the left edge of a 360-degree canvas.

    Panoramas (fov >= 360, or None) are resized and rolled so the left edge faces north. Photos (unknown
    heading: assumed north) are, with ``layout="canvas"``, resized to their share of the canvas width and
    pasted centred on their heading; with ``layout="cylinder"`` reprojected so every canvas pixel shows the
    bearing and elevation a panorama shows there (`cylinder_view`; the canvas spans ``canvas_vfov_deg``
    about the horizon). ``layout="resize"`` just resizes (for models trained on photos without compass).
    """
    h, w = size
    fov = 360.0 if fov_deg is None or (isinstance(fov_deg, float) and math.isnan(fov_deg)) else float(fov_deg)
    heading = 0.0 if heading_deg is None or math.isnan(float(heading_deg)) else float(heading_deg)
    if layout == "resize":
        return resize(image, size)
    if layout not in CANVAS_LAYOUTS:
        raise ValueError(f"ground_layout must be one of {(*CANVAS_LAYOUTS, 'resize')}, got {layout!r}")
    if fov >= 359.5:
        out = resize(image, size)
        shift = int(round(heading / 360.0 * w)) % w
        return np.roll(out, shift, axis=1) if shift else out
    if layout == "cylinder":
        return cylinder_view(image, size, heading_deg=heading, fov_deg=fov, canvas_vfov_deg=canvas_vfov_deg)
    pw = max(1, min(w, int(round(fov / 360.0 * w))))
    photo = resize(image, (h, pw))
    canvas = np.empty((h, w, 3), dtype=np.uint8)
    canvas[:] = MEAN_RGB
    start = int(round((heading - fov / 2.0) / 360.0 * w))
    cols = (np.arange(pw) + start) % w
    canvas[:, cols] = photo
    return canvas


def cylinder_view(
    photo: np.ndarray,
    size: tuple[int, int],
    *,
    heading_deg: float,
    fov_deg: float,
    canvas_vfov_deg: float = CANVAS_VFOV_DEG,
) -> np.ndarray:
    """A level pinhole photo (``fov_deg`` across its width, square pixels) reprojected onto the 360-degree
    canvas (north at the left edge; rows from +``canvas_vfov_deg``/2 down to -``canvas_vfov_deg``/2 of
    elevation, as the panoramas span): each canvas pixel samples the photo pixel that looks in its direction,
    so a photo of any field of view or aspect lands on the bearings and elevations where a panorama shows
    the same things. Outside the photo the canvas is blank (`MEAN_RGB`)."""
    return cylinder_views(
        photo[None], size, headings_deg=[heading_deg], fov_deg=fov_deg, canvas_vfov_deg=canvas_vfov_deg
    )[0]


def cylinder_views(
    photos: np.ndarray,
    size: tuple[int, int],
    *,
    headings_deg: Sequence[float] | np.ndarray,
    fov_deg: float,
    canvas_vfov_deg: float = CANVAS_VFOV_DEG,
) -> np.ndarray:
    """`cylinder_view` of a batch of photos of one size and field of view (B x h x w x 3), each at its own
    heading, in one pass (the photo track cuts a batch's photos every step)."""
    h, w = size
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"a pinhole photo's fov_deg must be in (0, 180), got {fov_deg}")
    half = math.radians(fov_deg) / 2.0
    across = max(2, min(w, round(fov_deg / 360.0 * w)))  # canvas columns the photo spans
    if photos.shape[2] > across:  # shrink (box filter) to about the canvas's resolution, then sample
        small = (max(2, round(photos.shape[1] * across / photos.shape[2])), across)
        photos = np.stack([resize(p, small) for p in photos])
    b, ph, pw = photos.shape[:3]
    f = (pw / 2.0) / math.tan(half)
    bearing = (np.arange(w) + 0.5) * (2 * math.pi / w)
    heading = np.radians(np.asarray(headings_deg, dtype=np.float64))[:, None]
    rel = np.remainder(bearing[None, :] - heading + math.pi, 2 * math.pi) - math.pi  # [B, W]
    seen = np.abs(rel) < half  # the canvas columns each photo covers: one run (around the seam) each
    first = np.argmax(seen & ~np.roll(seen, 1, axis=1), axis=1)
    cols = (first[:, None] + np.arange(int(seen.sum(axis=1).max()))) % w  # [B, C], C = the widest run
    valid = np.take_along_axis(seen, cols, axis=1)
    rel = np.where(valid, np.take_along_axis(rel, cols, axis=1), 0.0)[:, None, :]  # [B, 1, C]
    vfov = math.radians(canvas_vfov_deg)
    elevation = vfov / 2.0 - (np.arange(h) + 0.5) * (vfov / h)
    x = np.broadcast_to(pw / 2.0 + np.tan(rel) * f - 0.5, (b, h, cols.shape[1]))
    y = ph / 2.0 - np.tan(elevation)[None, :, None] / np.cos(rel) * f - 0.5  # [B, H, C]
    inside = (y >= -0.5) & (y <= ph - 0.5) & valid[:, None, :]
    x0 = np.clip(np.floor(x), 0, pw - 2).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, ph - 2).astype(np.int64)
    fx = np.clip(x - x0, 0.0, 1.0)[..., None]
    fy = np.clip(y - y0, 0.0, 1.0)[..., None]
    # the bilinear blend in torch (both cores; the same float64 arithmetic as numpy's, so the same bytes)
    img = torch.from_numpy(np.ascontiguousarray(photos)).reshape(-1, 3).float()
    at = torch.from_numpy((np.arange(b)[:, None, None] * ph + y0) * pw + x0)  # flat index of (y0, x0)
    fx_t, fy_t = torch.from_numpy(fx), torch.from_numpy(fy)
    top = img[at] * (1 - fx_t) + img[at + 1] * fx_t
    bottom = img[at + pw] * (1 - fx_t) + img[at + pw + 1] * fx_t
    sampled = torch.round(top * (1 - fy_t) + bottom * fy_t).clamp_(0, 255).to(torch.uint8)
    blank = torch.tensor(MEAN_RGB, dtype=torch.uint8)
    filled = torch.where(torch.from_numpy(inside)[..., None], sampled, blank)
    canvas = blank.expand(b, h, w, 3).contiguous()
    canvas.scatter_(2, torch.from_numpy(cols)[:, None, :, None].expand(filled.shape), filled)
    return canvas.numpy()


def photo_from_canvas(
    canvas: np.ndarray,
    heading_deg: float,
    fov_deg: float,
    layout: str,
    canvas_vfov_deg: float = CANVAS_VFOV_DEG,
) -> np.ndarray:
    """A pinhole photo facing ``heading_deg``, cut from a north-aligned panorama canvas the way the synthetic
    world cuts its photos (`photos_from_panoramas`), laid out as the ground branch expects it.

    Training the `photo` track on a place's panorama sees a new heading of it every epoch, where its photo
    file shows one.
    """
    return photos_from_canvases(canvas[None], [heading_deg], fov_deg, layout, canvas_vfov_deg)[0]


def photos_from_canvases(
    canvases: np.ndarray,
    headings_deg: Sequence[float] | np.ndarray,
    fov_deg: float,
    layout: str,
    canvas_vfov_deg: float = CANVAS_VFOV_DEG,
) -> np.ndarray:
    """`photo_from_canvas` for a batch of canvases (B x H x W x 3), each cut at its own heading."""
    from wherecnn.data.synthetic.render import photos_from_panoramas

    headings = np.asarray(headings_deg, dtype=np.float64)
    size = canvases.shape[1:3]
    photos = photos_from_panoramas(
        np.array(canvases), headings, size=size[0], fov_deg=fov_deg, pano_vfov_deg=canvas_vfov_deg
    )
    if layout == "cylinder":
        return cylinder_views(
            photos, size, headings_deg=headings, fov_deg=fov_deg, canvas_vfov_deg=canvas_vfov_deg
        )
    return np.stack(
        [
            ground_view(
                p, size, heading_deg=float(h), fov_deg=fov_deg, layout=layout, canvas_vfov_deg=canvas_vfov_deg
            )
            for p, h in zip(photos, headings, strict=True)
        ]
    )


def sector_of_canvas(canvas: np.ndarray, heading_deg: float, fov_deg: float) -> np.ndarray:
    """The ``fov_deg`` sector of a north-aligned panorama canvas centred on ``heading_deg``, the rest blank
    (as a photo's canvas is outside its field of view); the whole canvas from 360 degrees up."""
    if fov_deg >= 360.0:
        return canvas
    w = canvas.shape[1]
    bearing = (np.arange(w) + 0.5) * 360.0 / w
    off = np.abs((bearing - heading_deg + 180.0) % 360.0 - 180.0)
    out = canvas.copy()
    out[:, off > fov_deg / 2.0] = MEAN_RGB
    return out
