"""One folder per class (``<root>/<Class>/*.tif|jpg|png``: AID, EuroSAT, UC Merced...) -> manifest.

The classes are the sorted class folder names, or a chosen subset in the given order; the task
(``scene`` by default) is a classification; every image is a tile of one sensor (each is checked to
open and hold the sensor's band count; no pixels are read). Splits are drawn per class, so every split
is class-balanced and deterministic: a class's files are sorted (numbers in names compare as
numbers), shuffled by a generator seeded with ``seed`` and the class name, optionally cut to
``per_class`` files, and the first ``test`` go to "test", the next ``val`` to "val", the rest to
"train". ``test``/``val`` are fractions of each class (in [0, 1], rounded; ``test=1`` is a test-only
set), or ``test_count``/``val_count`` images of each class instead. GeoTIFF, JPEG and PNG read through
rasterio (:mod:`geodata.raster`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from geodata.errors import InputError, RasterError
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.raster import check_band_count
from geodata.sensors import get_sensor

__all__ = ["IMAGE_SUFFIXES", "per_class_count", "class_folders", "build_folder_manifest"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")


def _natural_key(path: Path) -> list[int | str]:
    """``x_10.jpg`` after ``x_9.jpg``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def per_class_count(available: int, fraction: float = 0.0, count: int | None = None) -> int:
    """Files of a class a split takes: ``count`` when given, else ``fraction`` (in [0, 1]) of ``available``, rounded."""
    if count is not None:
        if count < 0:
            raise InputError(f"a split count must be >= 0, got {count}")
        return count
    if not 0 <= fraction <= 1:
        raise InputError(f"a split fraction must be in [0, 1], got {fraction}")
    return round(fraction * available)


def class_folders(root: Path, classes: Sequence[str] | None = None) -> dict[str, Path]:
    """``{class: folder}``: every subfolder of ``root`` (sorted), or the named ``classes`` in their order."""
    if not root.is_dir():
        raise RasterError(root, "class folder root not found")
    found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not found:
        raise RasterError(root, "no class folders")
    if classes is None:
        return found
    unknown = [c for c in classes if c not in found]
    if unknown:
        raise RasterError(root, f"unknown classes {unknown}; class folders: {sorted(found)}")
    return {c: found[c] for c in classes}


def build_folder_manifest(
    root: str | Path, out_dir: str | Path, sensor: str, task: str = "scene", val: float = 0.0,
    test: float = 0.2, seed: int = 0, classes: Sequence[str] | None = None, per_class: int | None = None,
    name: str | None = None, val_count: int | None = None, test_count: int | None = None,
) -> Manifest:
    """Index ``root/<Class>/<image>`` into ``out_dir/manifest.json`` (absolute tile paths; module docstring)."""
    root = Path(root)
    if test_count is None and val_count is None and test + val > 1:
        raise InputError(f"test {test} + val {val} are more than every image of a class")
    sensor_spec = get_sensor(sensor)
    folders = class_folders(root, classes)
    tiles = []
    for label, (cls, folder) in enumerate(folders.items()):
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise RasterError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in class folder {cls!r}")
        random.Random(f"{seed}:{cls}").shuffle(files)
        files = files[:per_class] if per_class is not None else files
        n_test = per_class_count(len(files), test, test_count)
        n_val = per_class_count(len(files), val, val_count)
        if test_count is None and val_count is None:  # two fractions summing to <= 1 may round one image over
            n_val = min(n_val, len(files) - n_test)
        if n_test + n_val > len(files):
            raise RasterError(folder, f"class {cls!r} has {len(files)} images, fewer than {n_test} test + "
                                      f"{n_val} val")
        for i, path in enumerate(files):
            check_band_count(path, sensor_spec)
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            tiles.append(TileEntry(id=f"{cls}-{path.stem}", sensor=sensor_spec.name, split=split,
                                   path=str(path.resolve()), targets={task: label}))
    duplicates = sorted(i for i, n in Counter(t.id for t in tiles).items() if n > 1)
    if duplicates:
        raise RasterError(root, f"images of the same name in one class folder: {duplicates[:5]}")
    manifest = Manifest(tasks={task: TaskSpec("classification", list(folders))}, tiles=tiles,
                        name=name or root.name, allow_outside_paths=True)
    manifest.save(Path(out_dir) / "manifest.json")
    return manifest
