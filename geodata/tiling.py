"""Scenes to manifest tiles: image raster(s) plus a label raster per scene, cut into windows.

A scene is one or more images (one per sensor) and one label raster, matched by a key taken from
each file's stem. A sensor's image is one multi-band file or one single-band file per band, the same
key in each band's folder (a manifest tile's ``band_paths``); band files are read in place, so they
must lie on the scene grid. The first sensor's image fixes the scene grid. A tile is a ``window`` into
the original files where they can be read as they are (same grid, the sensor's bands in order,
labels already class indices); otherwise the scene is written once, co-registered onto the grid
(rasterio ``WarpedVRT``: bilinear for images, nearest for labels), with the sensor's bands picked
by the file's band descriptions and label values remapped, and tiles are windows into that copy.

Splits: by scene (counts, explicit names, or the first ``N`` by name as train) or by spatial block.
Blocks are squares of the map, anchored at the origin of each CRS: block ``(floor(x / side),
floor(y / side))`` in map units, a pixel in the block that holds its centre. A block's split is drawn
from the seed, the CRS and the block alone, and tiles are cut inside blocks, so scenes of one place
(several dates, overlapping footprints) put the same ground in the same split and no tile straddles
two splits. Scenes without a CRS have a block grid each (on pixel coordinates).
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import rasterio
from rasterio import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from tqdm import tqdm

from geodata.errors import InputError, RasterError
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.raster import TileSource, open_raster, read_labelled
from geodata.sensors import Catalog, Sensor, get_sensor

__all__ = [
    "Scene", "find_rasters", "band_files", "match_scenes", "parse_label_map", "band_key", "band_indexes", "file_bands",
    "tile_windows", "split_scenes", "scenes_manifest",
]

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
IGNORE = "ignore"
_STRIP_ROWS = 512  # rows per read/write when a scene is copied onto its grid


@dataclass
class Scene:
    """One scene: an image per sensor (a file, or band -> file; the first sets the grid) and its label raster."""

    name: str
    images: dict[str, TileSource]
    label: Path


def _first_file(source: TileSource) -> Path:
    return next(iter(source.values())) if isinstance(source, dict) else source


def find_rasters(spec: str | Path) -> list[Path]:
    """The rasters of a folder (``*.tif``, ``*.tiff``, ``*.vrt``) or a glob pattern, sorted."""
    text = str(spec)
    if os.path.isdir(text):
        paths = [p for p in Path(text).iterdir() if p.suffix.lower() in RASTER_SUFFIXES]
    else:
        paths = [Path(p) for p in glob.glob(text)]
    if not paths:
        raise RasterError(text, "no raster files found (give a folder or a glob pattern)")
    return sorted(paths)


def band_files(sensor: str | Sensor, specs: Sequence[tuple[str, str | Path]]) -> dict[str, list[Path]]:
    """The rasters of each ``(band, folder or glob)``, keyed by the sensor's band names (compared as
    :func:`band_indexes` does: ``red`` is ``RED``, ``B8`` is ``B08``); every image band needs one."""
    sensor = get_sensor(sensor) if isinstance(sensor, str) else sensor
    names = {band_key(b): b for b in sensor.bands}
    unknown = [b for b, _ in specs if band_key(b) not in names]
    if unknown:
        raise InputError(f"sensor {sensor.name}: {unknown} are not among its bands ({', '.join(sensor.bands)})")
    given = [names[band_key(b)] for b, _ in specs]
    twice = sorted({b for b in given if given.count(b) > 1})
    if twice:
        raise InputError(f"sensor {sensor.name}: bands {twice} are given twice")
    missing = [b for b in sensor.image_bands if b not in given]
    if missing:
        raise InputError(f"sensor {sensor.name}: no files given for its bands {missing}")
    return {band: find_rasters(spec) for band, (_, spec) in zip(given, specs)}


def _key(path: Path, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return path.stem
    match = pattern.search(path.stem)
    return (match.group(1) if match.groups() else match.group(0)) if match else None


def _keyed(paths: Sequence[Path], regex: re.Pattern[str] | None, what: str) -> dict[str, Path]:
    """``{scene key: path}``; two files with one key are refused, naming both (neither may replace the other)."""
    keyed: dict[str, Path] = {}
    for path in paths:
        key = _key(path, regex)
        if key is None:
            continue
        if key in keyed:
            raise RasterError(path, f"{what}: scene {key!r} is also {keyed[key]}; scenes are keyed by file stem "
                                    f"(or --match): rename one, or make a manifest per folder and join them "
                                    f"(eosfed manifest merge --prefix-ids)")
        keyed[key] = path
    return keyed


def _sources(files: Sequence[Path] | Mapping[str, Sequence[Path]], regex: re.Pattern[str] | None,
             sensor: str) -> dict[str, TileSource]:
    """``{scene key: file}``, or for band files ``{scene key: {band: file}}``: a key in one band's files and
    not in another's is refused, naming the scene and the folder that lacks it."""
    if not isinstance(files, Mapping):
        return _keyed(files, regex, f"{sensor} images")
    by_band = {band: _keyed(paths, regex, f"{sensor} {band} images") for band, paths in files.items()}
    sources: dict[str, TileSource] = {}
    for key in sorted(set().union(*by_band.values())):
        for band, keyed in by_band.items():
            if key not in keyed:
                other = next(b for b, k in by_band.items() if key in k)
                folder = os.path.commonpath([p.parent for p in files[band]])
                raise RasterError(folder, f"scene {key!r} has no {sensor} {band} file here (its {other} file is "
                                          f"{by_band[other][key]})")
        sources[key] = {band: keyed[key] for band, keyed in by_band.items()}
    return sources


def match_scenes(images: Mapping[str, Sequence[Path] | Mapping[str, Sequence[Path]]], labels: Sequence[Path],
                 pattern: str | None = None) -> list[Scene]:
    """Scenes keyed by file stem (or ``pattern``'s first group on the stem), one file per key and kind; a
    sensor's files are a list, or ``{band: list}`` for one file per band (every key in every band's list).
    The first sensor's images define the scenes, every scene needs an image of each sensor and a label raster."""
    regex = re.compile(pattern) if pattern else None
    keyed = {sensor: _sources(files, regex, sensor) for sensor, files in images.items()}
    label_of = _keyed(labels, regex, "label rasters")
    first = next(iter(images))
    if not keyed[first]:
        raise RasterError(first, f"no image file name matches the pattern {pattern!r}")
    scenes = []
    for name in sorted(keyed[first]):
        where = _first_file(keyed[first][name])
        for sensor in images:
            if name not in keyed[sensor]:
                raise RasterError(where, f"scene {name!r} has no {sensor} image")
        if name not in label_of:
            raise RasterError(where, f"scene {name!r} has no label raster")
        scenes.append(Scene(name, {s: keyed[s][name] for s in images}, label_of[name]))
    return scenes


def parse_label_map(text: str | None) -> dict[int, int | None]:
    """``"-1:ignore,255:1"`` -> ``{-1: None, 255: 1}`` (``None``: ignored pixel)."""
    mapping: dict[int, int | None] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        raw, sep, value = item.rpartition(":")
        try:
            if not sep:
                raise ValueError
            mapping[int(raw)] = None if value.strip() == IGNORE else int(value)
        except ValueError:
            raise InputError(f"label map entry {item!r} is not VALUE:CLASS or VALUE:{IGNORE}") from None
    return mapping


def band_key(name: str) -> str:
    """Band names compared without case and zero padding (``B8`` matches ``B08``)."""
    return re.sub(r"(?<=[A-Z])0+(?=\d)", "", name.strip().upper())


def band_indexes(descriptions: Sequence[str | None], bands: Sequence[str], where: str | Path) -> list[int]:
    """1-based indexes of ``bands`` in a file whose bands carry ``descriptions``.

    Without descriptions the file must hold exactly ``len(bands)`` bands, taken in order."""
    if not any(descriptions):
        if len(descriptions) != len(bands):
            raise RasterError(where, f"{len(descriptions)} unnamed bands, expected {len(bands)} ({', '.join(bands)})")
        return list(range(1, len(bands) + 1))
    index = {band_key(d): i for i, d in enumerate(descriptions, start=1) if d}
    missing = [b for b in bands if band_key(b) not in index]
    if missing:
        raise RasterError(where, f"bands {missing} missing: the file's bands are {list(descriptions)}")
    return [index[band_key(b)] for b in bands]


def file_bands(descriptions: Sequence[str | None], sensor: Sensor, where: str | Path) -> list[str | None]:
    """The band of ``sensor`` each band of a file holds, by its description (compared as :func:`band_indexes`
    does; ``None``: a band that names none of them). A file without descriptions holds the sensor's bands
    in order, as many as the sensor has."""
    if not any(descriptions):
        if len(descriptions) != sensor.num_bands:
            raise RasterError(where, f"{len(descriptions)} unnamed bands, but sensor {sensor.name} has "
                                     f"{sensor.num_bands} ({', '.join(sensor.bands)})")
        return list(sensor.bands)
    names = {band_key(b): b for b in sensor.bands}
    return [names.get(band_key(d)) if d else None for d in descriptions]


def tile_windows(rows: tuple[int, int], cols: tuple[int, int], size: int, stride: int) -> list[Window]:
    """``size`` windows every ``stride`` pixels inside ``[rows) x [cols)``; the last one in each direction
    is moved back to end at the border. Empty when the region is smaller than ``size``."""

    def starts(lo: int, hi: int) -> list[int]:
        if hi - lo < size:
            return []
        out = list(range(lo, hi - size + 1, stride))
        return out if out[-1] == hi - size else [*out, hi - size]

    return [Window(c, r, size, size) for r in starts(*rows) for c in starts(*cols)]


def split_scenes(
    names: Sequence[str], test: int = 0, val: int = 0, test_names: Sequence[str] = (), val_names: Sequence[str] = (),
    train_first: int | None = None, seed: int = 0,
) -> dict[str, str]:
    """Scene -> split. ``train_first``: the ``N`` names sorting first are train (the rest test);
    else ``test_names`` or ``test`` seeded-random scenes are test. ``val_names`` or ``val`` seeded-random
    train scenes become val. A split may be empty (``train_first=0``: a test-only set)."""
    names = sorted(names)
    unknown = sorted((set(test_names) | set(val_names)) - set(names))
    if unknown:
        raise InputError(f"scenes {unknown} are not among the scenes found ({', '.join(names)})")
    rng = random.Random(seed)
    if train_first is not None:
        if not 0 <= train_first <= len(names):
            raise InputError(f"--train-first {train_first}: there are {len(names)} scenes")
        tests = set(names[train_first:])
    elif test_names:
        tests = set(test_names)
    else:
        if test > len(names):
            raise InputError(f"cannot hold out {test} test scenes of {len(names)}")
        tests = set(rng.sample(names, test))
    train = [n for n in names if n not in tests]
    if val_names:
        vals = set(val_names)
    elif val <= len(train):
        vals = set(rng.sample(train, val))
    else:
        raise InputError(f"cannot hold out {val} val scenes of the {len(train)} train scenes")
    if vals & tests:
        raise InputError(f"scenes {sorted(vals & tests)} are both test and val")
    return {n: "test" if n in tests else "val" if n in vals else "train" for n in names}


def _same_grid(src: rasterio.DatasetReader, ref: rasterio.DatasetReader) -> bool:
    return (src.crs == ref.crs and src.shape == ref.shape
            and src.transform.almost_equals(ref.transform, precision=0.01 * abs(ref.res[0])))


def _on_grid(src: rasterio.DatasetReader, ref: rasterio.DatasetReader, resampling: Resampling,
             nodata: float | None) -> rasterio.DatasetReader | WarpedVRT:
    if _same_grid(src, ref):
        return src
    return WarpedVRT(src, crs=ref.crs, transform=ref.transform, width=ref.width, height=ref.height,
                     resampling=resampling, nodata=nodata)


def _strips(height: int) -> list[tuple[int, int]]:
    """``(first row, rows)`` of each strip of a ``height``-row raster."""
    return [(r, min(_STRIP_ROWS, height - r)) for r in range(0, height, _STRIP_ROWS)]


def _lookup(label_map: Mapping[int, int | None], num_classes: int, ignore_index: int) -> dict[int, int]:
    lut = {v: ignore_index if c is None else c for v, c in label_map.items()}
    bad = {v: c for v, c in lut.items() if c != ignore_index and not 0 <= c < num_classes}
    if bad:
        raise InputError(f"label map sends {bad} outside the {num_classes} classes")
    return lut


def _label_values(src: rasterio.DatasetReader | WarpedVRT) -> set[int]:
    values: set[int] = set()
    for row, rows in _strips(src.height):
        values.update(np.unique(src.read(1, window=Window(0, row, src.width, rows))).tolist())
    return values


def _write_on_grid(view: rasterio.DatasetReader | WarpedVRT, ref: rasterio.DatasetReader, path: Path,
                   indexes: list[int], dtype: str, nodata: float | None,
                   lut: Mapping[int, int] | None = None) -> Path:
    """Copy ``indexes`` of ``view`` (already on ``ref``'s grid) to a tiled GeoTIFF, strip by strip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=ref.width, height=ref.height, count=len(indexes), dtype=dtype,
                   crs=ref.crs, transform=ref.transform, nodata=nodata, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        for row, rows in _strips(ref.height):
            window = Window(0, row, ref.width, rows)
            data = view.read(indexes, window=window)
            if lut is not None:
                keys = np.fromiter(lut, dtype=np.int64)
                data = np.asarray(data, dtype=np.int64)
                out = data.copy()
                for key in keys:
                    out[data == key] = lut[int(key)]
                data = out
            dst.write(data.astype(dtype), window=window)
        descriptions = [view.descriptions[i - 1] for i in indexes]
        for i, name in enumerate(descriptions, start=1):
            if name:
                dst.set_band_description(i, name)
    return path


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (copies travel with the manifest), else absolute."""
    path, root = Path(path).resolve(), root.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _grid_text(src: rasterio.DatasetReader) -> str:
    origin = f"({src.transform.c:.10g}, {src.transform.f:.10g})"
    return f"{src.crs} {src.height}x{src.width} px of {src.res[0]:.6g} at {origin}"


def _check_band_files(files: Mapping[str, Path], ref: rasterio.DatasetReader, ref_path: Path) -> None:
    """Band files are single-band and on the scene grid (``ref``'s), or refused naming both files."""
    for band, path in files.items():
        with open_raster(path) as src:
            if src.count != 1:
                raise RasterError(path, f"{band} file has {src.count} bands, expected 1")
            if not _same_grid(src, ref):
                raise RasterError(path, f"{band} file is on another grid ({_grid_text(src)}) than {ref_path} "
                                        f"({_grid_text(ref)}); one scene's band files share one grid")


class _Grid(NamedTuple):
    shape: tuple[int, int]
    transform: Affine
    crs: CRS | None


def _map_blocks(grid: _Grid, side: float, size: int, where: Path
                ) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """The ``(rows, cols, (block x, block y))`` pixel ranges of a north-up grid in each map block it
    covers: block ``(floor(x / side), floor(y / side))``, a pixel in the block that holds its centre."""
    transform = grid.transform
    if transform.b or transform.d:
        raise RasterError(where, f"a block split needs a north-up grid; the transform {tuple(transform)[:6]} rotates")
    pixels = side / max(abs(transform.a), abs(transform.e))
    if pixels < size:
        raise RasterError(where, f"a block of {side:g} map units is {pixels:.1f} px on this grid, less than the tile "
                                 f"size {size} (the block side is in the CRS's units: {grid.crs})")

    def runs(count: int, origin: float, step: float) -> list[tuple[tuple[int, int], int]]:
        index = np.floor((origin + (np.arange(count) + 0.5) * step) / side).astype(np.int64)
        edges = [0, *(np.flatnonzero(np.diff(index)) + 1).tolist(), count]
        return [((a, b), int(index[a])) for a, b in zip(edges, edges[1:])]

    return [(rows, cols, (bx, by)) for rows, by in runs(grid.shape[0], transform.f, transform.e)
            for cols, bx in runs(grid.shape[1], transform.c, transform.a)]


def _block_split(grid: str, block: tuple[int, int], fractions: tuple[float, float], seed: int) -> str:
    """The split of a map block: a draw seeded by ``seed``, the block's ``grid`` (its CRS) and the block alone."""
    draw = random.Random(f"{seed}/{grid}/{block[0]}/{block[1]}").random()
    return "test" if draw < fractions[0] else "val" if draw < fractions[0] + fractions[1] else "train"


def _scene_sources(scene: Scene, sensors: Mapping[str, Sensor], task: TaskSpec, label_map: Mapping[int, int | None],
                   out: Path) -> tuple[dict[str, TileSource], Path, _Grid]:
    """Readable files (originals or grid copies under ``out/scenes/<name>/``) and the scene grid."""
    copies = out / "scenes" / scene.name
    lut = _lookup(label_map, task.num_classes, task.ignore_index)
    first = _first_file(next(iter(scene.images.values())))
    with open_raster(first) as ref:
        files: dict[str, TileSource] = {}
        for sensor_name, path in scene.images.items():
            sensor = sensors[sensor_name]
            if isinstance(path, dict):
                _check_band_files(path, ref, first)
                files[sensor_name] = path
                continue
            with open_raster(path) as src:
                indexes = band_indexes(src.descriptions, sensor.bands, path)
                if _same_grid(src, ref) and indexes == list(range(1, src.count + 1)):
                    files[sensor_name] = path
                    continue
                nodata = src.nodata if src.nodata is not None else sensor.nodata
                with _on_grid(src, ref, Resampling.bilinear, nodata if nodata is not None else np.nan) as view:
                    files[sensor_name] = _write_on_grid(view, ref, copies / f"{sensor_name}.tif", indexes, "float32",
                                                        nodata if nodata is not None else np.nan)
        with open_raster(scene.label) as src:
            if src.count != 1:
                raise RasterError(scene.label, f"label raster has {src.count} bands, expected 1")
            with _on_grid(src, ref, Resampling.nearest, task.ignore_index) as view:
                values = _label_values(view)
                if src.nodata is not None:
                    values.discard(int(src.nodata))
                unmapped = sorted(v for v in values if v not in lut and not 0 <= v < task.num_classes
                                  and v != task.ignore_index)
                if unmapped:
                    raise RasterError(scene.label, f"label values {unmapped} are not in the label map "
                                                   f"{dict(label_map)} nor class indexes 0..{task.num_classes - 1}")
                if view is src and not any(lut.get(v, v) != v for v in values):
                    label = scene.label
                else:
                    if src.nodata is not None:
                        lut = {int(src.nodata): task.ignore_index, **lut}
                    label = _write_on_grid(view, ref, copies / "label.tif", [1], "uint8", task.ignore_index, lut)
        return files, label, _Grid(ref.shape, ref.transform, ref.crs)


def scenes_manifest(
    scenes: Sequence[Scene], sensors: Sequence[str], task_name: str, task: TaskSpec, out: Path, size: int,
    stride: int, splits: Mapping[str, str] | None = None, block_size: float | None = None,
    block_fractions: tuple[float, float] = (0.2, 0.1), min_valid: float = 0.5,
    label_map: Mapping[int, int | None] | None = None, seed: int = 0, name: str = "scenes",
    catalog: Catalog | None = None,
) -> Manifest:
    """The manifest of ``scenes`` cut into ``size`` tiles every ``stride`` pixels (see module docstring);
    ``catalog``: what the ``sensors`` names mean (the manifest keeps it; default: the catalog in use).

    Give ``splits`` (scene -> split) or ``block_size``, the side of a map block in the CRS's units (pixels
    without a CRS), with ``(test, val)`` fractions of the blocks (module docstring).
    A tile is kept when at least ``min_valid`` of its pixels are valid in every image and labelled.
    Copies are written under ``out``, where the manifest is meant to be saved, and referenced relative
    to it; original rasters by absolute path.
    """
    if (splits is None) == (block_size is None):
        raise InputError("split either by scene (splits) or by spatial block (block_size)")
    if size < 1 or stride < 1:
        raise InputError(f"tile size and stride must be positive, got {size} and {stride}")
    resolved = {s: get_sensor(s, catalog) for s in sensors}
    tiles: list[TileEntry] = []
    for scene in tqdm(scenes, desc="scenes", unit="scene", leave=False):
        files, label, grid = _scene_sources(scene, resolved, task, label_map or {}, out)
        height, width = grid.shape
        if block_size is None:
            regions = [(((0, height), (0, width)), splits[scene.name])]
        else:
            crs = grid.crs.to_string() if grid.crs else f"scene {scene.name}"
            blocks = _map_blocks(grid, block_size, size, _first_file(next(iter(scene.images.values()))))
            regions = [((rows, cols), _block_split(crs, block, block_fractions, seed)) for rows, cols, block in blocks]
        kept = 0
        for (rows, cols), split in regions:
            for window in tile_windows(rows, cols, size, stride):
                valid = []
                for sensor_name, path in files.items():
                    try:
                        _, labels = read_labelled(path, resolved[sensor_name], label, task.num_classes,
                                                  task.ignore_index, window=window)
                        valid.append(float((labels != task.ignore_index).mean()))
                    except RasterError as exc:
                        if "nodata" not in exc.problem:
                            raise
                        valid.append(0.0)
                if min(valid) < min_valid:
                    continue
                kept += 1
                box = [int(window.col_off), int(window.row_off), size, size]
                for sensor_name, path in files.items():
                    where = ({"band_paths": {b: _relative(p, out) for b, p in path.items()}} if isinstance(path, dict)
                             else {"path": _relative(path, out)})
                    tiles.append(TileEntry(
                        id=f"{scene.name}-r{box[1]}-c{box[0]}-{sensor_name}", sensor=resolved[sensor_name].name,
                        split=split, window=box, scene=f"{scene.name}-r{box[1]}-c{box[0]}",
                        region=scene.name, targets={task_name: _relative(label, out)}, **where,
                    ))
        if kept == 0:
            log.warning("scene %s (%dx%d): no %d px tile has %.0f%% valid, labelled pixels", scene.name, height,
                        width, size, 100 * min_valid)
    if not tiles:
        raise RasterError(f"{len(scenes)} scenes", f"no tiles: every {size} px window is below --min-valid {min_valid} or the scenes "
                               f"are smaller than {size} px")
    outside = any(Path(p).is_absolute() for t in tiles
                  for p in [*([t.path] if t.band_paths is None else t.band_paths.values()), t.targets[task_name]])
    return Manifest(tasks={task_name: task}, tiles=tiles, name=name, root=out, allow_outside_paths=outside,
                    catalog=catalog)


