"""``eosfed predict``: run a fine-tuned segmentation model over a scene raster of any size.

Tiles overlap and their logits are blended (Hann window); the scene is read and written in strips, so
memory follows the tile batch, not the scene. Writes the class map (uint8, nodata 255) with the
input's CRS and transform as a Cloud-Optimised GeoTIFF, and with ``--probabilities`` the class
probabilities (float32). The model's bands are picked by the input's band descriptions.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from pathlib import Path

from eosfed.commands.args import UsageError, add_sensor_files, check_output, staged_output
from fusion.finetune import load_task_model
from fusion.predict import predict_scene
from geodata.sensors import get_sensor

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="task model folder (eosfed finetune)")
    parser.add_argument("--input", required=True, type=Path, help="scene raster (GeoTIFF)")
    parser.add_argument("--out", required=True, type=Path, help="class map GeoTIFF to write")
    parser.add_argument("--probabilities", type=Path, help="also write class probabilities to this GeoTIFF")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_sensor_files(parser)
    parser.add_argument("--sensor", help="sensor of the input: scale, offset, nodata, band order when the file "
                                         "names no bands (default: the model's)")
    parser.add_argument("--tile-size", type=int, help="tile size (default: the model's training tile size)")
    parser.add_argument("--overlap", type=int, help="pixels shared by neighbouring tiles (default: a quarter tile)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    outputs = [p for p in (args.out, args.probabilities) if p is not None]
    if args.probabilities is not None and args.probabilities.resolve() == args.out.resolve():
        raise UsageError("--probabilities must differ from --out")
    for path in outputs:
        check_output(path, args.overwrite)
    model = load_task_model(args.model, args.device)
    tile = args.tile_size or model.card.extra.get("tile_size") or 256
    if tile < 32:
        raise UsageError(f"--tile-size must be at least 32, got {tile}")
    overlap = tile // 4 if args.overlap is None else args.overlap
    sensor = get_sensor(args.sensor or model.card.sensor)
    with ExitStack() as stack:
        staged = [stack.enter_context(staged_output(p, args.overwrite, folder=False)) for p in outputs]
        predict_scene(model, sensor, args.input, staged[0], staged[1] if len(staged) > 1 else None, tile, overlap,
                      args.batch_size, args.device)
    log.info("class map written to %s", args.out)
    return 0
