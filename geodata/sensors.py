"""Sensors as lists of named bands, and the one function that selects bands by name.

Every band name is unique across the registry (``B04`` is Sentinel-2's red, ``OLI_B4`` is
Landsat's, ``RED`` is a broadband camera red), so a tensor's band tuple says exactly what each
channel is. Values travel in physical units: reflectance for optical bands, dB for SAR.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

__all__ = [
    "Band",
    "BandError",
    "Sensor",
    "SENSORS",
    "BANDS",
    "get_band",
    "get_sensor",
    "register_sensor",
    "load_sensor_yaml",
    "load_sensor_dir",
    "select_bands",
    "equivalent_band",
]


class BandError(KeyError):
    """A band is missing from an input or unknown to the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Band:
    """One spectral band (centre wavelength in nm) or SAR channel (polarisation)."""

    name: str
    wavelength_nm: float | None = None
    polarisation: str | None = None
    gsd_m: float = 10.0

    def __post_init__(self) -> None:
        if (self.wavelength_nm is None) == (self.polarisation is None):
            raise ValueError(f"band {self.name!r}: give exactly one of wavelength_nm or polarisation")

    @property
    def is_sar(self) -> bool:
        return self.polarisation is not None


@dataclass(frozen=True)
class Sensor:
    """A sensor: ordered band names plus how raw file values map to physical units.

    ``physical = raw * scale + offset``; raw values equal to ``nodata`` (or NaN) are invalid.
    """

    name: str
    bands: tuple[str, ...]
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    dtype: str = "float32"
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def band_objects(self) -> tuple[Band, ...]:
        return tuple(get_band(b) for b in self.bands)


BANDS: dict[str, Band] = {}
SENSORS: dict[str, Sensor] = {}


def _add_bands(bands: Iterable[Band]) -> None:
    for band in bands:
        known = BANDS.get(band.name)
        if known is not None and known != band:
            raise ValueError(f"band {band.name!r} is already registered as {known}, not {band}")
        BANDS[band.name] = band


def register_sensor(sensor: Sensor, bands: Iterable[Band] = ()) -> Sensor:
    """Add a sensor (and any new bands it brings) to the registry."""
    _add_bands(bands)
    unknown = [b for b in sensor.bands if b not in BANDS]
    if unknown:
        raise BandError(f"sensor {sensor.name!r}: unknown bands {unknown}; declare them first")
    if len(set(sensor.bands)) != len(sensor.bands):
        raise ValueError(f"sensor {sensor.name!r}: duplicate band names in {sensor.bands}")
    for key in (sensor.name, *sensor.aliases):
        SENSORS[key] = sensor
    return sensor


def get_band(name: str) -> Band:
    try:
        return BANDS[name]
    except KeyError:
        raise BandError(f"unknown band {name!r}; known bands: {sorted(BANDS)}") from None


def get_sensor(name: str) -> Sensor:
    try:
        return SENSORS[name]
    except KeyError:
        raise BandError(f"unknown sensor {name!r}; known sensors: {sorted(SENSORS)}") from None


def load_sensor_yaml(path: str | Path) -> Sensor:
    """Register a sensor described in YAML (see ``configs/sensors/``)."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    try:
        bands = [Band(**b) if isinstance(b, dict) else get_band(b) for b in spec["bands"]]
        sensor = Sensor(
            name=spec["name"],
            bands=tuple(b.name for b in bands),
            scale=float(spec.get("scale", 1.0)),
            offset=float(spec.get("offset", 0.0)),
            nodata=spec.get("nodata"),
            dtype=str(spec.get("dtype", "float32")),
            description=str(spec.get("description", "")),
            aliases=tuple(spec.get("aliases", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid sensor description: {exc}") from exc
    return register_sensor(sensor, bands)


def load_sensor_dir(directory: str | Path) -> list[Sensor]:
    """Register every ``*.yaml`` sensor in a directory."""
    return [load_sensor_yaml(p) for p in sorted(Path(directory).glob("*.yaml"))]


def select_bands(
    x: torch.Tensor, have: Sequence[str], want: Sequence[str], dim: int = -3
) -> torch.Tensor:
    """Return ``x`` with its band axis ``dim`` reordered from ``have`` to ``want``.

    Raises :class:`BandError` naming every band of ``want`` that ``have`` lacks.
    """
    if x.shape[dim] != len(have):
        raise BandError(f"tensor has {x.shape[dim]} channels on dim {dim} but {len(have)} band names {tuple(have)}")
    index = {b: i for i, b in enumerate(have)}
    missing = [b for b in want if b not in index]
    if missing:
        raise BandError(f"missing bands {missing}: input has {tuple(have)}")
    order = [index[b] for b in want]
    if order == list(range(len(have))):
        return x
    return x.index_select(dim, torch.as_tensor(order, device=x.device))


def equivalent_band(want: str, have: Sequence[str], tolerance_nm: float = 30.0) -> str | None:
    """The band of ``have`` that can stand in for ``want``: itself, the same SAR polarisation,
    or the closest centre wavelength within ``tolerance_nm``. ``None`` if there is none."""
    if want in have:
        return want
    target = get_band(want)
    best, best_gap = None, tolerance_nm
    for name in have:
        band = get_band(name)
        if target.is_sar or band.is_sar:
            if target.polarisation is not None and band.polarisation == target.polarisation:
                return name
            continue
        gap = abs(band.wavelength_nm - target.wavelength_nm)  # type: ignore[operator]
        if gap <= best_gap:
            best, best_gap = name, gap
    return best


# --- built-in sensors -------------------------------------------------------------------------

_S2 = [
    Band("B01", 442.7, gsd_m=60), Band("B02", 492.4, gsd_m=10), Band("B03", 559.8, gsd_m=10),
    Band("B04", 664.6, gsd_m=10), Band("B05", 704.1, gsd_m=20), Band("B06", 740.5, gsd_m=20),
    Band("B07", 782.8, gsd_m=20), Band("B08", 832.8, gsd_m=10), Band("B8A", 864.7, gsd_m=20),
    Band("B09", 945.1, gsd_m=60), Band("B10", 1373.5, gsd_m=60), Band("B11", 1613.7, gsd_m=20),
    Band("B12", 2202.4, gsd_m=20),
]
_S1 = [Band("VV", polarisation="VV", gsd_m=10), Band("VH", polarisation="VH", gsd_m=10)]
_OLI = [
    Band("OLI_B1", 443.0, gsd_m=30), Band("OLI_B2", 482.0, gsd_m=30), Band("OLI_B3", 561.5, gsd_m=30),
    Band("OLI_B4", 654.5, gsd_m=30), Band("OLI_B5", 865.0, gsd_m=30), Band("OLI_B6", 1608.5, gsd_m=30),
    Band("OLI_B7", 2200.5, gsd_m=30), Band("OLI_B9", 1373.5, gsd_m=30),
]
_CAMERA = [
    Band("BLUE", 470.0, gsd_m=0.5), Band("GREEN", 550.0, gsd_m=0.5),
    Band("RED", 640.0, gsd_m=0.5), Band("NIR", 820.0, gsd_m=0.5),
]

register_sensor(
    Sensor(
        "sentinel2_l1c",
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"),
        scale=1e-4, nodata=0, dtype="uint16", aliases=("s2_l1c",),
        description="Sentinel-2 MSI top-of-atmosphere, 13 bands in EuroSAT order, DN = reflectance x 10000",
    ),
    _S2,
)
register_sensor(
    Sensor(
        "sentinel2_l2a",
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        scale=1e-4, nodata=0, dtype="uint16", aliases=("s2", "s2_l2a", "sentinel2"),
        description="Sentinel-2 MSI surface reflectance, 12 bands (no cirrus B10), DN = reflectance x 10000",
    ),
)
register_sensor(
    Sensor("sentinel1_grd", ("VV", "VH"), aliases=("s1", "sentinel1"),
           description="Sentinel-1 C-band GRD backscatter, VV and VH in dB"),
    _S1,
)
register_sensor(
    Sensor(
        "landsat8_oli",
        ("OLI_B1", "OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7"),
        scale=2.75e-5, offset=-0.2, nodata=0, dtype="uint16", aliases=("landsat9_oli", "landsat", "l8"),
        description="Landsat-8/9 OLI Collection-2 surface reflectance (scale 2.75e-5, offset -0.2)",
    ),
    _OLI,
)
register_sensor(
    Sensor("aerial_rgbn", ("RED", "GREEN", "BLUE", "NIR"), scale=1 / 255, nodata=None, dtype="uint8",
           aliases=("aerial",), description="Aerial orthophoto, 8-bit RGB + near infrared, sub-metre"),
    _CAMERA,
)
register_sensor(
    Sensor("rgb", ("RED", "GREEN", "BLUE"), scale=1 / 255, nodata=None, dtype="uint8",
           description="Plain 8-bit RGB camera"),
)
