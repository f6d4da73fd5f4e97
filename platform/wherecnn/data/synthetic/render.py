"""Rendering a synthetic city: the nadir orthomosaic, 45-degree oblique views and ground views.

Ground views are column ray-marches of the height field, batched over cameras in torch with no per-step
Python loop: for every (camera, image column) the height field is sampled at K distances along the ray; the
running maximum of the elevation tangent ``(h - z_cam) / s`` is the occlusion buffer, and a sorted search of
each pixel row's tangent in it finds the first surface the pixel's ray hits (a wall, a roof, the street).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wherecnn.data.synthetic.world import BUILDING, WATER, World

CAMERA_HEIGHT_M = 2.0


@dataclass(frozen=True)
class Sun:
    """Lighting of one view: compass azimuth and elevation of the sun, brightness and colour tint."""

    azimuth_deg: float
    elevation_deg: float
    intensity: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def vector(self) -> tuple[float, float, float]:
        """Unit vector towards the sun in (east, north, up)."""
        az, el = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        return math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)

    @classmethod
    def random(cls, rng: np.random.Generator, *, elevation: tuple[float, float] = (30, 65)) -> Sun:
        return cls(
            float(rng.uniform(0, 360)),
            float(rng.uniform(*elevation)),
            float(rng.uniform(0.85, 1.15)),
            tuple(float(t) for t in rng.uniform(0.92, 1.08, 3)),  # type: ignore[arg-type]
        )


def cast_shadows(height: np.ndarray, res: float, sun: Sun, max_len_m: float = 120.0) -> np.ndarray:
    """1 where the sun is blocked: march towards the sun, compare with the rising sun ray (float32 [n, n])."""
    h = torch.from_numpy(height)
    n = h.shape[0]
    sx, sy, sz = sun.vector()
    horiz = math.hypot(sx, sy)
    tan_el = sz / max(horiz, 1e-6)
    reach = min(max_len_m, float(h.max()) / max(tan_el, 1e-3))
    steps = int(reach / res)
    dcol, drow = sx / horiz, -sy / horiz  # row index grows southwards
    pad = steps + 1
    hp = F.pad(h[None, None], (pad, pad, pad, pad), value=0.0)[0, 0]
    lift = torch.zeros_like(h)
    for k in range(1, steps + 1):  # one whole-raster op per step along the sun ray
        r, c = int(round(k * drow)), int(round(k * dcol))
        shifted = hp[pad + r : pad + r + n, pad + c : pad + c + n]
        torch.maximum(lift, shifted - k * res * tan_el, out=lift)
    return (lift > h + 0.3).float().numpy()


def shade_aerial(world: World, sun: Sun, *, out_res: float, rng: np.random.Generator) -> np.ndarray:
    """The nadir orthomosaic at ``out_res`` m/px: albedo x (hill-shade, cast shadows), uint8 [m, m, 3]."""
    f = int(round(world.res / out_res))
    h = world.height
    gy, gx = np.gradient(h, world.res)  # gy along rows (southwards)
    sx, sy, sz = sun.vector()
    nz = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    lam = np.clip((-gx * sx + gy * sy + 1.0 * sz) * nz, 0, None) / sz
    shadow = cast_shadows(h, world.res, sun)
    light = (0.5 + 0.5 * np.clip(lam, 0, 1.6)) * (1.0 - 0.5 * shadow) * sun.intensity
    water = world.cls == WATER
    light = np.where(water, sun.intensity, light)
    img = world.albedo.astype(np.float32) * light[..., None] * np.float32(sun.tint)
    if f > 1:
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        up = F.interpolate(t, scale_factor=f, mode="bilinear", align_corners=False)
        img = up[0].permute(1, 2, 0).numpy()
        img = img + rng.integers(-5, 6, size=img.shape[:2] + (1,), dtype=np.int8)
    return np.clip(img, 0, 255).astype(np.uint8)


def oblique_view(world: World, sun: Sun, *, heading_deg: float = 0.0, out_res: float = 0.5) -> np.ndarray:
    """A 45-degree bird's-eye orthographic view looking towards ``heading_deg`` (0, 90, 180 or 270).

    Screen row v of a ground column sees the first cell (from the viewer's side) where ``y + h(y) >= v``:
    a running maximum along the viewing direction plus a sorted search, the same trick as the ground views.
    """
    k = int(round(heading_deg / 90.0)) % 4
    # rotate so the view looks "north" (up the rows): rot90 k times counter-clockwise
    h = torch.from_numpy(np.ascontiguousarray(np.rot90(world.height, k)))
    alb = torch.from_numpy(np.ascontiguousarray(np.rot90(world.albedo, k)))
    fac = torch.from_numpy(np.ascontiguousarray(np.rot90(world.facade, k)))
    cls = torch.from_numpy(np.ascontiguousarray(np.rot90(world.cls, k)))
    n = h.shape[0]
    res = world.res
    # y from the viewer (south edge, last row) northwards: index j = n-1-row
    hh = torch.flip(h, [0]).T.contiguous()  # [cols, j]
    j = torch.arange(n, dtype=torch.float32)
    g = (j * res + hh) / math.sqrt(2.0)  # screen height of each cell's top, 45 degrees
    gmax = torch.cummax(g, dim=1).values
    rows = int(round(n * res / math.sqrt(2.0) / out_res))
    v = (torch.arange(rows, dtype=torch.float32) + 0.5) * out_res
    idx = torch.searchsorted(gmax, v.expand(n, rows).contiguous()).clamp(max=n - 1)  # [cols, rows]
    jr = n - 1 - idx  # back to row index
    col = torch.arange(n)[:, None].expand_as(idx)
    hit_top = (g.gather(1, idx) - v[None, :]) < res / math.sqrt(2.0) * 1.5
    top = alb[jr, col].float()
    side = fac[jr, col].float()
    is_b = (cls[jr, col] == BUILDING) | (side.sum(-1) > 0)
    sx, sy, sz = sun.vector()
    wall_light = 0.55 + 0.45 * max(0.0, -sy)  # walls facing the viewer (south normal)
    colour = torch.where((hit_top | ~is_b)[..., None], top * (0.6 + 0.4 * sz), side * wall_light)
    img = torch.flip(colour.permute(1, 0, 2), [0])  # rows from far (top) to near (bottom)
    if out_res != res:
        t = img.permute(2, 0, 1)[None]
        size = (rows, int(round(n * res / out_res)))
        img = F.interpolate(t, size=size, mode="bilinear")[0].permute(1, 2, 0)
    return img.clamp(0, 255).to(torch.uint8).numpy()


ANGLE_LEVELS = 16  # wall orientations (mod 90 degrees) the ground renderer distinguishes
EDGE_RGB = (118, 116, 104)  # what lies beyond the city's edge


class GroundRenderer:
    """Ray-marches street-level views of one world; keeps the world's rasters as flat torch tensors.

    Work is split so that little happens per output pixel: everything that depends only on a ray sample
    (surface colours, wall lighting, fog, window bays) is computed per (camera, column, step) into a small
    colour table, and each pixel only finds its first hit, decides roof/ground vs wall vs window and picks
    a table entry. The world is padded by the ray length, so samples never need bounds checks, and cameras
    at cell centres (as the generator places them) share one table of cell offsets per panorama column.
    """

    def __init__(self, world: World, *, max_dist_m: float = 200.0, steps: int = 64) -> None:
        self.world = world
        self.n = world.n
        self.res = world.res
        self.pad = int(math.ceil(max_dist_m / world.res)) + 2
        self.np_ = self.n + 2 * self.pad
        pad = ((self.pad, self.pad), (self.pad, self.pad))
        self.height = torch.from_numpy(np.pad(world.height, pad).ravel())
        # one 8-byte record per cell, fetched with a single gather: albedo, facade, building?, grid angle
        quarter = np.mod(world.angle, np.pi / 2) / (np.pi / 2)  # walls only need the angle mod 90 degrees
        edge = [np.pad(world.albedo[..., i], pad, constant_values=EDGE_RGB[i]) for i in range(3)]
        albedo = np.stack(edge, -1)
        packed = np.concatenate(
            [
                albedo,
                np.pad(world.facade, pad + ((0, 0),)),
                np.pad(world.cls == BUILDING, pad)[..., None].astype(np.uint8),
                np.pad(np.minimum(quarter * ANGLE_LEVELS, ANGLE_LEVELS - 1).astype(np.uint8), pad)[..., None],
            ],
            axis=-1,
        )
        self.packed = torch.from_numpy(np.ascontiguousarray(packed.reshape(-1, 8)))
        lut = (torch.arange(ANGLE_LEVELS, dtype=torch.float32) + 0.5) / ANGLE_LEVELS * (math.pi / 2)
        self.cos_lut, self.sin_lut = torch.cos(lut), torch.sin(lut)
        # distances grow geometrically: fine steps near the camera, coarse far away
        s = np.geomspace(0.5, max_dist_m, steps).astype(np.float32)
        self.s = torch.from_numpy(s)
        self.inv_s = 1.0 / self.s
        self.inv_prev = 1.0 / torch.cat([torch.tensor([1e-3]), self.s[:-1]])
        self.ds = torch.from_numpy(np.diff(s, prepend=np.float32(0.0)).astype(np.float32))
        self.fog = 1 - torch.exp(-self.s / 600.0)
        self.haze = torch.tensor([175.0, 182.0, 190.0])
        self._offsets: dict[int, torch.Tensor] = {}

    def panorama(
        self, x: np.ndarray, y: np.ndarray, suns: list[Sun], *, size: tuple[int, int] = (128, 512)
    ) -> np.ndarray:
        """360-degree views, column 0 looking north, azimuth growing clockwise; uint8 [B, H, W, 3]."""
        h, w = size
        az = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 * math.pi
        el = math.pi / 4 - (torch.arange(h, dtype=torch.float32) + 0.5) / h * (math.pi / 2)
        tan_rows = torch.tan(el)[None, :].expand(w, h).contiguous()
        b = len(x)
        return self._render(x, y, az[None].expand(b, w), tan_rows, suns, shared_az=True)

    def photo(
        self,
        x: np.ndarray,
        y: np.ndarray,
        heading_deg: np.ndarray,
        suns: list[Sun],
        *,
        size: int = 128,
        fov_deg: float = 90.0,
    ) -> np.ndarray:
        """Pinhole photos looking horizontally towards ``heading_deg``; uint8 [B, size, size, 3]."""
        f = (size / 2) / math.tan(math.radians(fov_deg) / 2)
        uu = ((torch.arange(size, dtype=torch.float32) + 0.5) - size / 2) / f  # right
        vv = (size / 2 - (torch.arange(size, dtype=torch.float32) + 0.5)) / f  # up
        heading = torch.from_numpy(np.radians(np.asarray(heading_deg, dtype=np.float32)))
        az = heading[:, None] + torch.atan(uu)[None, :]
        tan_rows = (vv[None, :] / torch.sqrt(1 + uu * uu)[:, None]).contiguous()  # [W, H]
        return self._render(x, y, az, tan_rows, suns, shared_az=False)

    def _cells(self, x: np.ndarray, y: np.ndarray, az: torch.Tensor, shared_az: bool) -> torch.Tensor:
        """Flat (padded) cell index of every ray sample, [B, W, K]."""
        n, res, pad, npp = self.n, self.res, self.pad, self.np_
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.min() < 0 or y.min() < 0 or x.max() >= n * res or y.max() >= n * res:
            raise ValueError(f"{self.world.city.name}: camera outside the {n * res:g} m world")
        col0 = np.floor(x / res).astype(np.int64)
        row0 = n - 1 - np.floor(y / res).astype(np.int64)
        base = torch.from_numpy((row0 + pad) * npp + col0 + pad)[:, None, None]
        centred = np.allclose(x / res - col0, 0.5) and np.allclose(y / res - np.floor(y / res), 0.5)
        if shared_az and centred:  # every camera at a cell centre: one offset table for all
            w = az.shape[1]
            off = self._offsets.get(w)
            if off is None:
                dx, dy = torch.sin(az[0])[:, None].double(), torch.cos(az[0])[:, None].double()
                oc = torch.floor(0.5 + dx * self.s.double() / res).long()
                orow = -torch.floor(0.5 + dy * self.s.double() / res).long()
                off = self._offsets[w] = orow * npp + oc
            return base + off
        cx = torch.from_numpy(x)[:, None, None]
        cy = torch.from_numpy(y)[:, None, None]
        dx, dy = torch.sin(az.double())[..., None], torch.cos(az.double())[..., None]
        col = torch.floor((cx + dx * self.s.double()) / res).long() + pad
        row = (n - 1 + pad) - torch.floor((cy + dy * self.s.double()) / res).long()
        return row * npp + col

    @torch.no_grad()
    def _render(
        self, x, y, az: torch.Tensor, tan_rows: torch.Tensor, suns: list[Sun], *, shared_az: bool
    ) -> np.ndarray:
        b, w = az.shape
        h = tan_rows.shape[-1]
        k = self.s.shape[0]
        flat = self._cells(x, y, az, shared_az)  # [B, W, K]

        # --- per ray sample [B, W, K] ---
        hk = self.height[flat]
        rise = hk - CAMERA_HEIGHT_M
        occ = torch.cummax(rise * self.inv_s, dim=-1).values  # occlusion buffer
        # a ray that hits sample k came down onto its surface (roof/ground) if it was still above that height
        # at the previous sample: q >= (h_k - z_cam) / s_(k-1); otherwise it ran into a wall
        onto = rise * self.inv_prev
        cell = self.packed[flat]  # [B, W, K, 8] uint8

        sun = torch.tensor([s.vector() for s in suns], dtype=torch.float32)  # [B, 3]
        gain = torch.tensor([[t * s.intensity for t in s.tint] for s in suns], dtype=torch.float32)  # [B, 3]
        # wall lighting per (camera, column, grid angle): the grid axis most facing the camera is the normal
        dx, dy = torch.sin(az)[..., None], torch.cos(az)[..., None]  # [B, W, 1]
        a1x, a1y = self.cos_lut, self.sin_lut  # [A]
        p1 = dx * a1x + dy * a1y
        p2 = dy * a1x - dx * a1y
        use1 = p1.abs() >= p2.abs()  # [B, W, A]
        sp1, sp2 = torch.sign(p1), torch.sign(p2)
        nx = torch.where(use1, -sp1 * a1x, sp2 * a1y)
        ny = torch.where(use1, -sp1 * a1y, -sp2 * a1x)
        lam = (nx * sun[:, 0, None, None] + ny * sun[:, 1, None, None]).clamp_(min=0)
        aq = cell[..., 7].long()
        lam_k = torch.gather(lam, -1, aq)  # [B, W, K]
        use1_k = torch.gather(use1, -1, aq)
        # window bays every 3 m along the wall, on buildings only
        cx = torch.as_tensor(np.asarray(x, dtype=np.float32))[:, None, None]
        cy = torch.as_tensor(np.asarray(y, dtype=np.float32))[:, None, None]
        px = cx + dx * self.s
        py = cy + dy * self.s
        ca, sa = self.cos_lut[aq], self.sin_lut[aq]
        along = torch.where(use1_k, py * ca - px * sa, px * ca + py * sa)
        bay = torch.remainder(along, 3.0)
        bay_ok = (bay > 0.6) & (bay < 2.3) & cell[..., 6].bool()

        fog = self.fog[:, None]  # [K, 1]
        keep = (1 - fog) * gain[:, None, None, :]  # [B, 1, K, 3]
        add = (self.haze * fog) * gain[:, None, None, :]
        top_keep = (0.55 + 0.45 * sun[:, 2])[:, None, None, None] * keep
        wall_keep = (0.45 + 0.55 * lam_k)[..., None] * keep  # [B, W, K, 3]
        fac = cell[..., 3:6].float()
        table = torch.empty((b, w, 3, k, 3), dtype=torch.uint8)
        table[:, :, 0] = (cell[..., 0:3].float() * top_keep).add_(add).clamp_(0, 255)  # roof / ground
        table[:, :, 1] = (fac * wall_keep).add_(add).clamp_(0, 255)  # wall
        glass = fac.mul_(0.45).add_(torch.tensor([30.0, 40.0, 55.0]))
        table[:, :, 2] = glass.mul_(wall_keep).add_(add).clamp_(0, 255)  # window
        table = table.reshape(b, w, 3 * k, 3)

        # --- per pixel [B, W, H] ---
        q = tan_rows.expand(b, w, h) if tan_rows.dim() == 2 else tan_rows
        idx = torch.searchsorted(occ, q.contiguous())  # first sample whose surface reaches the ray
        hit = idx < k
        idx.clamp_(max=k - 1)
        wall = q < torch.gather(onto, -1, idx) - 1e-4
        wall |= q >= 0
        # windows: floors every 3.5 m (from the ray's height at the hit) x bays along the wall
        floor_pos = torch.remainder(self.s[idx].mul_(q).add_(CAMERA_HEIGHT_M), 3.5)
        window = (floor_pos > 1.0) & (floor_pos < 2.6) & torch.gather(bay_ok, -1, idx) & wall
        entry = idx.add_(wall.long().mul_(k)).add_(window.long().mul_(k))
        entry = entry.unsqueeze(-1).expand(b, w, h, 3)
        rgb = torch.gather(table, 2, entry)  # [B, W, H, 3] uint8

        el = torch.atan(tan_rows if tan_rows.dim() == 2 else tan_rows[0])  # sky by elevation
        zen = torch.tensor([95.0, 140.0, 205.0])
        hor = torch.tensor([200.0, 214.0, 228.0])
        tsky = (el / (math.pi / 4)).clamp(0, 1)[..., None] ** 0.7
        sky = torch.where((el >= 0)[..., None], hor + (zen - hor) * tsky, self.haze)  # [W, H, 3]
        sky = (sky[None] * gain[:, None, None, :]).clamp_(0, 255).to(torch.uint8)
        rgb = torch.where(hit[..., None], rgb, sky)
        return rgb.permute(0, 2, 1, 3).contiguous().numpy()


@torch.no_grad()
def photos_from_panoramas(
    panos: np.ndarray,
    heading_deg: np.ndarray,
    *,
    size: int = 128,
    fov_deg: float = 90.0,
    pano_vfov_deg: float = 90.0,
) -> np.ndarray:
    """Pinhole photos cut from equirectangular panoramas (as VIGOR/CVACT-style crops are made) whose rows
    span ``pano_vfov_deg`` about the horizon (the synthetic world renders +-45 degrees).

    A 128x512 panorama has the angular resolution of a 128 px, 90-degree photo, so reprojecting it (bilinear)
    is as sharp as ray-marching the photo again, at a fraction of the cost. uint8 [B, size, size, 3].
    """
    b, h, w, _ = panos.shape
    f = (size / 2) / math.tan(math.radians(fov_deg) / 2)
    uu = ((torch.arange(size, dtype=torch.float32) + 0.5) - size / 2) / f
    vv = (size / 2 - (torch.arange(size, dtype=torch.float32) + 0.5)) / f
    heading = torch.from_numpy(np.radians(np.asarray(heading_deg, dtype=np.float32)))
    az = heading[:, None, None] + torch.atan(uu)[None, None, :]  # [B, 1, S] (same for every row)
    el = torch.atan(vv[:, None] / torch.sqrt(1 + uu[None, :] ** 2))[None]  # [1, S, S]
    col = torch.remainder(az / (2 * math.pi) * w, w).expand(b, size, size)  # continuous pixel coordinate
    span = math.radians(pano_vfov_deg)
    row = ((span / 2 - el) / span * h).expand(b, size, size)
    wrap = 2
    t = torch.from_numpy(panos).permute(0, 3, 1, 2).float()
    t = torch.cat([t[..., -wrap:], t, t[..., :wrap]], dim=-1)  # circular padding for the seam at north
    gx = (col + wrap) / (w + 2 * wrap) * 2 - 1
    gy = row / h * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
