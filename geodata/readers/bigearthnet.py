"""BigEarthNet S2 patches (one GeoTIFF per band at 10/20/60 m) and their S1 twins -> manifest.

S2 patch ``<root>/<patch>/<patch>_<band>.tif`` plus ``<patch>_labels_metadata.json`` ("labels": CORINE
names); S1 patch ``<patch>/<patch>_{VV,VH}.tif`` whose JSON names its twin in
``corresponding_s2_patch``. Twins share a ``scene`` (the S2 patch name) and a split, and must lie on
the same grid as the S2 10 m bands. The multilabel task ``corine`` lists, unless given, the sorted
union of the label names found in the patches read (so it depends on the patches indexed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geodata.errors import RasterError
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.raster import check_aligned
from geodata.sensors import get_sensor

__all__ = ["S2_SENSOR", "S1_SENSOR", "TASK", "read_patch_metadata", "build_bigearthnet_manifest"]

S2_SENSOR = "sentinel2_l2a"
S1_SENSOR = "sentinel1_grd"
TASK = "corine"


def read_patch_metadata(patch_dir: Path) -> dict[str, Any]:
    """The patch's ``*_labels_metadata.json``, checked to carry a list of labels."""
    path = patch_dir / f"{patch_dir.name}_labels_metadata.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise RasterError(path, "labels metadata file not found") from None
    except json.JSONDecodeError as exc:
        raise RasterError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(meta.get("labels"), list):
        raise RasterError(path, "has no 'labels' list")
    return meta


def _band_paths(patch_dir: Path, sensor: str) -> dict[str, str]:
    paths = {}
    for band in get_sensor(sensor).bands:
        path = patch_dir / f"{patch_dir.name}_{band}.tif"
        if not path.is_file():
            raise RasterError(path, f"missing band file for {band} of sensor {sensor}")
        paths[band] = str(path.resolve())
    return paths


def _patches(root: Path) -> list[Path]:
    if not root.is_dir():
        raise RasterError(root, "BigEarthNet folder not found")
    return sorted(p for p in root.iterdir() if p.is_dir())


def build_bigearthnet_manifest(
    s2_root: str | Path, out_dir: str | Path, s1_root: str | Path | None = None,
    splits: Mapping[str, str] | None = None, classes: Sequence[str] | None = None,
    name: str = "bigearthnet", listed_only: bool = False,
) -> Manifest:
    """Index S2 patches (and their S1 twins) into ``out_dir/manifest.json`` (absolute paths).

    ``splits`` maps S2 patch names to a split (BigEarthNet ships its splits as patch-name lists); a
    patch not in it is "train", or left out when ``listed_only``; an S1 patch follows its twin.
    """
    splits = splits or {}
    s2 = get_sensor(S2_SENSOR)
    s2_finest = min(s2.bands, key=s2.band_gsd)  # the 10 m grid
    entries: list[tuple[TileEntry, list[str], Path]] = []
    s2_bands: dict[str, dict[str, str]] = {}
    for patch in _patches(Path(s2_root)):
        if listed_only and patch.name not in splits:
            continue
        meta = read_patch_metadata(patch)
        s2_bands[patch.name] = _band_paths(patch, S2_SENSOR)
        tile = TileEntry(id=patch.name, sensor=S2_SENSOR, split=splits.get(patch.name, "train"),
                         band_paths=s2_bands[patch.name], scene=patch.name)
        entries.append((tile, meta["labels"], patch))
    for patch in _patches(Path(s1_root)) if s1_root is not None else []:
        meta = read_patch_metadata(patch)
        twin = meta.get("corresponding_s2_patch")
        if listed_only and twin not in splits:
            continue
        if twin not in s2_bands:
            raise RasterError(patch / f"{patch.name}_labels_metadata.json",
                              f"corresponding_s2_patch {twin!r} is not among the S2 patches in {s2_root}")
        bands = _band_paths(patch, S1_SENSOR)
        for path in bands.values():
            check_aligned(path, s2_bands[twin][s2_finest])
        tile = TileEntry(id=patch.name, sensor=S1_SENSOR, split=splits.get(twin, "train"), band_paths=bands,
                         scene=twin)
        entries.append((tile, meta["labels"], patch))
    class_list = list(classes) if classes is not None else sorted({l for _, labels, _ in entries for l in labels})
    for tile, labels, patch in entries:
        unknown = [l for l in labels if l not in class_list]
        if unknown:
            raise RasterError(patch / f"{patch.name}_labels_metadata.json",
                              f"labels {unknown} are not in the class list of task {TASK!r}")
        tile.targets = {TASK: sorted(class_list.index(l) for l in labels)}
    tasks = {TASK: TaskSpec("multilabel", class_list)}
    manifest = Manifest(tasks=tasks, tiles=[tile for tile, _, _ in entries], name=name, allow_outside_paths=True)
    manifest.save(Path(out_dir) / "manifest.json")
    return manifest
