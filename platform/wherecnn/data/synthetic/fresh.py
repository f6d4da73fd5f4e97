"""Fresh training places: render new (ground view, aerial tile) pairs of a synthetic world during training.

A fixed set of a few thousand pairs is memorised within minutes (the prototype's loss reached 0.005 and its
test recall stalled); rendering is cheap, so training can draw new places every epoch instead (DESIGN.md).
`FreshPlaces` rebuilds the world's *training* cities from ``synthetic.json`` and renders new camera positions
in them exactly as the generator does (same panorama size, photo cut, tile window, resampling and JPEG
round trip), so a fresh pair is indistinguishable from one on disk.

Which places are allowed follows the protocol through the manifest itself: a same-area block (the spatial
cells `generate` splits by) is open only when the captures already in it are "train" under the protocol.
So held-out cities (cross-area), validation and test blocks (same-area) never see a fresh camera. Most fresh
places (``1 - area_share``) come from new cities built every epoch in the training cities' styles: new street
layouts and aerial lighting, never a test city. With ``style_spread`` those cities get random styles blended
from and scaled around the training styles (`world.random_style`), never one the training styles lack.

`dual-cpu` trains on them by default on a synthetic world (config ``train.fresh_places`` 2500, each kept
for ``fresh_epochs`` 3, ``train.style_spread`` 1.5; its offset and photo sections render 1250 an epoch and
keep each for 6: the same 7,500-pair pool for half the rendering). Measured (small world, cross-area,
15 min; docs/experiments.md): R@1 aligned 0.921 -> 0.938, offset 0.524 -> 0.598, photo 0.663 -> 0.699
against the manifest's fixed pairs; same-area unchanged (0.995 -> 0.994). With the earlier spatial-head
network they had not helped. The gain is the new styles, not the new places: in the training styles only
(``style_spread`` off) photo read 0.658; a spread of 2.0 read 0.681, and 20 new cities an epoch
(``train.fresh_worlds``; default one per training city) 0.699. Rendering half as many places an epoch
(the rest of the time trains) lifted offset's hit rate 0.729 -> 0.751 on one seed the same day (five
seeds average 0.751, the previous default's 0.742) and photo's R@1 to 0.778 over three seeds (before: 0.743
over four).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.data.formats.geotiff import tile_jpeg
from wherecnn.data.synthetic.generate import (
    SPEC_FILE,
    city_frame,
    jpeg_bytes,
    pixel_centres,
    split_blocks,
    street_pixels,
)
from wherecnn.storage import decode_image

TRACKS = ("aligned", "offset", "photo")


@dataclass
class _CityState:
    name: str
    renderer: Any  # GroundRenderer
    aerial: np.ndarray  # H x W x 3 uint8, the city's orthomosaic as written
    candidates: np.ndarray  # flat world-pixel indices open to fresh cameras
    crs: Any
    west: float
    south: float
    extent: float


class FreshPlaces:
    """New training pairs of a synthetic world, deterministic in (seed, epoch)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        protocol: str,
        track: str,
        seed: int = 0,
        cities: list[str] | None = None,
        new_worlds: int | None = None,
        new_world_m: float = 700.0,
        area_share: float | None = None,
        style_spread: float | None = None,
        workers: int | None = None,
    ) -> None:
        """``area_share``: the share of places drawn in the data's own training area (default 1/3; the rest
        come from ``new_worlds`` new cities); ``workers``: threads for the JPEG round trips and tile cuts
        (default: the cores, up to 8)."""
        from wherecnn.data.manifest import read_captures, split_column
        from wherecnn.data.synthetic.render import GroundRenderer
        from wherecnn.data.synthetic.world import City, build_world
        from wherecnn.geo import to_utm

        if track not in TRACKS:
            raise ValueError(f"fresh places exist for tracks {TRACKS}, not {track!r}")
        self.data_dir = Path(data_dir)
        spec_path = self.data_dir / SPEC_FILE
        if not spec_path.exists():
            raise FileNotFoundError(
                f"{spec_path} not found: fresh places need a world made by `wherecnn synth` "
                "(regenerate it if it predates synthetic.json)"
            )
        self.spec = json.loads(spec_path.read_text())
        self.track, self.seed = track, int(seed)
        self.workers = workers or min(8, os.cpu_count() or 1)
        extent = float(self.spec["extent_m"])
        caps = pd.DataFrame(read_captures(self.data_dir).drop(columns="geometry"))
        caps["open"] = (split_column(caps, protocol) == "train").to_numpy()
        self.cities: list[_CityState] = []
        self.styles: list[str] = []
        for c in self.spec["cities"]:
            city = City(c["name"], c["style"], float(c["lat"]), float(c["lon"]))
            rows = caps[caps["city"] == city.name]
            if (cities is not None and city.name not in cities) or not rows["open"].any():
                continue
            crs, west, north = city_frame(city, extent)
            south = north - extent
            e, n = to_utm(lat=rows["lat"].to_numpy(), lon=rows["lon"].to_numpy(), crs=crs)
            blocks, nb = split_blocks(np.stack([e - west, n - south], axis=1), extent)
            # a block is open only if every capture in it is a training capture under the protocol
            votes = pd.DataFrame({"block": blocks, "open": rows["open"].to_numpy()}).groupby("block")["open"]
            open_blocks = np.zeros(nb * nb, dtype=bool)
            agg = votes.all()
            open_blocks[agg.index.to_numpy()] = agg.to_numpy()
            world = build_world(
                city, extent_m=extent, res=float(self.spec["world_res_m"]), seed=int(self.spec["seed"])
            )
            cand = street_pixels(world, margin_m=float(self.spec["tile_m"]) / 2 + 2)
            cand_blocks, _ = split_blocks(pixel_centres(world, cand), extent)
            cand = cand[open_blocks[cand_blocks]]
            if cand.size == 0:
                continue
            self.cities.append(
                _CityState(
                    name=city.name,
                    renderer=GroundRenderer(world),
                    aerial=_read_aerial(self.data_dir / city.name / "aerial.tif"),
                    candidates=cand,
                    crs=crs,
                    west=west,
                    south=south,
                    extent=extent,
                )
            )
            self.styles.append(city.style)
        if not self.cities:
            raise ValueError(f"{data_dir}: no training area for fresh places under protocol {protocol!r}")
        self.new_worlds = len(self.styles) if new_worlds is None else int(new_worlds)
        share = 1 / 3 if area_share is None else float(area_share)
        if not 0 <= share <= 1:
            raise ValueError(f"area_share must be in [0, 1], not {area_share}")
        self.new_world_m, self.area_share = float(new_world_m), share if self.new_worlds else 1.0
        if style_spread is not None and style_spread < 1:
            raise ValueError(f"style_spread must be >= 1 (a scale factor), not {style_spread}")
        self.style_spread = style_spread

    @property
    def city_names(self) -> list[str]:
        return [c.name for c in self.cities]

    def sample(self, n: int, *, epoch: int) -> tuple[pd.DataFrame, list[np.ndarray], list[np.ndarray]]:
        """``n`` new places: (pairs frame, ground images, tile images).

        A share (``area_share``) comes from the protocol's training area of the data's cities; the rest from
        ``new_worlds`` cities built for this epoch in the training cities' styles (new seeds, so new street
        layouts, buildings and aerial lighting) -- what generalising to unseen places takes.
        """
        rng = np.random.default_rng([self.seed, 7919, int(epoch)])
        states = [*self.cities, *(self._new_world(epoch, k, rng) for k in range(self.new_worlds))]
        n_area = int(round(n * self.area_share))
        counts = [*_spread(n_area, len(self.cities)), *_spread(n - n_area, self.new_worlds)]
        out: list[tuple[pd.DataFrame, list[np.ndarray], list[np.ndarray]]] = []
        for cs, k in zip(states, counts, strict=True):
            if k:
                xy = pixel_centres(cs.renderer.world, rng.choice(cs.candidates, size=int(k), replace=True))
                out.append(self._render(cs, xy, rng, prefix=f"fresh-e{epoch}-{cs.name}"))
        return (
            pd.concat([f for f, _, _ in out], ignore_index=True),
            [g for _, gs, _ in out for g in gs],
            [t for _, _, ts in out for t in ts],
        )

    def _new_world(self, epoch: int, k: int, rng: np.random.Generator) -> _CityState:
        from wherecnn.data.synthetic.generate import shade_aerial_for
        from wherecnn.data.synthetic.render import GroundRenderer, Sun
        from wherecnn.data.synthetic.world import STYLES, City, build_world, random_style

        parent = self.cities[(epoch + k) % len(self.cities)]
        style_name, style = self.styles[(epoch + k) % len(self.styles)], None
        if self.style_spread is not None:
            style_name = "random"
            style = random_style(rng, [STYLES[s] for s in sorted(set(self.styles))], self.style_spread)
        info = next(c for c in self.spec["cities"] if c["name"] == parent.name)
        city = City(f"{parent.name}~e{epoch}w{k}", style_name, float(info["lat"]), float(info["lon"]))
        seed = int(np.random.default_rng([self.seed, int(self.spec["seed"]), epoch, k]).integers(2**31))
        world = build_world(
            city, extent_m=self.new_world_m, res=float(self.spec["world_res_m"]), seed=seed, style=style
        )
        aerial = shade_aerial_for(world, Sun.random(rng, elevation=(35, 60)), rng)
        crs, west, north = city_frame(city, self.new_world_m)
        return _CityState(
            name=city.name,
            renderer=GroundRenderer(world),
            aerial=aerial,
            candidates=street_pixels(world, margin_m=float(self.spec["tile_m"]) / 2 + 2),
            crs=crs,
            west=west,
            south=north - self.new_world_m,
            extent=self.new_world_m,
        )

    def render(
        self, city: str, xy: np.ndarray, rng: np.random.Generator, *, prefix: str
    ) -> tuple[pd.DataFrame, list[np.ndarray], list[np.ndarray]]:
        """Pairs at local positions ``xy`` ([n, 2] metres) of one of the data's cities (see `_render`)."""
        return self._render(next(c for c in self.cities if c.name == city), xy, rng, prefix=prefix)

    def _render(
        self, cs: _CityState, xy: np.ndarray, rng: np.random.Generator, *, prefix: str
    ) -> tuple[pd.DataFrame, list[np.ndarray], list[np.ndarray]]:
        """Pairs at local positions ``xy`` ([n, 2] metres) of a city, with random suns (and headings).

        Images are as the generator writes them (panorama 128x512 or photo 128x128; 128 px tile), after a
        JPEG round trip. The frame has the columns `PairDataset` and the batch samplers use.
        """
        from wherecnn.data.synthetic.render import Sun, photos_from_panoramas
        from wherecnn.geo import from_utm

        suns = [Sun.random(rng) for _ in range(len(xy))]
        headings = np.round(rng.uniform(0, 360, len(xy)), 2)
        pano_size = tuple(int(v) for v in self.spec["pano_size"])
        photo = self.track == "photo"
        views: list[np.ndarray] = []
        for b0 in range(0, len(xy), 32):
            sl = slice(b0, b0 + 32)
            chunk = cs.renderer.panorama(xy[sl, 0], xy[sl, 1], suns[sl], size=pano_size)
            if photo:
                chunk = photos_from_panoramas(
                    chunk,
                    headings[sl],
                    size=int(self.spec["photo_px"]),
                    fov_deg=float(self.spec["photo_fov_deg"]),
                )
            views.extend(chunk)
        tile_ids, semis, windows = self._tiles(cs, xy)
        # the JPEG round trips (as written and read) and tile cuts, a third of the time, on every core: PIL
        # releases the GIL (the renderer above uses them through torch already)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            grounds = list(pool.map(lambda v: decode_image(jpeg_bytes(v)), views))
            tiles = list(pool.map(lambda w: self._cut(cs, *w), windows))
        lat, lon = from_utm(easting=cs.west + xy[:, 0], northing=cs.south + xy[:, 1], crs=cs.crs)
        ids = [f"{prefix}-{i:05d}" for i in range(len(xy))]
        frame = pd.DataFrame(
            {
                "capture_id": ids,
                "tile_id": tile_ids if tile_ids is not None else [f"{i}-tile" for i in ids],
                "semi_positive_tile_ids": semis,
                "city": cs.name,
                "lat": lat,
                "lon": lon,
                "heading_deg": headings if photo else 0.0,
                "fov_deg": float(self.spec["photo_fov_deg"]) if photo else 360.0,
            }
        )
        return frame, grounds, tiles

    def _tiles(
        self, cs: _CityState, xy: np.ndarray
    ) -> tuple[list[str] | None, list[list[str]], list[tuple[int, int]]]:
        """Each place's tile window (top-left aerial pixel) and, for `offset`, grid ids and semi-positives.

        `aligned`/`photo`: the window centred on the camera, as `point_windows` places it. `offset`: the grid
        tile (50% overlap, from the raster's top-left corner) whose centre is nearest; the other grid tiles
        that contain the camera are its semi-positives -- with the same ids as the manifest's grid tiles.
        """
        res = float(self.spec["aerial_res_m"])
        extent = cs.extent
        tw = round(float(self.spec["tile_m"]) / res)
        col = xy[:, 0] / res
        row = (extent - xy[:, 1]) / res
        if self.track != "offset":
            windows = [
                (int(round(r - tw / 2)), int(round(c - tw / 2))) for r, c in zip(row, col, strict=True)
            ]
            return None, [[] for _ in range(len(xy))], windows
        stride = round(float(self.spec["stride_m"]) / res)
        h, w = cs.aerial.shape[:2]
        n_rows, n_cols = (h - tw) // stride + 1, (w - tw) // stride + 1
        gid = f"{cs.name}-g"
        ids, semis, windows = [], [], []
        for r, c in zip(row, col, strict=True):
            i = int(np.clip(round((r - tw / 2) / stride), 0, n_rows - 1))
            j = int(np.clip(round((c - tw / 2) / stride), 0, n_cols - 1))
            ids.append(f"{gid}r{i:03d}c{j:03d}")
            windows.append((i * stride, j * stride))
            rows_in = [a for a in range(n_rows) if a * stride <= r < a * stride + tw]
            cols_in = [b for b in range(n_cols) if b * stride <= c < b * stride + tw]
            semis.append([f"{gid}r{a:03d}c{b:03d}" for a in rows_in for b in cols_in if (a, b) != (i, j)])
        return ids, semis, windows

    def _cut(self, cs: _CityState, r0: int, c0: int) -> np.ndarray:
        """The tile at window top-left (r0, c0), zero outside the raster, as the tiler writes it."""
        res = float(self.spec["aerial_res_m"])
        tw = round(float(self.spec["tile_m"]) / res)
        px = int(self.spec["tile_px"])
        h, w = cs.aerial.shape[:2]
        crop = np.zeros((tw, tw, 3), dtype=np.uint8)
        rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r0 + tw, h), min(c0 + tw, w)
        if rr1 > rr0 and cc1 > cc0:
            crop[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = cs.aerial[rr0:rr1, cc0:cc1]
        return decode_image(tile_jpeg(crop, px))


def _read_aerial(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))


def _spread(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal counts."""
    if parts <= 0:
        return []
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
