"""``eosfed manifest torchgeo``: a torchgeo dataset on disk -> manifest, bands mapped to a registered sensor.

``eurosat`` and ``bigearthnet``: those datasets in torchgeo's layouts, split by torchgeo's split files.
``raster``: any torchgeo ``RasterDataset`` subclass (``--dataset module.Class``) found under ``--root`` by its
own glob and regex, paired with label rasters by footprint, cut into tiles as ``eosfed manifest scenes`` cuts them.
torchgeo is imported only when the command runs (:mod:`geodata.readers.torchgeo`).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from eosfed.commands.args import HelpFormatter, add_output, add_sensor_files, check_output, staged_output
from eosfed.commands.manifest_scenes import add_tiling_arguments, write_scenes
from geodata.readers.torchgeo import (EUROSAT_VARIANTS, build_torchgeo_bigearthnet_manifest,
                                      build_torchgeo_eurosat_manifest, raster_scenes)
from geodata.tiling import Scene

log = logging.getLogger(__name__)


def _add_sensor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sensor", help="registered sensor the dataset's bands map to by name (default: the first "
                                         "that holds exactly those bands)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_kind", required=True, metavar="KIND")
    eurosat = sub.add_parser("eurosat", formatter_class=HelpFormatter,
                             help="EuroSAT (13-band) in torchgeo's layout with its split files")
    eurosat.add_argument("--root", required=True, type=Path, help="torchgeo's EuroSAT root (holds the split files "
                                                                   "and ds/images/...)")
    eurosat.add_argument("--variant", choices=EUROSAT_VARIANTS, default="EuroSAT", help="whose split files")
    add_output(eurosat, "folder to write manifest.json into")
    add_sensor_files(eurosat)
    _add_sensor(eurosat)
    eurosat.add_argument("--name", default="eurosat-ms", help="manifest name")

    bigearthnet = sub.add_parser("bigearthnet", formatter_class=HelpFormatter,
                                 help="BigEarthNet v1 (S2, and S1 where present) in torchgeo's layout with its split "
                                      "files; 43 classes")
    bigearthnet.add_argument("--root", required=True, type=Path, help="torchgeo's BigEarthNet root (holds the split "
                                                                       "CSVs and BigEarthNet-v1.0/)")
    add_output(bigearthnet, "folder to write manifest.json into")
    add_sensor_files(bigearthnet)
    bigearthnet.add_argument("--name", default="bigearthnet", help="manifest name")

    raster = sub.add_parser("raster", formatter_class=HelpFormatter,
                            help="scenes of a torchgeo RasterDataset subclass plus label rasters, cut into tiles")
    raster.add_argument("--dataset", required=True, help="import path of the RasterDataset subclass, e.g. "
                                                          "torchgeo.datasets.Sentinel2 or mypkg.MyDataset")
    raster.add_argument("--root", required=True, type=Path, help="folder the dataset searches")
    raster.add_argument("--labels", required=True, type=Path, help="label rasters (folder or file); each scene "
                                                                    "takes the one overlapping it most")
    raster.add_argument("--labels-dataset", default="torchgeo.datasets.RasterDataset",
                        help="RasterDataset subclass that finds the label rasters")
    _add_sensor(raster)
    add_tiling_arguments(raster)


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    if args.dataset_kind == "raster":
        def find() -> tuple[list[Scene], list[str]]:
            scenes, sensor = raster_scenes(args.dataset, args.root, args.labels, args.labels_dataset, args.sensor)
            return scenes, [sensor.name]

        write_scenes(args, find)
        return 0
    with staged_output(args.out, args.overwrite) as stage:
        if args.dataset_kind == "eurosat":
            manifest = build_torchgeo_eurosat_manifest(args.root, stage, args.variant, args.sensor, args.name)
        else:
            manifest = build_torchgeo_bigearthnet_manifest(args.root, stage, args.name)
    log.info("manifest %s (torchgeo %s): tiles per sensor and split %s -> %s", manifest.name, args.dataset_kind,
             dict(Counter((t.sensor, t.split) for t in manifest.tiles)), args.out / "manifest.json")
    return 0
