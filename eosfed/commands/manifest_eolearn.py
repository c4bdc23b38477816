"""``eosfed manifest eolearn``: eo-learn's test patch -> GeoTIFF chips and a segmentation manifest (``lulc``)."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from eosfed.commands.args import add_output, add_sensor_files, check_output, staged_output
from geodata.readers.eolearn import build_eolearn_manifest

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="the patch folder (REFERENCE_SCENES.npy, TestEOPatch/)")
    add_output(parser, "folder to write the chips and manifest.json into")
    add_sensor_files(parser)
    parser.add_argument("--chip", type=int, default=32, help="chip size in pixels")
    parser.add_argument("--name", default="eolearn-testpatch", help="manifest name")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    with staged_output(args.out, args.overwrite) as stage:
        manifest = build_eolearn_manifest(args.root, stage, args.chip, args.name)
    log.info("manifest %s: tiles per split %s -> %s", manifest.name,
                dict(Counter(t.split for t in manifest.tiles)), args.out / "manifest.json")
    return 0
