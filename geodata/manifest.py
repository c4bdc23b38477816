"""The manifest: a JSON index of raster tiles, their sensor, split and task targets.

One manifest can hold several sensors (co-registered tiles of the same place share a ``scene``)
and several tasks. Paths are relative to the manifest's folder.

```json
{"version": 1, "name": "world-seed0",
 "tasks": {"scene": {"type": "classification", "classes": ["water", ...]},
           "presence": {"type": "multilabel", "classes": [...]},
           "landcover": {"type": "segmentation", "classes": [...], "ignore_index": 255}},
 "tiles": [{"id": "inst0-r0-000-s2", "path": "inst0/s2/000.tif", "sensor": "sentinel2_l2a",
            "split": "train", "scene": "inst0-r0-000", "region": "r0", "institution": "inst0",
            "targets": {"scene": 3, "presence": [0, 3], "landcover": "inst0/mask/000.tif"}}]}
```

A tile's ``path`` may instead be ``band_paths``: ``{"B02": "x_B02.tif", ...}``, one single-band
file per band (resampled onto the finest grid), as BigEarthNet ships them. A tile may be a
``window`` ``[col_off, row_off, width, height]`` (pixels) into its file(s) and its mask, so a large
scene is tiled without copies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from geodata.files import atomic_write_text
from geodata.sensors import get_sensor

__all__ = ["TaskSpec", "TileEntry", "Manifest", "atomic_write_bytes", "atomic_write_text", "MANIFEST_VERSION"]

MANIFEST_VERSION = 1
TaskType = Literal["classification", "multilabel", "segmentation"]


@dataclass
class TaskSpec:
    type: TaskType
    classes: list[str]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class TileEntry:
    id: str
    sensor: str
    split: str
    targets: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    band_paths: dict[str, str] | None = None
    scene: str | None = None
    region: str | None = None
    institution: str | None = None
    window: list[int] | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.band_paths is None):
            raise ValueError(f"tile {self.id!r}: give exactly one of 'path' or 'band_paths'")
        if self.window is not None and (
            len(self.window) != 4 or not all(isinstance(v, int) and v >= 0 for v in self.window)
            or min(self.window[2:]) < 1
        ):
            raise ValueError(f"tile {self.id!r}: window must be [col_off, row_off, width, height] in pixels, "
                             f"got {self.window!r}")


@dataclass
class Manifest:
    tasks: dict[str, TaskSpec]
    tiles: list[TileEntry]
    name: str = "manifest"
    root: Path = field(default=Path("."), compare=False)
    version: int = MANIFEST_VERSION

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"manifest not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        return cls.from_dict(raw, root=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], root: str | Path = ".", source: str = "manifest") -> "Manifest":
        version = raw.get("version", MANIFEST_VERSION)
        if version != MANIFEST_VERSION:
            raise ValueError(f"{source}: manifest version {version} is not supported (expected {MANIFEST_VERSION})")
        try:
            tasks = {k: TaskSpec(**v) for k, v in raw.get("tasks", {}).items()}
            tiles = [TileEntry(**t) for t in raw["tiles"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed manifest: {exc}") from exc
        for tile in tiles:
            unknown = set(tile.targets) - set(tasks)
            if unknown:
                raise ValueError(f"{source}: tile {tile.id!r} has targets for undeclared tasks {sorted(unknown)}")
        return cls(tasks=tasks, tiles=tiles, name=raw.get("name", Path(source).stem), root=Path(root))

    def to_dict(self) -> dict[str, Any]:
        tiles = [{k: v for k, v in asdict(t).items() if v is not None} for t in self.tiles]
        return {
            "version": self.version,
            "name": self.name,
            "tasks": {k: asdict(v) for k, v in self.tasks.items()},
            "tiles": tiles,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        self.root = path.parent
        return path

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def select(
        self,
        sensor: str | None = None,
        split: str | None = None,
        task: str | None = None,
        institution: str | None = None,
        region: str | None = None,
    ) -> list[TileEntry]:
        """Tiles matching every given filter (``task``: tiles that carry a target for it).

        Sensors match by canonical name, so an alias (``s2``) selects ``sentinel2_l2a`` tiles."""
        wanted_sensor = get_sensor(sensor).name if sensor is not None else None
        out = []
        for t in self.tiles:
            if wanted_sensor is not None and get_sensor(t.sensor).name != wanted_sensor:
                continue
            if split is not None and t.split != split:
                continue
            if task is not None and task not in t.targets:
                continue
            if institution is not None and t.institution != institution:
                continue
            if region is not None and t.region != region:
                continue
            out.append(t)
        return out

    def task(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError(f"manifest {self.name!r} has no task {name!r}; tasks: {sorted(self.tasks)}") from None
