"""A task model over a whole scene raster: overlapping tiles, blended logits, a georeferenced map out.

The scene is read one strip of tile rows at a time (rasterio windows, boundless at the edges), its
tiles run in batches, and each tile's logits are weighted by a Hann window (``sin^2``, never zero)
and summed; once a strip's rows can get no more tiles they are divided by the summed weights and
written. Memory is bounded by one strip (``tile`` rows x scene width) and one batch, never the scene.
The raster's bands are the input sensor's, by their descriptions (else in the sensor's order). Each
of the model's bands is read from the band of its name or, failing that, from its stand-in within
``tolerance_nm`` (:func:`fusion.views.plan_view`, the ensemble's rule: ``TCI_R`` from ``B04``), named
once per scene in the log. The bands read take their own scale and offset (:func:`geodata.raster.calibrate`,
as in training), so a stand-in of another product (reflectance for an 8-bit TCI) gives the same physical
values. Invalid pixels (NaN, nodata) are filled with the model's band means and come out as nodata.
Output: class indexes (uint8, nodata 255) with the input's CRS and transform, optionally class
probabilities (float32, nodata NaN), as Cloud-Optimised GeoTIFFs (GDAL's COG driver; else tiled
GeoTIFFs with overviews).

Test-time augmentation (``tta``): ``flip`` averages each tile's logits over its 4 flips, ``d4`` over the 8
symmetries of the square (flips and transposes), each mapped back before blending; burned areas, fields
and floods have no preferred orientation, so the average cancels orientation-specific errors.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm import tqdm

from fusion.finetune import TaskModel
from fusion.views import ViewPlan, plan_view
from geodata.errors import InputError, RasterError
from geodata.raster import calibrate, open_raster
from geodata.sensors import Sensor
from geodata.tiling import file_bands, tile_windows

__all__ = ["NODATA_CLASS", "TTA_VIEWS", "blend_weights", "dihedral_logits", "predict_scene"]

log = logging.getLogger(__name__)

NODATA_CLASS = 255
_GDAL_CACHE_MB = 128
TTA_VIEWS = {"none": 1, "flip": 4, "d4": 8}  # test-time augmentation -> symmetries of the tile averaged


def dihedral_logits(model: torch.nn.Module, batch: torch.Tensor, views: int) -> torch.Tensor:
    """Mean logits of ``model`` over the first ``views`` (1, 4 or 8) symmetries of square tiles ``batch``:
    view ``k`` transposes when ``k >= 4``, flips columns when ``k & 1``, rows when ``k & 2``; each output is
    mapped back to the tile's own orientation."""
    if views not in TTA_VIEWS.values():
        raise ValueError(f"views must be one of {sorted(TTA_VIEWS.values())}, got {views}")
    total = None
    for k in range(views):
        dims = [d for d, on in ((-1, k & 1), (-2, k & 2)) if on]
        x = batch.transpose(-1, -2) if k >= 4 else batch
        out = model(x.flip(dims) if dims else x).float()
        out = out.flip(dims) if dims else out
        out = out.transpose(-1, -2) if k >= 4 else out
        total = out if total is None else total + out
    return total / views


def blend_weights(size: int) -> np.ndarray:
    """``[size, size]`` Hann-window weights, ``sin^2`` at pixel centres (positive everywhere)."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def _input_view(src: rasterio.DatasetReader, sensor: Sensor, model: TaskModel, path: Path,
                tolerance_nm: float) -> tuple[list[int], ViewPlan]:
    """The 1-based file bands that feed the model's bands, in its order, and the view that picked them."""
    held = file_bands(src.descriptions, sensor, path)
    described = {b.name: b for b in sensor.band_objects()}  # the input sensor's descriptors, the model's card's
    plan = plan_view(model.card.name, model.card.descriptors(), [described[b] for b in held if b is not None],
                     tolerance_nm)
    if not plan.applicable:
        foreign = [d for d, b in zip(src.descriptions, held) if b is None]
        hint = f"; {foreign} are not bands of the input's sensor {sensor.name} (--sensor)" if foreign else ""
        raise RasterError(path, f"bands {list(plan.missing)} missing: no band of the file by name or within "
                                f"{tolerance_nm:g} nm (the file's bands are {list(src.descriptions)}){hint}")
    if plan.substitutions:
        log.info("%s: %s reads %s", path.name, model.card.name, plan.stand_ins())
    return [held.index(b) + 1 for b in plan.source_bands], plan


def _profile(src: rasterio.DatasetReader, count: int, dtype: str, nodata: float) -> dict:
    return dict(driver="GTiff", width=src.width, height=src.height, count=count, dtype=dtype, crs=src.crs,
                transform=src.transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
                compress="deflate", BIGTIFF="IF_SAFER")


def _finish(tmp: Path, out: Path) -> None:
    """``tmp`` (a tiled GeoTIFF) as a COG at ``out``; without the COG driver, with overviews added in place."""
    if _has_cog():
        rasterio.shutil.copy(tmp, out, driver="COG", compress="deflate", overview_resampling="nearest")
        tmp.unlink()
        return
    with rasterio.open(tmp, "r+") as dst:
        factors = [f for f in (2, 4, 8, 16, 32) if min(dst.width, dst.height) // f >= 256]
        dst.build_overviews(factors, Resampling.nearest)
    shutil.move(tmp, out)


def _has_cog() -> bool:
    with rasterio.Env() as env:
        return "COG" in env.drivers()


@torch.no_grad()
def predict_scene(
    model: TaskModel, sensor: Sensor, path: str | Path, out: str | Path, probabilities: str | Path | None = None,
    *, tolerance_nm: float, tile: int = 256, overlap: int = 64, batch_size: int = 16, device: str = "cpu",
    gsd: float | None = None, tta: str = "none",
) -> dict[str, float]:
    """Write the class map of the scene at ``path`` to ``out`` (and probabilities); returns timing facts. A
    student encoder is told the scene's GSD (``sensor``'s, per band) and reads it at ``gsd`` (m) when given,
    else at the working GSD it was fine-tuned with (:class:`~fusion.finetune.BandView`); the map is on the
    scene's own grid. ``tta`` averages each tile over its symmetries (:data:`TTA_VIEWS`)."""
    if tta not in TTA_VIEWS:
        raise InputError(f"tta must be one of {sorted(TTA_VIEWS)}, got {tta!r}")
    if model.card.task_type != "segmentation":
        raise InputError(f"model {model.card.name!r} is a {model.card.task_type} model; predict maps need "
                         "a segmentation model")
    if not 0 <= overlap < tile:
        raise InputError(f"overlap must be in [0, tile size {tile}), got {overlap}")
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise RasterError(path, "file not found")
    model = model.to(device).eval()
    num_classes = model.card.num_classes
    fill = np.asarray(model.card.norm_mean, dtype=np.float32)[:, None, None]
    weights = torch.from_numpy(blend_weights(tile))
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        with ExitStack() as stack:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB))
            src = stack.enter_context(open_raster(path))
            indexes, view = _input_view(src, sensor, model, path, tolerance_nm)
            model.encoder.set_gsd(tuple(sensor.band_gsd(b) for b in view.source_bands), gsd)
            nodata = src.nodata if src.nodata is not None else sensor.nodata
            height, width = src.height, src.width
            extent_h, extent_w = max(height, tile), max(width, tile)
            windows = tile_windows((0, extent_h), (0, extent_w), tile, tile - overlap)
            rows = sorted({int(w.row_off) for w in windows})
            cols = sorted({int(w.col_off) for w in windows})
            class_tmp = work / "classes.tif"
            prob_tmp = work / "probabilities.tif"
            outputs = [stack.enter_context(rasterio.open(class_tmp, "w", **_profile(src, 1, "uint8", NODATA_CLASS)))]
            if probabilities is not None:
                outputs.append(stack.enter_context(
                    rasterio.open(prob_tmp, "w", **_profile(src, num_classes, "float32", np.nan))))
            acc = torch.zeros(num_classes, tile, extent_w)
            norm = torch.zeros(tile, extent_w)
            with tqdm(total=len(windows), desc=f"predict {path.name}", unit="tile", leave=False) as bar:
                for k, row in enumerate(rows):
                    raw = src.read(indexes, window=Window(0, row, extent_w, tile), boundless=True,
                                   fill_value=np.nan, out_dtype="float32")
                    invalid = np.isnan(raw).any(0)
                    if nodata is not None and not math.isnan(nodata):
                        invalid |= (raw == nodata).any(0)
                    data = calibrate(raw, sensor, view.source_bands)
                    data = np.where(invalid, fill, data)
                    for start in range(0, len(cols), batch_size):
                        chunk = cols[start:start + batch_size]
                        batch = torch.from_numpy(np.stack([data[:, :, c:c + tile] for c in chunk])).to(device)
                        logits = dihedral_logits(model, batch, TTA_VIEWS[tta]).cpu()
                        for c, tile_logits in zip(chunk, logits):
                            acc[:, :, c:c + tile] += tile_logits * weights
                            norm[:, c:c + tile] += weights
                        bar.update(len(chunk))
                    done = (rows[k + 1] - row) if k + 1 < len(rows) else tile
                    keep = min(done, height - row)
                    if keep > 0:
                        probs = torch.softmax(acc[:, :keep, :width] / norm[:keep, :width], dim=0).numpy()
                        bad = invalid[:keep, :width]
                        classes = probs.argmax(0).astype(np.uint8)
                        classes[bad] = NODATA_CLASS
                        window = Window(0, row, width, keep)
                        outputs[0].write(classes[None], window=window)
                        if probabilities is not None:
                            probs[:, bad] = np.nan
                            outputs[1].write(probs.astype(np.float32), window=window)
                    acc = torch.cat([acc[:, done:], torch.zeros(num_classes, done, extent_w)], dim=1)
                    norm = torch.cat([norm[done:], torch.zeros(done, extent_w)], dim=0)
        _finish(class_tmp, out)
        if probabilities is not None:
            _finish(prob_tmp, Path(probabilities))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("predicted %s (%dx%d, %d tiles) -> %s", path, height, width, len(windows), out)
    return {"height": height, "width": width, "tiles": len(windows)}
