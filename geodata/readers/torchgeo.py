"""torchgeo datasets on disk -> eosfed inputs: EuroSAT and BigEarthNet (v1) in torchgeo's layouts (their
split files), and the scenes of any torchgeo ``RasterDataset`` subclass paired with label rasters.

torchgeo is imported only when these functions run. What torchgeo defines is read from torchgeo:
EuroSAT's folder (``base_dir``), split file names and band order; BigEarthNet's folders, split files
and 43 classes; a ``RasterDataset``'s files (its ``filename_glob`` and ``filename_regex``, through an
instance), its bands (the instance's: ``all_bands`` or a ``default_bands``) and, for ``separate_files``,
each band's file (its ``_update_filepath``, pinned torchgeo 0.8.1). Band names are mapped to a
registered sensor by name (``B8`` is ``B08``), or refused naming the band.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from geodata.errors import InputError, RasterError
from geodata.manifest import Manifest
from geodata.readers.bigearthnet import build_bigearthnet_manifest
from geodata.readers.eurosat import class_files, eurosat_manifest
from geodata.sensors import BandError, Sensor, current, get_sensor
from geodata.tiling import Scene, band_key

__all__ = ["EUROSAT_VARIANTS", "map_sensor", "build_torchgeo_eurosat_manifest", "build_torchgeo_bigearthnet_manifest",
           "raster_dataset", "raster_scenes"]

log = logging.getLogger(__name__)

EUROSAT_VARIANTS = ("EuroSAT", "EuroSATSpatial", "EuroSAT100")  # torchgeo classes sharing EuroSAT's layout


def map_sensor(bands: Sequence[str], what: str, name: str | None = None, ordered: bool = False) -> Sensor:
    """The registered sensor holding exactly ``bands`` (compared by name, ``B8`` is ``B08``; in the same order
    when ``ordered``, i.e. one file holds them): ``name``'s, or the first registered one that does."""
    keys = [band_key(b) for b in bands]

    def problem(sensor: Sensor) -> str | None:
        have = [band_key(b) for b in sensor.bands]
        unmapped = [b for b, k in zip(bands, keys) if k not in have]
        if unmapped:
            return f"band {unmapped[0]!r} of {what} is not a band of sensor {sensor.name} ({', '.join(sensor.bands)})"
        missing = [b for b, k in zip(sensor.bands, have) if k not in keys]
        if missing:
            return f"sensor {sensor.name}'s band {missing[0]!r} is not among {what}'s bands ({', '.join(bands)})"
        if ordered and have != keys:
            return (f"{what} holds its bands in the order {', '.join(bands)}, sensor {sensor.name} in the order "
                    f"{', '.join(sensor.bands)}; register a sensor in the file's order (--sensors FILE)")
        return None

    if name is not None:
        sensor = get_sensor(name)
        if (text := problem(sensor)) is not None:
            raise BandError(text)
        return sensor
    sensor = next((s for s in {s.name: s for s in current().sensors.values()}.values() if problem(s) is None), None)
    if sensor is None:
        raise BandError(f"no registered sensor has exactly the bands of {what} ({', '.join(bands)}); name one "
                        f"with --sensor, or register one with --sensors FILE")
    return sensor


def _listed(root: Path, split_filenames: Mapping[str, str], what: str) -> dict[str, str]:
    """``{name: split}`` from a torchgeo dataset's split files in ``root`` (a name: a line's first
    comma-separated field); a missing split file is refused, naming it."""
    listed: dict[str, str] = {}
    for split, filename in split_filenames.items():
        path = root / filename
        if not path.is_file():
            raise RasterError(path, f"{what} split file missing (its split files: "
                                    f"{', '.join(split_filenames.values())})")
        for line in path.read_text().split():
            listed.setdefault(line.split(",")[0], split)
    return listed


def build_torchgeo_eurosat_manifest(root: str | Path, out_dir: str | Path, variant: str = "EuroSAT",
                                    sensor: str | None = None, name: str = "eurosat-ms") -> Manifest:
    """EuroSAT in torchgeo's layout (``root/<base_dir>/<Class>/*.tif`` and the variant's split files in
    ``root``) -> ``out_dir/manifest.json``, each tile in the split its split file names (others left out)."""
    import torchgeo.datasets

    dataset = getattr(torchgeo.datasets, variant)
    root = Path(root)
    listed = _listed(root, dataset.split_filenames, f"torchgeo {variant}")
    files = class_files(root / dataset.base_dir)
    # the split files name the release's .jpg files; torchgeo reads the .tif files of the same stem
    names = {path: path.with_suffix(".jpg").name for paths in files.values() for path in paths}
    split = {path: listed[n] for path, n in names.items() if n in listed}
    if not split:
        raise RasterError(root, f"no file under {dataset.base_dir} is listed in a {variant} split file")
    if len(split) < len(names):
        log.info("%d of %d EuroSAT files are in no %s split file: left out", len(names) - len(split), len(names),
                 variant)
    mapped = map_sensor(dataset.all_band_names, f"torchgeo {variant}", sensor, ordered=True)
    return eurosat_manifest(files, split, out_dir, name, mapped.name)


def build_torchgeo_bigearthnet_manifest(root: str | Path, out_dir: str | Path, name: str = "bigearthnet") -> Manifest:
    """BigEarthNet v1 in torchgeo's layout (S2 and, where present, S1 patch folders and the split CSVs of
    ``S2 patch,S1 patch`` lines) -> ``out_dir/manifest.json``: the listed patches, torchgeo's 43 classes."""
    from torchgeo.datasets import BigEarthNet

    root = Path(root)
    splits = _listed(root, {k: v["filename"] for k, v in BigEarthNet.splits_metadata.items()}, "torchgeo BigEarthNet")
    s1 = root / BigEarthNet.metadata["s1"]["directory"]
    return build_bigearthnet_manifest(root / BigEarthNet.metadata["s2"]["directory"], out_dir,
                                      s1 if s1.is_dir() else None, splits, BigEarthNet.class_sets[43], name,
                                      listed_only=True)


def raster_dataset(path: str) -> type:
    """The torchgeo ``RasterDataset`` subclass named by its import path (``torchgeo.datasets.Sentinel2``)."""
    from torchgeo.datasets import RasterDataset

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError as exc:
        raise InputError(f"cannot import {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, RasterDataset)):
        raise InputError(f"{path!r} is not a torchgeo RasterDataset subclass (give module.Class)")
    return cls


def _open(cls: type, root: Path, **kwargs: object):  # noqa: ANN202 (a torchgeo dataset)
    from torchgeo.datasets import DatasetNotFoundError

    try:
        return cls(paths=str(root), **kwargs)
    except DatasetNotFoundError:
        raise RasterError(root, f"no raster matches {cls.__name__}'s filename_glob {cls.filename_glob!r} and "
                                f"filename_regex") from None


def _scene_name(dataset: object, path: str) -> str:
    """The file's stem without its band (``T32ULU_20200101T103021_B01`` -> ``T32ULU_20200101T103021``)."""
    stem = Path(path).stem
    match = re.match(dataset.filename_regex, os.path.basename(path), re.VERBOSE)
    if dataset.separate_files and match and "band" in match.groupdict() and match.group("band"):
        start, end = match.start("band"), match.end("band")
        stem = re.sub(r"[_.-]{2,}", "_", stem[:start] + stem[end:]).strip("_.-")
    return stem


def raster_scenes(dataset_path: str, root: str | Path, labels: str | Path,
                  labels_dataset: str = "torchgeo.datasets.RasterDataset",
                  sensor: str | None = None) -> tuple[list[Scene], Sensor]:
    """The scenes of ``dataset_path``'s files under ``root`` (a scene per file, or per file set for
    ``separate_files``), each with the label raster under ``labels`` (read as ``labels_dataset``) that
    overlaps it most, and the sensor its bands map to."""
    cls = raster_dataset(dataset_path)
    images = _open(cls, Path(root))
    bands = tuple(images.bands)  # torchgeo's choice: all_bands, or a class's default_bands
    if not bands:
        raise BandError(f"{dataset_path} names no bands (all_bands): they cannot be mapped to a sensor")
    mapped = map_sensor(bands, cls.__name__, sensor, ordered=not images.separate_files)
    names = {band_key(b): b for b in bands}  # the dataset's name of each sensor band
    masks = _open(raster_dataset(labels_dataset), Path(labels), crs=images.crs)
    scenes: dict[str, Scene] = {}
    for path, footprint in zip(images.index.filepath, images.index.geometry):
        name = _scene_name(images, path)
        if name in scenes:
            raise RasterError(path, f"scene {name!r} is also {scenes[name].images[mapped.name]}")
        source: Path | dict[str, Path] = Path(path)
        if images.separate_files:
            source = {b: Path(images._update_filepath(names[band_key(b)], path)) for b in mapped.bands}
            absent = next((p for p in source.values() if not p.is_file()), None)
            if absent is not None:
                raise RasterError(absent, f"band file of scene {name!r} missing")
        overlap = masks.index.geometry.intersection(footprint).area
        if overlap.max() <= 0:
            raise RasterError(path, f"no label raster under {labels} overlaps scene {name!r}")
        label = masks.index.filepath.iloc[int(overlap.argmax())]
        if (overlap > 0).sum() > 1:
            log.warning("scene %s: %d label rasters overlap it; %s, the largest overlap, is its label", name,
                        int((overlap > 0).sum()), label)
        log.info("scene %s: labels %s", name, label)
        scenes[name] = Scene(name, {mapped.name: source}, Path(label))
    return list(scenes.values()), mapped
