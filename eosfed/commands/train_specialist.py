"""``eosfed train-specialist``: train one specialist on a manifest's tiles, no federation.

Uses the manifest's ``train`` split (normalisation statistics come from it), ``--val-split`` for early
stopping and ``--test-split`` for test metrics (by default ``val`` and ``test`` when present; a split
named but absent is an error listing those there are); writes the specialist folder
(``weights.safetensors`` + ``card.json``). The specialist reads the sensor's image bands (its
auxiliary mask/quality/probability bands are read with the files but not fed to it).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from eosfed.commands.args import (add_output, add_sensor_files, add_settings, add_tile_size, check_output, check_split,
                                  optional_split, settings_from, staged_output)
from geodata.dataset import TileDataset
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.sensors import get_sensor
from geodata.stats import load_or_compute_stats
from pipeline.settings import ExperimentConfig
from specialists.card import SpecialistCard
from specialists.encoder import FREEZE_POLICIES
from specialists.io import save_specialist
from specialists.train import TrainConfig, evaluate, make_loader, train_specialist
from specialists.trunk import DEFAULT_VARIANT

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="manifest.json")
    parser.add_argument("--sensor", required=True, help="sensor name of the tiles to train on")
    parser.add_argument("--task", required=True, help="task name in the manifest")
    add_output(parser, "folder to write the specialist into")
    add_sensor_files(parser)
    parser.add_argument("--val-split", help="split for early stopping ('' for none; default: val when present)")
    parser.add_argument("--test-split", help="split for test metrics ('' for none; default: test when present)")
    parser.add_argument("--institution", help="only this institution's tiles (and name it on the card)")
    parser.add_argument("--name", help="specialist name (default: <institution|manifest>-<sensor>-<task>)")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help="timm ConvNeXtV2 variant")
    add_tile_size(parser)
    add_settings(parser, TrainConfig, f"training (specialists.train.TrainConfig; --freeze: {', '.join(FREEZE_POLICIES)})")
    add_settings(parser, ExperimentConfig, "band equivalence (--init-weights' stem adapted to the tiles' bands within "
                 "this many nm)", only=("tolerance_nm",))


def _summary(tiles: dict[str, list[TileEntry]], task: str, spec: TaskSpec) -> dict[str, Any]:
    """Tiles per split, class counts per split (scene-level tasks), regions."""
    summary: dict[str, Any] = {"tiles": {split: len(t) for split, t in tiles.items()}}
    if spec.type != "segmentation":
        counts = {}
        for split, entries in tiles.items():
            labels: Counter[int] = Counter()
            for tile in entries:
                value = tile.targets[task]
                labels.update([value] if spec.type == "classification" else value)
            counts[split] = {spec.classes[k]: n for k, n in sorted(labels.items())}
        summary["class_counts"] = counts
    summary["regions"] = sorted({t.region for ts in tiles.values() for t in ts if t.region is not None})
    return summary


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    manifest = Manifest.load(args.manifest)
    sensor = get_sensor(args.sensor)
    spec = manifest.task(args.task)
    filters = dict(sensor=sensor.name, task=args.task, institution=args.institution)
    splits = {"train": check_split(manifest, "train", "split", **filters),
              "val": optional_split(manifest, args.val_split, "val", "--val-split", **filters),
              "test": optional_split(manifest, args.test_split, "test", "--test-split", **filters)}
    tiles = {role: manifest.select(split=split, **filters) for role, split in splits.items() if split is not None}
    stats = load_or_compute_stats(manifest, sensor, "train", institution=args.institution)
    datasets = {role: TileDataset(manifest, sensor, split=splits[role], task=args.task,
                                  institution=args.institution, size=args.size, stats=stats,
                                  resize=args.resize) for role in tiles}
    institutions = [args.institution] if args.institution else sorted(
        {t.institution for t in tiles["train"] if t.institution}) or [manifest.name]
    card = SpecialistCard(
        name=args.name or f"{args.institution or manifest.name}-{sensor.name}-{args.task}",
        institutions=institutions, sensor=sensor.name, bands=list(stats.bands), norm_mean=list(stats.mean),
        norm_std=list(stats.std), task=args.task, task_type=spec.type, classes=list(spec.classes),
        variant=args.variant, data_summary={"manifest": manifest.name, "size": args.size, "resize": args.resize,
                      **_summary(tiles, args.task, spec)},
    )
    cfg = settings_from(args, TrainConfig)
    specialist, head, _ = train_specialist(datasets["train"], datasets.get("val"), card, cfg, spec.ignore_index,
                                           tolerance_nm=args.tolerance_nm)
    if "test" in datasets:
        scores = evaluate(specialist, head, make_loader(datasets["test"], cfg, shuffle=False), spec.type,
                          spec.num_classes, cfg, spec.ignore_index, desc="test")
        card.metrics.update({f"test_{k}": v for k, v in scores.items()})
        log.info("test: %s", ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    with staged_output(args.out, args.overwrite) as stage:
        save_specialist(specialist, stage)
    log.info("wrote specialist %r to %s", card.name, args.out)
    return 0
