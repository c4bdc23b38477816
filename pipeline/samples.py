"""The real labelled samples of ``../shared/data`` as manifests with fixed splits, and their unlabelled union.

:func:`build_samples` writes one manifest per set under ``out/<set>/`` (tiles reference the original
files in place; nothing is copied except eo-learn's chips and the scenes' label windows):

- ``eurosat``: EuroSAT-MS (Sentinel-2 L1C, 10 classes): per class 6 train, 2 val, 4 test tiles;
- ``aid``: AID aerial RGB scenes (30 classes), every image of each class (or the first ``aid_per_class``
  of a seeded shuffle) with a quarter for test and an eighth for val;
- ``wildfire``: wildfire-s2 burned-area segmentation, 64 px tiles; the 14 events sorting first train
  (3 of them val), the other 6 test (no event on both sides);
- ``eolearn``: eo-learn's test patch, 32 px chips of 5 dates; the last row of chips is test (a
  spatial block: no chip on both sides);
- ``bigearthnet``: the 6 BigEarthNet S2 patches and their S1 twins (multi-label; 4 train, 2 test:
  too few to score, used as unlabelled proxy imagery).

Each tile of EuroSAT and AID carries a region ``part0 .. part<parts-1>``: class-balanced parts, so
``parts`` institutions can share one sensor and task (each its own part of every split).
:func:`proxy_union` merges the ``train`` and ``val`` tiles of every set, labels stripped (but for one
set's, if asked), into one proxy manifest (the distillation data never include a test tile).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from geodata.manifest import Manifest, TaskSpec
from geodata.readers.bigearthnet import build_bigearthnet_manifest
from geodata.readers.eolearn import build_eolearn_manifest
from geodata.readers.eurosat import build_eurosat_manifest
from geodata.readers.folders import build_folder_manifest
from geodata.sensors import Catalog, current, load_sensor_files
from geodata.tiling import find_rasters, match_scenes, scenes_manifest, split_scenes
from geodata.errors import InputError

__all__ = ["PROXY_SETS", "SAMPLE_SETS", "WILDFIRE_SENSOR_FILE", "build_samples", "prepare_samples", "proxy_union"]

log = logging.getLogger(__name__)

SAMPLE_SETS = ("eurosat", "aid", "wildfire", "eolearn", "bigearthnet")
PROXY_SETS = ("eurosat", "aid", "wildfire", "bigearthnet")  # eo-learn's 32 px chips are smaller than the others
WILDFIRE_SENSOR_FILE = Path(__file__).resolve().parents[1] / "configs" / "samples" / "wildfire_sensor.yaml"
WILDFIRE_SENSOR = "sentinel2_tci_nir_swir"
WILDFIRE_TRAIN_EVENTS, WILDFIRE_VAL_EVENTS = 14, 3
BIGEARTHNET_TEST = ("S2B_MSIL2A_20170924T93020_69_24", "S2B_MSIL2A_20180204T94161_57_38")  # the two sorting last


def _parts(manifest: Manifest, parts: int, task: str) -> Manifest:
    """Give each tile region ``part<k>``, dealing each class's tiles of each split round-robin."""
    seen: dict[tuple[str, int], int] = {}
    tiles = []
    for tile in manifest.tiles:
        key = (tile.split, int(tile.targets[task]))
        k = seen.get(key, 0)
        seen[key] = k + 1
        tiles.append(replace(tile, region=f"part{k % parts}"))
    return replace(manifest, tiles=tiles)


def build_samples(root: str | Path, out: str | Path, parts: int = 2, aid_per_class: int | None = None,
                  sets: Sequence[str] = SAMPLE_SETS) -> dict[str, Path]:
    """Write the manifests of ``sets`` (module docstring) under ``out``; return ``set -> manifest.json``."""
    root, out = Path(root), Path(out)
    unknown = sorted(set(sets) - set(SAMPLE_SETS))
    if unknown:
        raise InputError(f"unknown sample sets {unknown}; expected some of {list(SAMPLE_SETS)}")
    wildfire = load_sensor_files([WILDFIRE_SENSOR_FILE])  # its manifest saves the sensor beside it
    return {name: _build_set(name, root, out / name, parts, aid_per_class, wildfire) for name in sets}


def _build_set(name: str, root: Path, folder: Path, parts: int, aid_per_class: int | None,
               wildfire: Catalog) -> Path:
    """Write the manifest of the sample set ``name`` into ``folder`` (the wildfire set's sensor from
    ``wildfire``); return its path."""
    if name == "eurosat":
        manifest = _parts(build_eurosat_manifest(root / "eurosat-ms", folder, 6, 2, name="eurosat"), parts, "scene")
    elif name == "aid":
        manifest = _parts(build_folder_manifest(root / "aid", folder, "rgb", val=0.125, test=0.25,
                                                per_class=aid_per_class, name="aid"), parts, "scene")
    elif name == "wildfire":
        fire = root / "wildfire-s2"
        scenes = match_scenes({WILDFIRE_SENSOR: find_rasters(fire / "post_fire")}, find_rasters(fire / "masks"))
        splits = split_scenes([s.name for s in scenes], val=WILDFIRE_VAL_EVENTS,
                              train_first=WILDFIRE_TRAIN_EVENTS)
        manifest = scenes_manifest(scenes, [WILDFIRE_SENSOR], "burned", TaskSpec("segmentation",
                                   ["not_burned", "burned"]), folder, 64, 64, splits, min_valid=0.25,
                                   name="wildfire", catalog=wildfire)
    elif name == "eolearn":
        manifest = build_eolearn_manifest(root / "eolearn-testpatch", folder, 32, name="eolearn")
    else:
        ben = root / "bigearthnet-tiny"
        manifest = build_bigearthnet_manifest(ben / "BigEarthNet-S2-Example", folder, ben / "BigEarthNet-S1-Example",
                                              splits={p: "test" for p in BIGEARTHNET_TEST}, name="bigearthnet")
    path = manifest.save(folder / "manifest.json")
    log.info("sample set %s: %d tiles -> %s", name, len(manifest.tiles), path)
    return path


def proxy_union(manifests: Mapping[str, Manifest], out: str | Path, splits: Sequence[str] = ("train", "val"),
                labelled: str | None = None, name: str = "samples-proxy") -> Manifest:
    """The ``splits`` tiles of every manifest (keeping their split), ids and scenes prefixed with the set's
    name, paths absolute, saved as ``out/manifest.json`` with the user sensors' files beside it. Targets
    are stripped except those of the ``labelled`` set (its tasks stay: the labelled proxy the prune phase
    scores contributions on)."""
    tiles, tasks = [], dict(manifests[labelled].tasks) if labelled else {}
    for set_name, manifest in manifests.items():
        for tile in manifest.tiles:
            if tile.split not in splits:
                continue
            tiles.append(replace(
                tile, id=f"{set_name}-{tile.id}", targets=tile.targets if set_name == labelled else {},
                scene=f"{set_name}-{tile.scene}" if tile.scene else None,
                path=str(manifest.resolve(tile.path).resolve()) if tile.path else None,
                band_paths={b: str(manifest.resolve(p).resolve()) for b, p in tile.band_paths.items()}
                if tile.band_paths else None))
    catalog = current()
    for manifest in manifests.values():
        catalog = catalog.merge(manifest.catalog or current(), manifest.source)
    union = Manifest(tasks=tasks, tiles=tiles, name=name, allow_outside_paths=True, catalog=catalog)
    union.save(Path(out) / "manifest.json")
    return union


def prepare_samples(root: str | Path, out: str | Path, labelled: str | None = "eurosat",
                    aid_per_class: int | None = None) -> Path:
    """Build every set's manifest and the proxy union (``out/proxy``) once: into a staging folder
    renamed to ``out`` when complete, so an interrupted build leaves nothing half-written. Returns ``out``."""
    out = Path(out)
    if (out / "proxy" / "manifest.json").is_file():
        return out
    if not Path(root).is_dir():
        raise FileNotFoundError(f"samples.root: folder of the real samples not found: {root}")
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    paths = build_samples(root, stage, aid_per_class=aid_per_class)
    proxy_union({n: Manifest.load(paths[n]) for n in PROXY_SETS}, stage / "proxy", labelled=labelled)
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    log.info("real samples of %s: manifests in %s", root, out)
    return out
