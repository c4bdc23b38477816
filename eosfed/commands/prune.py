"""``eosfed prune``: score every specialist's contribution on labelled tasks and write a smaller registry.

Each ``--eval TASK@SENSOR`` is one coalition game (probe on the concatenated cached features of the
specialists that can read that sensor); scores are averaged over games. By default each marginal is
taken against the specialist's untrained random twin (``--baseline``, :mod:`fusion.contrib`). The new registry folder
holds ``prune_report.json`` and ``prune_report.md`` (scores, decisions, CKA redundancy).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eosfed.commands.args import UsageError, add_output, add_sensor_files, check_output, staged_output
from fusion.contrib import (CoalitionGame, cka_matrix, combine_contributions, contributions,
                            extract_member_features, with_twins)
from fusion.data import labelled_loader
from fusion.ensemble import Ensemble
from fusion.prune import prune
from fusion.registry import Registry
from fusion.views import DEFAULT_TOLERANCE_NM
from geodata.manifest import Manifest

logger = logging.getLogger(__name__)


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
    rule = parser.add_argument_group("rule (one or both)")
    rule.add_argument("--keep-top-k", type=int, help="keep the k highest Shapley contributions")
    rule.add_argument("--drop-nonpositive", action="store_true", help="drop intervals at or below zero")
    parser.add_argument("--baseline", choices=("random_twin", "none"), default="random_twin",
                        help="take each marginal against the specialist's untrained twin (what its training adds), "
                             "or against the coalition without it (plain Shapley)")
    parser.add_argument("--method", default="linear", help="coalition probe: linear, knn or segmentation")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="Shapley truncation tolerance")
    parser.add_argument("--gates", action="store_true", help="also learn sparse gates per specialist")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--size", type=int, help="centre-crop tiles to this size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tolerance-nm", type=float, default=DEFAULT_TOLERANCE_NM)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.keep_top_k is None and not args.drop_nonpositive:
        raise UsageError("give --keep-top-k K, --drop-nonpositive, or both")
    check_output(args.out, args.overwrite)
    registry = Registry(args.registry)
    manifest = Manifest.load(args.manifest)
    ensemble = Ensemble.from_registry(registry, tolerance_nm=args.tolerance_nm)
    if args.baseline == "random_twin":
        ensemble = with_twins(ensemble, args.seed)
    per_game, cka = [], None
    for task_name, sensor in args.evals:
        task = manifest.task(task_name)
        maps = args.method == "segmentation"
        splits = {s: extract_member_features(
            ensemble, labelled_loader(manifest, sensor, task_name, s, args.size, args.batch_size), maps)
            for s in (args.train_split, args.test_split)}
        game = CoalitionGame(splits[args.train_split], splits[args.test_split], task, args.method, seed=args.seed)
        per_game.append(contributions(game, f"{task_name}@{sensor}", args.permutations, args.tolerance,
                                      seed=args.seed, gates=args.gates))
        if cka is None and len(game.players) > 1:
            cka = cka_matrix({n: splits[args.test_split][n].pooled for n in game.players})
    with staged_output(args.out, args.overwrite) as stage:
        pruned = prune(registry, combine_contributions(per_game), stage, args.keep_top_k, args.drop_nonpositive, cka)
    logger.info("pruned registry at %s: %s", args.out, pruned.names)
    return 0
