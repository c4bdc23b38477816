"""``eosfed prune``: score a registry's specialists on labelled tasks and write the kept ones.

For each ``--eval TASK@SENSOR`` the specialists that can read the sensor play a coalition game (a probe
on their concatenated frozen features, fit on ``--train-split``, scored on ``--test-split``), by default
against each one's untrained random twin; Shapley and leave-one-out are averaged over the games and
the rule (``--keep-top-k``, ``--drop-nonpositive``) writes the pruned registry with
``prune_report.{json,md}``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eosfed.commands.args import (UsageError, add_output, add_sensor_files, add_settings, check_output, settings_from,
                                  staged_output)
from fusion.contrib import combine_contributions, extract_member_features, with_twins
from fusion.data import labelled_loader
from fusion.ensemble import Ensemble
from fusion.registry import Registry
from geodata.manifest import Manifest
from pipeline.contrib import play, prune_by
from pipeline.settings import ExperimentConfig, PruneSettings

log = logging.getLogger(__name__)


def _eval_pair(text: str) -> tuple[str, str]:
    task, sep, sensor = text.partition("@")
    if not sep or not task or not sensor:
        raise argparse.ArgumentTypeError(f"--eval wants TASK@SENSOR, got {text!r}")
    return task, sensor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, type=Path, help="registry folder (index.json)")
    parser.add_argument("--manifest", required=True, type=Path, help="labelled manifest.json")
    parser.add_argument("--eval", required=True, action="append", type=_eval_pair, dest="evals",
                        help="TASK@SENSOR to score on; repeat for several")
    add_output(parser, "folder of the pruned registry")
    add_sensor_files(parser)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--size", type=int, help="centre-crop tiles to this size")
    parser.add_argument("--batch-size", type=int, default=64)
    add_settings(parser, ExperimentConfig, "run", only=("seed", "tolerance_nm"))
    add_settings(parser, PruneSettings, "contributions and rule (pipeline.settings.PruneSettings; method: linear, "
                 "knn or segmentation; baseline: random_twin or none)", skip=("task",))


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args, PruneSettings)
    if not settings.keep_top_k and not settings.drop_nonpositive:
        raise UsageError("give --keep-top-k K, --drop-nonpositive, or both")
    if settings.baseline not in ("random_twin", "none"):
        raise UsageError(f"--baseline must be random_twin or none, got {settings.baseline!r}")
    check_output(args.out, args.overwrite)
    registry = Registry(args.registry)
    manifest = Manifest.load(args.manifest)
    ensemble = Ensemble.from_registry(registry, tolerance_nm=args.tolerance_nm)
    if settings.baseline == "random_twin":
        ensemble = with_twins(ensemble, args.seed)
    per_game, cka = [], None
    for task_name, sensor in args.evals:
        task = manifest.task(task_name)
        maps = settings.method == "segmentation"
        splits = {s: extract_member_features(
            ensemble, labelled_loader(manifest, sensor, task_name, s, args.size, args.batch_size), maps)
            for s in (args.train_split, args.test_split)}
        scores, matrix = play(splits[args.train_split], splits[args.test_split], task, f"{task_name}@{sensor}",
                              settings, args.seed)
        per_game.append(scores)
        cka = cka or matrix
    with staged_output(args.out, args.overwrite) as stage:
        pruned, _ = prune_by(registry, combine_contributions(per_game), stage, settings, cka)
    log.info("pruned registry at %s: %s", args.out, pruned.names)
    return 0
