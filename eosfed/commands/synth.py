"""``eosfed synth``: write a synthetic multi-sensor world (GeoTIFFs + manifest.json) from a preset."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from eosfed.commands.args import add_output, add_sensor_files, check_output, staged_output
from geodata.synth.config import load_world_config
from geodata.synth.world import generate_world

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output(parser, "output folder (manifest.json goes here)")
    add_sensor_files(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="default", help="configs/world/<preset>.yaml (default: default)")
    source.add_argument("--config", type=Path, help="a world YAML file instead of a preset")
    parser.add_argument("--seed", type=int, help="override the world seed")
    parser.add_argument("--tiles", type=int, help="override scenes per institution")
    parser.add_argument("--workers", type=int, default=1, help="processes (output bytes do not depend on it)")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    config = load_world_config(args.config or args.preset, seed=args.seed, tiles_per_institution=args.tiles)
    with staged_output(args.out, args.overwrite) as stage:
        manifest = generate_world(config, stage, workers=args.workers)
    per_sensor = Counter(t.sensor for t in manifest.tiles)
    log.info("world %s: %s -> %s", manifest.name, dict(sorted(per_sensor.items())), args.out / "manifest.json")
    return 0
