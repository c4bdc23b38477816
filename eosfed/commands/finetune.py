"""``eosfed finetune``: fine-tune an encoder with a task head on a manifest task; write a sealed task model.

The encoder is a student, specialist or registry folder, or ``random:<variant>``; ``--unfreeze`` says how
much of it trains. A specialist (or a registry's members) reads each of its bands from the tiles' band of
that name or its stand-in within ``--tolerance-nm`` (named once in the log). Uses the ``train`` split
(normalisation statistics come from it), ``val`` for early stopping and ``test`` for the card's test
metrics when present. Writes ``card.json`` + ``weights.safetensors`` (+ the manifest's ``sensors.yaml``)
into ``--out``; ``eosfed predict`` reads it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eosfed.commands.args import (UsageError, add_output, add_sensor_files, add_settings, check_output, settings_from,
                                  staged_output)
from fusion.encoders import RANDOM_PREFIX
from fusion.finetune import UNFREEZE, finetune, save_task_model
from geodata.sensors import get_sensor
from geodata.manifest import Manifest
from specialists.heads import DECODERS
from pipeline.settings import ExperimentConfig
from specialists.train import TrainConfig, resolve_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True,
                        help=f"student/specialist/registry folder or {RANDOM_PREFIX}<variant>")
    parser.add_argument("--manifest", required=True, type=Path, help="labelled manifest.json")
    parser.add_argument("--task", required=True, help="task name in the manifest")
    parser.add_argument("--sensor", help="sensor of the tiles (default: the manifest's only sensor)")
    add_output(parser, "folder to write the task model into")
    parser.add_argument("--unfreeze", choices=UNFREEZE, default="none", help="encoder parts that train")
    parser.add_argument("--decoder", choices=DECODERS, default="upernet", help="segmentation decoder")
    parser.add_argument("--class-weights", default="none",
                        help="'balanced', 'none' or one weight per class (multilabel: positive weight per label)")
    parser.add_argument("--size", type=int, help="centre-crop tiles to this size")
    parser.add_argument("--name", help="model name (default: <manifest>-<task>)")
    parser.add_argument("--gsd", type=float, metavar="METRES",
                        help="a student's working GSD: the tiles (at their sensor's GSD) are resampled to it before "
                             "the trunk (default: the student card's working GSD; none for a GSD-blind student)")
    add_sensor_files(parser)
    add_settings(parser, ExperimentConfig, "band equivalence (a band a specialist or registry ensemble was trained "
                 "on and the tiles lack is read from the tiles' band within this many nm)", only=("tolerance_nm",))
    add_settings(parser, TrainConfig, "training (specialists.train.TrainConfig)",
                 skip=("class_weights", "freeze"))


def _class_weights(text: str, num_classes: int) -> tuple[bool, list[float] | None]:
    """(balanced, explicit weights) from ``--class-weights``."""
    if text in ("balanced", "none"):
        return text == "balanced", None
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--class-weights wants 'balanced', 'none' or numbers, got {text!r}") from None
    if len(weights) != num_classes or min(weights) < 0:
        raise UsageError(f"--class-weights needs {num_classes} non-negative weights, got {text!r}")
    return False, weights


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    manifest = Manifest.load(args.manifest)
    task = manifest.task(args.task)
    if args.sensor is None:
        sensors = sorted({t.sensor for t in manifest.tiles})
        if len(sensors) != 1:
            raise UsageError(f"{args.manifest} holds sensors {sensors}; choose one with --sensor")
        args.sensor = sensors[0]
    balanced, weights = _class_weights(args.class_weights, task.num_classes)
    cfg = settings_from(args, TrainConfig, class_weights=weights, device=resolve_device(args.device))
    model, _ = finetune(args.encoder, manifest, get_sensor(args.sensor), args.task, cfg,
                        tolerance_nm=args.tolerance_nm, unfreeze=args.unfreeze, decoder=args.decoder, size=args.size,
                        balance=balanced, name=args.name, gsd=args.gsd)
    with staged_output(args.out, args.overwrite) as stage:
        save_task_model(model.cpu(), stage)
    scores = {k: round(v, 4) for k, v in model.card.metrics.items() if isinstance(v, float)}
    log.info("wrote task model %r to %s: %s", model.card.name, args.out, scores)
    return 0
