"""From an evaluated scene to sensor values: optical reflectance, SAR backscatter, raw file encoding.

Optical: material weights times the material spectra at the sensor's band wavelengths, an
illumination gain with a spectral tilt, additive haze (stronger at short wavelengths), per-band
noise, then a Gaussian blur standing in for each band's ground sample distance when it is coarser
than the grid (Sentinel-2 20 m / 60 m bands, Landsat's 30 m on a 10 m grid). SAR: backscatter plus
thermal noise, multiplicative Gamma speckle with ``looks`` in linear power, then dB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from geodata.sensors import Sensor, get_band
from geodata.synth.landcover import SceneGrid
from geodata.synth.spectra import material_matrix
from geodata.errors import InputError

__all__ = ["OpticalLook", "RadarLook", "render_optical", "render_sar", "encode", "blur_sigma_px"]

NESZ_DB = -26.0  # noise-equivalent sigma0 of the radar


@dataclass(frozen=True)
class OpticalLook:
    """Radiometry of one acquisition: ``gain`` (illumination, exposure), ``tilt`` (relative gain
    change per 1000 nm around 800 nm), ``haze`` (path reflectance at 500 nm, ~ wavelength^-2)."""

    gain: float = 1.0
    tilt: float = 0.0
    haze: float = 0.0
    noise: float = 0.003


@dataclass(frozen=True)
class RadarLook:
    """One SAR acquisition: equivalent number of ``looks`` and a calibration offset in dB."""

    looks: float = 4.4
    calibration_db: float = 0.0


def blur_sigma_px(gsd_m: float, pixel_m: float) -> float:
    """Gaussian sigma (pixels) approximating a band of ``gsd_m`` resampled to ``pixel_m`` pixels."""
    ratio = gsd_m / pixel_m
    return 0.45 * float(np.sqrt(ratio**2 - 1)) if ratio > 1 else 0.0


@lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` Gaussian smoothing matrix with mirrored edges; ``G @ x @ G.T`` blurs an image."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    rows = np.repeat(np.arange(n), offsets.size)
    cols = (np.arange(n)[:, None] + offsets[None, :]).ravel()
    cols = np.where(cols < 0, -cols - 1, np.where(cols >= n, 2 * n - cols - 1, cols))
    matrix = np.zeros((n, n))
    np.add.at(matrix, (rows, np.clip(cols, 0, n - 1)), np.tile(kernel, n))
    out = matrix.astype(np.float32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=64)
def _band_layout(bands: tuple[str, ...], gsd_m: tuple[float, ...],
                 pixel_m: float) -> tuple[np.ndarray, list[tuple[float, list[int]]]]:
    """Band centre wavelengths and the bands grouped by blur sigma (unblurred bands left out)."""
    wavelengths = np.array([get_band(b).wavelength_nm for b in bands], dtype=np.float32)
    sigmas = [round(blur_sigma_px(gsd, pixel_m), 2) for gsd in gsd_m]
    groups = [(s, [i for i, t in enumerate(sigmas) if t == s]) for s in sorted(set(sigmas) - {0.0})]
    return wavelengths, groups


def render_optical(grid: SceneGrid, sensor: Sensor, pixel_m: float, look: OpticalLook,
                   rng: np.random.Generator) -> np.ndarray:
    """Reflectance-like physical values of the sensor's bands, float32 ``[len(bands), n, n]``."""
    if grid.materials is None:
        raise InputError("scene grid was evaluated without materials; optical rendering needs them")
    bands = sensor.bands
    table = material_matrix(bands)
    m, n, _ = grid.materials.shape
    wavelengths, blur_groups = _band_layout(bands, tuple(map(sensor.band_gsd, bands)), pixel_m)
    gain = look.gain * (1 + look.tilt * (wavelengths - 800) / 1000)
    haze = look.haze * (wavelengths / 500) ** -2
    image = (gain[:, None] * table) @ grid.materials.reshape(m, n * n) + haze[:, None]
    # uniform noise with the stated standard deviation: cheaper to draw than Gaussian, same role
    noise = rng.random(image.shape, dtype=np.float32) - np.float32(0.5)
    image += noise * (np.float32(np.sqrt(12)) * (look.noise + 0.01 * np.abs(image)))
    image = image.reshape(len(bands), n, n)
    for sigma, idx in blur_groups:
        g = _blur_matrix(n, sigma)
        image[idx] = g @ image[idx] @ g.T
    return image


def render_sar(grid: SceneGrid, bands: Sequence[str], look: RadarLook, rng: np.random.Generator) -> np.ndarray:
    """Backscatter in dB with speckle, float32 ``[len(bands), n, n]`` (bands: VV and/or VH)."""
    if grid.vv is None or grid.vh is None:
        raise InputError("scene grid was evaluated without radar; SAR rendering needs it")
    power = {"VV": grid.vv, "VH": grid.vh}
    gain = np.float32(10 ** (look.calibration_db / 10))
    floor = np.float32(10 ** (NESZ_DB / 10))
    out = []
    for name in bands:
        pol = get_band(name).polarisation
        if pol not in power:
            raise InputError(f"band {name!r}: no radar model for polarisation {pol!r} (have VV, VH)")
        speckle = rng.gamma(look.looks, 1 / look.looks, size=grid.vv.shape).astype(np.float32)
        out.append(10 * np.log10((power[pol] * gain + floor) * speckle + np.float32(1e-6)))
    return np.stack(out)


def encode(physical: np.ndarray, sensor: Sensor) -> np.ndarray:
    """Physical values to the sensor's raw file values (``raw = (physical - offset) / scale``).

    Integer sensors are rounded and clipped to the dtype's range, and kept off ``nodata``
    (Sentinel-2 / Landsat DN >= 1), so a rendered pixel is never read back as invalid.
    """
    dtype = np.dtype(sensor.dtype)
    if dtype.kind == "f":
        return physical.astype(dtype)
    raw = np.rint((physical - sensor.offset) / sensor.scale)
    info = np.iinfo(dtype)
    low, high = info.min, info.max
    if sensor.nodata is not None:
        if sensor.nodata == low:
            low += 1
        elif sensor.nodata == high:
            high -= 1
        elif low < sensor.nodata < high:
            raise InputError(f"sensor {sensor.name!r}: nodata {sensor.nodata} inside the value range; cannot encode")
    return np.clip(raw, low, high).astype(dtype)
