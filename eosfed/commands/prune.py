"""``eosfed prune``: score a registry's specialists on labelled tasks and write the kept ones.

For each ``--eval TASK@SENSOR`` the specialists that can read the sensor play a coalition game (a probe
on their concatenated frozen features, fit on ``--train-split``, scored on ``--test-split``), by default
against each one's untrained random twin; Shapley and leave-one-out are averaged over the games and
the rule (``--keep-top-k``, ``--drop-nonpositive``) writes the pruned registry with
``prune_report.{json,md}``. With ``--redistill``, when a specialist was dropped, the full student of
``--student`` is distilled further on the kept teachers' cached targets only (``--cache``; kept local
teachers it lacks are extracted into it) with the settings its card records, into ``<out>/student_pruned/``;
``<out>/redistill.json`` compares both students (teachers, extractions, targets read, seconds, probe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from eosfed.commands.args import (UsageError, add_output, add_sensor_files, add_settings, check_output, settings_from,
                                  staged_output)
from fusion.contrib import combine_contributions
from fusion.data import ProxyBatches, proxy_sensors
from fusion.distill import DistillConfig
from fusion.registry import Registry
from fusion.student import StudentCard
from fusion.teacher_cache import TeacherCache
from geodata.files import atomic_write_text
from geodata.manifest import Manifest
from pipeline.contrib import Game, play_games, prune_by, student_scores
from pipeline.distill import HISTORY_FILE, redistil, save_pruned
from pipeline.settings import ExperimentConfig, ProxySettings, PruneSettings
from specialists.artifact import CARD_FILE, read_card

log = logging.getLogger(__name__)

REDISTILL_ONLY = ("student", "proxy", "cache")  # flags that mean nothing without --redistill


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
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the probes and re-distillation")
    add_settings(parser, ExperimentConfig, "run", only=("seed", "tolerance_nm"))
    add_settings(parser, PruneSettings, "contributions, rule and re-distillation (pipeline.settings.PruneSettings; "
                 "method: linear, knn or segmentation; baseline: random_twin or none)", skip=("task",))
    group = parser.add_argument_group("re-distillation (--redistill)")
    group.add_argument("--student", type=Path, help="folder of the full student: student/, adaptors/ and "
                       f"{HISTORY_FILE} (an `eosfed distill --out` folder or a run folder)")
    group.add_argument("--proxy", type=Path,
                       help="proxy manifest.json to distil on (default: --manifest; labels unused)")
    group.add_argument("--proxy-split", default="train", help="proxy split to use ('' for all)")
    group.add_argument("--cache", type=Path, help="teacher cache folder to read (default: the --student folder's "
                       "teacher_cache/ if there, else one in memory); kept local teachers' missing targets are added")
    add_settings(parser, ProxySettings, "re-distillation proxy", only=("pair_scenes",))


def _check_redistill(args: argparse.Namespace, settings: PruneSettings) -> None:
    """One-line errors for the re-distillation flags, before anything runs."""
    if not settings.redistill:
        given = [f"--{n}" for n in REDISTILL_ONLY if getattr(args, n) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --redistill")
        return
    if settings.redistill_epochs < 1:
        raise UsageError(f"--redistill-epochs must be >= 1, got {settings.redistill_epochs}")
    if args.student is None:
        raise UsageError("--redistill needs --student FOLDER (the full student's student/, adaptors/ and "
                         f"{HISTORY_FILE})")
    missing = [n for n in ("student/" + CARD_FILE, "adaptors", HISTORY_FILE) if not (args.student / n).exists()]
    if missing:
        raise UsageError(f"--student {args.student}: no {', '.join(missing)} (give an `eosfed distill --out` folder "
                         "or a run folder)")
    if args.cache is not None and not args.cache.is_dir():
        raise UsageError(f"--cache {args.cache} is not a folder")


def _config(card: StudentCard, epochs: int) -> DistillConfig:
    """The full student's distillation settings (recorded in its card), for ``epochs`` epochs."""
    known = {f.name for f in dataclasses.fields(DistillConfig)} - {"epochs", "device"}
    return DistillConfig(**{k: v for k, v in card.distill.get("last_config", {}).items() if k in known}, epochs=epochs)


def _games(args: argparse.Namespace, manifest: Manifest) -> list[Game]:
    """One game per ``--eval TASK@SENSOR``: fit on ``--train-split``, scored on ``--test-split``."""
    games = []
    for task, sensor in args.evals:
        manifest.task(task)
        fit, score = (manifest.select(sensor=sensor, split=s, task=task) for s in (args.train_split, args.test_split))
        for split, tiles in ((args.train_split, fit), (args.test_split, score)):
            if not tiles:
                raise UsageError(f"--eval {task}@{sensor}: {manifest.source} has no {split!r} tiles of that sensor "
                                 f"with {task!r} targets")
        games.append(Game(task, sensor, fit, score, args.size))
    return games


def _redistill(args: argparse.Namespace, settings: PruneSettings, manifest: Manifest, pruned: Registry,
               out: Path, games: list[Game]) -> None:
    """Write ``out/student_pruned/`` and ``out/redistill.json``."""
    proxy = Manifest.load(args.proxy) if args.proxy else manifest
    split = args.proxy_split or None
    if not proxy_sensors(proxy, split):
        raise UsageError(f"{proxy.source}: --proxy-split {args.proxy_split!r} has no tiles")
    folder = args.cache or (args.student / "teacher_cache" if (args.student / "teacher_cache").is_dir() else None)
    batches = ProxyBatches(proxy, None, split, args.size, args.batch_size, seed=args.seed)
    config = _config(read_card(args.student / "student" / CARD_FILE, StudentCard), settings.redistill_epochs)
    distilled = redistil(pruned, batches, TeacherCache(folder), config, full=args.student, seed=args.seed,
                         tolerance_nm=args.tolerance_nm, pair_scenes=args.pair_scenes)
    record = save_pruned(distilled, args.student, out / "student_pruned",
                         lambda students: student_scores(games, manifest, students, settings, seed=args.seed,
                                                         batch_size=args.batch_size))
    record = {"student": "student_pruned", "full_student": str(args.student), "cache": str(folder) if folder else None,
              "probe_task": f"{', '.join(f'{t}@{s}' for t, s in args.evals)}, {settings.method} probe", **record}
    atomic_write_text(out / "redistill.json", json.dumps(record, indent=1))
    log.info("pruned student: %s", {side: record[side] for side in ("full", "pruned")})


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args, PruneSettings)
    if not settings.keep_top_k and not settings.drop_nonpositive:
        raise UsageError("give --keep-top-k K, --drop-nonpositive, or both")
    if settings.baseline not in ("random_twin", "none"):
        raise UsageError(f"--baseline must be random_twin or none, got {settings.baseline!r}")
    _check_redistill(args, settings)
    check_output(args.out, args.overwrite)
    registry = Registry(args.registry)
    manifest = Manifest.load(args.manifest)
    per_game, cka, played = play_games(_games(args, manifest), manifest, registry, settings, seed=args.seed,
                                       tolerance_nm=args.tolerance_nm, batch_size=args.batch_size)
    if not per_game:
        raise UsageError(f"no specialist of {args.registry} reads the sensor of any --eval "
                         f"{[f'{t}@{s}' for t, s in args.evals]} within --tolerance-nm {args.tolerance_nm:g}")
    with staged_output(args.out, args.overwrite) as stage:
        pruned, _ = prune_by(registry, combine_contributions(per_game), stage, settings, cka)
        if settings.redistill and len(pruned) < len(registry):
            _redistill(args, settings, manifest, pruned, stage, played)
        elif settings.redistill:
            log.warning("no specialist was dropped: no pruned student to distil")
    log.info("pruned registry at %s: %s", args.out, pruned.names)
    return 0
