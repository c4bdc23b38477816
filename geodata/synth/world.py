"""Render a synthetic world scene by scene, in memory or to GeoTIFFs plus a manifest.

Every random draw comes from a generator seeded by ``(world seed, institution, scene index,
stream)``, so a scene's pixels do not depend on which other scenes, institutions or sensors are
generated, nor on their order or on the number of worker processes. Each sensor of a scene has its
own noise stream; the latent scene (classes, textures) is shared, so the sensors of one scene are
co-registered views of the same place.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from tqdm import tqdm

from geodata.files import atomic_write_text
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.raster import write_geotiff
from geodata.sensors import Sensor, get_sensor
from geodata.synth.config import InstitutionConfig, WorldConfig
from geodata.synth.landcover import SceneGrid, SceneLatent, class_fractions
from geodata.synth.render import OpticalLook, RadarLook, encode, render_optical, render_sar
from geodata.synth.spectra import CLASSES
from geodata.errors import InputError

__all__ = ["Domain", "SensorTile", "RenderedScene", "institution_domain", "grid_factor", "render_scene",
           "iter_scenes", "world_tasks", "generate_world"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Domain:
    """An institution's acquisition conditions, drawn from its ``domain_shift`` strength."""

    gain: float
    tilt: float
    haze: float
    season: float
    exposure: float
    calibration_db: float


@dataclass
class SensorTile:
    """One sensor's view of a scene: raw file values ``[C, H, W]`` and the class mask on its grid."""

    sensor: str
    raw: np.ndarray
    mask: np.ndarray
    transform: Affine
    crs: CRS
    grid_factor: int


@dataclass
class RenderedScene:
    """A scene and its labels (from the mask on the base grid) with every requested sensor's tile."""

    id: str
    institution: str
    region: str
    index: int
    split: str
    label: int
    presence: list[int]
    fractions: np.ndarray
    tiles: dict[str, SensorTile]


def _key(text: str) -> int:
    return zlib.crc32(text.encode())


def _rng(seed: int, institution: str, *keys: int | str) -> np.random.Generator:
    spawn = (_key(institution), *(k if isinstance(k, int) else _key(k) for k in keys))
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=spawn)))


@lru_cache(maxsize=256)
def _domain(seed: int, name: str, strength: float, season: float | None) -> Domain:
    rng = _rng(seed, name, "domain")
    z = rng.standard_normal(6)
    return Domain(
        gain=math.exp(0.12 * strength * z[0]),
        tilt=0.15 * strength * z[1],
        haze=0.03 * strength * abs(z[2]),
        season=season if season is not None else float(np.clip(0.7 * strength * z[3], -1, 1)),
        exposure=1.6 * math.exp(0.15 * strength * z[4]),
        calibration_db=1.0 * strength * z[5],
    )


def institution_domain(config: WorldConfig, institution: InstitutionConfig) -> Domain:
    """The institution's acquisition conditions (deterministic in the world seed and its name)."""
    return _domain(config.seed, institution.name, float(institution.domain_shift), institution.season)


def grid_factor(sensor: Sensor, config: WorldConfig) -> int:
    """``config.aerial_factor`` for sensors finer than half the base pixel (cameras), else 1."""
    finest = min(map(sensor.band_gsd, sensor.bands))
    return config.aerial_factor if finest < config.pixel_size_m / 2 else 1


def _is_sar(sensor: Sensor) -> bool:
    kinds = {b.is_sar for b in sensor.band_objects()}
    if len(kinds) > 1:
        raise InputError(f"sensor {sensor.name!r} mixes SAR and optical bands; cannot render it")
    return kinds.pop()


@lru_cache(maxsize=64)
def _splits(seed: int, name: str, count: int, fractions: tuple[tuple[str, float], ...]) -> tuple[str, ...]:
    """Exact split sizes (largest remainder; every positive split gets a scene when there are enough)."""
    names = [s for s, _ in fractions]
    weights = np.array([f for _, f in fractions], dtype=float)
    weights /= weights.sum()
    sizes = np.floor(weights * count).astype(int)
    if count >= int((weights > 0).sum()):
        sizes[(weights > 0) & (sizes == 0)] = 1
    while sizes.sum() > count:
        sizes[np.argmax(sizes)] -= 1
    order = np.argsort(-(weights * count - np.floor(weights * count)), kind="stable")
    for i in order[: count - sizes.sum()]:
        sizes[i] += 1
    labels = np.repeat(names, sizes)
    return tuple(labels[_rng(seed, name, "split").permutation(count)].tolist())


def _transform(config: WorldConfig, institution: InstitutionConfig, index: int, factor: int) -> Affine:
    """Affine of a scene's tile: each institution fills rows of a square-ish block in its region's
    grid; institutions sharing a region stack below each other with a one-row gap."""
    start = 0
    for other in config.institutions:
        cols = math.ceil(math.sqrt(config.tiles_for(other)))
        if other.name == institution.name:
            break
        if other.region == institution.region:
            start += math.ceil(config.tiles_for(other) / cols) + 1
    row, col = divmod(index, cols)
    extent = config.tile_size * config.pixel_size_m
    x0, y0 = config.region(institution.region).origin
    pixel = config.pixel_size_m / factor
    return Affine(pixel, 0.0, x0 + col * extent, 0.0, -pixel, y0 - (start + row) * extent)


def render_scene(config: WorldConfig, institution: str | InstitutionConfig, index: int,
                 sensors: Sequence[str] | None = None) -> RenderedScene:
    """Render scene ``index`` of ``institution`` for ``sensors`` (default: the institution's own)."""
    inst = config.institution(institution) if isinstance(institution, str) else institution
    if not 0 <= index < config.tiles_for(inst):
        raise IndexError(f"institution {inst.name!r} has scenes 0..{config.tiles_for(inst) - 1}, not {index}")
    chosen = [get_sensor(s) for s in (sensors if sensors is not None else inst.sensors)]
    domain = institution_domain(config, inst)
    priors = np.array([inst.class_priors.get(c, 0.0) for c in CLASSES])
    rng = _rng(config.seed, inst.name, index, "scene")
    # acquisition date and conditions vary from scene to scene around the institution's
    jitter_season, jitter_gain, jitter_haze, jitter_db = rng.normal(0, 0.5), math.exp(rng.normal(0, 0.15)), \
        rng.uniform(0, 0.02), rng.normal(0, 0.5)
    season = float(np.clip(domain.season + jitter_season, -1, 1))
    latent = SceneLatent(rng, priors, config.tile_size * config.pixel_size_m, season)

    n = config.tile_size
    factors = {s.name: grid_factor(s, config) for s in chosen}
    sar = {s.name: _is_sar(s) for s in chosen}
    grids: dict[int, SceneGrid] = {}
    for factor in sorted({1, *factors.values()}):  # the base grid always: it defines the labels
        here = [s for s, f in factors.items() if f == factor]
        grids[factor] = latent.evaluate(n * factor, materials=any(not sar[s] for s in here),
                                        radar=any(sar[s] for s in here))
    fractions = class_fractions(grids[1].mask)
    crs = CRS.from_epsg(config.region(inst.region).epsg)

    tiles = {}
    for sensor in chosen:
        factor = factors[sensor.name]
        grid = grids[factor]
        noise = _rng(config.seed, inst.name, index, sensor.name)
        if sar[sensor.name]:
            look = RadarLook(config.sar_looks, domain.calibration_db + jitter_db)
            physical = render_sar(grid, sensor.bands, look, noise)
        else:
            camera = np.dtype(sensor.dtype) == np.uint8
            gain = domain.gain * jitter_gain * (domain.exposure if camera else 1.0)
            look = OpticalLook(gain=gain, tilt=domain.tilt * (2 if camera else 1), haze=domain.haze + jitter_haze)
            physical = render_optical(grid, sensor, config.pixel_size_m / factor, look, noise)
        tiles[sensor.name] = SensorTile(sensor.name, encode(physical, sensor), grid.mask,
                                        _transform(config, inst, index, factor), crs, factor)
    split_of = _splits(config.seed, inst.name, config.tiles_for(inst), tuple(config.splits.items()))
    return RenderedScene(
        id=f"{inst.name}-{inst.region}-{index:05d}", institution=inst.name, region=inst.region, index=index,
        split=split_of[index], label=int(np.argmax(fractions)),
        presence=np.flatnonzero(fractions >= config.presence_threshold).tolist(), fractions=fractions, tiles=tiles,
    )


def _jobs(config: WorldConfig, sensors: Sequence[str] | None) -> list[tuple[InstitutionConfig, int, tuple[str, ...]]]:
    jobs = []
    for inst in config.institutions:
        own = tuple(s for s in inst.sensors if sensors is None or s in sensors)
        if own:
            jobs.extend((inst, i, own) for i in range(config.tiles_for(inst)))
    return jobs


def iter_scenes(config: WorldConfig, sensors: Sequence[str] | None = None,
                progress: bool = False) -> Iterator[RenderedScene]:
    """Every scene of the world in memory, institution by institution. With ``sensors``, only those
    sensors are rendered and institutions holding none of them are skipped."""
    jobs = _jobs(config, sensors)
    for inst, index, own in tqdm(jobs, desc="synth", unit="scene", disable=not progress):
        yield render_scene(config, inst, index, own)


def world_tasks() -> dict[str, TaskSpec]:
    """The tasks every synthetic world declares."""
    classes = list(CLASSES)
    return {
        "scene": TaskSpec("classification", classes),
        "presence": TaskSpec("multilabel", classes),
        "landcover": TaskSpec("segmentation", classes, ignore_index=255),
    }


def _mask_path(scene: RenderedScene, factor: int) -> str:
    folder = "mask" if factor == 1 else f"mask_x{factor}"
    return f"{scene.institution}/{folder}/{scene.index:05d}.tif"


def _write_scene(job: tuple[WorldConfig, Path, InstitutionConfig, int, tuple[str, ...]]) -> list[TileEntry]:
    """Render one scene, write its GeoTIFFs and return its manifest entries."""
    config, out_dir, inst, index, sensors = job
    scene = render_scene(config, inst, index, sensors)
    entries, masks = [], {}
    for name, tile in scene.tiles.items():
        sensor = get_sensor(name)
        path = f"{scene.institution}/{name}/{scene.index:05d}.tif"
        write_geotiff(out_dir / path, tile.raw, tile.transform, tile.crs, nodata=sensor.nodata,
                      band_names=sensor.bands)
        if tile.grid_factor not in masks:
            masks[tile.grid_factor] = _mask_path(scene, tile.grid_factor)
            write_geotiff(out_dir / masks[tile.grid_factor], tile.mask, tile.transform, tile.crs)
        entries.append(TileEntry(
            id=f"{scene.id}-{name}", sensor=name, split=scene.split, path=path, scene=scene.id,
            region=scene.region, institution=scene.institution,
            targets={"scene": scene.label, "presence": scene.presence, "landcover": masks[tile.grid_factor]},
        ))
    return entries


def generate_world(config: WorldConfig, out_dir: str | Path, progress: bool = True, workers: int = 1) -> Manifest:
    """Write every scene's GeoTIFFs (and class masks) under ``out_dir`` with ``manifest.json`` and
    ``world.json`` (the config). Output bytes depend only on the config, not on ``workers``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(config, out_dir, inst, i, own) for inst, i, own in _jobs(config, None)]
    bar = dict(total=len(jobs), desc=f"synth {config.name}", unit="scene", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_write_scene, jobs, chunksize=16), **bar))
    else:
        results = [_write_scene(job) for job in tqdm(jobs, **bar)]
    manifest = Manifest(tasks=world_tasks(), tiles=[e for entries in results for e in entries],
                        name=f"{config.name}-seed{config.seed}")
    atomic_write_text(out_dir / "world.json", json.dumps(config.to_dict(), indent=1, sort_keys=True))
    manifest.save(out_dir / "manifest.json")
    log.info("wrote %d tiles of %d scenes to %s", len(manifest.tiles), len(jobs), out_dir)
    return manifest
