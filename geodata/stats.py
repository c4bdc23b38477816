"""Per-band normalisation statistics of a manifest selection, computed once and stored as JSON.

The file lives beside the manifest, ``<manifest_dir>/stats/<sensor>__<split>__<key>.json``, where
``key`` hashes the selected tiles' ids and files, each file's content (sha256, streamed: far cheaper
than decoding it) and the sensor's per-band calibration: a changed selection, a file rewritten in place
(whatever its size and modification time say) or a sensor whose values now mean other physical values
gets a new file; an unchanged one is loaded instead of recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from geodata.errors import InputError, RasterError
from geodata.files import atomic_write_text
from geodata.manifest import Manifest, TileEntry
from geodata.raster import read_source, tile_source, tile_window
from geodata.sensors import Sensor

__all__ = ["BandStats", "compute_band_stats", "load_or_compute_stats", "stats_path"]

log = logging.getLogger(__name__)

MIN_STD = 1e-6  # floor so that dividing by std is always safe


@dataclass(frozen=True)
class BandStats:
    """Mean and standard deviation of each band over valid pixels, in physical units."""

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"bands": list(self.bands), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "BandStats":
        stats = cls(tuple(raw["bands"]), tuple(map(float, raw["mean"])), tuple(map(float, raw["std"])))
        if not len(stats.bands) == len(stats.mean) == len(stats.std):
            raise InputError(f"band stats: {len(stats.bands)} bands but {len(stats.mean)} means, "
                             f"{len(stats.std)} stds")
        return stats


def _file_digest(path: Path) -> str:
    """The sha256 of a file's content; empty when it cannot be read (reading it will say why)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
    except OSError:
        return ""
    return digest.hexdigest()


def _tiles_key(manifest: Manifest, tiles: list[TileEntry], sensor: Sensor) -> str:
    ident: list = [sensor.bands, sensor.calibration()]
    for t in tiles:
        source = tile_source(manifest, t)
        files = [source] if isinstance(source, Path) else [source[b] for b in sorted(source)]
        ident.append((t.id, t.path, t.band_paths, *([t.window] if t.window is not None else []),
                      [_file_digest(f) for f in files]))
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def stats_path(manifest: Manifest, sensor: Sensor, split: str, tiles: list[TileEntry],
               stats_dir: str | Path | None = None) -> Path:
    folder = Path(stats_dir) if stats_dir is not None else manifest.root / "stats"
    return folder / f"{sensor.name}__{split}__{_tiles_key(manifest, tiles, sensor)}.json"


def compute_band_stats(manifest: Manifest, tiles: list[TileEntry], sensor: str | Sensor) -> BandStats:
    """Mean and std per image band over the valid pixels of ``tiles`` (float64 accumulation)."""
    sensor = manifest.sensor(sensor) if isinstance(sensor, str) else sensor
    bands = sensor.image_bands
    total = np.zeros(len(bands))
    total_sq = np.zeros(len(bands))
    count = 0
    for tile in tqdm(tiles, desc=f"band stats {sensor.name}", unit="tile", leave=False):
        raster = read_source(tile_source(manifest, tile), sensor, window=tile_window(tile))
        pixels = raster.data[:, raster.valid].astype(np.float64)
        total += pixels.sum(1)
        total_sq += np.square(pixels).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return BandStats(bands, tuple(mean.tolist()), tuple(np.maximum(std, MIN_STD).tolist()))


def load_or_compute_stats(
    manifest: Manifest | str | Path, sensor: str | Sensor, split: str = "train",
    institution: str | None = None, region: str | None = None, stats_dir: str | Path | None = None,
) -> BandStats:
    """Band statistics of the ``split`` tiles of ``sensor``: loaded if stored, else computed and stored."""
    manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    sensor = manifest.sensor(sensor) if isinstance(sensor, str) else sensor
    tiles = manifest.select(sensor=sensor.name, split=split, institution=institution, region=region)
    if not tiles:
        raise RasterError(f"manifest {manifest.name!r} in {manifest.root}",
                          f"no tiles for band stats (sensor={sensor.name!r}, split={split!r}, "
                          f"institution={institution!r}, region={region!r})")
    path = stats_path(manifest, sensor, split, tiles, stats_dir)
    if path.is_file():
        return BandStats.from_dict(json.loads(path.read_text()))
    log.info("computing band stats of %d %s tiles (%s) into %s", len(tiles), sensor.name, split, path)
    stats = compute_band_stats(manifest, tiles, sensor)
    record = {"sensor": sensor.name, "split": split, "num_tiles": len(tiles), **stats.to_dict()}
    atomic_write_text(path, json.dumps(record, indent=1))
    return stats
