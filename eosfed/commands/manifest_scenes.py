"""``eosfed manifest scenes``: scene rasters plus a label raster per scene, cut into tiles.

Images and labels are matched by file stem (or ``--match``'s first group); a sensor given one folder
per band (``--images SENSOR=BAND:DIR,...``) has a scene per file name, its tiles one file per band
(``band_paths``). Tiles are windows into the original rasters; a scene that needs co-registering, band
picking or a label remap is written once onto the first image's grid under ``<out>/scenes/``.
``--sensors FILE`` registers a sensor YAML; the manifest carries a copy of it (``sensors/<name>.yaml``).
Block splits are drawn on the map (:mod:`geodata.tiling`), so several dates of one place agree.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from eosfed.commands.args import UsageError, add_output, add_sensor_files, check_output, staged_output
from geodata.manifest import TaskSpec
from geodata.tiling import (Scene, band_files, find_rasters, match_scenes, parse_label_map, scenes_manifest,
                            split_scenes)

log = logging.getLogger(__name__)


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


_BAND_ITEM = re.compile(r"^\w+:.")  # BAND:DIR_OR_GLOB


def _images(text: str) -> tuple[str, str | list[tuple[str, str]]]:
    """``SENSOR=DIR_OR_GLOB`` -> ``(sensor, spec)``; ``SENSOR=BAND:DIR,BAND:DIR,...`` -> ``(sensor, [(band, dir)])``."""
    sensor, sep, spec = text.partition("=")
    if not sep or not sensor or not spec:
        raise UsageError(f"--images wants SENSOR=DIR_OR_GLOB or SENSOR=BAND:DIR,BAND:DIR,..., got {text!r}")
    items = spec.split(",")
    if all(_BAND_ITEM.match(item) for item in items):
        return sensor, [tuple(item.split(":", 1)) for item in items]
    return sensor, spec


def _files(sensor: str, spec: str | list[tuple[str, str]]) -> list[Path] | dict[str, list[Path]]:
    return find_rasters(spec) if isinstance(spec, str) else band_files(sensor, spec)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, action="append", metavar="SENSOR=DIR_OR_GLOB",
                        help="image rasters of one sensor; repeat for more sensors (the first sets the grid). "
                             "One file per band: SENSOR=BAND:DIR_OR_GLOB,BAND:DIR_OR_GLOB,... (a scene is the "
                             "files of one name across the band folders, all on one grid)")
    parser.add_argument("--labels", required=True, help="label rasters (folder or glob)")
    parser.add_argument("--match", help="regex on file stems whose first group is the scene key (default: the stem)")
    add_tiling_arguments(parser)


def add_tiling_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of cutting scenes into tiles and splitting them (also ``eosfed manifest torchgeo raster``'s)."""
    add_output(parser, "folder for manifest.json (and any co-registered scene copies)")
    parser.add_argument("--task", required=True, help="task name")
    parser.add_argument("--classes", required=True, type=_names, help="class names in index order, e.g. "
                                                                       "not_burned,burned")
    add_sensor_files(parser)
    parser.add_argument("--size", type=int, default=64, help="tile size in pixels")
    parser.add_argument("--stride", type=int, help="pixels between tiles (default: --size)")
    parser.add_argument("--min-valid", type=float, default=0.5, help="least fraction of valid, labelled pixels")
    parser.add_argument("--label-map", help="raw label value -> class index or 'ignore', e.g. --label-map=-1:ignore,255:1 (the '=' "
                             "keeps a leading '-' from reading as an option)")
    parser.add_argument("--ignore-index", type=int, default=255, help="label of ignored pixels")
    parser.add_argument("--split-by", choices=("scene", "block"), default="scene",
                        help="block: square blocks of the map, anchored at the CRS origin (block floor(x / "
                             "--block-size), floor(y / --block-size); a pixel in the block holding its centre); "
                             "each block's split is drawn from --seed, the CRS and the block, tiles are cut inside "
                             "blocks, so scenes of one place (several dates) put the same ground in one split")
    parser.add_argument("--train-first", type=int, help="scene split: the N scenes sorting first are train, "
                                                        "the rest test (0: a test-only set)")
    parser.add_argument("--test", type=int, default=0, help="scene split: number of seeded-random test scenes")
    parser.add_argument("--val", type=int, default=0, help="scene split: number of train scenes held out as val")
    parser.add_argument("--test-scenes", type=_names, default=[], help="scene split: comma-separated test scenes")
    parser.add_argument("--val-scenes", type=_names, default=[], help="scene split: comma-separated val scenes")
    parser.add_argument("--block-size", type=float, help="block split: block side in the CRS's map units (metres "
                                                         "for UTM, degrees for EPSG:4326, pixels without a CRS), "
                                                         "at least --size pixels")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="block split: fraction of test blocks")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="block split: fraction of val blocks")
    parser.add_argument("--name", help="manifest name (default: the --out folder's name)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    specs = [_images(text) for text in args.images]

    def find() -> tuple[list[Scene], list[str]]:
        images = {sensor: _files(sensor, spec) for sensor, spec in specs}
        return match_scenes(images, find_rasters(args.labels), args.match), list(images)

    write_scenes(args, find)
    return 0


def write_scenes(args: argparse.Namespace, find: Callable[[], tuple[list[Scene], list[str]]]) -> None:
    """Cut the scenes ``find`` returns (with their sensors) into tiles, split them as the
    :func:`add_tiling_arguments` flags say, and write ``--out``."""
    if len(args.classes) < 2:
        raise UsageError(f"--classes needs at least two classes (e.g. not_burned,burned), got {args.classes}")
    if args.split_by == "block" and args.block_size is None:
        raise UsageError("--split-by block needs --block-size")
    with staged_output(args.out, args.overwrite) as stage:
        scenes, sensors = find()
        splits = None
        if args.split_by == "scene":
            splits = split_scenes([s.name for s in scenes], args.test, args.val, args.test_scenes, args.val_scenes,
                                  args.train_first, args.seed)
        task = TaskSpec("segmentation", args.classes, args.ignore_index)
        manifest = scenes_manifest(
            scenes, sensors, args.task, task, stage, args.size, args.stride or args.size, splits,
            args.block_size if args.split_by == "block" else None, (args.test_fraction, args.val_fraction),
            args.min_valid, parse_label_map(args.label_map), args.seed, args.name or args.out.name,
        )
        manifest.save(stage / "manifest.json")
    counts = Counter(t.split for t in manifest.tiles)
    log.info("%d scenes -> %d tiles %s in %s", len(scenes), len(manifest.tiles), dict(sorted(counts.items())),
             args.out / "manifest.json")
