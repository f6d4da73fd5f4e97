"""`generate()`: the synthetic world on disk (GeoTIFFs, JPEGs, GeoParquet manifests): seven cities to train
and test on and a validation city (a second with ``cities=9``).

Layout under ``out_dir``::

    <city>/aerial.tif                 nadir orthomosaic, city's UTM CRS, 0.5 m/px
    <city>/pano/<place>.jpg           360-degree panorama, 128x512, north at the left edge
    <city>/photo/<place>.jpg          90-degree pinhole photo cut from the panorama, 128x128, random heading
    <city>/tiles/<tile_id>.jpg        128 px tiles of 100 m: grid (50% overlap) and centred on each place
    <city>/oblique/...                (--oblique) 45-degree bird's-eye mosaic and per-place crops
    captures.parquet tiles.parquet pairs.parquet    (relative uris; see docs/contracts.md)
    synthetic.json                    seed, sizes and cities: what rebuilds the worlds (fresh places)
    preview.png                       (--preview) panorama | photo | aerial tile for a few places

Every byte follows from ``seed``: worlds, cameras, headings and lighting come from seeded generators, and the
image writers are deterministic (no timestamps in GeoTIFF tags, fixed JPEG settings).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from wherecnn.data.synthetic.world import CITIES, MARKING, ROAD, City, World, build_world

WORLD_RES_M = 1.0  # height field / ray-marching resolution
AERIAL_RES_M = 0.5  # orthomosaic resolution
TILE_M = 100.0
TILE_PX = 128
STRIDE_M = 50.0
PANO_SIZE = (128, 512)
PHOTO_PX = 128
PHOTO_FOV = 90.0
BATCH = 32
SPEC_FILE = "synthetic.json"
RENDER_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class SizeSpec:
    """How big a world to make."""

    cities: int
    places_per_city: int
    extent_m: float


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(2, 50, 500.0),
    "small": SizeSpec(8, 1500, 1700.0),  # 33 x 33 = 1,089 grid tiles per city
    "full": SizeSpec(8, 5000, 3000.0),
}

Progress = Callable[[str, int, int, str], None]  # (city, done, total, stage)


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    """A ground view as the generator writes it (fixed JPEG settings, so files are deterministic)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def _jpeg(img: np.ndarray, path: Path, quality: int = 90) -> None:
    path.write_bytes(jpeg_bytes(img, quality))


def _write_geotiff(path: Path, img: np.ndarray, *, crs, west: float, north: float, res: float) -> None:
    import rasterio
    from rasterio.transform import from_origin

    h, w, _ = img.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=from_origin(west, north, res, res),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        zlevel=1,
        photometric="RGB",
        interleave="pixel",
    ) as ds:
        ds.write(img.transpose(2, 0, 1))


def street_pixels(world: World, *, margin_m: float) -> np.ndarray:
    """Flat indices of road pixels with 2 m of clearance from buildings, ``margin_m`` inside the edges."""
    import torch
    import torch.nn.functional as F

    occupied = torch.from_numpy((world.height > 0).astype(np.float32))[None, None]
    near = F.max_pool2d(occupied, kernel_size=5, stride=1, padding=2)[0, 0].numpy() > 0
    road = np.isin(world.cls, (ROAD, MARKING)) & ~near
    m = int(math.ceil(margin_m / world.res))
    road[:m] = road[-m:] = False
    road[:, :m] = road[:, -m:] = False
    cand = np.flatnonzero(road.ravel())
    if len(cand) == 0:
        raise RuntimeError(f"{world.city.name}: no street pixels to place cameras on")
    return cand


def pixel_centres(world: World, flat: np.ndarray) -> np.ndarray:
    """Local metres ([n, 2], x east, y north) of the centres of flat pixel indices."""
    row, col = np.divmod(flat, world.n)
    return np.stack([(col + 0.5) * world.res, (world.n - row - 0.5) * world.res], axis=1)


def street_cameras(world: World, n: int, rng: np.random.Generator, *, margin_m: float) -> np.ndarray:
    """``n`` camera positions (local metres, [n, 2]) at road pixel centres with 2 m of clearance."""
    cand = street_pixels(world, margin_m=margin_m)
    return pixel_centres(world, rng.choice(cand, size=min(n, len(cand)), replace=False))


def split_blocks(xy: np.ndarray, extent_m: float) -> tuple[np.ndarray, int]:
    """The same-area split's block of each local position ([n, 2] metres), and the blocks per side."""
    nb = max(3, int(round(extent_m / 250.0)))
    size = extent_m / nb
    bx = np.clip((xy[:, 0] // size).astype(int), 0, nb - 1)
    by = np.clip((xy[:, 1] // size).astype(int), 0, nb - 1)
    return bx * nb + by, nb


def _same_area_split(xy: np.ndarray, extent_m: float, rng: np.random.Generator) -> np.ndarray:
    """train/val/test by spatial blocks, so test places are never next to training places."""
    bi, nb = split_blocks(xy, extent_m)
    order = rng.permutation(nb * nb)
    n_test = max(1, int(round(0.2 * nb * nb)))
    n_val = max(1, int(round(0.1 * nb * nb)))
    label = np.empty(nb * nb, dtype=object)
    label[order[:n_test]] = "test"
    label[order[n_test : n_test + n_val]] = "val"
    label[order[n_test + n_val :]] = "train"
    return label[bi]


def _views(renderer, xy: np.ndarray, suns: list, headings: np.ndarray, sl: slice):
    """Panoramas of one batch of places and the photos cut from them."""
    from wherecnn.data.synthetic.render import photos_from_panoramas

    panos = renderer.panorama(xy[sl, 0], xy[sl, 1], suns[sl], size=PANO_SIZE)
    return sl, panos, photos_from_panoramas(panos, headings[sl], size=PHOTO_PX, fov_deg=PHOTO_FOV)


def city_frame(city: City, extent_m: float):
    """(UTM CRS, western easting, northern northing) of a city's square, snapped to whole metres."""
    from wherecnn.geo import to_utm, utm_crs_for

    crs = utm_crs_for(lat=city.lat, lon=city.lon)
    e0, n0 = to_utm(lat=city.lat, lon=city.lon, crs=crs)
    return crs, float(math.floor(e0 - extent_m / 2)), float(math.floor(n0 + extent_m / 2))


# The cross-area protocol on the full world: train on the first five cities, choose settings on seattle and,
# where the world has it (`--cities 9`), phoenix (styles no other city has), report on minneapolis and boston.
# The validation cities are last in CITIES, so adding them changed no other city's bytes.
CROSS_AREA_TEST = ("minneapolis", "boston")
CROSS_AREA_VAL = ("seattle", "phoenix")


def cross_area_roles(names: list[str]) -> dict[str, str]:
    """Each city's split under the cross-area protocol: "train", "val" or "test". A validation city's places
    are "val" under the same-area protocol too: no protocol trains or reports on it.

    The named test and validation cities where the world has them; a world with none of the test cities (the
    first few of CITIES, e.g. tiny) tests on its last two cities (its last one with fewer than 4)."""
    test = [n for n in names if n in CROSS_AREA_TEST]
    if not test:
        test = names[-2:] if len(names) >= 4 else names[-1:] if len(names) >= 2 else []
    val = [n for n in names if n in CROSS_AREA_VAL and n not in test]
    return {n: "test" if n in test else "val" if n in val else "train" for n in names}


def held_out_cities(names: list[str]) -> list[str]:
    """The cities the cross-area protocol tests on (see `cross_area_roles`)."""
    return [n for n, role in cross_area_roles(names).items() if role == "test"]


def generate(
    out_dir: str | Path,
    *,
    size: str = "tiny",
    cities: int | None = None,
    seed: int = 0,
    oblique: bool = False,
    preview: bool = False,
    progress: Progress | None = None,
    places_per_city: int | None = None,
    extent_m: float | None = None,
) -> dict:
    """Write the synthetic world under ``out_dir``; returns a summary (cities, captures, tiles, seconds).

    ``places_per_city`` and ``extent_m`` override the size preset (small fixtures, benchmarks).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the render pool in _generate
    try:
        return _generate(
            out_dir,
            size=size,
            cities=cities,
            seed=seed,
            oblique=oblique,
            preview=preview,
            progress=progress,
            places_per_city=places_per_city,
            extent_m=extent_m,
        )
    finally:
        torch.set_num_threads(threads)


def _generate(
    out_dir: str | Path,
    *,
    size: str,
    cities: int | None,
    seed: int,
    oblique: bool,
    preview: bool,
    progress: Progress | None,
    places_per_city: int | None,
    extent_m: float | None,
) -> dict:
    import geopandas as gpd

    from wherecnn.data.formats.geotiff import tile_raster
    from wherecnn.data.manifest import CRS, captures_frame, write_manifests
    from wherecnn.data.synthetic.render import GroundRenderer, Sun, oblique_view
    from wherecnn.geo import from_utm

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    if places_per_city is not None or extent_m is not None:
        spec = SizeSpec(
            spec.cities,
            int(places_per_city or spec.places_per_city),
            float(extent_m or spec.extent_m),
        )
    if spec.extent_m < TILE_M + 10:
        raise ValueError(f"extent_m must exceed the {TILE_M:g} m tile size, got {spec.extent_m}")
    n_cities = spec.cities if cities is None else int(cities)
    if not 1 <= n_cities <= len(CITIES):
        raise ValueError(f"cities must be between 1 and {len(CITIES)}, got {cities}")
    chosen: list[City] = list(CITIES[:n_cities])
    roles = cross_area_roles([c.name for c in chosen])
    held = {n for n, role in roles.items() if role == "test"}
    validation = sorted(n for n, role in roles.items() if role == "val")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cap_rows: list[pd.DataFrame] = []
    tile_frames: list[pd.DataFrame] = []
    pair_rows: list[pd.DataFrame] = []
    per_city: list[dict] = []
    pool = ThreadPoolExecutor(max_workers=3)  # JPEG encoding (Pillow releases the GIL)
    # Rendering: one torch thread per Python thread. Intra-op threads spin while they wait and waste most
    # of their CPU on a busy machine; independent batches on separate threads keep every core busy instead.
    render_pool = ThreadPoolExecutor(max_workers=RENDER_THREADS)

    for ci, city in enumerate(chosen):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, 1000 + ci])
        cdir = out / city.name
        for sub in ("pano", "photo", "tiles"):
            (cdir / sub).mkdir(parents=True, exist_ok=True)
        n_places = spec.places_per_city
        n_grid = int((spec.extent_m - TILE_M) // STRIDE_M + 1) ** 2
        total = 1 + 2 * n_places + n_grid + n_places
        done = 0

        def tick(k: int, stage: str, _city: str = city.name, _total: int = total) -> None:
            nonlocal done
            done += k
            if progress is not None:
                progress(_city, done, _total, stage)

        stages: dict[str, float] = {}
        lap = time.perf_counter()

        def mark(stage: str, _stages: dict[str, float] = stages) -> None:
            nonlocal lap
            now = time.perf_counter()
            _stages[stage] = round(now - lap, 3)
            lap = now

        world = build_world(city, extent_m=spec.extent_m, res=WORLD_RES_M, seed=seed)
        mark("world")
        crs, west, north = city_frame(city, world.extent_m)
        south = north - world.extent_m
        aerial_sun = Sun.random(rng, elevation=(35, 60))
        aerial = shade_aerial_for(world, aerial_sun, rng)
        _write_geotiff(cdir / "aerial.tif", aerial, crs=crs, west=west, north=north, res=AERIAL_RES_M)
        tick(1, "aerial")
        mark("aerial")

        # places on the streets; each gets a panorama and a photo under its own random sun
        xy = street_cameras(world, n_places, rng, margin_m=TILE_M / 2 + 2)
        n_places = len(xy)
        headings = np.round(rng.uniform(0, 360, n_places), 2)
        suns = [Sun.random(rng) for _ in range(n_places)]
        lat, lon = from_utm(easting=west + xy[:, 0], northing=south + xy[:, 1], crs=crs)
        place_ids = [f"{city.name}-{i:05d}" for i in range(n_places)]
        split = _same_area_split(xy, world.extent_m, rng)
        if roles[city.name] == "val":  # a validation city is no protocol's training or test city
            split = np.full(len(split), "val", dtype=object)
        cross = np.array(roles[city.name], dtype=object)

        renderer = GroundRenderer(world)

        views = partial(_views, renderer, xy, suns, headings)
        futures = []
        batches = [slice(b0, b0 + BATCH) for b0 in range(0, n_places, BATCH)]
        views(slice(0, 1))  # warm the renderer's shared offset table before threads use it
        for c0 in range(0, len(batches), 2 * RENDER_THREADS):  # bounded: a few batches in flight
            for sl, panos, photos in render_pool.map(views, batches[c0 : c0 + 2 * RENDER_THREADS]):
                for j, pid in enumerate(place_ids[sl]):
                    futures.append(pool.submit(_jpeg, panos[j], cdir / "pano" / f"{pid}.jpg"))
                    futures.append(pool.submit(_jpeg, photos[j], cdir / "photo" / f"{pid}.jpg"))
                tick(2 * len(panos), "ground views")
        for f in futures:
            f.result()
        del renderer
        mark("ground")

        grid = tile_raster(
            cdir / "aerial.tif",
            cdir / "tiles",
            size_m=TILE_M,
            px=TILE_PX,
            stride_m=STRIDE_M,
            city=city.name,
            prefix=f"{city.name}-g",
            uri_base=out,
            progress=lambda k: tick(k, "grid tiles"),
        )
        grid["split_cross_area"] = "gallery"
        grid["place_id"] = None
        pts = pd.DataFrame({"lat": lat, "lon": lon, "tile_id": [f"{p}-tile" for p in place_ids]})
        centred = tile_raster(
            cdir / "aerial.tif",
            cdir / "tiles",
            size_m=TILE_M,
            px=TILE_PX,
            points=pts,
            city=city.name,
            uri_base=out,
            progress=lambda k: tick(k, "centred tiles"),
        )
        centred["split"] = split
        centred["split_cross_area"] = cross
        centred["place_id"] = place_ids
        frames = [grid, centred]
        mark("tiles")

        caps = pd.DataFrame(
            {
                "capture_id": [f"{p}-pano" for p in place_ids] + [f"{p}-photo" for p in place_ids],
                "city": city.name,
                "lat": np.concatenate([lat, lat]),
                "lon": np.concatenate([lon, lon]),
                "heading_deg": np.concatenate([np.zeros(n_places), headings]),
                "fov_deg": np.concatenate([np.full(n_places, 360.0), np.full(n_places, PHOTO_FOV)]),
                "uri": [f"{city.name}/pano/{p}.jpg" for p in place_ids]
                + [f"{city.name}/photo/{p}.jpg" for p in place_ids],
                "split": np.concatenate([split, split]),
                "split_cross_area": cross.item(),
                "kind": ["panorama"] * n_places + ["photo"] * n_places,
                "place_id": place_ids + place_ids,
                "sun_azimuth_deg": np.round([s.azimuth_deg for s in suns] * 2, 3),
            }
        )
        cap_rows.append(caps)

        # pairs: aligned / photo -> centred tile; offset -> nearest grid tile, other containing ones semi
        cam_col = xy[:, 0] / AERIAL_RES_M  # camera position in aerial pixels
        cam_row = (world.extent_m - xy[:, 1]) / AERIAL_RES_M
        gc0, gr0 = grid["col_off"].to_numpy(), grid["row_off"].to_numpy()
        gw, gh = grid["width"].to_numpy(), grid["height"].to_numpy()
        inside = (
            (cam_col[:, None] >= gc0)
            & (cam_col[:, None] < gc0 + gw)
            & (cam_row[:, None] >= gr0)
            & (cam_row[:, None] < gr0 + gh)
        )
        d2 = (cam_col[:, None] - (gc0 + gw / 2)) ** 2 + (cam_row[:, None] - (gr0 + gh / 2)) ** 2
        nearest = np.argmin(d2, axis=1)
        gid = grid["tile_id"].to_numpy()
        offset_pos = gid[nearest]
        centred_ids = [f"{p}-tile" for p in place_ids]
        semis = [[str(t) for t in gid[inside[i]] if t != offset_pos[i]] for i in range(n_places)]
        pair_rows.append(
            pd.DataFrame(
                {
                    "capture_id": [f"{p}-pano" for p in place_ids] * 2 + [f"{p}-photo" for p in place_ids],
                    "tile_id": centred_ids + list(offset_pos) + centred_ids,
                    "track": ["aligned"] * n_places + ["offset"] * n_places + ["photo"] * n_places,
                    "semi_positive_tile_ids": [[] for _ in place_ids] + semis + [[] for _ in place_ids],
                    "city": city.name,
                    "split": np.concatenate([split, split, split]),
                    "split_cross_area": cross.item(),
                }
            )
        )

        if oblique:
            frames.append(
                _oblique_tiles(
                    world,
                    aerial_sun,
                    cdir,
                    out,
                    place_ids,
                    xy,
                    lat,
                    lon,
                    split,
                    cross.item(),
                    oblique_view,
                    pool,
                )
            )
            pair_rows.append(
                pd.DataFrame(
                    {
                        "capture_id": [f"{p}-pano" for p in place_ids],
                        "tile_id": [f"{p}-oblique" for p in place_ids],
                        "track": "oblique",
                        "semi_positive_tile_ids": [[] for _ in range(n_places)],
                        "city": city.name,
                        "split": split,
                        "split_cross_area": cross.item(),
                    }
                )
            )
        tile_frames.extend(frames)
        per_city.append(
            {
                "city": city.name,
                "style": city.style,
                "lat": city.lat,
                "lon": city.lon,
                "crs": crs.to_string(),
                "places": n_places,
                "grid_tiles": len(grid),
                "max_height_m": round(float(world.height.max()), 1),
                "seconds": round(time.perf_counter() - t0, 2),
                "stage_seconds": stages,
            }
        )
        del world, aerial

    pool.shutdown(wait=True)
    render_pool.shutdown(wait=True)
    captures = captures_frame(pd.concat(cap_rows, ignore_index=True))
    tiles = gpd.GeoDataFrame(pd.concat(tile_frames, ignore_index=True), geometry="geometry", crs=CRS)
    pairs = pd.concat(pair_rows, ignore_index=True)
    write_manifests(out, captures, tiles, pairs)
    write_spec(
        out, seed=seed, extent_m=spec.extent_m, cities=chosen, held_out=sorted(held), validation=validation
    )
    summary = {
        "out": str(out),
        "size": size,
        "seed": seed,
        "cities": [c["city"] for c in per_city],
        "held_out_cities": sorted(held),
        "validation_cities": validation,
        "places": int(sum(c["places"] for c in per_city)),
        "captures": len(captures),
        "tiles": len(tiles),
        "grid_tiles": int(sum(c["grid_tiles"] for c in per_city)),
        "pairs": len(pairs),
        "per_city": per_city,
    }
    if preview:
        from wherecnn.data.synthetic.preview import write_preview

        per_city_rows = 2 if len(chosen) <= 3 else 1
        summary["preview"] = str(write_preview(out, out / "preview.png", per_city=per_city_rows))
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    return summary


def write_spec(
    out: Path, *, seed: int, extent_m: float, cities: list[City], held_out: list[str], validation: list[str]
) -> None:
    """``synthetic.json``: what rebuilds this world's cities (fresh training places, see `fresh.py`)."""
    spec = {
        "seed": seed,
        "extent_m": extent_m,
        "world_res_m": WORLD_RES_M,
        "aerial_res_m": AERIAL_RES_M,
        "tile_m": TILE_M,
        "tile_px": TILE_PX,
        "stride_m": STRIDE_M,
        "pano_size": list(PANO_SIZE),
        "photo_px": PHOTO_PX,
        "photo_fov_deg": PHOTO_FOV,
        "cities": [{"name": c.name, "style": c.style, "lat": c.lat, "lon": c.lon} for c in cities],
        "held_out_cities": held_out,
        "validation_cities": validation,
    }
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def shade_aerial_for(world: World, sun, rng: np.random.Generator) -> np.ndarray:
    from wherecnn.data.synthetic.render import shade_aerial

    return shade_aerial(world, sun, out_res=AERIAL_RES_M, rng=rng)


def _oblique_tiles(
    world, sun, cdir: Path, out: Path, place_ids, xy, lat, lon, split, cross, oblique_view, pool
) -> pd.DataFrame:
    """45-degree bird's-eye crops (looking north) centred on each place's ground point, 128 px over 100 m."""
    from PIL import Image

    odir = cdir / "oblique"
    odir.mkdir(parents=True, exist_ok=True)
    mosaic = oblique_view(world, sun, heading_deg=0.0, out_res=AERIAL_RES_M)
    _jpeg(mosaic[::4, ::4], odir / "mosaic_north.jpg")
    rows = mosaic.shape[0]
    half = int(round(TILE_M / 2 / AERIAL_RES_M))
    pad = np.pad(mosaic, ((half, half), (half, half), (0, 0)))
    futures = []
    for pid, (x, y) in zip(place_ids, xy, strict=True):
        c = int(round(x / AERIAL_RES_M))
        r = int(round(rows - (y / math.sqrt(2.0)) / AERIAL_RES_M))  # ground point's screen row
        crop = pad[r : r + 2 * half, c : c + 2 * half]
        img = np.asarray(Image.fromarray(crop).resize((TILE_PX, TILE_PX), Image.Resampling.BILINEAR))
        futures.append(pool.submit(_jpeg, img, odir / f"{pid}.jpg"))
    for f in futures:
        f.result()
    d_lat = TILE_M / 2 / 111_320.0
    d_lon = d_lat / max(math.cos(math.radians(float(np.mean(lat)))), 1e-6)
    from shapely import box

    return pd.DataFrame(
        {
            "tile_id": [f"{p}-oblique" for p in place_ids],
            "city": world.city.name,
            "lat": lat,
            "lon": lon,
            "gsd_m": TILE_M / TILE_PX,
            "uri": [str((odir / f"{p}.jpg").relative_to(out)) for p in place_ids],
            "split": split,
            "kind": "oblique",
            "size_m": TILE_M,
            "split_cross_area": cross,
            "place_id": list(place_ids),
            "min_lon": lon - d_lon,
            "min_lat": lat - d_lat,
            "max_lon": lon + d_lon,
            "max_lat": lat + d_lat,
            "geometry": box(lon - d_lon, lat - d_lat, lon + d_lon, lat + d_lat),
        }
    )
