"""eo-learn's test patch (``.npy`` arrays) -> GeoTIFF chips plus a segmentation manifest.

``REFERENCE_SCENES.npy`` holds 5 Sentinel-2 L1C scenes ``(5, H, W, 13)`` of float reflectance in
Sentinel Hub band order (B8A after B08, see ``SOURCE_BANDS``), reordered here to the sensor's EuroSAT
order; ``TestEOPatch/mask_timeless/LULC.npy`` ``(H, W, 1)`` is the land cover of the
site. The scenes are written as ``chip`` x ``chip`` uint16 GeoTIFFs in the sensor's raw encoding
(DN = reflectance / scale), georeferenced from ``TestEOPatch/bbox.geojson``; the mask as uint8 chips
shared by the 5 scenes of a place.

Task ``lulc`` (segmentation): the classes are the LULC values present in the mask except 0 (no data,
written as the ignore index), in ascending value order, named by the ``LULC_ID -> LULC_NAME`` table of
``TestEOPatch/vector_timeless/LULC.gpkg`` (on this patch: 1 cultivated land, 2 forest, 3 grassland,
4 "schrubland" [sic], 8 artificial surface -> class indices 0..4). Chips in the last chip row of the
patch are the "test" split, the rest "train", so both splits never share a place.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import torch
from rasterio.crs import CRS
from rasterio.transform import from_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geodata.errors import RasterError
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.raster import write_geotiff
from geodata.sensors import get_sensor, select_bands

__all__ = ["SENSOR", "SOURCE_BANDS", "TASK", "NO_DATA_VALUE", "lulc_names", "build_eolearn_manifest"]

SENSOR = "sentinel2_l1c"
TASK = "lulc"
# Band order of REFERENCE_SCENES.npy. Not EuroSAT's: on the patch's forest pixels channel 8 is NIR-bright
# (median 0.30, B8A), 9 is water vapour (0.10, B09), 10 cirrus (0.001, B10) and 12 SWIR-2 (0.06, B12).
SOURCE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
NO_DATA_VALUE = 0  # LULC value meaning "no data" in eo-learn's land-cover scheme
IGNORE_INDEX = 255


def lulc_names(gpkg: Path) -> dict[int, str]:
    """``LULC_ID -> LULC_NAME`` from the patch's GeoPackage (a SQLite file) via its ``LULC`` table."""
    try:
        with sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT DISTINCT LULC_ID, LULC_NAME FROM LULC").fetchall()
    except sqlite3.Error as exc:
        raise RasterError(gpkg, f"cannot read the LULC table: {exc}") from exc
    return {int(value): str(name) for value, name in rows}


def _load(path: Path, ndim: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RasterError(path, f"cannot read: {exc}") from exc
    if array.ndim != ndim:
        raise RasterError(path, f"expected {ndim} dimensions, found shape {array.shape}")
    return array


def build_eolearn_manifest(
    root: str | Path, out_dir: str | Path, chip: int = 32, name: str = "eolearn-testpatch"
) -> Manifest:
    """Write chips of the patch under ``out_dir`` and their manifest ``out_dir/manifest.json``."""
    root, out_dir = Path(root), Path(out_dir)
    sensor = get_sensor(SENSOR)
    scenes = _load(root / "REFERENCE_SCENES.npy", 4)
    lulc = _load(root / "TestEOPatch" / "mask_timeless" / "LULC.npy", 3)[..., 0]
    if scenes.shape[-1] != sensor.num_bands:
        raise RasterError(root / "REFERENCE_SCENES.npy", f"expected {sensor.num_bands} bands for sensor "
                                                          f"{SENSOR}, found {scenes.shape[-1]}")
    height, width = lulc.shape
    if scenes.shape[1:3] != (height, width):
        raise RasterError(root / "REFERENCE_SCENES.npy", f"scenes are {scenes.shape[1]}x{scenes.shape[2]} but "
                                                          f"LULC.npy is {height}x{width}")
    bbox = json.loads((root / "TestEOPatch" / "bbox.geojson").read_text())
    xs, ys = zip(*bbox["coordinates"][0])
    crs = CRS.from_user_input(bbox["crs"]["properties"]["name"])
    transform = from_bounds(min(xs), min(ys), max(xs), max(ys), width, height)

    names = lulc_names(root / "TestEOPatch" / "vector_timeless" / "LULC.gpkg")
    values = [int(v) for v in np.unique(lulc) if v != NO_DATA_VALUE]
    classes = [names.get(v, f"LULC {v}") for v in values]
    index = np.full(int(lulc.max()) + 1, IGNORE_INDEX, dtype=np.uint8)
    index[values] = np.arange(len(values))
    labels = index[lulc]

    scenes = select_bands(torch.from_numpy(scenes), SOURCE_BANDS, sensor.bands, dim=-1).numpy()
    raw = (scenes - sensor.offset) / sensor.scale
    raw = np.where(np.isnan(raw), sensor.nodata or 0, np.clip(np.rint(raw), 0, np.iinfo(np.uint16).max))
    raw = raw.astype(np.uint16).transpose(0, 3, 1, 2)  # (T, C, H, W)

    rows, cols = height // chip, width // chip
    if rows == 0 or cols == 0:
        raise RasterError(root, f"patch {height}x{width} is smaller than one {chip}x{chip} chip")
    tiles = []
    for r in range(rows):
        for c in range(cols):
            window = Window(c * chip, r * chip, chip, chip)
            chip_transform = window_transform(window, transform)
            ys_, xs_ = slice(r * chip, (r + 1) * chip), slice(c * chip, (c + 1) * chip)
            mask_path = f"masks/r{r}c{c}.tif"
            write_geotiff(out_dir / mask_path, labels[ys_, xs_], chip_transform, crs, nodata=IGNORE_INDEX)
            for t in range(raw.shape[0]):
                path = f"chips/t{t}_r{r}c{c}.tif"
                write_geotiff(out_dir / path, raw[t, :, ys_, xs_], chip_transform, crs, nodata=sensor.nodata,
                              band_names=sensor.bands)
                tiles.append(TileEntry(id=f"eolearn-t{t}-r{r}c{c}", sensor=SENSOR, path=path,
                                       split="test" if r == rows - 1 else "train", targets={TASK: mask_path}))
    manifest = Manifest(tasks={TASK: TaskSpec("segmentation", classes, IGNORE_INDEX)}, tiles=tiles, name=name)
    manifest.save(out_dir / "manifest.json")
    return manifest
