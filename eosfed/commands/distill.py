"""``eosfed distill``: distil a registry's specialists into one student on a proxy manifest.

Writes ``<out>/student/`` (load with ``fusion.load_student``), ``<out>/adaptors/``,
``<out>/teacher_cache/`` (reused by a rerun), ``<out>/distill_history.json`` and
``<out>/distill_loss.png``. Specialists without proxy feature statistics in the registry get them
measured on the proxy data first (what the ensemble standardises with).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from eosfed.commands.args import add_output, add_sensor_files, check_output, staged_output
from fusion.adaptors import load_adaptors, save_adaptors
from fusion.data import ProxyBatches
from fusion.distill import DistillConfig, distill_student, plot_history
from fusion.ensemble import Ensemble
from fusion.registry import Registry
from fusion.student import Student, band_stats_table, load_student, save_student
from fusion.teacher_cache import TeacherCache
from fusion.views import DEFAULT_TOLERANCE_NM
from geodata.files import atomic_write_text
from specialists.card import DEFAULT_VARIANT

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DistillConfig()
    parser.add_argument("--registry", required=True, type=Path, help="registry folder (index.json)")
    parser.add_argument("--proxy", required=True, type=Path, help="proxy manifest.json (labels unused)")
    add_output(parser, "run folder to write into")
    parser.add_argument("--split", default="train", help="proxy split to use ('' for all)")
    add_sensor_files(parser)
    parser.add_argument("--proxy-sensors", help="comma-separated proxy sensors (default: all in the split)")
    parser.add_argument("--init", type=Path, help="previous distill run folder to warm-start from (integrate mode)")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help="student trunk for a fresh student")
    parser.add_argument("--size", type=int, help="centre-crop proxy tiles to this size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--drop-prob", type=float, default=defaults.drop_prob, help="teacher dropping probability")
    parser.add_argument("--tolerance-nm", type=float, default=DEFAULT_TOLERANCE_NM, help="band equivalence tolerance")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--num-workers", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    with staged_output(args.out, args.overwrite, keep=("teacher_cache",)) as out:
        registry = Registry(args.registry)
        batches = ProxyBatches(args.proxy, args.proxy_sensors.split(",") if args.proxy_sensors else None, args.split or None,
                               args.size, args.batch_size, seed=args.seed, num_workers=args.num_workers)
        uncalibrated = [n for n in registry.names if registry.feature_stats(n) is None]
        if uncalibrated:
            ensemble = Ensemble.from_registry(registry, uncalibrated, tolerance_nm=args.tolerance_nm)
            for name, stats in ensemble.calibrate(batches).items():
                registry.save_feature_stats(name, stats)
        proxy_stats = band_stats_table(batches.stats.values())
        if args.init is not None:
            student = load_student(args.init / "student")
            student.set_band_stats({**proxy_stats, **student.card.band_stats})  # keep what it was trained with
            adaptors = load_adaptors(args.init / "adaptors")
        else:
            student = Student.create(args.variant, proxy_stats, name=f"student-{registry.root.name}", seed=args.seed)
            adaptors = None
        config = DistillConfig(epochs=args.epochs, lr=args.lr, drop_prob=args.drop_prob, seed=args.seed,
                               device=args.device)
        adaptors, history = distill_student(student, registry.load_all(map_location=args.device), batches,
                                            TeacherCache(out / "teacher_cache"), config, adaptors,
                                            tolerance_nm=args.tolerance_nm)
        save_student(student.cpu(), out / "student")
        save_adaptors(adaptors.cpu(), out / "adaptors")
        atomic_write_text(out / "distill_history.json", json.dumps(history.to_dict(), indent=1))
        plot_history(history, out / "distill_loss.png")
        logger.info("student written to %s (final loss %.4f)", args.out / "student", history.total[-1])
    return 0
