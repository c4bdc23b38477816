"""``eosfed manifest eurosat``: EuroSAT-MS (``<Class>/<Class>_<n>.tif``, 13-band L1C) -> manifest (task ``scene``)."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from eosfed.commands.args import add_output, add_sensor_files, check_output, staged_output
from geodata.readers.eurosat import build_eurosat_manifest

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="EuroSAT-MS folder (one subfolder per class)")
    add_output(parser, "folder to write manifest.json into")
    add_sensor_files(parser)
    parser.add_argument("--train", type=int, default=8, help="first n images of each class for train")
    parser.add_argument("--val", type=int, default=0, help="next n images of each class for val (the rest: test)")
    parser.add_argument("--name", default="eurosat-ms", help="manifest name")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    with staged_output(args.out, args.overwrite) as stage:
        manifest = build_eurosat_manifest(args.root, stage, args.train, args.val, args.name)
    log.info("manifest %s: tiles per split %s -> %s", manifest.name,
                dict(Counter(t.split for t in manifest.tiles)), args.out / "manifest.json")
    return 0
