"""``eosfed base``: make the base checkpoint (:mod:`specialists.base`) that specialists and students start
from by default; ``--out`` is the safetensors file (the shipped one: ``specialists/weights/``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eosfed.commands.args import add_output, add_settings, settings_from, staged_output
from pipeline.settings import ExperimentConfig
from specialists.base import BaseConfig, save_base, train_base

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output(parser, "the base checkpoint file to write (.safetensors)")
    parser.add_argument("--cache-dir", type=Path, default=Path("outputs/cache"),
                        help="where the base's synthetic world is generated (reused when present)")
    add_settings(parser, BaseConfig, "the base (specialists.base.BaseConfig)")
    add_settings(parser, ExperimentConfig, "band equivalence (sensors' bands share a stem channel within this many "
                 "nm)", only=("tolerance_nm",))


def run(args: argparse.Namespace) -> int:
    cfg = settings_from(args, BaseConfig)
    with staged_output(args.out, args.overwrite, folder=False) as target:
        trunk, bands, recipe = train_base(cfg, args.cache_dir, args.tolerance_nm)
        save_base(trunk, bands, recipe, target)
    log.info("base %s over %d bands, val accuracy %s -> %s", cfg.variant, len(bands),
             {k: round(v, 3) for k, v in recipe["val_accuracy"].items()}, args.out)
    return 0
