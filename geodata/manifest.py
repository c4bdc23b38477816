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


Paths (``path``, ``band_paths``, segmentation masks) stay inside the manifest's folder: an absolute
path, or one that climbs out with ``..``, is refused at load naming the manifest and the tile, unless
the manifest says ``"allow_outside_paths": true`` (what the builders that index data in place, e.g.
``eosfed manifest eurosat``, write).

A dataset may ship its own sensors: :meth:`Manifest.load` reads a ``sensors.yaml`` and every
``sensors/*.yaml`` beside the manifest into the manifest's ``catalog`` (:class:`geodata.sensors.Catalog`,
registering nothing), where its tiles' sensor names are resolved (:meth:`Manifest.sensor`);
:meth:`Manifest.save` writes every sensor its tiles use that is not built in, fully described, into
``sensors.yaml`` beside it, so the manifest reads anywhere without ``--sensors``.

:func:`merge_manifests` joins manifests (e.g. a release's train and test folders, each its own
manifest), every tile keeping its split.
"""

from __future__ import annotations

import json
import os
import yaml
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from geodata.files import atomic_write_text
from geodata.sensors import Catalog, Sensor, builtin, current, load_sensor_files
from geodata.errors import InputError

__all__ = ["TaskSpec", "TileEntry", "Manifest", "MANIFEST_VERSION", "TASK_TYPES", "SENSOR_FILES", "merge_manifests",
           "sensors_beside"]

MANIFEST_VERSION = 1
TaskType = Literal["classification", "multilabel", "segmentation"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)
SENSOR_FILES = ("sensors.yaml", "sensors")  # beside a manifest: one YAML file, or a folder of them


def sensors_beside(folder: str | Path, base: Catalog | None = None) -> Catalog:
    """``base`` (default: :func:`geodata.sensors.current`) plus the sensor files in a manifest's ``folder``:
    ``sensors.yaml``, ``sensors/*.yaml``."""
    return load_sensor_files((p for p in (Path(folder) / name for name in SENSOR_FILES) if p.exists()), base)


def _write_sensors(folder: Path, sensors: Iterable[Sensor]) -> None:
    """``folder/sensors.yaml``: each of ``sensors`` that is not built in, fully described (none: no file)."""
    catalog = Catalog().merge(Catalog({}, {s.name: s for s in sensors}))
    own = [catalog.describe(name) for name in sorted({s.name for s in sensors})
           if builtin().sensors.get(name) != catalog.sensor(name)]
    if own:
        atomic_write_text(folder / SENSOR_FILES[0], yaml.safe_dump(own, sort_keys=False))


@dataclass
class TaskSpec:
    type: TaskType
    classes: list[str]
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise InputError(f"type {self.type!r} is not one of {TASK_TYPES}")
        if not isinstance(self.classes, list) or not all(isinstance(c, str) for c in self.classes):
            raise InputError(f"classes must be a list of names, got {self.classes!r}")
        if not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool):
            raise InputError(f"ignore_index must be an integer, got {self.ignore_index!r}")

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
            raise InputError(f"tile {self.id!r}: give exactly one of 'path' or 'band_paths'")
        if self.window is not None and (
            len(self.window) != 4 or not all(isinstance(v, int) and v >= 0 for v in self.window)
            or min(self.window[2:]) < 1
        ):
            raise InputError(f"tile {self.id!r}: window must be [col_off, row_off, width, height] in pixels, "
                             f"got {self.window!r}")


def _outside(tile: TileEntry, tasks: dict[str, TaskSpec]) -> str | None:
    """The first file path of ``tile`` that is absolute or leaves the manifest's folder, if any."""
    paths = [tile.path] if tile.path is not None else list((tile.band_paths or {}).values())
    paths += [v for k, v in tile.targets.items() if tasks[k].type == "segmentation" and isinstance(v, str)]
    return next((p for p in paths if isinstance(p, str) and (
        Path(p).is_absolute() or Path(os.path.normpath(p)).parts[:1] == ("..",))), None)


def _check_inside(tile: TileEntry, tasks: dict[str, TaskSpec], source: str) -> None:
    """Every file path of ``tile`` is relative and stays inside the manifest's folder."""
    path = _outside(tile, tasks)
    if path is not None:
        raise InputError(f"{source}: tile {tile.id!r} path {path!r} leaves the manifest's folder (absolute or "
                         f"'..'); a manifest that indexes files elsewhere says \"allow_outside_paths\": true")


@dataclass
class Manifest:
    tasks: dict[str, TaskSpec]
    tiles: list[TileEntry]
    name: str = "manifest"
    root: Path = field(default=Path("."), compare=False)
    version: int = MANIFEST_VERSION
    source: str = field(default="manifest", compare=False)  # the file it was read from, for messages
    allow_outside_paths: bool = False  # tile paths may be absolute or leave the manifest's folder
    catalog: Catalog | None = field(default=None, compare=False, repr=False)  # None: geodata.sensors.current()

    def sensor(self, name: str) -> Sensor:
        """The sensor ``name`` (or alias) of this manifest's catalog (module docstring)."""
        return (self.catalog or current()).sensor(name)

    def sensor_name(self, name: str) -> str:
        return (self.catalog or current()).sensor_name(name)

    @classmethod
    def load(cls, path: str | Path, base: Catalog | None = None) -> "Manifest":
        """Read a manifest; its ``catalog`` is ``base`` (default: :func:`geodata.sensors.current`) plus the
        sensor files beside it (module docstring)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"manifest not found: {path}") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{path} is a folder; give its manifest.json") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON: {exc}") from exc
        catalog = sensors_beside(path.parent, base)
        return replace(cls.from_dict(raw, root=path.parent, source=str(path)), catalog=catalog)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], root: str | Path = ".", source: str = "manifest") -> "Manifest":
        version = raw.get("version", MANIFEST_VERSION)
        if version != MANIFEST_VERSION:
            raise InputError(f"{source}: manifest version {version} is not supported (expected {MANIFEST_VERSION})")
        tasks = {}
        for name, spec in raw.get("tasks", {}).items():
            try:
                tasks[name] = TaskSpec(**spec)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{source}: malformed manifest: task {name!r}: {exc}") from exc
        try:
            tiles = [TileEntry(**t) for t in raw["tiles"]]
        except KeyError as exc:
            raise InputError(f"{source}: malformed manifest: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source}: malformed manifest: {exc}") from exc
        outside = raw.get("allow_outside_paths", False)
        if not isinstance(outside, bool):
            raise InputError(f"{source}: 'allow_outside_paths' must be true or false, got {outside!r}")
        for tile in tiles:
            unknown = set(tile.targets) - set(tasks)
            if unknown:
                raise InputError(f"{source}: tile {tile.id!r} has targets for undeclared tasks {sorted(unknown)}")
            if not outside:
                _check_inside(tile, tasks, source)
        return cls(tasks=tasks, tiles=tiles, name=raw.get("name", Path(source).stem), root=Path(root), source=source,
                   allow_outside_paths=outside)

    def to_dict(self) -> dict[str, Any]:
        tiles = [{k: v for k, v in asdict(t).items() if v is not None} for t in self.tiles]
        return {
            "version": self.version,
            "name": self.name,
            **({"allow_outside_paths": True} if self.allow_outside_paths else {}),
            "tasks": {k: asdict(v) for k, v in self.tasks.items()},
            "tiles": tiles,
        }

    def save(self, path: str | Path) -> Path:
        """Write the manifest and, beside it, the sensor files of its user sensors (module docstring)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_sensors(path.parent, [self.sensor(name) for name in {t.sensor for t in self.tiles}])
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        self.root, self.source = path.parent, str(path)
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

        Sensors match by canonical name, so an alias (``s2``) selects ``sentinel2_l2a`` tiles; only the
        selected sensor must be known (its catalog), not those of the other tiles."""
        wanted_sensor = self.sensor(sensor).name if sensor is not None else None
        out = []
        for t in self.tiles:
            if wanted_sensor is not None and self.sensor_name(t.sensor) != wanted_sensor:
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

    def splits(self, **filters: str | None) -> list[str]:
        """The splits of the tiles matching ``filters`` (those of :meth:`select`, but ``split``)."""
        return sorted({t.split for t in self.select(**filters)})

    def task(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise InputError(f"manifest {self.name!r} has no task {name!r}; tasks: {sorted(self.tasks)}") from None


def merge_manifests(manifests: Sequence[Manifest], root: str | Path, name: str, prefix: bool = False) -> Manifest:
    """Every tile of ``manifests``, each keeping its split, as one manifest to be saved in ``root``: relative
    paths (files, band files, segmentation masks) are rewritten relative to ``root``, absolute ones kept.
    A task declared twice must be declared alike; a tile id in two manifests is refused. ``prefix``: each
    tile's id, scene and region start with ``<its manifest's name>/`` (two sets that name files alike).
    The result allows outside paths when a tile's rebased path leaves ``root`` (it indexes the others' files)."""
    root = Path(root).resolve()
    tasks: dict[str, TaskSpec] = {}
    declared: dict[str, str] = {}
    owner: dict[str, str] = {}
    tiles: list[TileEntry] = []
    for manifest in manifests:
        for task, spec in manifest.tasks.items():
            if tasks.setdefault(task, spec) != spec:
                raise InputError(f"{manifest.source}: task {task!r} is {spec}, but {declared[task]} has {tasks[task]}")
            declared.setdefault(task, manifest.source)

        def rebase(path: str) -> str:
            return path if Path(path).is_absolute() else os.path.relpath(manifest.root.resolve() / path, root)

        masks = {t for t, spec in manifest.tasks.items() if spec.type == "segmentation"}
        for tile in manifest.tiles:
            if prefix:
                tile = replace(tile, id=f"{manifest.name}/{tile.id}",
                               scene=tile.scene and f"{manifest.name}/{tile.scene}",
                               region=tile.region and f"{manifest.name}/{tile.region}")
            if tile.id in owner:
                raise InputError(f"{manifest.source}: tile {tile.id!r} is also in {owner[tile.id]}"
                                 + ("" if prefix else "; --prefix-ids tells them apart by manifest name"))
            owner[tile.id] = manifest.source
            tiles.append(replace(
                tile, path=tile.path and rebase(tile.path),
                band_paths=tile.band_paths and {b: rebase(p) for b, p in tile.band_paths.items()},
                targets={t: rebase(v) if t in masks else v for t, v in tile.targets.items()}))
    outside = any(_outside(t, tasks) is not None for t in tiles)
    catalog = current()
    for manifest in manifests:
        catalog = catalog.merge(manifest.catalog or current(), manifest.source)
    return Manifest(tasks=tasks, tiles=tiles, name=name, root=root, allow_outside_paths=outside, catalog=catalog)
