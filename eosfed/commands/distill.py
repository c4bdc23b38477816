"""``eosfed distill``: distil a registry's specialists into one student on a proxy manifest.

Writes ``<out>/student/`` (load with ``fusion.load_student``), ``<out>/adaptors/``,
``<out>/teacher_cache/`` (kept by a rerun with ``--overwrite``), ``<out>/distill_history.json`` and
``<out>/distill_loss.png``. Specialists without proxy feature statistics in the registry get them
measured on the proxy data first (what the ensemble standardises with).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eosfed.commands.args import add_output, add_sensor_files, add_settings, check_output, settings_from, staged_output
from fusion.data import ProxyBatches
from fusion.distill import DistillConfig
from fusion.registry import Registry
from fusion.teacher_cache import TeacherCache
from pipeline.distill import distil, save_distilled
from pipeline.settings import ExperimentConfig, ProxySettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, type=Path, help="registry folder (index.json)")
    parser.add_argument("--proxy", required=True, type=Path, help="proxy manifest.json (labels unused)")
    add_output(parser, "run folder to write into")
    parser.add_argument("--split", default="train", help="proxy split to use ('' for all)")
    add_sensor_files(parser)
    parser.add_argument("--proxy-sensors", help="comma-separated proxy sensors (default: all in the split)")
    parser.add_argument("--init", type=Path, help="previous distill run folder to warm-start from (integrate mode)")
    parser.add_argument("--size", type=int, help="centre-crop proxy tiles to this size")
    parser.add_argument("--num-workers", type=int, default=0)
    add_settings(parser, ExperimentConfig, "run", only=("seed", "tolerance_nm"))
    add_settings(parser, ProxySettings, "proxy", only=("pair_scenes", "batch_size"))
    add_settings(parser, DistillConfig, "distillation (fusion.distill.DistillConfig; --init-weights: its init)",
                 skip=("init",))
    parser.add_argument("--init-weights", default=DistillConfig().init,
                        help="checkpoint a new student's trunk starts from (specialists.init): 'base', a file, or 'random'")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    config = settings_from(args, DistillConfig, init=args.init_weights)
    registry = Registry(args.registry)
    batches = ProxyBatches(args.proxy, args.proxy_sensors.split(",") if args.proxy_sensors else None, args.split or None,
                           args.size, args.batch_size, seed=args.seed, num_workers=args.num_workers)
    with staged_output(args.out, args.overwrite, keep=("teacher_cache",)) as out:
        distilled = distil(registry, batches, TeacherCache(out / "teacher_cache"), config, seed=args.seed,
                           tolerance_nm=args.tolerance_nm, name=f"student-{registry.root.name}",
                           pair_scenes=args.pair_scenes, init=args.init)
        save_distilled(distilled, out, out / "distill_loss.png")
    log.info("student written to %s", args.out / "student")
    return 0
