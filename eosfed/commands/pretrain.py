"""``eosfed pretrain``: FCMAE self-supervised pretraining of a ConvNeXtV2 encoder on a manifest's tiles,
labels ignored (:mod:`specialists.fcmae`). Writes ``weights.safetensors`` (the encoder, as
``--init-weights FOLDER/weights.safetensors`` of ``eosfed train-specialist`` reads it) and ``pretrain.json`` (config, data, loss per
epoch, the weights' sha256)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from eosfed.commands.args import (add_output, add_sensor_files, add_settings, add_tile_size, check_split, settings_from,
                                 staged_output)
from geodata.dataset import TileDataset
from geodata.manifest import Manifest
from geodata.sensors import get_sensor
from geodata.stats import load_or_compute_stats
from specialists.artifact import WEIGHTS_FILE
from pipeline.settings import ExperimentConfig
from specialists.encoder import build_encoder
from specialists.fcmae import Fcmae, FcmaeConfig, fcmae_loader, pretrain
from specialists.init import load_encoder_weights
from specialists.trunk import DEFAULT_VARIANT

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="manifest.json (labels are not read)")
    parser.add_argument("--sensor", required=True, help="sensor name of the tiles to pretrain on")
    parser.add_argument("--split", default="train", help="split whose tiles are used")
    add_output(parser, "folder to write the pretrained encoder into")
    add_sensor_files(parser)
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help="timm ConvNeXtV2 variant")
    add_tile_size(parser, " (the size read must be a multiple of --patch)")
    parser.add_argument("--init-weights", type=Path, help="start from this local checkpoint")
    add_settings(parser, ExperimentConfig, "band equivalence (the checkpoint's stem adapted to the tiles' bands "
                 "within this many nm)", only=("tolerance_nm",))
    add_settings(parser, FcmaeConfig, "pretraining (specialists.fcmae.FcmaeConfig)")


def run(args: argparse.Namespace) -> int:
    manifest = Manifest.load(args.manifest)
    sensor = get_sensor(args.sensor)
    split = check_split(manifest, args.split, "--split", sensor=sensor.name)
    cfg = settings_from(args, FcmaeConfig)
    stats = load_or_compute_stats(manifest, sensor, split)
    data = TileDataset(manifest, sensor, split=split, size=args.size, stats=stats, resize=args.resize)
    with staged_output(args.out, args.overwrite) as stage:
        encoder = build_encoder(args.variant, in_chans=len(data.bands))
        if args.init_weights is not None:
            load_encoder_weights(encoder, args.init_weights, data.bands, tolerance_nm=args.tolerance_nm)
        torch.manual_seed(cfg.seed)
        model = Fcmae(encoder, len(data.bands), cfg.patch)
        history = pretrain(model, fcmae_loader(data, cfg), torch.tensor(stats.mean), torch.tensor(stats.std), cfg)
        weights = stage / WEIGHTS_FILE
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(weights))
        record = {"method": "fcmae", "variant": args.variant, "sensor": sensor.name, "bands": list(data.bands),
                  "band_stats": {"mean": list(stats.mean), "std": list(stats.std)},
                  "manifest": str(args.manifest), "split": split, "tiles": len(data), "size": args.size,
                  "resize": args.resize,
                  "config": asdict(cfg), "loss": history,
                  "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
        (stage / "pretrain.json").write_text(json.dumps(record, indent=1))
    log.info("pretrained %s on %d %s tiles: loss %.4f -> %.4f; %s", args.variant, len(data), sensor.name,
             history[0], history[-1], args.out / WEIGHTS_FILE)
    return 0
