"""An institution's local labelled data: its manifest, its tiles, and the summary it shares.

Only the summary (task, classes, tile counts per split, bands) leaves the node; tiles never do.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from clients.institution import InstitutionSpec
from geodata.manifest import Manifest, TileEntry
from geodata.sensors import get_sensor

__all__ = ["open_manifest", "institution_tiles", "summarize"]

log = logging.getLogger(__name__)


def open_manifest(spec: InstitutionSpec) -> Manifest:
    """The manifest holding ``spec``'s data (a file, or a folder with ``manifest.json``)."""
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
    """What the coordinator learns about the data: task, classes, bands and tiles per split."""
    sensor = get_sensor(spec.sensor)
    task = manifest.task(spec.task)
    splits = Counter(tile.split for tile in institution_tiles(manifest, spec))
    if not splits.get("train"):
        raise ValueError(f"institution {spec.name!r}: no 'train' tiles (splits: {dict(splits)})")
    return {
        "task_type": task.type,
        "classes": list(task.classes),
        "bands": list(sensor.bands),
        "tiles": dict(sorted(splits.items())),
        "manifest": manifest.name,
    }
