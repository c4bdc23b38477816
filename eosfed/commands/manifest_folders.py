"""``eosfed manifest folders``: one folder per class of images (GeoTIFF, JPEG, PNG) -> a classification manifest."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from eosfed.commands.args import UsageError, add_output, add_sensor_files, check_output, staged_output
from geodata.readers.folders import build_folder_manifest

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="folder holding one subfolder per class")
    parser.add_argument("--sensor", required=True, help="sensor of every image (e.g. rgb for 8-bit RGB)")
    add_output(parser, "folder to write manifest.json into")
    add_sensor_files(parser)
    parser.add_argument("--task", default="scene", help="task name")
    for split, default in (("test", 0.2), ("val", 0.0)):
        group = parser.add_mutually_exclusive_group()
        group.add_argument(f"--{split}", type=float, default=default, metavar="FRACTION",
                           help=f"fraction of each class for {split}, in [0, 1] (1: every image)")
        group.add_argument(f"--{split}-count", type=int, metavar="N", help=f"{split} images per class instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class shuffle")
    parser.add_argument("--classes", help="comma-separated class folders to use, in label order (default: all, sorted)")
    parser.add_argument("--per-class", type=int, help="use at most this many images per class")
    parser.add_argument("--name", help="manifest name (default: the root folder's name)")


def _check_fractions(args: argparse.Namespace) -> None:
    """Refuse a fraction outside [0, 1]; a whole number (``--test 50``) is pointed to the count flag."""
    for split in ("test", "val"):
        fraction = getattr(args, split)
        if not 0 <= fraction <= 1:
            hint = (f"; for {fraction:g} images per class give --{split}-count {fraction:g}"
                    if fraction > 1 and fraction == int(fraction) else "")
            raise UsageError(f"--{split} {fraction:g} is not a fraction in [0, 1]{hint}")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    _check_fractions(args)
    with staged_output(args.out, args.overwrite) as stage:
        manifest = build_folder_manifest(args.root, stage, args.sensor, args.task, args.val, args.test, args.seed,
                                         args.classes.split(",") if args.classes else None, args.per_class,
                                         args.name, args.val_count, args.test_count)
    log.info("manifest %s: %d classes, tiles per split %s -> %s", manifest.name,
                manifest.task(args.task).num_classes, dict(Counter(t.split for t in manifest.tiles)),
                args.out / "manifest.json")
    return 0
