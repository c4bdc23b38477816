"""EuroSAT-MS (folder per class, ``<Class>/<Class>_<n>.tif``, 13-band uint16 L1C) -> manifest.

Reads the release's class folders directly (torchgeo's own layout, with its split files, is
:mod:`geodata.readers.torchgeo`); the class order is torchgeo's (its ImageFolder base sorts the class
folder names), target task ``scene`` (classification).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from geodata.errors import RasterError
from geodata.manifest import Manifest, TaskSpec, TileEntry

__all__ = ["EUROSAT_CLASSES", "SENSOR", "TASK", "class_files", "split_per_class", "eurosat_manifest",
           "build_eurosat_manifest"]

EUROSAT_CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
SENSOR = "sentinel2_l1c"
TASK = "scene"


def _number(path: Path) -> int:
    """``Forest_12.tif`` -> 12, so files sort as the release numbers them."""
    try:
        return int(path.stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise RasterError(path, "expected a file named <Class>_<n>.tif") from None


def split_per_class(files: Mapping[str, Sequence[Path]], train: int, val: int = 0) -> dict[Path, str]:
    """Per class, the first ``train`` files are "train", the next ``val`` "val", the rest "test"."""
    split = {}
    for paths in files.values():
        for i, path in enumerate(paths):
            split[path] = "train" if i < train else "val" if i < train + val else "test"
    return split


def class_files(root: str | Path) -> dict[str, list[Path]]:
    """``root/<Class>/*.tif`` per EuroSAT class, numbered in release order; other folders are refused."""
    root = Path(root)
    if not root.is_dir():
        raise RasterError(root, "EuroSAT folder not found")
    files: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in EUROSAT_CLASSES:
            raise RasterError(folder, f"class {folder.name!r} is not one of the EuroSAT classes {EUROSAT_CLASSES}")
        files[folder.name] = sorted(folder.glob("*.tif"), key=_number)
    if not any(files.values()):
        raise RasterError(root, "no <Class>/*.tif files")
    return files


def eurosat_manifest(files: Mapping[str, Sequence[Path]], split: Mapping[Path, str], out_dir: str | Path,
                     name: str = "eurosat-ms", sensor: str = SENSOR) -> Manifest:
    """The manifest of the ``files`` given a split (a file without one is left out), saved as
    ``out_dir/manifest.json`` (absolute tile paths)."""
    tiles = [
        TileEntry(id=f"eurosat-{path.stem}", sensor=sensor, split=split[path], path=str(path.resolve()),
                  targets={TASK: EUROSAT_CLASSES.index(cls)})
        for cls, paths in files.items() for path in paths if path in split
    ]
    manifest = Manifest(tasks={TASK: TaskSpec("classification", list(EUROSAT_CLASSES))}, tiles=tiles, name=name,
                        allow_outside_paths=True)
    manifest.save(Path(out_dir) / "manifest.json")
    return manifest


def build_eurosat_manifest(
    root: str | Path, out_dir: str | Path, train_per_class: int = 8, val_per_class: int = 0,
    name: str = "eurosat-ms",
) -> Manifest:
    """Index ``root/<Class>/*.tif`` into ``out_dir/manifest.json``, split per class by counts."""
    files = class_files(root)
    return eurosat_manifest(files, split_per_class(files, train_per_class, val_per_class), out_dir, name)
