"""``eosfed manifest bigearthnet``: BigEarthNet S2 patches (and their S1 twins) -> multilabel manifest (``corine``)."""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

from eosfed.commands.args import UsageError, add_output, add_sensor_files, check_output, staged_output
from geodata.readers.bigearthnet import build_bigearthnet_manifest

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s2-root", required=True, type=Path, help="folder of S2 patch folders")
    parser.add_argument("--s1-root", type=Path, help="folder of the S1 twin patch folders")
    add_output(parser, "folder to write manifest.json into")
    add_sensor_files(parser)
    parser.add_argument("--splits", type=Path,
                        help='JSON {"<S2 patch>": "<split>"} (patches not listed: train; S1 twins follow)')
    parser.add_argument("--name", default="bigearthnet", help="manifest name")


def _splits(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
        raise UsageError(f"{path}: expected a JSON object mapping S2 patch names to split names")
    return splits


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    splits = _splits(args.splits)
    with staged_output(args.out, args.overwrite) as stage:
        manifest = build_bigearthnet_manifest(args.s2_root, stage, args.s1_root, splits, name=args.name)
    log.info("manifest %s: tiles per sensor %s, %d classes -> %s", manifest.name,
                dict(Counter(t.sensor for t in manifest.tiles)), manifest.task("corine").num_classes,
                args.out / "manifest.json")
    return 0
