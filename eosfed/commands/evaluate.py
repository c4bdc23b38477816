"""``eosfed evaluate``: probe frozen encoders on a labelled manifest task; write JSON and a markdown table.

Encoders: a student folder, a specialist folder, a registry folder (the ensemble) or
``random:<variant>`` (a random-initialised student, normalised with the task's train statistics).
Both baselines (:mod:`fusion.baselines`: a random-init twin of the first student given, band
statistics) are probed beside them unless ``--no-baselines``; a requested ``random:`` encoder that is
the random-init twin (same weights and band statistics) is probed once, under its requested name.
``--normalise task`` has students normalise with the task's train statistics instead of their card's
(the proxy's).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch import nn

from eosfed.commands.args import (add_output, add_sensor_files, add_settings, add_tile_size, check_output, check_split,
                                  optional_split)
from fusion.baselines import baseline_encoders
from fusion.data import labelled_loader
from fusion.encoders import RANDOM_PREFIX, open_encoder
from fusion.probes import DEFAULT_FRACTIONS, DEFAULT_SEEDS, probe_encoder, results_markdown
from fusion.student import Student, band_stats_table
from geodata.files import atomic_write_text
from geodata.manifest import Manifest
from geodata.stats import load_or_compute_stats
from pipeline.settings import ExperimentConfig

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _same_network(a: nn.Module, b: nn.Module) -> bool:
    """Both students, with the same parameters, buffers and band statistics (one network under two names)."""
    if not (isinstance(a, Student) and isinstance(b, Student)) or a.card.band_stats != b.card.band_stats:
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True, action="append",
                        help=f"student/specialist/registry folder or {RANDOM_PREFIX}<variant>; repeat to compare")
    parser.add_argument("--manifest", required=True, type=Path, help="labelled manifest.json")
    parser.add_argument("--task", required=True, help="task name in the manifest")
    parser.add_argument("--sensor", required=True, help="sensor whose tiles are probed")
    add_output(parser, "results JSON (a .md table is written beside)")
    add_sensor_files(parser)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", help="split to tune weight decay on ('' for none; default: val when present)")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--fractions", type=_floats, default=list(DEFAULT_FRACTIONS), help="e.g. 0.01,0.1,1")
    parser.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=list(DEFAULT_SEEDS))
    parser.add_argument("--methods", help="comma-separated: linear, knn, segmentation (default by task type)")
    add_tile_size(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    add_settings(parser, ExperimentConfig, "band equivalence (a specialist's band the tiles lack is read from the "
                 "tiles' band within this many nm)", only=("tolerance_nm",))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                        help="also probe a random-init student of the same size and band statistics")
    parser.add_argument("--normalise", choices=("card", "task"), default="card",
                        help="students normalise with their card's statistics or the task's train statistics")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    manifest = Manifest.load(args.manifest)
    task = manifest.task(args.task)
    filters = dict(sensor=args.sensor, task=args.task)
    train_split = check_split(manifest, args.train_split, "--train-split", **filters)
    test_split = check_split(manifest, args.test_split, "--test-split", **filters)
    val_split = optional_split(manifest, args.val_split, "val", "--val-split", **filters)
    stats = load_or_compute_stats(manifest, args.sensor, train_split)

    def loader(split: str):
        return labelled_loader(manifest, args.sensor, args.task, split, args.size, args.batch_size, stats,
                               resize=args.resize)

    val = loader(val_split) if val_split is not None else None
    train, test = loader(train_split), loader(test_split)
    encoders = {}
    for spec in args.encoder:
        encoder = open_encoder(spec, args.tolerance_nm, map_location=args.device)
        if spec.startswith(RANDOM_PREFIX):
            encoder.set_band_stats(band_stats_table([stats]))
        elif isinstance(encoder, Student) and args.normalise == "task":
            encoder.set_band_stats({**encoder.card.band_stats, **band_stats_table([stats])})
        encoders[spec if spec.startswith(RANDOM_PREFIX) else Path(spec).name] = encoder
    if args.baselines:
        like = next((e for s, e in zip(args.encoder, encoders.values())
                     if isinstance(e, Student) and not s.startswith(RANDOM_PREFIX)), None)
        for name, baseline in baseline_encoders(stats, like).items():
            same = next((n for n, e in encoders.items() if n.startswith(RANDOM_PREFIX) and _same_network(e, baseline)),
                        None)
            if same is not None:
                log.info("baseline %s is the requested %s (same weights and band statistics): probed once, as %s",
                         name, same, same)
                continue
            encoders[name] = baseline.to(args.device)
    results = []
    for name, encoder in encoders.items():
        results += probe_encoder(name, encoder, args.task, task, train, test, val, args.fractions, args.seeds,
                                 args.methods.split(",") if args.methods else None, args.device)
    atomic_write_text(args.out, json.dumps([r.to_dict() for r in results], indent=1))
    atomic_write_text(args.out.with_suffix(".md"), results_markdown(results))
    log.info("probe results written to %s\n%s", args.out, results_markdown(results))
    return 0
