"""``eosfed manifest <layout>``: build a manifest (tiles, sensors, splits, targets) from data on disk.

Each layout is a module ``eosfed.commands.manifest_<layout>`` with ``add_arguments`` and ``run``,
registered in ``LAYOUTS``.
"""

from __future__ import annotations

import argparse
import importlib

from eosfed.commands.args import HelpFormatter

LAYOUTS: dict[str, str] = {
    "folders": "one folder per class of images (GeoTIFF, JPEG, PNG), e.g. AID or EuroSAT",
    "eurosat": "EuroSAT-MS class folders (13-band Sentinel-2 L1C)",
    "bigearthnet": "BigEarthNet S2 patches and their S1 twins (multilabel CORINE)",
    "eolearn": "eo-learn's test patch as chips (land-cover segmentation)",
    "torchgeo": "a torchgeo dataset on disk: EuroSAT in its layout (its split files) or any RasterDataset's scenes",
    "scenes": "scene rasters + label rasters cut into tiles (windows), split by scene or spatial block",
    "merge": "join manifests into one (e.g. a release's train and test folders), each tile keeping its split",
}


def _module(layout: str):
    return importlib.import_module(f"eosfed.commands.manifest_{layout}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    for name, help_text in LAYOUTS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        _module(name).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(_module(args.layout).run(args) or 0)
