"""``eosfed predict``: run a fine-tuned segmentation model over scene rasters of any size.

Inputs are scene rasters, folders of them, or text files listing one raster a line (relative to the
list's folder); the model is loaded once and the scenes run in turn. Tiles overlap and their logits are
blended (Hann window); a scene is read and written in strips, so memory follows the tile batch, not
the scene. Per input ``<stem>``, writes ``<out>/<stem>_classes.tif`` (uint8, nodata 255) with the
input's CRS and transform as a Cloud-Optimised GeoTIFF, and with ``--probabilities``
``<out>/<stem>_probabilities.tif`` (float32). The input's bands are its sensor's (``--sensor``), named by
the file's band descriptions; a model band the input lacks is read from the input band standing in for it
within ``--tolerance-nm`` (named once per scene in the log), or the scene is refused naming the bands.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from eosfed.commands.args import UsageError, add_sensor_files, add_settings, check_output, staged_output
from fusion.finetune import load_task_model
from fusion.predict import TTA_VIEWS, predict_scene
from geodata.sensors import get_sensor
from geodata.tiling import find_rasters
from pipeline.settings import ExperimentConfig

log = logging.getLogger(__name__)

LIST_SUFFIX = ".txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="task model folder (eosfed finetune)")
    parser.add_argument("--input", required=True, nargs="+", type=Path, metavar="PATH",
                        help=f"scene rasters (GeoTIFF), folders of them, or {LIST_SUFFIX} files listing one a line")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for <stem>_classes.tif (and <stem>_probabilities.tif) per input")
    parser.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_sensor_files(parser)
    parser.add_argument("--sensor", help="sensor of the input: its bands (those the file's band descriptions name, "
                                         "else all in order), scale, offset, nodata (default: the model's)")
    parser.add_argument("--tile-size", type=int, help="tile size (default: the model's training tile size)")
    parser.add_argument("--overlap", type=int, help="pixels shared by neighbouring tiles (default: a quarter tile)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gsd", type=float, metavar="METRES",
                        help="a student model's working GSD: the scene (at its sensor's GSD) is read at this GSD "
                             "and the map written on the scene's grid (default: the GSD it was fine-tuned at)")
    parser.add_argument("--tta", choices=sorted(TTA_VIEWS), default="none",
                        help="test-time augmentation: average each tile's logits over its 4 flips (flip) or 8 "
                             "flips and transposes (d4); costs as many forward passes")
    parser.add_argument("--device", default="cpu")
    add_settings(parser, ExperimentConfig, "band equivalence (a model band the input lacks is read from the input "
                 "band within this many nm)", only=("tolerance_nm",))


def scene_inputs(specs: list[Path]) -> list[Path]:
    """The scene rasters of ``specs`` (files, folders, list files), in order; a stem given twice is refused."""
    scenes: dict[str, Path] = {}
    for spec in specs:
        if spec.is_dir():
            paths = find_rasters(spec)
        elif spec.suffix.lower() == LIST_SUFFIX:
            if not spec.is_file():
                raise UsageError(f"{spec}: list file not found")
            lines = [line.strip() for line in spec.read_text().splitlines()]
            paths = [spec.parent / line for line in lines if line]
        else:
            paths = [spec]
        for path in paths:
            if not path.is_file():
                raise UsageError(f"{path}: scene raster not found")
            if path.stem in scenes:
                raise UsageError(f"{path} and {scenes[path.stem]} would both write {path.stem}_classes.tif; "
                                 "predict them into separate --out folders")
            scenes[path.stem] = path
    return list(scenes.values())


def run(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() in (".tif", ".tiff"):
        raise UsageError(f"--out {args.out} is a folder: each input's map is written there as <stem>_classes.tif")
    scenes = scene_inputs(args.input)
    kinds = ("classes", "probabilities") if args.probabilities else ("classes",)
    outputs = {scene: [args.out / f"{scene.stem}_{kind}.tif" for kind in kinds] for scene in scenes}
    for paths in outputs.values():
        for path in paths:
            check_output(path, args.overwrite)
    model = load_task_model(args.model, args.device)
    tile = args.tile_size or model.card.extra.get("tile_size") or 256
    if tile < 32:
        raise UsageError(f"--tile-size must be at least 32, got {tile}")
    overlap = tile // 4 if args.overlap is None else args.overlap
    name = args.sensor or model.card.sensor
    sensor = model.catalog().sensors.get(name) or get_sensor(name)  # the model's own sensor, else --sensors'
    for scene in tqdm(scenes, desc="scenes", unit="scene", leave=False):
        with ExitStack() as stack:
            staged = [stack.enter_context(staged_output(p, args.overwrite, folder=False)) for p in outputs[scene]]
            predict_scene(model, sensor, scene, staged[0], staged[1] if len(staged) > 1 else None,
                          tolerance_nm=args.tolerance_nm, tile=tile, overlap=overlap, batch_size=args.batch_size,
                          device=args.device, gsd=args.gsd, tta=args.tta)
    log.info("%d class maps written to %s", len(scenes), args.out)
    return 0
