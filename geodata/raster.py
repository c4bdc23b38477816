"""Reading GeoTIFF tiles into physical units with a validity mask, and writing them (rasterio).

A tile is either one multi-band file (``read_tile``) or one single-band file per band
(``read_band_files``, BigEarthNet's layout; coarse bands are resampled bilinearly onto the finest
grid). Both return a :class:`Raster` ``(data, valid)``: float32 ``[C, h, w]`` in physical units
(``raw * scale + offset``) with NaN at invalid pixels, and a bool ``[h, w]`` mask of pixels where
every band has a value (not NaN or infinite, not nodata; the file's declared nodata wins over the
sensor's). Only the sensor's image bands (spectral and SAR, :attr:`Sensor.image_bands`) are returned:
auxiliary bands (masks, quality, probabilities) keep their place in the file but are not read. Complex
rasters become intensity in dB when the sensor declares ``complex: intensity_db`` and are refused
otherwise. GeoTIFF, JPEG and PNG read alike through rasterio (an image without georeference reads on
pixel coordinates). ``read_labelled`` reads an image with its class mask on the same window. Windows are rasterio
``Window`` objects on the finest grid (a manifest tile's own: :func:`tile_window`), or ``size`` for a
centred square (of the window, when both are given). Every problem raises
:class:`RasterError` naming the file.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import rasterio
from rasterio import windows
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geodata.errors import RasterError
from geodata.manifest import Manifest, TileEntry
from geodata.sensors import BandError, Sensor, get_sensor

__all__ = [
    "open_raster", "READ_DRIVERS", "MAX_RASTER_PIXELS",
    "Raster",
    "TileSource",
    "center_window",
    "band_calibration",
    "read_tile",
    "read_band_files",
    "read_mask",
    "read_source",
    "read_labelled",
    "tile_source",
    "tile_window",
    "check_aligned",
    "check_band_count",
    "write_geotiff",
]

TileSource = Path | dict[str, Path]


class Raster(NamedTuple):
    data: np.ndarray  # float32 [C, h, w], physical units, NaN where invalid
    valid: np.ndarray  # bool [h, w]


@contextmanager
def _errors(path: str | Path) -> Iterator[None]:
    """Turn rasterio/GDAL failures into a RasterError naming ``path``."""
    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise RasterError(path, f"cannot read: {exc}{cause}") from exc


READ_DRIVERS = {b"II*\0": "GTiff", b"MM\0*": "GTiff", b"II+\0": "GTiff", b"MM\0+": "GTiff",
                b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG"}
"""The only GDAL drivers a raster is opened with, by the file's first bytes: a VRT (which may point at
``/vsicurl/`` URLs or other files) or any other format is refused."""
MAX_RASTER_PIXELS = 2**30
"""Width x height above which a raster is refused before anything is allocated (about 32768^2)."""


def open_raster(path: str | Path, max_pixels: int = MAX_RASTER_PIXELS) -> rasterio.DatasetReader:
    """Open a local raster file for reading: no ``/vsi*`` or URL paths, GeoTIFF, JPEG or PNG only (the
    driver named by the file's first bytes, :data:`READ_DRIVERS`), at most ``max_pixels`` pixels; each
    refusal a :class:`RasterError` naming ``path``."""
    text = str(path)
    if text.startswith("/vsi") or "://" in text:
        raise RasterError(path, "only local files are read (no /vsi* or URL paths)")
    if not os.path.isfile(path):
        raise RasterError(path, "file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    driver = next((d for magic, d in READ_DRIVERS.items() if head.startswith(magic)), None)
    if driver is None:
        raise RasterError(path, "not a GeoTIFF, JPEG or PNG file")
    with _errors(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(path, driver=driver)
    if src.width * src.height > max_pixels:
        src.close()
        raise RasterError(path, f"{src.width} x {src.height} pixels exceed the limit of {max_pixels}")
    return src



def _sensor(sensor: str | Sensor) -> Sensor:
    return get_sensor(sensor) if isinstance(sensor, str) else sensor


def _nodata(src: rasterio.DatasetReader, sensor: Sensor) -> float | None:
    return src.nodata if src.nodata is not None else sensor.nodata


def _image_index(sensor: Sensor) -> list[int]:
    """Positions of the sensor's image bands among all its (file) bands."""
    return [i for i, b in enumerate(sensor.band_objects()) if not b.is_auxiliary]


def _physical(raw: np.ndarray, sensor: Sensor, path: str | Path) -> np.ndarray:
    """Raw values as float32; complex ones as intensity in dB if the sensor declares it, else refused."""
    if raw.dtype.kind != "c":
        return raw.astype(np.float32)
    if sensor.complex != "intensity_db":
        raise RasterError(path, f"complex values ({raw.dtype}) but sensor {sensor.name} does not declare how "
                                f"to read them (complex: intensity_db)")
    with np.errstate(divide="ignore"):  # |z| = 0 gives -inf, marked invalid
        return (10 * np.log10(np.square(raw.real) + np.square(raw.imag))).astype(np.float32)


def band_calibration(sensor: Sensor, bands: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(scale, offset)`` of ``bands`` (of ``sensor``, in that order): ``physical = raw * scale + offset``."""
    scales, offsets = sensor.calibration()
    missing = [b for b in bands if b not in sensor.bands]
    if missing:
        raise BandError(f"bands {missing} are not bands of sensor {sensor.name!r} {sensor.bands}: their scale "
                        "and offset are unknown")
    at = [sensor.bands.index(b) for b in bands]
    return (np.asarray([scales[i] for i in at], dtype=np.float32), np.asarray([offsets[i] for i in at], dtype=np.float32))


def calibrate(data: np.ndarray, sensor: Sensor, bands: Sequence[str]) -> np.ndarray:
    """``data`` (float32, ``[len(bands), ...]``, the sensor's ``bands`` in that order) turned into physical
    values in place with each band's own scale and offset: the one calibration of training, evaluation and
    prediction."""
    scale, offset = band_calibration(sensor, bands)
    scale, offset = (a.reshape(-1, *(1,) * (data.ndim - 1)) for a in (scale, offset))
    if (scale != 1).any():
        data *= scale
    if (offset != 0).any():
        data += offset
    return data


def _invalid(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """Bool mask of pixels where any band (leading axes) is NaN or nodata."""
    bad = np.zeros(raw.shape[-2:], dtype=bool)
    if raw.dtype.kind in "fc":
        bad |= np.isnan(raw).reshape(-1, *raw.shape[-2:]).any(0)
    if nodata is not None and not math.isnan(nodata):
        bad |= (raw == nodata).reshape(-1, *raw.shape[-2:]).any(0)
    return bad


def center_window(height: int, width: int, size: int) -> Window:
    """The ``size`` x ``size`` window in the centre of a ``height`` x ``width`` grid."""
    return Window((width - size) // 2, (height - size) // 2, size, size)


def _window(height: int, width: int, window: Window | None, size: int | None, path: str | Path) -> Window | None:
    if window is not None and (
        window.col_off < 0 or window.row_off < 0
        or window.col_off + window.width > width or window.row_off + window.height > height
    ):
        raise RasterError(path, f"{window} is outside the {height}x{width} raster")
    if size is None:
        return window
    h, w = (int(window.height), int(window.width)) if window is not None else (height, width)
    if size > h or size > w:
        raise RasterError(path, f"tile is {h}x{w}, smaller than the requested size {size}")
    crop = center_window(h, w, size)
    if window is None:
        return crop
    return Window(window.col_off + crop.col_off, window.row_off + crop.row_off, size, size)


def _finish(
    data: np.ndarray, invalid: np.ndarray, sensor: Sensor, where: str | Path, window: Window | None
) -> Raster:
    invalid |= ~np.isfinite(data).all(0)
    if invalid.all():
        part = f"window {window}" if window is not None else "tile"
        raise RasterError(where, f"all pixels of the {part} are nodata or NaN")
    calibrate(data, sensor, sensor.image_bands)
    if invalid.any():
        data[:, invalid] = np.nan
    return Raster(data, ~invalid)


def read_tile(
    path: str | Path, sensor: str | Sensor, window: Window | None = None, size: int | None = None
) -> Raster:
    """Read the image bands of a multi-band raster whose bands are ``sensor.bands`` in order."""
    return _read_tile(path, _sensor(sensor), window, size)[0]


def _read_tile(
    path: str | Path, sensor: Sensor, window: Window | None, size: int | None
) -> tuple[Raster, tuple[int, int]]:
    """``read_tile`` plus the full grid shape the window was taken from."""
    with open_raster(path) as src, _errors(path):
        _check_count(src, sensor, path)
        win = _window(src.height, src.width, window, size, path)
        raw = src.read([i + 1 for i in _image_index(sensor)], window=win)
        nodata = _nodata(src, sensor)
        shape = (src.height, src.width)
    return _finish(_physical(raw, sensor, path), _invalid(raw, nodata), sensor, path, win), shape


def _check_count(src: rasterio.DatasetReader, sensor: Sensor, path: str | Path) -> None:
    if src.count != sensor.num_bands:
        raise RasterError(path, f"expected {sensor.num_bands} bands for sensor {sensor.name}, found {src.count} "
                                f"(its bands: {', '.join(sensor.bands)})")


def check_band_count(path: str | Path, sensor: str | Sensor) -> None:
    """Check that a raster opens and holds one band per band of ``sensor`` (reads no pixels)."""
    with open_raster(path) as src:
        _check_count(src, _sensor(sensor), path)


def _check_same_place(src: rasterio.DatasetReader, ref: rasterio.DatasetReader, path: Path, ref_path: Path) -> None:
    if src.crs != ref.crs:
        raise RasterError(path, f"CRS {src.crs} differs from CRS {ref.crs} of {ref_path}")
    if not np.allclose(tuple(src.bounds), tuple(ref.bounds), rtol=0, atol=0.01 * abs(ref.res[0])):
        raise RasterError(path, f"bounds {tuple(src.bounds)} differ from bounds {tuple(ref.bounds)} of {ref_path}")


def read_band_files(
    band_paths: Mapping[str, str | Path], sensor: str | Sensor,
    window: Window | None = None, size: int | None = None,
) -> Raster:
    """Read one single-band file per image band of ``sensor`` onto the finest grid among them.

    Coarser bands are resampled bilinearly (``out_shape``); their validity comes from a
    nearest-neighbour read so nodata never blends into valid pixels. All files must share the CRS
    and footprint; ``window``/``size`` refer to the finest grid.
    """
    return _read_band_files(band_paths, _sensor(sensor), window, size)[0]


def _read_band_files(
    band_paths: Mapping[str, str | Path], sensor: Sensor, window: Window | None, size: int | None
) -> tuple[Raster, tuple[int, int]]:
    """``read_band_files`` plus the full (finest) grid shape the window was taken from."""
    paths = {b: Path(p) for b, p in band_paths.items()}
    where = next(iter(paths.values())).parent if paths else Path("band_paths")
    bands = sensor.image_bands
    missing = [b for b in bands if b not in paths]
    if missing:
        raise RasterError(where, f"missing band files for sensor {sensor.name}: {missing}")
    extra = [b for b in paths if b not in sensor.bands]
    if extra:
        raise RasterError(where, f"bands {extra} are not bands of sensor {sensor.name} {sensor.bands}")
    with ExitStack() as stack:
        srcs = {b: stack.enter_context(open_raster(paths[b])) for b in bands}
        for b, src in srcs.items():
            if src.count != 1:
                raise RasterError(paths[b], f"band file for {b} has {src.count} bands, expected 1")
        ref_band = min(srcs, key=lambda b: abs(srcs[b].res[0]))
        ref = srcs[ref_band]
        for b, src in srcs.items():
            _check_same_place(src, ref, paths[b], paths[ref_band])
        win = _window(ref.height, ref.width, window, size, paths[ref_band])
        out_shape = (int(win.height), int(win.width)) if win is not None else (ref.height, ref.width)
        bounds = windows.bounds(win, ref.transform) if win is not None else ref.bounds
        data = np.empty((len(bands), *out_shape), dtype=np.float32)
        invalid = np.zeros(out_shape, dtype=bool)
        for i, b in enumerate(bands):
            src, nodata = srcs[b], _nodata(srcs[b], sensor)
            with _errors(paths[b]):
                if src.shape == ref.shape:
                    raw = src.read(1, window=win)
                    data[i] = _physical(raw, sensor, paths[b])
                else:  # complex values resample nearest (bilinear would blend phases)
                    own = windows.from_bounds(*bounds, transform=src.transform)
                    raw = src.read(1, window=own, out_shape=out_shape, resampling=Resampling.nearest)
                    data[i] = (_physical(raw, sensor, paths[b]) if raw.dtype.kind == "c" else
                               src.read(1, window=own, out_shape=out_shape, resampling=Resampling.bilinear,
                                        out_dtype="float32"))
            invalid |= _invalid(raw, nodata)
        shape = (ref.height, ref.width)
    return _finish(data, invalid, sensor, where, win), shape


def read_mask(
    path: str | Path, num_classes: int, ignore_index: int = 255, shape: tuple[int, int] | None = None,
    window: Window | None = None, size: int | None = None,
) -> np.ndarray:
    """Read a single-band class-index mask as int64 ``[h, w]``.

    ``shape`` is the full grid of the image it labels (checked). The file's nodata becomes
    ``ignore_index``; any other value outside ``0..num_classes-1`` raises.
    """
    with open_raster(path) as src, _errors(path):
        if src.count != 1:
            raise RasterError(path, f"mask has {src.count} bands, expected 1")
        if shape is not None and (src.height, src.width) != tuple(shape):
            raise RasterError(path, f"mask is {src.height}x{src.width} but its image is {shape[0]}x{shape[1]}")
        win = _window(src.height, src.width, window, size, path)
        raw = src.read(1, window=win)
        nodata = src.nodata
    labels = raw.astype(np.int64)
    if nodata is not None:
        labels[raw == nodata] = ignore_index
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = sorted(np.unique(labels[bad]).tolist())
        raise RasterError(path, f"labels {values} outside the {num_classes} classes (0..{num_classes - 1}, "
                                f"ignore {ignore_index})")
    return labels


def tile_source(manifest: Manifest, tile: TileEntry) -> TileSource:
    """The absolute file (or band -> file mapping) of a manifest tile."""
    if tile.path is not None:
        return manifest.resolve(tile.path)
    return {b: manifest.resolve(p) for b, p in (tile.band_paths or {}).items()}


def tile_window(tile: TileEntry) -> Window | None:
    """The tile's ``window`` into its file(s), or ``None`` for the whole file."""
    return Window(*tile.window) if tile.window is not None else None


def read_source(
    source: TileSource, sensor: str | Sensor, window: Window | None = None, size: int | None = None
) -> Raster:
    """``read_tile`` or ``read_band_files``, whichever ``source`` (from :func:`tile_source`) needs."""
    return _read_source(source, _sensor(sensor), window, size)[0]


def _read_source(
    source: TileSource, sensor: Sensor, window: Window | None, size: int | None
) -> tuple[Raster, tuple[int, int]]:
    if isinstance(source, dict):
        return _read_band_files(source, sensor, window, size)
    return _read_tile(source, sensor, window, size)


def read_labelled(
    source: TileSource, sensor: str | Sensor, mask_path: str | Path, num_classes: int, ignore_index: int = 255,
    window: Window | None = None, size: int | None = None,
) -> tuple[Raster, np.ndarray]:
    """An image and its class mask (same grid shape, same window); invalid image pixels get ``ignore_index``."""
    raster, shape = _read_source(source, _sensor(sensor), window, size)
    labels = read_mask(mask_path, num_classes, ignore_index, shape=shape, window=window, size=size)
    labels[~raster.valid] = ignore_index
    return raster, labels


def check_aligned(path_a: str | Path, path_b: str | Path) -> None:
    """Check two rasters of the same place (e.g. S1/S2 twins) share CRS, shape and transform."""
    with open_raster(path_a) as a, open_raster(path_b) as b:
        if a.crs != b.crs:
            raise RasterError(path_a, f"CRS {a.crs} does not match CRS {b.crs} of its twin {path_b}")
        if a.shape != b.shape:
            raise RasterError(path_a, f"shape {a.height}x{a.width} does not match shape {b.height}x{b.width} "
                                      f"of its twin {path_b}")
        if not a.transform.almost_equals(b.transform, precision=0.01 * abs(b.res[0])):
            raise RasterError(path_a, f"transform {tuple(a.transform)[:6]} does not match "
                                      f"{tuple(b.transform)[:6]} of its twin {path_b}")


def write_geotiff(
    path: str | Path, data: np.ndarray, transform: rasterio.Affine, crs: rasterio.crs.CRS | str,
    nodata: float | None = None, band_names: Sequence[str] | None = None,
) -> Path:
    """Write ``data`` ``[C, H, W]`` (or ``[H, W]``) as a GeoTIFF atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data[None] if data.ndim == 2 else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.tif")
    os.close(fd)
    try:
        with rasterio.open(
            tmp, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
            dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
        ) as dst:
            dst.write(data)
            for i, name in enumerate(band_names or (), start=1):
                dst.set_band_description(i, name)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
