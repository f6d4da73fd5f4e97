"""The 2.5-D world of one synthetic city: height map, surface classes, roof/ground albedo, facade colours.

Everything is generated with whole-array numpy operations (no per-pixel Python loops) from a seeded
generator, so the same seed gives the same city bit for bit. Each city has its own style (street spacing,
lot size, building heights, palettes, trees, water); each district its own random road-grid angle, so road
directions differ across a city and carry information in both views.

Coordinates: a square of ``extent_m`` metres at ``res`` m/px; row 0 is the northern edge. Local metres
``x`` run east from the western edge and ``y`` north from the southern edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# surface classes (the `cls` raster)
ROAD, SIDEWALK, GRASS, PLAZA, WATER, BUILDING, TREE, YARD, MARKING = range(9)
STREET_CLASSES = (ROAD, SIDEWALK, MARKING)


@dataclass(frozen=True)
class Style:
    """Knobs of one urban style; all lengths in metres."""

    block_u: tuple[float, float]
    block_v: tuple[float, float]
    road_w: float
    sidewalk_w: float
    lot: float
    setback: float
    height: tuple[float, float]
    height_gamma: float
    build_prob: float
    park_frac: float
    street_trees: float
    yard_trees: float
    park_trees: float
    angle_jitter_deg: float
    roofs: tuple[tuple[int, int, int], ...]
    facades: tuple[tuple[int, int, int], ...]
    open_class: int = PLAZA  # what an unbuilt lot is
    pitched: bool = False
    towers: bool = False
    warp_m: float = 0.0
    river: bool = False
    ponds: bool = False
    district_km2: float = 0.25


GREYS = ((120, 120, 125), (150, 150, 150), (90, 95, 100), (170, 170, 165), (110, 120, 130))
GLASS = ((80, 110, 140), (100, 130, 150), (150, 160, 170), (185, 178, 160), (70, 80, 95), (120, 95, 80))
BRICK = ((150, 70, 55), (170, 110, 80), (200, 180, 150), (120, 60, 50), (190, 170, 140), (140, 140, 135))
HOUSE = ((230, 225, 210), (200, 190, 160), (170, 190, 200), (210, 200, 180), (180, 150, 120), (150, 165, 140))
SHEDS = ((160, 160, 165), (130, 120, 110), (180, 170, 150), (110, 120, 125), (150, 90, 70))
OLD = ((210, 170, 110), (190, 120, 80), (220, 200, 160), (170, 80, 60), (200, 190, 170), (150, 160, 150))

STYLES: dict[str, Style] = {
    "downtown": Style(
        (70, 95),
        (70, 95),
        14,
        4,
        30,
        1.5,
        (25, 170),
        2.2,
        0.93,
        0.05,
        0.15,
        0.0,
        0.5,
        8,
        GREYS,
        GLASS,
        towers=True,
    ),
    "midrise": Style(
        (55, 75),
        (90, 125),
        10,
        3,
        14,
        0.5,
        (10, 30),
        1.0,
        0.9,
        0.06,
        0.25,
        0.0,
        0.5,
        12,
        ((110, 100, 95), (140, 130, 120), (90, 90, 95), (160, 150, 140), (125, 110, 100)),
        BRICK,
    ),
    "suburban": Style(
        (60, 80),
        (140, 190),
        8,
        2,
        18,
        6,
        (5, 9),
        1.0,
        0.85,
        0.08,
        0.3,
        0.35,
        0.6,
        35,
        ((150, 70, 55), (90, 85, 80), (120, 110, 100), (60, 60, 70), (170, 120, 90)),
        HOUSE,
        open_class=GRASS,
        pitched=True,
    ),
    "industrial": Style(
        (120, 180),
        (120, 200),
        12,
        1.5,
        50,
        6,
        (7, 16),
        1.0,
        0.8,
        0.02,
        0.03,
        0.02,
        0.3,
        20,
        ((205, 205, 205), (180, 185, 190), (150, 150, 150), (210, 205, 195), (120, 125, 130)),
        SHEDS,
        open_class=YARD,
    ),
    "waterfront": Style(
        (60, 90),
        (60, 110),
        10,
        3,
        18,
        1.0,
        (8, 45),
        1.6,
        0.85,
        0.08,
        0.25,
        0.1,
        0.5,
        25,
        GREYS + ((150, 130, 110),),
        BRICK[:3] + GLASS[:3],
        river=True,
    ),
    "park": Style(
        (80, 110),
        (80, 120),
        10,
        3,
        20,
        2,
        (6, 22),
        1.2,
        0.85,
        0.45,
        0.3,
        0.2,
        0.55,
        30,
        ((120, 110, 100), (150, 140, 130), (95, 100, 105), (160, 95, 70)),
        HOUSE[:3] + BRICK[:3],
        open_class=GRASS,
        ponds=True,
    ),
    "oldtown": Style(
        (35, 55),
        (45, 70),
        6,
        1.5,
        10,
        0.0,
        (8, 22),
        1.0,
        0.92,
        0.06,
        0.1,
        0.05,
        0.5,
        45,
        ((170, 85, 60), (150, 75, 55), (120, 80, 70), (100, 100, 100), (185, 110, 75)),
        OLD,
        pitched=True,
        warp_m=14.0,
        district_km2=0.12,
    ),
    "hillside": Style(
        (50, 75),
        (75, 120),
        7,
        1.5,
        16,
        4,
        (5, 14),
        1.0,
        0.8,
        0.1,
        0.35,
        0.3,
        0.6,
        40,
        ((95, 80, 70), (130, 125, 115), (70, 75, 80), (160, 130, 100), (110, 95, 85)),
        HOUSE[3:] + OLD[3:],
        open_class=GRASS,
        pitched=True,
        warp_m=22.0,
        district_km2=0.2,
    ),
    "desert": Style(
        (95, 135),
        (95, 150),
        16,
        2,
        22,
        8,
        (3.5, 7),
        1.0,
        0.7,
        0.03,
        0.05,
        0.06,
        0.15,
        3,
        ((225, 215, 195), (235, 230, 220), (200, 170, 140), (190, 110, 80), (210, 200, 185)),
        ((220, 200, 170), (235, 215, 185), (200, 170, 135), (225, 190, 150), (190, 160, 130)),
        open_class=YARD,
        district_km2=0.3,
    ),
}


@dataclass(frozen=True)
class City:
    """A named synthetic city placed at a real city's centre."""

    name: str
    style: str
    lat: float
    lon: float


CITIES: tuple[City, ...] = (
    City("chicago", "downtown", 41.8781, -87.6298),
    City("atlanta", "suburban", 33.7490, -84.3880),
    City("philadelphia", "midrise", 39.9526, -75.1652),
    City("detroit", "industrial", 42.3314, -83.0458),
    City("portland", "waterfront", 45.5152, -122.6784),
    City("minneapolis", "park", 44.9778, -93.2650),
    City("boston", "oldtown", 42.3601, -71.0589),
    City("seattle", "hillside", 47.6062, -122.3321),  # the cross-area validation cities (see generate.py)
    City("phoenix", "desert", 33.4484, -112.0740),
)

CLASS_ALBEDO = np.array(
    [
        (72, 72, 78),  # road
        (172, 168, 160),  # sidewalk
        (96, 132, 70),  # grass
        (188, 182, 170),  # plaza
        (48, 88, 128),  # water
        (0, 0, 0),  # building: roof colour per building
        (58, 100, 48),  # tree
        (150, 140, 122),  # yard / gravel
        (225, 205, 90),  # road marking
    ],
    dtype=np.float32,
)


@dataclass
class World:
    """Rasters of one city; see the module docstring for the coordinate convention."""

    city: City
    res: float
    extent_m: float
    height: np.ndarray  # float32 [n, n], metres above the street
    cls: np.ndarray  # uint8 [n, n]
    albedo: np.ndarray  # uint8 [n, n, 3] seen from above
    facade: np.ndarray  # uint8 [n, n, 3] seen from the side (buildings, tree foliage)
    angle: np.ndarray  # float32 [n, n], road-grid angle (radians) -> wall orientation
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.height.shape[0])

    def pixel_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of local metres (floored, may be out of range)."""
        col = np.floor(np.asarray(x) / self.res).astype(np.int64)
        row = self.n - 1 - np.floor(np.asarray(y) / self.res).astype(np.int64)
        return row, col


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _hash(seed: int, *keys: np.ndarray) -> np.ndarray:
    """A stateless integer hash of integer arrays -> uint32 (per-lot random numbers without a lookup)."""
    h = np.full(np.shape(keys[0]), np.uint32((seed * 0x9E3779B1 + 0x85EBCA6B) & 0xFFFFFFFF), dtype=np.uint32)
    for k in keys:
        h = _mix(h ^ np.asarray(k).astype(np.int32).view(np.uint32))
    return h


def _rand(h: np.ndarray, k: int) -> np.ndarray:
    """The k-th uniform [0, 1) float32 derived from a hash array."""
    return (_mix(h ^ np.uint32((k * 0x27D4EB2F + 0x165667B1) & 0xFFFFFFFF)) >> np.uint32(8)).astype(
        np.float32
    ) / np.float32(1 << 24)


def smooth_noise(rng: np.random.Generator, n: int, cell_px: int) -> np.ndarray:
    """Smooth noise in [-1, 1] at ``cell_px`` correlation length (bilinear upsampling of a coarse grid)."""
    g = max(2, n // cell_px + 2)
    coarse = rng.uniform(-1.0, 1.0, size=(g, g)).astype(np.float32)
    pos = (np.arange(n, dtype=np.float32) + 0.5) / cell_px
    i0 = np.floor(pos).astype(np.int64)
    f = (pos - i0).astype(np.float32)
    f = f * f * (3 - 2 * f)  # smoothstep: no visible grid creases
    i1 = np.minimum(i0 + 1, g - 1)
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i1] * f[:, None]  # [n, g]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]


def _pick(palette: tuple[tuple[int, int, int], ...], r: np.ndarray) -> np.ndarray:
    pal = np.asarray(palette, dtype=np.float32)
    return pal[np.minimum((r * len(pal)).astype(np.int32), len(pal) - 1)]


def random_style(rng: np.random.Generator, bases: Sequence[Style], spread: float = 1.5) -> Style:
    """A new style between and around ``bases`` (domain randomisation of the training styles).

    Two bases are blended at a random weight; every length, height and share is then scaled by its own
    log-uniform factor in [1/spread, spread] (shares and probabilities clipped to [0, 1]); switches (pitched
    roofs, towers, river, ponds, what an open lot is) come from either base; palettes are both bases' colours,
    each shifted by up to +-20 per channel. Nothing the bases lack is switched on (a warp or ponds appear only
    if a base has them), so a style held out of ``bases`` stays unseen.
    """
    a, b = (bases[int(i)] for i in rng.integers(0, len(bases), size=2))
    t = float(rng.uniform())

    def knob(x: float, y: float, share: bool = False) -> float:
        v = ((1 - t) * x + t * y) * float(np.exp(rng.uniform(-np.log(spread), np.log(spread))))
        return float(np.clip(v, 0.0, 1.0)) if share else v

    def span(x: tuple[float, float], y: tuple[float, float]) -> tuple[float, float]:
        lo, hi = knob(x[0], y[0]), knob(x[1], y[1])
        return (min(lo, hi), max(lo, hi))

    def palette(*pals: tuple[tuple[int, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
        cols = np.asarray([c for pal in pals for c in pal], dtype=np.int32)
        cols = np.clip(cols + rng.integers(-20, 21, size=cols.shape), 0, 255)
        return tuple((int(r), int(g), int(bl)) for r, g, bl in cols)

    pick = (a, b)[int(rng.integers(0, 2))]
    road_w = max(5.0, knob(a.road_w, b.road_w))
    return Style(
        block_u=span(a.block_u, b.block_u),
        block_v=span(a.block_v, b.block_v),
        road_w=road_w,
        sidewalk_w=knob(a.sidewalk_w, b.sidewalk_w),
        lot=max(6.0, knob(a.lot, b.lot)),
        setback=knob(a.setback, b.setback),
        height=span(a.height, b.height),
        height_gamma=knob(a.height_gamma, b.height_gamma),
        build_prob=knob(a.build_prob, b.build_prob, share=True),
        park_frac=knob(a.park_frac, b.park_frac, share=True),
        street_trees=knob(a.street_trees, b.street_trees, share=True),
        yard_trees=knob(a.yard_trees, b.yard_trees, share=True),
        park_trees=knob(a.park_trees, b.park_trees, share=True),
        angle_jitter_deg=knob(a.angle_jitter_deg, b.angle_jitter_deg),
        roofs=palette(a.roofs, b.roofs),
        facades=palette(a.facades, b.facades),
        open_class=pick.open_class,
        pitched=(a.pitched, b.pitched)[int(rng.integers(0, 2))],
        towers=(a.towers, b.towers)[int(rng.integers(0, 2))],
        warp_m=knob(a.warp_m, b.warp_m),
        river=(a.river, b.river)[int(rng.integers(0, 2))],
        ponds=(a.ponds, b.ponds)[int(rng.integers(0, 2))],
        district_km2=knob(a.district_km2, b.district_km2),
    )


def build_world(city: City, *, extent_m: float, res: float, seed: int, style: Style | None = None) -> World:
    """Generate one city's rasters; deterministic in (city, extent, res, seed) and ``style`` (default: the
    city's named style)."""
    st = style or STYLES[city.style]
    rng = np.random.default_rng([seed, sum(map(ord, city.name))])
    hseed = int(rng.integers(0, 2**31))
    n = int(round(extent_m / res))
    coords = ((np.arange(n, dtype=np.float32) + 0.5) * res).astype(np.float32)
    x = np.broadcast_to(coords[None, :], (n, n))
    y = np.broadcast_to(coords[::-1][:, None], (n, n))

    # districts: Voronoi cells (computed at 4 m, then expanded) each with its own street grid
    k = max(2, int(round(extent_m**2 / 1e6 / st.district_km2)))
    seeds = rng.uniform(0, extent_m, size=(k, 2)).astype(np.float32)
    base = rng.uniform(0, np.pi / 2)
    angles = (base + np.radians(rng.uniform(-st.angle_jitter_deg, st.angle_jitter_deg, k))).astype(np.float32)
    su = rng.uniform(*st.block_u, k).astype(np.float32)
    sv = rng.uniform(*st.block_v, k).astype(np.float32)
    off = rng.uniform(0, 200, size=(k, 2)).astype(np.float32)
    step = max(1, int(round(4.0 / res)))
    cc = coords[step // 2 :: step]
    gx, gy = np.meshgrid(cc, cc[::-1])
    dist = (gx[..., None] - seeds[:, 0]) ** 2 + (gy[..., None] - seeds[:, 1]) ** 2
    dcoarse = np.argmin(dist, axis=-1)
    district = np.repeat(np.repeat(dcoarse, step, axis=0), step, axis=1)[:n, :n]
    if district.shape[0] < n:
        district = np.pad(district, ((0, n - district.shape[0]), (0, n - district.shape[1])), mode="edge")

    theta = angles[district]
    ct, sn = np.cos(theta), np.sin(theta)
    u = x * ct + y * sn + off[district, 0]
    v = -x * sn + y * ct + off[district, 1]
    if st.warp_m > 0:
        cell = max(2, int(60 / res))
        u = u + st.warp_m * smooth_noise(rng, n, cell)
        v = v + st.warp_m * smooth_noise(rng, n, cell)
    SU, SV = su[district], sv[district]
    bu, bv = np.floor(u / SU), np.floor(v / SV)
    fu, fv = u - bu * SU, v - bv * SV
    rw, sw = st.road_w, st.sidewalk_w
    road = (fu < rw) | (fv < rw)
    sidewalk = ~road & ((fu < rw + sw) | (fv < rw + sw) | (fu > SU - sw) | (fv > SV - sw))
    marking = ((np.abs(fu - rw / 2) < 0.2) & (fv >= rw) & (np.mod(v, 6.0) < 3.0)) | (
        (np.abs(fv - rw / 2) < 0.2) & (fu >= rw) & (np.mod(u, 6.0) < 3.0)
    )

    # lots inside each block
    inner_u, inner_v = SU - rw - 2 * sw, SV - rw - 2 * sw
    nlu = np.maximum(1, np.round(inner_u / st.lot))
    nlv = np.maximum(1, np.round(inner_v / (st.lot * 1.3)))
    lu_w, lv_w = inner_u / nlu, inner_v / nlv
    au, av = fu - rw - sw, fv - rw - sw
    lu, lv = np.floor(au / lu_w), np.floor(av / lv_w)
    du = np.minimum(au - lu * lu_w, (lu + 1) * lu_w - au)
    dv = np.minimum(av - lv * lv_w, (lv + 1) * lv_w - av)
    block_h = _hash(hseed, district, bu, bv)
    lot_h = _hash(hseed, district, bu, bv, lu, lv)
    park = _rand(block_h, 0) < st.park_frac
    built = (_rand(lot_h, 1) < st.build_prob) & ~park
    inlot = ~road & ~sidewalk
    footprint = inlot & built & (du > st.setback) & (dv > st.setback)

    r_h = _rand(lot_h, 2)
    lo, hi = st.height
    height = (lo + (hi - lo) * r_h**st.height_gamma).astype(np.float32)
    if st.towers:
        podium = (du < st.setback + 7) | (dv < st.setback + 7)
        low = np.minimum(height, 12 + 10 * _rand(lot_h, 4))
        height = np.where(podium & (_rand(lot_h, 3) < 0.6), low, height)
    if st.pitched:
        ridge = np.minimum(du - st.setback, dv - st.setback)
        height = height + np.clip(ridge * 0.45, 0, 3.0)
    height = np.where(footprint, height, 0.0).astype(np.float32)

    cls = np.full((n, n), st.open_class, dtype=np.uint8)
    cls[inlot & park] = GRASS
    cls[footprint] = BUILDING
    cls[sidewalk] = SIDEWALK
    cls[road] = ROAD
    cls[road & marking] = MARKING

    # ponds in park blocks
    if st.ponds:
        pc_u, pc_v = (bu + 0.5) * SU, (bv + 0.5) * SV
        pr = 0.22 * np.minimum(SU, SV) * (0.6 + 0.8 * _rand(block_h, 5))
        pond = park & (_rand(block_h, 6) < 0.5) & (((u - pc_u) / 1.4) ** 2 + (v - pc_v) ** 2 < pr**2)
        cls[pond] = WATER

    # major arterials across the city
    for _ in range(2):
        a = rng.uniform(0, np.pi)
        c0 = rng.uniform(0.3, 0.7) * extent_m
        dline = np.abs((x - c0) * np.sin(a) - (y - c0) * np.cos(a))
        art = dline < 11
        height[art] = 0
        cls[art & (dline >= 9)] = SIDEWALK
        cls[dline < 9] = ROAD
        cls[(np.abs(dline - 0.0) < 0.25)] = MARKING
        theta = np.where(art, np.float32(a), theta).astype(np.float32)

    if st.river:
        a = rng.uniform(0, np.pi)
        c0 = rng.uniform(0.35, 0.65) * extent_m
        along = (x - c0) * np.cos(a) + (y - c0) * np.sin(a)
        across = -(x - c0) * np.sin(a) + (y - c0) * np.cos(a)
        centre = 60 * np.sin(along / 260.0 + rng.uniform(0, 6.28))
        width = rng.uniform(70, 110)
        off_c = np.abs(across - centre)
        water = off_c < width / 2
        bank = (off_c >= width / 2) & (off_c < width / 2 + 14)
        height[water | bank] = 0
        cls[bank] = SIDEWALK
        cls[water] = WATER

    # trees: one candidate per 7 m cell at a jittered position, kept by the class under its centre
    tc = 7.0
    tcol, trow = np.floor(x / tc), np.floor(y / tc)
    th = _hash(hseed + 1, tcol, trow)
    radius = 1.8 + 1.6 * _rand(th, 0)
    cx = (tcol + 0.5) * tc + (tc / 2 - radius) * (2 * _rand(th, 1) - 1)
    cy = (trow + 0.5) * tc + (tc / 2 - radius) * (2 * _rand(th, 2) - 1)
    crow = np.clip(n - 1 - np.floor(cy / res).astype(np.int64), 0, n - 1)
    ccol = np.clip(np.floor(cx / res).astype(np.int64), 0, n - 1)
    ccls = cls[crow, ccol]
    prob = np.zeros(9, dtype=np.float32)
    prob[SIDEWALK] = st.street_trees * 0.6
    prob[GRASS] = st.park_trees
    prob[PLAZA] = 0.08
    prob[YARD] = 0.03
    p = prob[ccls]
    p = np.where((ccls == GRASS) & ~park, st.yard_trees, p)
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / radius**2
    tree = (r2 < 1) & (_rand(th, 3) < p) & (cls != BUILDING) & (cls != WATER)
    t_h = (5.0 + 7.0 * _rand(th, 4)) * (0.6 + 0.4 * np.sqrt(np.clip(1 - r2, 0, 1)))
    height = np.where(tree, t_h, height).astype(np.float32)
    cls[tree] = TREE

    # colours: computed on the building / tree pixels only
    albedo = CLASS_ALBEDO[cls]
    facade = np.zeros((n, n, 3), dtype=np.float32)
    b = cls == BUILDING
    lh = lot_h[b]
    roof = _pick(st.roofs, _rand(lh, 5)) * (0.85 + 0.3 * _rand(lh, 6))[:, None]
    fac = (_pick(st.facades, _rand(lh, 7)) * 0.7 + roof * 0.3) * (0.85 + 0.3 * _rand(lh, 8))[:, None]
    albedo[b] = roof
    facade[b] = fac
    t = cls == TREE
    tone = (0.75 + 0.5 * _rand(th[t], 5))[:, None]
    albedo[t] *= tone
    facade[t] = np.float32([70, 118, 55]) * tone
    albedo += rng.integers(-8, 9, size=(n, n, 1), dtype=np.int8).astype(np.float32)

    return World(
        city=city,
        res=res,
        extent_m=n * res,
        height=height,
        cls=cls,
        albedo=np.clip(albedo, 0, 255).astype(np.uint8),
        facade=np.clip(facade, 0, 255).astype(np.uint8),
        angle=theta.astype(np.float32),
        meta={"districts": k, "style": city.style},
    )
