"""An institution's local labelled data: its manifest, its tiles, and the summary it shares.

A declared institution's data are a manifest on its disk. A simulated institution's data are its
own scenes of the synthetic world, for its sensor only, generated on first use into the shared
cache (``<cache-dir>/worlds/<world>-<institution>-<sensor>-<config hash>/``, see
:func:`geodata.synth.cached_world`). Only the summary (task, classes, tile counts per split, bands, band statistics, its sensor described) leaves the node.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

from clients.institution import InstitutionSpec
from geodata.manifest import Manifest, TileEntry
from geodata.stats import compute_band_stats
from geodata.synth import WorldConfig, cached_world
from wire.messages import DataSummary
from geodata.errors import InputError

__all__ = ["open_manifest", "world_slice", "institution_tiles", "summarize"]

log = logging.getLogger(__name__)


def world_slice(spec: InstitutionSpec) -> Manifest:
    """``spec``'s scenes of its synthetic world, for its sensor, from the cache (generated once)."""
    source = f"institution {spec.name!r}"
    world = WorldConfig.from_dict(json.loads(spec.world), source=f"{source}: world")
    own = world.institution(spec.name)
    if spec.sensor not in own.sensors:
        raise InputError(f"{source}: world {world.name!r} gives it {list(own.sensors)}, not {spec.sensor!r}")
    sliced = world.replace(institutions=(dataclasses.replace(own, sensors=(spec.sensor,)),))
    return cached_world(sliced, spec.cache_dir, f"{world.name}-{spec.name}-{spec.sensor}")


def open_manifest(spec: InstitutionSpec) -> Manifest:
    """The manifest holding ``spec``'s data: its world slice, or its ``data-path`` (a manifest file or
    a folder with ``manifest.json``)."""
    if spec.world:
        return world_slice(spec)
    path = Path(spec.data_path).expanduser()
    if path.is_dir():
        path = path / "manifest.json"
    return Manifest.load(path, spec.catalog())


def institution_tiles(manifest: Manifest, spec: InstitutionSpec, split: str | None = None) -> list[TileEntry]:
    """``spec``'s tiles: its sensor, with targets for its task, in its region when it has one."""
    manifest.task(spec.task)  # a clear error when the manifest lacks the task
    tiles = manifest.select(sensor=spec.sensor, split=split, task=spec.task, region=spec.region or None)
    if not tiles and split is None:
        where = f" in region {spec.region!r}" if spec.region else ""
        raise InputError(
            f"institution {spec.name!r}: manifest {manifest.name!r} ({manifest.root}) has no {spec.sensor} "
            f"tiles with {spec.task!r} targets{where}"
        )
    return tiles


def summarize(manifest: Manifest, spec: InstitutionSpec) -> DataSummary:
    """What the coordinator learns about the data: task, classes, bands, tiles per split and the
    train split's per-band mean and std (a group's specialist normalises with their pooled value)."""
    sensor = manifest.sensor(spec.sensor)
    task = manifest.task(spec.task)
    tiles = institution_tiles(manifest, spec)
    splits = Counter(tile.split for tile in tiles)
    if not splits.get("train"):
        raise InputError(f"institution {spec.name!r}: manifest {manifest.root}: no 'train' tiles "
                         f"(splits: {dict(splits)})")
    stats = compute_band_stats(manifest, [t for t in tiles if t.split == "train"], sensor)
    return DataSummary(spec.name, task.type, list(task.classes), list(sensor.image_bands), dict(sorted(splits.items())),
                       list(stats.mean), list(stats.std), manifest.name, sensor.describe())
