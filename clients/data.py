"""An institution's local labelled data: its manifest, its tiles, and the summary it shares.

A declared institution's data are a manifest on its disk. A simulated institution's data are its
own scenes of the synthetic world, for its sensor only, generated on first use into the shared
cache (``<cache-dir>/worlds/<world>-<institution>-<sensor>-<config hash>/``): built in a temporary
folder and renamed into place under a file lock, so concurrent processes neither repeat nor see
half of it. Only the summary (task, classes, tile counts per split, bands) leaves the node.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from clients.institution import InstitutionSpec
from geodata.manifest import Manifest, TileEntry
from geodata.sensors import get_sensor
from geodata.stats import compute_band_stats
from geodata.synth import WorldConfig, generate_world

__all__ = ["open_manifest", "world_slice", "build_once", "institution_tiles", "summarize"]

log = logging.getLogger(__name__)


def build_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``folder``, made by ``build(temporary folder)`` unless it exists; safe across processes."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
            try:
                build(tmp)
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return folder


def world_slice(spec: InstitutionSpec) -> Manifest:
    """``spec``'s scenes of its synthetic world, for its sensor, from the cache (generated once)."""
    source = f"institution {spec.name!r}"
    world = WorldConfig.from_dict(json.loads(spec.world), source=f"{source}: world")
    own = world.institution(spec.name)
    if spec.sensor not in own.sensors:
        raise ValueError(f"{source}: world {world.name!r} gives it {list(own.sensors)}, not {spec.sensor!r}")
    sliced = world.replace(institutions=(dataclasses.replace(own, sensors=(spec.sensor,)),))
    key = hashlib.sha256(json.dumps(sliced.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(spec.cache_dir) / "worlds" / f"{world.name}-{spec.name}-{spec.sensor}-{key}"

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        log.info("Generating %s's %s scenes of world %s into %s", spec.name, spec.sensor, world.name, folder)
        generate_world(sliced, tmp, progress=False)
        log.info("Generated %d scenes in %.1f s", sliced.tiles_for(sliced.institutions[0]), time.perf_counter() - t0)

    return Manifest.load(build_once(folder, build) / "manifest.json")


def open_manifest(spec: InstitutionSpec) -> Manifest:
    """The manifest holding ``spec``'s data: its world slice, or its ``data-path`` (a manifest file or
    a folder with ``manifest.json``)."""
    if spec.world:
        return world_slice(spec)
    path = Path(spec.data_path).expanduser()
    if path.is_dir():
        path = path / "manifest.json"
    return Manifest.load(path)


def institution_tiles(manifest: Manifest, spec: InstitutionSpec, split: str | None = None) -> list[TileEntry]:
    """``spec``'s tiles: its sensor, with targets for its task, in its region when it has one."""
    manifest.task(spec.task)  # a clear error when the manifest lacks the task
    tiles = manifest.select(sensor=spec.sensor, split=split, task=spec.task, region=spec.region or None)
    if not tiles and split is None:
        where = f" in region {spec.region!r}" if spec.region else ""
        raise ValueError(
            f"institution {spec.name!r}: manifest {manifest.name!r} ({manifest.root}) has no {spec.sensor} "
            f"tiles with {spec.task!r} targets{where}"
        )
    return tiles


def summarize(manifest: Manifest, spec: InstitutionSpec) -> dict[str, Any]:
    """What the coordinator learns about the data: task, classes, bands, tiles per split and the
    train split's per-band mean and std (a group's specialist normalises with their pooled value)."""
    sensor = get_sensor(spec.sensor)
    task = manifest.task(spec.task)
    splits = Counter(tile.split for tile in institution_tiles(manifest, spec))
    if not splits.get("train"):
        raise ValueError(f"institution {spec.name!r}: no 'train' tiles (splits: {dict(splits)})")
    stats = compute_band_stats(manifest, institution_tiles(manifest, spec, "train"), sensor)
    return {
        "task_type": task.type,
        "classes": list(task.classes),
        "bands": list(sensor.bands),
        "tiles": dict(sorted(splits.items())),
        "norm": {"mean": list(stats.mean), "std": list(stats.std)},
        "manifest": manifest.name,
    }
