"""The latent land-cover scene: a resolution-free random description, evaluated on any pixel grid.

A :class:`SceneLatent` holds random control lattices (class logit fields at four octaves, smooth
variation fields) and layout parameters (urban blocks, crop parcels, canopy waves). Evaluating it
on an ``n x n`` grid over the same footprint gives the class mask, soft class abundances (mixed
pixels at boundaries), per-pixel surface-material weights for optical rendering, and C-band
backscatter in linear power for radar. Fields are cubic B-splines of the lattices and textures are
analytic, box-filtered over the pixel footprint, so a 4x finer grid refines the same scene instead
of drawing a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from geodata.synth.spectra import CLASSES, MATERIALS, backscatter_linear

__all__ = ["SceneLatent", "SceneGrid", "class_fractions"]

K = len(CLASSES)
_MAT = {m: i for i, m in enumerate(MATERIALS)}
_K = {c: i for i, c in enumerate(CLASSES)}
_OCTAVES = ((3, 1.0), (6, 0.7), (12, 0.4), (24, 0.2))  # (lattice cells per tile side, amplitude)
_VARIATION = ("vigour", "moisture", "turbidity", "mix", "brightness", "wind")
_FINE = ("wet", "rough")
_TAU = 0.12  # softmax temperature of class abundances: boundary blending width
_BSPLINE_VAR = 151 / 315  # variance of a cubic B-spline of unit white noise, per axis
_ROOFS = ("roof_tile", "roof_dark", "concrete", "metal")
_TABLE = 16  # per-block / per-parcel attribute tables, indexed modulo this size


@lru_cache(maxsize=128)
def _bspline(n: int, cells: int) -> np.ndarray:
    """``[n, cells + 3]`` cubic B-spline weights sampling a lattice at ``n`` pixel centres (unit variance)."""
    t = (np.arange(n) + 0.5) / n * cells
    i = np.floor(t).astype(int)
    f = t - i
    w = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], axis=1) / 6
    m = np.zeros((n, cells + 3))
    for k in range(4):
        m[np.arange(n), i + k] = w[:, k]
    out = (m / np.sqrt(_BSPLINE_VAR)).astype(np.float32)
    out.setflags(write=False)
    return out


def _smooth(lattice: np.ndarray, n: int) -> np.ndarray:
    """Evaluate lattices ``[F, c + 3, c + 3]`` on an ``n x n`` grid: ``[F, n, n]``, about unit variance."""
    m = _bspline(n, lattice.shape[-1] - 3)
    return m @ lattice @ m.T


def _sig(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _strip(d: np.ndarray, half: np.ndarray | float, pix: float) -> np.ndarray:
    """Box-filtered coverage of the interval ``[-half, half]`` by pixels centred at ``d`` of width ``pix``."""
    return np.clip(np.minimum(d + pix / 2, half) - np.maximum(d - pix / 2, -half), 0.0, None) / pix


def _wave_atten(period: np.ndarray | float, pix: float) -> np.ndarray:
    """Amplitude left of a cosine of ``period`` after a pixel box filter (Gaussian approximation)."""
    sigma2 = pix**2 / 12
    return np.exp(-2 * np.pi**2 * sigma2 / np.asarray(period) ** 2)


@dataclass(frozen=True)
class _Grid:
    """A rotated, offset lattice of cells (urban blocks or crop parcels) with per-cell tables."""

    angle: float
    size: tuple[float, float]
    offset: tuple[float, float]

    def locate(self, x: np.ndarray, y: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)):
        """Cell table indices and local coordinates (metres from the cell's low corner) of points."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        p = c * x + s * y + (self.offset[0] - shift[0])
        q = -s * x + c * y + (self.offset[1] - shift[1])
        ip, iq = np.floor(p / self.size[0]), np.floor(q / self.size[1])
        lp, lq = p - ip * self.size[0], q - iq * self.size[1]
        return (ip.astype(np.int64) & (_TABLE - 1), iq.astype(np.int64) & (_TABLE - 1)), lp, lq


@dataclass
class SceneGrid:
    """One scene evaluated on an ``n x n`` grid.

    ``mask`` uint8 ``[n, n]`` (argmax class), ``abundance`` float32 ``[K, n, n]``; ``materials``
    float32 ``[len(MATERIALS), n, n]`` (surface-material weights, shading included) and ``vv`` /
    ``vh`` float32 ``[n, n]`` (backscatter, linear power) when asked for.
    """

    mask: np.ndarray
    abundance: np.ndarray
    materials: np.ndarray | None = None
    vv: np.ndarray | None = None
    vh: np.ndarray | None = None


def class_fractions(mask: np.ndarray) -> np.ndarray:
    """Share of each class in a mask: float64 ``[K]``."""
    return np.bincount(mask.ravel(), minlength=K)[:K] / mask.size


class SceneLatent:
    """Random, resolution-free description of one scene of ``extent_m`` metres on a side."""

    def __init__(self, rng: np.random.Generator, priors: np.ndarray, extent_m: float, season: float,
                 concentration: float = 1.0) -> None:
        """Draw a scene. ``priors`` ``[K]`` weights classes (zero: never); ``season`` in [-1, 1]."""
        priors = np.asarray(priors, dtype=np.float64)
        self.extent_m = float(extent_m)
        self.season = float(season)
        present = priors > 0
        share = np.zeros(K)
        share[present] = rng.dirichlet(concentration * K * priors[present] / priors.sum())
        self.log_share = np.where(present, np.log(np.maximum(share, 1e-12)), -np.inf).astype(np.float32)
        f32 = np.float32
        self.class_lattices = [rng.standard_normal((K, c + 3, c + 3), dtype=f32) * f32(a) for c, a in _OCTAVES]
        self.variation = [rng.standard_normal((len(_VARIATION), c + 3, c + 3), dtype=f32) * f32(a)
                          for c, a in ((2, 0.6), (5, 0.8))]
        self.fine = rng.standard_normal((len(_FINE), 27, 27), dtype=f32)
        u = rng.random(14)  # layout scalars, drawn at once (fewer generator calls)
        t = rng.random((7, _TABLE, _TABLE), dtype=f32)  # per block / parcel attribute tables
        canopy = rng.random((3, 8))
        normal = rng.standard_normal(2)
        # each class's look varies from scene to scene (soil type, tree species, crop, roofing, water
        # constituents): a per-class optical brightness and radar gain, so a tile's mean spectrum is a
        # poor guide to its class fractions while the spatial structure stays
        self.class_gain = np.exp(0.3 * rng.standard_normal(K)).astype(f32)
        self.class_radar_gain = np.exp(0.25 * rng.standard_normal(K)).astype(f32)
        # ... and each vegetated class's vigour (grazing, irrigation, drought), beyond the season
        self.class_vigour = rng.standard_normal(K).astype(f32)
        # urban blocks; kind 0 building, 1 park, 2 plaza
        self.blocks = _Grid(u[0] * np.pi / 2, _pair(35 + 45 * u[1:3]), _pair(80 * u[3:5]))
        self.road_width = float(6 + 6 * u[5])
        self.block_kind = np.searchsorted(np.array([0.8, 0.92], dtype=f32), t[0], side="right")
        self.setback = 2 + 6 * t[1]
        self.roof = np.searchsorted(np.array([0.35, 0.6, 0.85], dtype=f32), t[2], side="right")
        self.roof_gain = 0.8 + 0.4 * t[3]
        angle, length = 2 * math.pi * u[6], 3 + 5 * u[7]
        self.sun_shift = (length * math.cos(angle), length * math.sin(angle))
        # crop parcels; state 0 green crop, 1 ripe/senescent, 2 bare (ploughed), 3 young rows
        self.parcels = _Grid(u[8] * np.pi / 2, (60 + 120 * u[9], 40 + 100 * u[10]), _pair(250 * u[11:13]))
        self.hedge_half_width = float(2 + 2 * u[13])
        # the crop calendar differs from scene to scene: the share of parcels in each state is drawn
        state_share = rng.dirichlet(np.array([2.0 + 1.5 * max(self.season, 0), 1.5, 1.5, 1.5]))
        self.parcel_state = np.searchsorted(np.cumsum(state_share)[:3].astype(f32), t[4], side="right")
        self.row_along_p = t[5] < 0.5
        self.row_period = 5 + 4 * t[6]
        # forest canopy: random plane waves at crown scale
        self.canopy_k = 2 * np.pi / (6 + 8 * canopy[0])
        self.canopy_dir = np.pi * canopy[1]
        self.canopy_phase = 2 * np.pi * canopy[2]
        self.conifer_bias = float(normal[0])
        self.wet_bias = float(-0.3 + 0.6 * normal[1])

    # --- evaluation -----------------------------------------------------------------------------

    def evaluate(self, n: int, materials: bool = True, radar: bool = True) -> SceneGrid:
        """The scene on an ``n x n`` grid (``materials`` for optical, ``radar`` for SAR sensors)."""
        logits = self.log_share[:, None, None] + sum(_smooth(lat, n) for lat in self.class_lattices)
        mask = np.argmax(logits, axis=0).astype(np.uint8)
        z = np.exp((logits - logits.max(axis=0, keepdims=True)) / _TAU)
        z[z < 0.01 * z.sum(axis=0)] = 0  # negligible shares: skip them, renormalise the rest
        abundance = z / z.sum(axis=0, keepdims=True)
        grid = SceneGrid(mask=mask, abundance=abundance)
        if not (materials or radar):
            return grid
        ctx = _Context(self, n)
        weights = np.zeros((len(MATERIALS), n * n), dtype=np.float32) if materials else None
        vv = np.zeros(n * n, dtype=np.float32) if radar else None
        vh = np.zeros(n * n, dtype=np.float32) if radar else None
        base_vv, base_vh = backscatter_linear("VV"), backscatter_linear("VH")
        flat = abundance.reshape(K, n * n)
        for k, name in enumerate(CLASSES):
            where = np.flatnonzero(flat[k])  # composers only work where their class is
            if where.size == 0:
                continue
            mats, mod_vv, mod_vh = _COMPOSERS[name](_View(ctx, where))
            a = flat[k, where]
            if weights is not None:
                lit = a * self.class_gain[k]
                for material, w in mats.items():
                    weights[_MAT[material], where] += lit * w
            if vv is not None:
                echo = a * self.class_radar_gain[k]
                vv[where] += echo * (base_vv[k] * mod_vv)
                vh[where] += echo * (base_vh[k] * mod_vh)
        if weights is not None:
            grid.materials = weights.reshape(len(MATERIALS), n, n)
        if vv is not None:
            grid.vv, grid.vh = vv.reshape(n, n), vh.reshape(n, n)
        return grid


def _pair(values: np.ndarray) -> tuple[float, float]:
    return float(values[0]), float(values[1])


class _Context:
    """Per-grid quantities, computed once and shared by the class composers: pixel-centre
    coordinates (flattened), variation fields and canopy texture (lazily)."""

    def __init__(self, scene: SceneLatent, n: int) -> None:
        self.scene = scene
        self.n = n
        self.pix = scene.extent_m / n
        centres = ((np.arange(n) + 0.5) * self.pix).astype(np.float32)
        self.centres = centres
        self.x, self.y = np.tile(centres, n), np.repeat(centres, n)
        self._fields: dict[str, np.ndarray] | None = None
        self._canopy: np.ndarray | None = None

    @property
    def fields(self) -> dict[str, np.ndarray]:
        if self._fields is None:
            smooth = sum(_smooth(lat, self.n) for lat in self.scene.variation)
            fine = _smooth(self.scene.fine, self.n)
            self._fields = {name: f.ravel() for name, f in zip(_VARIATION + _FINE, [*smooth, *fine])}
        return self._fields

    @property
    def canopy(self) -> np.ndarray:
        """Crown-scale texture in about [-1, 1]: a sum of plane waves, attenuated by the pixel
        footprint, evaluated as one complex outer product ``Re(A_y @ B_x)``."""
        if self._canopy is None:
            s = self.scene
            gain = _wave_atten(2 * np.pi / s.canopy_k, self.pix) / 2.0
            rows = np.exp(1j * np.outer(self.centres, s.canopy_k * np.sin(s.canopy_dir)))
            cols = gain[:, None] * np.exp(1j * (np.outer(s.canopy_k * np.cos(s.canopy_dir), self.centres)
                                                + s.canopy_phase[:, None]))
            self._canopy = (rows.astype(np.complex64) @ cols.astype(np.complex64)).real.ravel()
        return self._canopy


class _View:
    """The pixels ``where`` (flat indices) of a grid: what one class composer sees."""

    def __init__(self, ctx: _Context, where: np.ndarray) -> None:
        self.scene, self.pix = ctx.scene, ctx.pix
        self.x, self.y = ctx.x[where], ctx.y[where]
        self._ctx, self._where = ctx, where
        self.fields = _Fields(ctx, where)

    @property
    def canopy(self) -> np.ndarray:
        return self._ctx.canopy[self._where]


class _Fields:
    """Variation fields at a view's pixels, gathered on first use."""

    def __init__(self, ctx: _Context, where: np.ndarray) -> None:
        self._ctx, self._where = ctx, where
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._ctx.fields[name][self._where]
        return self._cache[name]


Composition = tuple[dict[str, np.ndarray], np.ndarray | float, np.ndarray | float]


def _water(ctx: _View) -> Composition:
    f = ctx.fields
    t = _sig(1.3 * f["turbidity"] - 1.0)
    rough = np.exp(0.35 * f["wind"])
    return {"water_clear": 1 - t, "water_turbid": t}, rough, rough


def _forest(ctx: _View) -> Composition:
    f, s = ctx.fields, ctx.scene
    texture = ctx.canopy
    lit = 1 + 0.35 * texture + 0.15 * f["rough"]  # crowns, and clumps and gaps at a few tens of metres
    conifer = _sig(1.6 * f["mix"] + s.conifer_bias)
    vigour = np.clip(0.8 + 0.1 * f["vigour"] + 0.15 * s.season + 0.1 * s.class_vigour[_K["forest"]], 0.2, 1.0)
    gap = _sig(2 * f["rough"] - 3.5)
    broad = (1 - conifer) * lit * (1 - gap)
    mats = {"conifer": conifer * lit * (1 - gap), "green_veg": broad * vigour + 0.6 * gap,
            "dry_veg": broad * (1 - vigour) + 0.4 * gap}
    mod = 1 + 0.2 * texture
    return mats, mod, mod


def _grassland(ctx: _View) -> Composition:
    f, s = ctx.fields, ctx.scene
    v = _sig(1.2 * f["vigour"] + 0.9 + 1.5 * s.season + s.class_vigour[_K["grassland"]])
    bare = 0.6 * _sig(3 * f["rough"] - 3.5)  # trampled or eroded patches
    return ({"green_veg": v * (1 - bare), "dry_veg": (1 - v) * (1 - bare) * 0.85,
             "soil_dry": (1 - v) * (1 - bare) * 0.15 + bare},
            np.exp(0.25 * f["moisture"]), 0.7 + 0.6 * v)


# per parcel state (green crop, ripe, bare, young rows): cover, vigour, row contrast, VV and VH gain
_CROP_COVER = np.array([0.95, 0.85, 0.03, 0.5], dtype=np.float32)
_CROP_VIGOUR = np.array([0.9, 0.2, 0.0, 0.85], dtype=np.float32)
_CROP_ROWS = np.array([0.05, 0.1, 0.0, 0.45], dtype=np.float32)
_CROP_VV = np.array([1.25, 1.0, 0.7, 0.9], dtype=np.float32)
_CROP_VH = np.array([1.7, 1.1, 0.35, 0.8], dtype=np.float32)


def _cropland(ctx: _View) -> Composition:
    f, s = ctx.fields, ctx.scene
    idx, lp, lq = s.parcels.locate(ctx.x, ctx.y)
    state = s.parcel_state[idx]
    period = s.row_period[idx]
    along = np.where(s.row_along_p[idx], lp, lq)
    rows = np.cos(2 * np.pi * along / period) * _wave_atten(period, ctx.pix)
    cover = np.clip(_CROP_COVER[state] + _CROP_ROWS[state] * rows, 0, 1)
    vigour = np.clip(_CROP_VIGOUR[state] + 0.25 * s.season + 0.2 * s.class_vigour[_K["cropland"]], 0, 1)
    edge = np.minimum(np.minimum(lp, s.parcels.size[0] - lp), np.minimum(lq, s.parcels.size[1] - lq))
    margin = _strip(edge, s.hedge_half_width, ctx.pix)  # hedgerows and tracks between parcels
    field = 1 - margin
    wet = _sig(f["moisture"] - 0.5)
    furrows = 1 + 0.15 * rows * (state == 2)
    soil = field * (1 - cover) * furrows
    mats = {"green_veg": field * cover * vigour + 0.25 * margin, "dry_veg": field * cover * (1 - vigour),
            "soil_dry": soil * (1 - wet) + 0.15 * margin, "soil_wet": soil * wet, "conifer": 0.6 * margin}
    moist = np.exp(0.3 * f["moisture"])
    return mats, _CROP_VV[state] * moist, _CROP_VH[state] * moist


def _bare_soil(ctx: _View) -> Composition:
    f, s = ctx.fields, ctx.scene
    wet = _sig(1.2 * f["moisture"] - 0.7)
    bright = 1 + 0.15 * f["brightness"] + 0.25 * f["rough"]  # grainy: stones, rills, crusts
    sparse = 0.35 * _sig(2 * f["vigour"] - 1.5 + 1.5 * s.class_vigour[_K["bare_soil"]])  # scattered plants
    green = _sig(1.5 * s.season)
    rough = np.exp(0.3 * f["rough"])
    return ({"soil_dry": (1 - wet) * bright * (1 - sparse), "soil_wet": wet * bright * (1 - sparse),
             "green_veg": sparse * green, "dry_veg": sparse * (1 - green)},
            10 ** (0.6 * wet) * rough, 10 ** (0.4 * wet) * rough)


def _buildings(ctx: _View, shift: tuple[float, float] = (0.0, 0.0)):
    """Roof coverage (box-filtered) and block table indices, with the block lattice shifted by ``shift``."""
    s = ctx.scene
    idx, lp, lq = s.blocks.locate(ctx.x, ctx.y, shift)
    sx, sy = s.blocks.size
    inset = s.road_width / 2 + s.setback[idx]
    roof = _strip(lp - sx / 2, sx / 2 - inset, ctx.pix) * _strip(lq - sy / 2, sy / 2 - inset, ctx.pix)
    return roof * (s.block_kind[idx] == 0), idx, lp, lq


def _urban(ctx: _View) -> Composition:
    s = ctx.scene
    sx, sy = s.blocks.size
    roof, idx, lp, lq = _buildings(ctx)
    half = s.road_width / 2
    road_p = _strip(np.minimum(lp, sx - lp), half, ctx.pix)
    road_q = _strip(np.minimum(lq, sy - lq), half, ctx.pix)
    road = np.clip(road_p + road_q - road_p * road_q, 0, 1)
    shifted, _, _, _ = _buildings(ctx, s.sun_shift)
    shadow = np.clip(shifted - roof, 0, 1) * (1 - road)
    ground = np.clip(1 - road - roof, 0, 1)
    dim = 1 - 0.7 * shadow
    kind = s.block_kind[idx]
    park, plaza = (kind == 1).astype(np.float32), (kind == 2).astype(np.float32)
    garden = ground * dim * (1 - plaza)
    green = 0.3 + 0.6 * _sig(s.class_vigour[_K["urban"]]) + 0.3 * park  # leafy or paved neighbourhoods
    mats = {"asphalt": road * (1 - 0.7 * np.clip(shifted - roof, 0, 1)),
            "green_veg": garden * np.minimum(green, 1), "soil_dry": garden * 0.4 * (1 - np.minimum(green, 1)),
            "concrete": garden * 0.6 * (1 - np.minimum(green, 1)) + ground * dim * plaza}
    roof_mat = s.roof[idx]
    gain = s.roof_gain[idx]
    for j, material in enumerate(_ROOFS):
        mats[material] = mats.get(material, 0) + roof * gain * (roof_mat == j)
    facing = 0.4 + 1.6 * math.cos(2 * s.blocks.angle) ** 2  # double bounce is strongest for walls facing the radar
    vv = 0.12 * road + 0.5 * ground + facing * (2.5 * roof + 3.0 * shadow)
    vh = 0.2 * road + 0.6 * ground + facing * (2.0 * roof + 1.5 * shadow)
    return mats, vv, vh


def _wetland(ctx: _View) -> Composition:
    f, s = ctx.fields, ctx.scene
    w = _sig(3.0 * f["wet"] + s.wet_bias)
    v = np.clip(0.65 + 0.15 * f["vigour"] + 0.2 * s.season + 0.15 * s.class_vigour[_K["wetland"]], 0.1, 1.0)
    mats = {"water_turbid": 0.6 * w, "water_clear": 0.4 * w, "green_veg": 0.85 * (1 - w) * v,
            "dry_veg": 0.85 * (1 - w) * (1 - v)}
    edge = w * (1 - w)
    return mats, 0.05 * w + (1 - w) + 3.0 * edge, 0.05 * w + (1 - w) + 1.0 * edge


def _snow_ice(ctx: _View) -> Composition:
    f, s = ctx.fields, ctx.scene
    snow = _sig(1.5 * f["mix"] + 1.2 - s.season)
    shade = np.clip(1 + 0.18 * f["brightness"] + 0.1 * f["rough"], 0.5, 1.5)
    rough = np.exp(0.4 * f["rough"])
    return {"snow": snow * shade, "ice": (1 - snow) * shade}, rough, rough


_COMPOSERS = {
    "water": _water, "forest": _forest, "grassland": _grassland, "cropland": _cropland,
    "bare_soil": _bare_soil, "urban": _urban, "wetland": _wetland, "snow_ice": _snow_ice,
}
assert tuple(_COMPOSERS) == CLASSES
