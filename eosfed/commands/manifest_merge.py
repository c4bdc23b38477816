"""``eosfed manifest merge``: manifests joined into one (e.g. a release's train and test folders), every tile
keeping its split; relative tile paths rewritten relative to ``--out``."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from eosfed.commands.args import add_output, add_sensor_files, check_output, staged_output
from geodata.manifest import Manifest, merge_manifests

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST", help="manifest.json files to join")
    add_output(parser, "folder to write the joined manifest.json into")
    add_sensor_files(parser)
    parser.add_argument("--name", help="manifest name (default: the --out folder's name)")
    parser.add_argument("--prefix-ids", action="store_true",
                        help="start each tile's id, scene and region with its manifest's name (sets naming files alike)")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    manifests = [Manifest.load(path) for path in args.manifests]
    with staged_output(args.out, args.overwrite) as stage:
        merged = merge_manifests(manifests, args.out, args.name or args.out.name, args.prefix_ids)
        merged.save(stage / "manifest.json")
    log.info("manifest %s: %d manifests, tiles per split %s -> %s", merged.name, len(manifests),
             dict(sorted(Counter(t.split for t in merged.tiles).items())), args.out / "manifest.json")
    return 0
