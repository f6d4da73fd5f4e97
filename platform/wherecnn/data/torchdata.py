"""Torch data: pair dataset, view-consistent augmentation, GPS-aware and similarity-mined batch samplers.

Conventions (docs/contracts.md): a panorama's left edge faces its ``heading_deg`` (0 = north), azimuth grows
clockwise to the right; a photo's centre faces ``heading_deg``; aerial tiles are north-up. A photo is placed
on a 360-degree canvas at its compass heading (``ground_layout="canvas"``), so one north-up tile gallery
serves panoramas and photos alike: using the compass heading is then equivalent to rotating the tile
heading-up, without re-embedding the gallery per query.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from wherecnn.data.manifest import WINDOW_COLUMNS, read_captures, read_pairs, read_tiles, split_column

MEAN_RGB = (124, 116, 104)  # ImageNet mean in uint8: padding that normalises to ~0


# ------------------------------------------------------- image preparation (shared with the Embedder)
def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size (h, w), antialiased (box filter when shrinking)."""
    h, w = size
    if image.shape[0] == h and image.shape[1] == w:
        return np.ascontiguousarray(image)
    pil = Image.fromarray(image)
    shrinking = image.shape[0] >= h and image.shape[1] >= w
    return np.asarray(pil.resize((w, h), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR))


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
    layout: str = "canvas",
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


def to_tensor(
    images: np.ndarray | Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 NHWC (or one HWC) -> normalised float NCHW (or CHW): converted, transposed and normalised in
    place in one buffer (a batch's inputs every training step)."""
    arr = np.ascontiguousarray(np.asarray(images))
    if not arr.flags.writeable:  # torch warns on read-only arrays, even when it only reads them
        arr = arr.copy()
    single = arr.ndim == 3
    src = torch.from_numpy(arr[None] if single else arr).permute(0, 3, 1, 2)  # a view: nothing copied yet
    t = torch.empty(src.shape, dtype=torch.float32).copy_(src).div_(255.0)
    t.sub_(torch.tensor(mean, dtype=torch.float32)[:, None, None])
    t.div_(torch.tensor(std, dtype=torch.float32)[:, None, None])
    return t[0] if single else t


# ---------------------------------------------------------------- augmentation
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


def augment_pair(
    ground: np.ndarray,
    aerial: np.ndarray,
    rng: np.random.Generator,
    *,
    rotation: str = "quarter",
    flip: bool = True,
    color: float = 0.0,
    shift: float = 0.0,
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
    return np.ascontiguousarray(ground), np.ascontiguousarray(aerial)


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


# ---------------------------------------------------------------- dataset
def default_loader(uri: str) -> np.ndarray:
    from wherecnn.storage import load_image

    return load_image(uri)


def load_pairs(
    data_dir: str | Path, *, track: str, protocol: str, split: str | Sequence[str]
) -> pd.DataFrame:
    """One row per pair of a track whose capture is in ``split`` under ``protocol``; capture and tile columns.

    Columns: capture_id, tile_id, semi_positive_tile_ids, city, lat, lon, heading_deg, fov_deg, ground_uri,
    tile_lat, tile_lon, tile_uri, and the tile's raster window (source_uri, col_off, row_off, width, height)
    where the tiles manifest has it.
    """
    captures = read_captures(data_dir)
    tiles = read_tiles(data_dir)
    pairs = read_pairs(data_dir)
    pairs = pairs.loc[pairs["track"] == track, ["capture_id", "tile_id", "track", "semi_positive_tile_ids"]]
    if pairs.empty:
        tracks = sorted(set(read_pairs(data_dir)["track"]))
        raise ValueError(
            f"{data_dir}: no pairs of track {track!r} in pairs.parquet (tracks present: {tracks})"
        )
    splits = [split] if isinstance(split, str) else list(split)
    caps = pd.DataFrame(captures.drop(columns="geometry"))
    caps = caps[split_column(caps, protocol).isin(splits).to_numpy()]
    caps = caps[["capture_id", "city", "lat", "lon", "heading_deg", "fov_deg", "uri"]].rename(
        columns={"uri": "ground_uri"}
    )
    windows = list(WINDOW_COLUMNS) if set(WINDOW_COLUMNS) <= set(tiles.columns) else []
    tl = pd.DataFrame(tiles.drop(columns="geometry"))[["tile_id", "lat", "lon", "uri", *windows]].rename(
        columns={"lat": "tile_lat", "lon": "tile_lon", "uri": "tile_uri"}
    )
    out = pairs.merge(caps, on="capture_id", how="inner")
    missing = set(out["tile_id"]) - set(tl["tile_id"])
    if missing:
        raise ValueError(
            f"{data_dir}: pairs.parquet names tiles missing from tiles.parquet: {sorted(missing)[:5]}"
        )
    out = out.merge(tl, on="tile_id", how="left")
    return out.sort_values("capture_id", kind="stable").reset_index(drop=True)


class PairDataset(Dataset):
    """(ground view, positive aerial tile, metadata) for one track, protocol and split.

    Images are decoded once, resized to the model's input sizes and kept in memory (``cache=True``): on two
    cores decoding JPEGs every epoch would cost more than the forward pass. Augmentation is seeded by
    (seed, epoch, index) so a run is reproducible; call ``set_epoch`` each epoch.

    ``augment["scale"] = (lo, hi)`` zooms each tile to show between lo and hi times its ground side
    (log-uniform; `zoom_tile`), cut once from its source raster around the tile's centre (the frame's window
    columns) at hi times the side; without windows the tile file is the context and hi is capped at 1.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        frame: pd.DataFrame | None = None,
        track: str = "aligned",
        protocol: str = "same-area",
        split: str | Sequence[str] = "train",
        ground_size: tuple[int, int] = (64, 256),
        aerial_size: tuple[int, int] = (96, 96),
        ground_layout: str = "canvas",
        canvas_vfov_deg: float = CANVAS_VFOV_DEG,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        augment: dict[str, Any] | None = None,
        seed: int = 0,
        cache: bool = True,
        loader: Callable[[str], np.ndarray] | None = None,
        images: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
        prepared: bool = False,
    ) -> None:
        """``images``: (ground, tile) pairs already in memory, one per row (rendered on the fly), instead
        of the files the frame names; they are prepared like decoded files, unless ``prepared`` says they
        are model inputs already (another dataset's `raw` items)."""
        if frame is None:
            if data_dir is None:
                raise ValueError("PairDataset needs data_dir or frame")
            frame = load_pairs(data_dir, track=track, protocol=protocol, split=split)
        self.frame = frame.reset_index(drop=True)
        self.ground_size, self.aerial_size = tuple(ground_size), tuple(aerial_size)
        self.ground_layout, self.canvas_vfov_deg = ground_layout, float(canvas_vfov_deg)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.seed, self.epoch = seed, 0
        self.loader = loader or default_loader
        self._images: Sequence[tuple[np.ndarray, np.ndarray]] | None = None  # in memory, until prepared
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] | None = (
            [None] * len(self.frame) if cache or images is not None else None
        )
        # whether every row says where its tile was cut from (so a wider view can be cut)
        self.has_windows = set(WINDOW_COLUMNS) <= set(self.frame.columns) and bool(
            self.frame["source_uri"].notna().all()
        )
        self.zoom: tuple[float, float] | None = None
        self.context_scale = 1.0
        self._context: list[np.ndarray | None] = []
        self._tile_px: int | None = None
        if (augment or {}).get("scale"):
            asked = augment["scale"]  # type: ignore[index]
            self.zoom = zoom_range(asked, has_windows=self.has_windows)
            if self.zoom[1] < float(asked[1]):
                warnings.warn(
                    "zoom augmentation: the pairs have no raster windows to show more ground than a tile; "
                    "zooming in only",
                    stacklevel=2,
                )
            self.context_scale = max(self.zoom[1], 1.0) if self.has_windows else 1.0
            self._context = [None] * len(self.frame)
        if images is not None:
            if len(images) != len(self.frame):
                raise ValueError(f"{len(images)} image pairs for {len(self.frame)} rows")
            if prepared:
                self._cache = list(images)
            else:  # prepared now, like files decoded by `preload`
                self._images = images
                self.preload()
                self._images = None

    def __len__(self) -> int:
        return len(self.frame)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The un-augmented (ground canvas, tile) uint8 arrays at model input size."""
        if self._cache is not None and self._cache[i] is not None:
            return self._cache[i]  # type: ignore[return-value]
        row = self.frame.iloc[i]
        ground, tile = (
            self._images[i]
            if self._images is not None
            else (self.loader(row["ground_uri"]), self.loader(row["tile_uri"]))
        )
        item = self._prepare(ground, tile, row["heading_deg"], row["fov_deg"])
        if self._cache is not None:
            self._cache[i] = item
        return item

    def context(self, i: int) -> np.ndarray:
        """Tile ``i`` seen at ``context_scale`` times its side, at the model's pixel scale (uint8)."""
        item = self._context[i]
        if item is None:
            if self.has_windows:
                self._cut_contexts([i])
            else:
                self._context[i] = self.raw(i)[1]
            item = self._context[i]
        return item  # type: ignore[return-value]

    def _cut_contexts(self, indices: Sequence[int]) -> None:
        """Cut the wider views of these rows from their rasters (one open per raster) like the tile files
        were cut (resampled to the tile's pixel size, JPEG), then resize them to the model's pixel scale."""
        from wherecnn.data.formats.geotiff import Window, shifted_views

        rows = self.frame.iloc[list(indices)]  # the frame's index is its positions
        if rows.empty:
            return
        if self._tile_px is None:
            self._tile_px = int(self.loader(rows["tile_uri"].iloc[0]).shape[0])
        grow = (self.context_scale - 1) / 2
        for (source, width, height), part in rows.groupby(["source_uri", "width", "height"], sort=False):
            pc, pr = round(int(width) * grow), round(int(height) * grow)
            windows = [
                Window(
                    str(r.tile_id),
                    int(r.col_off) - pc,
                    int(r.row_off) - pr,
                    int(width) + 2 * pc,
                    int(height) + 2 * pr,
                )
                for r in part.itertuples()
            ]
            ratio = (int(width) + 2 * pc) / int(width)
            views = shifted_views(str(source), windows, [(0, 0)], round(self._tile_px * ratio))
            side = (round(self.aerial_size[0] * ratio), round(self.aerial_size[1] * ratio))
            for i, view in zip(part.index, views[:, 0], strict=True):
                self._context[int(i)] = resize(view, side)

    def _prepare(
        self, ground: np.ndarray, tile: np.ndarray, heading: Any, fov: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        view = ground_view(
            ground,
            self.ground_size,  # type: ignore[arg-type]
            heading_deg=_num(heading),
            fov_deg=_num(fov),
            layout=self.ground_layout,
            canvas_vfov_deg=self.canvas_vfov_deg,
        )
        return view, resize(tile, self.aerial_size)  # type: ignore[arg-type]

    def preload(self, *, threads: int = 2, progress: bool = False, label: str = "decode") -> None:
        """Decode and resize every image now (threads: PIL releases the GIL), so epochs only compute."""
        if self._cache is None or not len(self):
            return
        from concurrent.futures import ThreadPoolExecutor

        todo = [i for i, item in enumerate(self._cache) if item is None]
        chunks = [todo[a : a + 64] for a in range(0, len(todo), 64)]

        def load(chunk: list[int]) -> int:
            for i in chunk:
                self.raw(i)
            if self.zoom is not None and self.has_windows:
                self._cut_contexts([i for i in chunk if self._context[i] is None])
            return len(chunk)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            results = pool.map(load, chunks)
            if progress:
                from rich.progress import Progress

                with Progress() as bar:
                    task = bar.add_task(f"{label} {len(todo)} pairs", total=len(todo))
                    for n in results:
                        bar.advance(task, n)
            for _ in results:
                pass

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.batch([i])
        return {"ground": item["ground"][0], "aerial": item["aerial"][0], "index": int(i)}

    def batch(self, indices: Sequence[int], augment: bool = True) -> dict[str, torch.Tensor]:
        """Samples ``indices`` as one batch of model inputs: ``ground`` and ``aerial`` (normalised NCHW) and
        their ``index``. Each sample comes out as `__getitem__` makes it alone (seeded by seed, epoch and
        index), but the photo cuts and the normalisation run once for the batch: 1.7-2.3x faster than one
        sample at a time (`benchmarks/train_data.py`), which took up to a third of a step on two cores.
        ``augment=False``: the `query_views` and the tiles before the pairs' augmentation (what hard-negative
        mining embeds)."""
        raws = [self.raw(i) for i in indices]
        grounds = self.query_views(indices, np.stack([g for g, _ in raws]))
        aerials = [a for _, a in raws]
        if augment and self.augment:
            rngs = [np.random.default_rng((self.seed, self.epoch, int(i))) for i in indices]
            if self.zoom is not None:
                lo, hi = self.zoom
                aerials = [
                    zoom_tile(
                        self.context(i),
                        self.context_scale,
                        float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
                        self.aerial_size,  # type: ignore[arg-type]
                    )
                    for i, rng in zip(indices, rngs, strict=True)
                ]
            pairs = [
                augment_pair(
                    g,
                    a,
                    rng,
                    rotation=self.augment.get("rotation", "quarter"),
                    flip=bool(self.augment.get("flip", True)),
                    color=float(self.augment.get("color", 0.0)),
                    shift=float(self.augment.get("shift", 0.0)),
                )
                for g, a, rng in zip(grounds, aerials, rngs, strict=True)
            ]
            grounds = np.stack([g for g, _ in pairs])
            aerials = [a for _, a in pairs]
        return {
            "ground": to_tensor(grounds, self.mean, self.std),
            "aerial": to_tensor(np.stack(aerials), self.mean, self.std),
            "index": torch.tensor([int(i) for i in indices], dtype=torch.long),
        }

    def query_views(self, indices: Sequence[int], grounds: np.ndarray) -> np.ndarray:
        """The ground views samples ``indices`` show this epoch before the pairs' geometric augmentation,
        from their canvases ``grounds`` (`raw`; B x H x W x 3): the canvases, or, when training photos are
        cut from panoramas (``augment["photo_fov"]``), the photos cut at this epoch's heading for each; wider
        (sectors of the panoramas) while a field-of-view curriculum (``augment["photo_sector"]``, set per
        epoch) narrows towards the photos' own. Hard-negative mining embeds these views, so the negatives
        are mined for the queries the model trains on."""
        if not (self.augment or {}).get("photo_fov"):
            return grounds
        headings = np.array(
            [np.random.default_rng((self.seed, self.epoch, int(i), 1)).uniform(0.0, 360.0) for i in indices]
        )
        fov, sector = float(self.augment["photo_fov"]), self.augment.get("photo_sector")  # type: ignore[index]
        if sector is not None and float(sector) > fov:
            cut = zip(grounds, headings, strict=True)
            return np.stack([sector_of_canvas(g, h, float(sector)) for g, h in cut])
        return photos_from_canvases(grounds, headings, fov, self.ground_layout, self.canvas_vfov_deg)

    def tile_keys(self) -> list[frozenset[str]]:
        """Per sample: its positive tile and semi-positives (samples sharing any never share a batch)."""
        return [
            frozenset([t, *list(s)])
            for t, s in zip(self.frame["tile_id"], self.frame["semi_positive_tile_ids"], strict=True)
        ]


def _num(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return None if math.isnan(v) else v


# ---------------------------------------------------------------- samplers
class _Packer:
    """Fills batches from a stream of candidate groups, never putting two samples that share a tile together.

    A sample that conflicts with the current batch waits for the next one (nothing is dropped except, with
    ``drop_last``, the final partial batch).
    """

    def __init__(self, keys: Sequence[frozenset[str]], batch_size: int) -> None:
        self.keys, self.batch_size = keys, batch_size

    def pack(self, units: Iterator[list[int]], drop_last: bool) -> Iterator[list[int]]:
        batch: list[int] = []
        taken: set[str] = set()
        waiting: list[int] = []
        for unit in units:
            for i in [*waiting, *unit]:
                if i in waiting:
                    waiting.remove(i)
                if len(batch) < self.batch_size and not (self.keys[i] & taken):
                    batch.append(i)
                    taken |= self.keys[i]
                else:
                    waiting.append(i)
                if len(batch) == self.batch_size:
                    yield batch
                    batch, taken = [], set()
        # drain the waiting queue
        while waiting:
            progressed = False
            for i in list(waiting):
                if not (self.keys[i] & taken):
                    batch.append(i)
                    taken |= self.keys[i]
                    waiting.remove(i)
                    progressed = True
                    if len(batch) == self.batch_size:
                        yield batch
                        batch, taken = [], set()
            if not progressed:
                if not batch:  # a sample that conflicts with itself cannot happen; stop defensively
                    break
                if not drop_last:
                    yield batch
                batch, taken = [], set()
        if batch and not drop_last:
            yield batch


class GeoBatchSampler(Sampler[list[int]]):
    """Batches where ``hard_fraction`` of the samples come in groups of geographic neighbours (hard negatives
    for each other: same city, similar streets) and the rest at random; never two samples sharing a tile.

    Neighbour groups come from a fresh random strip ordering of each city every epoch (random angle and
    offset), so groups differ from epoch to epoch.
    """

    def __init__(
        self,
        lat: Sequence[float],
        lon: Sequence[float],
        city: Sequence[str],
        keys: Sequence[frozenset[str]],
        *,
        batch_size: int,
        hard_fraction: float = 0.5,
        group_size: int = 8,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.lat, self.lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
        self.city = np.asarray(city)
        self.packer = _Packer(keys, batch_size)
        self.batch_size, self.hard_fraction, self.group_size = batch_size, hard_fraction, max(1, group_size)
        self.seed, self.epoch, self.drop_last = seed, 0, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lat)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _geo_order(self, idx: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        groups: list[np.ndarray] = []
        for c in np.unique(self.city[idx]):
            members = idx[self.city[idx] == c]
            lat0 = self.lat[members].mean()
            x = (self.lon[members] - self.lon[members].mean()) * 111_320.0 * math.cos(math.radians(lat0))
            y = (self.lat[members] - lat0) * 110_540.0
            a = rng.uniform(0, math.pi)
            u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
            area = max((np.ptp(u) + 1.0) * (np.ptp(v) + 1.0), 1.0)
            strip = math.sqrt(area / len(members) * self.group_size)
            band = np.floor((v - v.min()) / strip + rng.uniform())
            snake = np.where(band % 2 == 0, u, -u)  # boustrophedon keeps strip ends adjacent
            order = members[np.lexsort((snake, band))]
            groups += [order[i : i + self.group_size] for i in range(0, len(order), self.group_size)]
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 7))
        n = len(self.lat)
        perm = rng.permutation(n)
        n_hard = int(round(n * self.hard_fraction))
        units: list[list[int]] = [g.tolist() for g in self._geo_order(perm[:n_hard], rng)] if n_hard else []
        units += [[int(i)] for i in perm[n_hard:]]
        order = rng.permutation(len(units))
        yield from self.packer.pack((units[j] for j in order), self.drop_last)


class MinedBatchSampler(Sampler[list[int]]):
    """Sample4Geo-style batches from a neighbour table: each anchor brings its most similar samples (by the
    model's current embeddings), so the batch holds the negatives the model confuses most.

    ``neighbours[i]`` lists sample indices most similar to sample i (best first); refresh it every few epochs
    with `wherecnn.train.mining.neighbour_table`.
    """

    def __init__(
        self,
        neighbours: np.ndarray,
        keys: Sequence[frozenset[str]],
        *,
        batch_size: int,
        per_anchor: int = 4,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.neighbours = np.asarray(neighbours)
        if self.neighbours.ndim != 2 or len(self.neighbours) != len(keys):
            raise ValueError(
                f"neighbour table must be [n_samples, k] with n_samples={len(keys)}, "
                f"got {self.neighbours.shape}"
            )
        self.packer = _Packer(keys, batch_size)
        self.batch_size, self.per_anchor = batch_size, max(0, per_anchor)
        self.seed, self.epoch, self.drop_last = seed, 0, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.neighbours)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _units(self, rng: np.random.Generator) -> Iterator[list[int]]:
        used = np.zeros(len(self.neighbours), dtype=bool)
        for anchor in rng.permutation(len(self.neighbours)):
            if used[anchor]:
                continue
            unit = [int(anchor)]
            used[anchor] = True
            for j in self.neighbours[anchor]:
                if len(unit) > self.per_anchor:
                    break
                if 0 <= j < len(used) and not used[j]:
                    unit.append(int(j))
                    used[j] = True
            yield unit

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 11))
        yield from self.packer.pack(self._units(rng), self.drop_last)
