"""Sensors as lists of named bands, and the one function that selects bands by name.

Every band name is unique within a catalog (``B04`` is Sentinel-2's red, ``OLI_B4`` is
Landsat's, ``RED`` is a broadband camera red), so a tensor's band tuple says exactly what each
channel is. Values travel in physical units: reflectance for optical bands, dB for SAR.

A :class:`Band` is an identity: a spectral band (centre wavelength, optionally its range or width),
a SAR channel (polarisation, optionally its frequency band) or an auxiliary band (a mask, quality
flags or a probability: read with its file, never fed to an encoder). How a sensor *uses* a band
(its ground sampling distance, per-band scale/offset) belongs to the :class:`Sensor`, so two
sensors may share ``VV`` at different GSDs.

A sensor is a value. A :class:`Catalog` is an immutable set of sensors and bands; nothing is
registered anywhere. The built-in catalog (:func:`builtin`: the sensors below and
``configs/sensors/*.yaml``) plus ``$EOSFED_SENSORS`` is :func:`default`; the loaders return catalogs
(:func:`load_sensor_files`, ``Manifest.load``'s ``catalog``, a card's :meth:`Card.catalog`, a node's
``sensors`` config, a partner's data summary), which are passed where needed or made the one names
resolve in for a block (:func:`using`: a run's federation catalog, a node's, a command's
``--sensors``). A YAML file holds one sensor (a mapping) or a list of them::

    name: my_sensor            # plus optional: scale, offset, nodata, dtype, description, aliases,
    scale: 0.0001              #   complex: intensity_db (complex SAR read as intensity in dB)
    bands:
      - B04                                          # a known band (of the catalog read into), as known
      - {name: VV, gsd_m: 5}                         # a known band at this sensor's GSD
      - {name: PAN, range_nm: [450, 900], gsd_m: 2}  # a new spectral band (or bandwidth_nm)
      - {name: HH, polarisation: HH, frequency_band: L}
      - {name: RE, wavelength_nm: 717, scale: 0.0001, offset: -0.1}  # per-band scale/offset
      - {name: TCI_R, wavelength_nm: 664.6, product: tci}  # or a product fixing them (PRODUCT_SCALES)
      - {name: QA60, kind: quality}                  # kind: mask, quality or probability

Adding an identical band or sensor to a catalog again is a no-op; a conflicting one is an error naming it.
A band's descriptor (:func:`band_record`) is what travels in summaries and cards.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import yaml
from geodata.errors import InputError

__all__ = [
    "Band",
    "BandError",
    "Sensor",
    "Catalog",
    "builtin",
    "default",
    "current",
    "using",
    "band_record",
    "SENSORS_ENV",
    "SENSOR_CONFIG_DIR",
    "AUXILIARY_KINDS",
    "FREQUENCY_BANDS",
    "POLARISATIONS",
    "COMPLEX_MODES",
    "MAX_GSD_M",
    "get_band",
    "get_sensor",
    "sensor_name",
    "load_sensor_yaml",
    "load_sensor_files",
    "sensor_files",
    "env_sensor_paths",
    "select_bands",
    "equivalent_band",
    "PRODUCT_SCALES",
]

log = logging.getLogger(__name__)

SENSORS_ENV = "EOSFED_SENSORS"
SENSOR_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "sensors"  # part of the built-in catalog
SPECTRAL, SAR = "spectral", "sar"
AUXILIARY_KINDS = ("mask", "quality", "probability")
FREQUENCY_BANDS = ("P", "L", "S", "C", "X", "Ku", "K", "Ka")
POLARISATIONS = ("VV", "VH", "HH", "HV")
MAX_GSD_M = 10_000.0  # a band's ground sampling distance beyond this is refused as a typo or an attack
MAX_WAVELENGTH_NM = 1e6  # 1 mm: beyond the thermal infrared (microwave bands are SAR, by polarisation)
COMPLEX_MODES = ("intensity_db",)
PRODUCT_SCALES = {"tci": 0.2 / 255, "tci_l1c": 0.3558 / 255}
"""A band's declared ``product`` -> its scale (offset 0): what turns its values into reflectance.

``tci``, ``tci_l1c``: Sentinel-2's 8-bit true-colour image (TCI), B04/B03/B02 reflectance mapped linearly
onto 1..255 (0: no data) and clipped. The saturation level, 255, is taken as reflectance 0.2 (DN 2000) in
L2A products and 0.3558 (DN 3558) in L1C ones, as recalled from ESA's Sentinel-2 product definitions (not
verified against the document offline), so reflectance = value / 255 * 0.2 (L2A) or * 0.3558 (L1C);
brighter pixels are clipped at that level. A wrong level is one scale per band, which the encoders'
per-band normalisation absorbs; it matters only where a TCI band and a reflectance band meet.
"""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class BandError(InputError, KeyError):
    """A band is missing from an input or unknown to the catalog."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Band:
    """One band's identity (module docstring). ``kind`` is inferred for spectral and SAR bands.

    ``gsd_m`` is the ground sampling distance the declaring sensor gives it; it is not part of the
    identity (equality ignores it) and each sensor keeps its own (:meth:`Sensor.band_gsd`). A band
    with a ``range_nm`` but no ``wavelength_nm`` is centred in its range.
    """

    name: str
    wavelength_nm: float | None = None
    polarisation: str | None = None
    gsd_m: float = field(default=10.0, compare=False)
    range_nm: tuple[float, float] | None = None
    bandwidth_nm: float | None = None
    frequency_band: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"band name must be a non-empty string, got {self.name!r}")
        if self.kind is not None and self.kind not in (SPECTRAL, SAR, *AUXILIARY_KINDS):
            raise InputError(f"band {self.name!r}: kind {self.kind!r} is not one of {(SPECTRAL, SAR, *AUXILIARY_KINDS)}")
        if not _finite(self.gsd_m) or not 0 < self.gsd_m <= MAX_GSD_M:
            raise InputError(f"band {self.name!r}: gsd_m must be in (0, {MAX_GSD_M:g}] m, got {self.gsd_m!r}")
        for key in ("wavelength_nm", "bandwidth_nm"):
            value = getattr(self, key)
            if value is not None and (not _finite(value) or not 0 < value <= MAX_WAVELENGTH_NM):
                raise InputError(f"band {self.name!r}: {key} must be in (0, {MAX_WAVELENGTH_NM:g}] nm, got {value!r}")
        if self.range_nm is not None and not all(_finite(v) and 0 < v <= MAX_WAVELENGTH_NM for v in self.range_nm):
            raise InputError(f"band {self.name!r}: range_nm must hold two wavelengths in (0, "
                             f"{MAX_WAVELENGTH_NM:g}] nm, got {self.range_nm!r}")
        if self.polarisation is not None and self.polarisation not in POLARISATIONS:
            raise InputError(f"band {self.name!r}: polarisation {self.polarisation!r} is not one of {POLARISATIONS}")
        spectral = (self.wavelength_nm, self.range_nm, self.bandwidth_nm)
        if self.polarisation is not None:
            if any(v is not None for v in spectral):
                raise InputError(f"band {self.name!r}: give a wavelength (spectral) or a polarisation (SAR), not both")
            if self.frequency_band is not None and self.frequency_band not in FREQUENCY_BANDS:
                raise InputError(f"band {self.name!r}: frequency_band {self.frequency_band!r} is not one of "
                                 f"{FREQUENCY_BANDS}")
            self._set_kind(SAR)
        elif any(v is not None for v in spectral):
            if self.frequency_band is not None:
                raise InputError(f"band {self.name!r}: frequency_band is for SAR bands")
            self._check_spectrum()
            self._set_kind(SPECTRAL)
        elif self.kind not in AUXILIARY_KINDS:
            raise InputError(f"band {self.name!r}: give wavelength_nm or range_nm (spectral), polarisation (SAR), "
                             f"or a kind among {AUXILIARY_KINDS}")

    def _set_kind(self, kind: str) -> None:
        if self.kind not in (None, kind):
            raise InputError(f"band {self.name!r}: kind {self.kind!r} contradicts its descriptors ({kind})")
        object.__setattr__(self, "kind", kind)

    def _check_spectrum(self) -> None:
        if self.range_nm is not None:
            if self.bandwidth_nm is not None:
                raise InputError(f"band {self.name!r}: give range_nm or bandwidth_nm, not both")
            lo, hi = (float(v) for v in self.range_nm)
            if not 0 < lo < hi:
                raise InputError(f"band {self.name!r}: range_nm must be [lo, hi] with 0 < lo < hi, got {self.range_nm}")
            object.__setattr__(self, "range_nm", (lo, hi))
            if self.wavelength_nm is None:
                object.__setattr__(self, "wavelength_nm", (lo + hi) / 2)
            elif not lo <= self.wavelength_nm <= hi:
                raise InputError(f"band {self.name!r}: wavelength_nm {self.wavelength_nm} is outside range_nm "
                                 f"{self.range_nm}")
        if self.wavelength_nm is None:
            raise InputError(f"band {self.name!r}: bandwidth_nm needs wavelength_nm")
        if self.bandwidth_nm is not None and not self.bandwidth_nm > 0:
            raise InputError(f"band {self.name!r}: bandwidth_nm must be positive, got {self.bandwidth_nm}")

    @property
    def is_sar(self) -> bool:
        return self.kind == SAR

    @property
    def is_auxiliary(self) -> bool:
        """A mask, quality or probability band: read with its file, never fed to an encoder."""
        return self.kind in AUXILIARY_KINDS

    @property
    def spectral_range(self) -> tuple[float, float] | None:
        """``(lo, hi)`` in nm from ``range_nm`` or ``bandwidth_nm`` around the centre; ``None`` for a line."""
        if self.range_nm is not None:
            return self.range_nm
        if self.bandwidth_nm is not None:
            half = self.bandwidth_nm / 2
            return self.wavelength_nm - half, self.wavelength_nm + half  # type: ignore[operator]
        return None


@dataclass(frozen=True)
class Sensor:
    """A sensor: ordered band names (the file's band order) plus how raw file values map to physical units.

    ``physical = raw * scale + offset`` per band (``band_scale``/``band_offset`` when given, else the
    sensor's ``scale``/``offset``); raw values equal to ``nodata`` (or NaN) are invalid. ``gsd`` is
    this sensor's ground sampling distance per band (filled when a catalog takes it). ``complex``: how to read
    complex rasters (``intensity_db``: ``10 log10 |z|^2``); without it they are refused.
    """

    name: str
    bands: tuple[str, ...]
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    dtype: str = "float32"
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    gsd: tuple[float, ...] = ()
    band_scale: tuple[float, ...] = ()
    band_offset: tuple[float, ...] = ()
    complex: str | None = None
    descriptors: tuple[Band, ...] = field(default=(), compare=False, repr=False)  # its bands, filled by a Catalog

    def __post_init__(self) -> None:
        for name in ("gsd", "band_scale", "band_offset", "descriptors"):
            value = getattr(self, name)
            if value and len(value) != len(self.bands):
                raise InputError(f"sensor {self.name!r}: {name} has {len(value)} values for {len(self.bands)} bands")
        if self.complex is not None and self.complex not in COMPLEX_MODES:
            raise InputError(f"sensor {self.name!r}: complex {self.complex!r} is not one of {COMPLEX_MODES}")

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def image_bands(self) -> tuple[str, ...]:
        """The spectral and SAR bands, in file order: what datasets return and encoders see."""
        return tuple(b.name for b in self.band_objects() if not b.is_auxiliary)

    def band_objects(self) -> tuple[Band, ...]:
        """Its bands' descriptors, each at this sensor's GSD (the catalog it came from filled them)."""
        return self.descriptors or tuple(get_band(b) for b in self.bands)

    def band_gsd(self, band: str) -> float:
        """This sensor's ground sampling distance of ``band`` (m)."""
        if band not in self.bands:
            raise BandError(f"band {band!r} is not a band of sensor {self.name!r} {self.bands}")
        return self.gsd[self.bands.index(band)] if self.gsd else self.band_objects()[self.bands.index(band)].gsd_m

    def calibration(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band ``(scales, offsets)`` of ``physical = raw * scale + offset``, in band order."""
        return (self.band_scale or (self.scale,) * self.num_bands,
                self.band_offset or (self.offset,) * self.num_bands)

    def describe(self) -> dict[str, Any]:
        """``sensor`` as the mapping of a sensor YAML file, every band fully described (its identity, this
        sensor's GSD and scale/offset): what travels in a data summary; :meth:`Catalog.from_records` reads it."""
        known = self
        scales, offsets = known.calibration()
        per_band = bool(known.band_scale or known.band_offset)
        spec: dict[str, Any] = {"name": known.name, "scale": known.scale, "offset": known.offset,
                                "nodata": known.nodata, "dtype": known.dtype}
        for key in ("complex", "description", "aliases"):
            if getattr(known, key):
                spec[key] = list(known.aliases) if key == "aliases" else getattr(known, key)
        spec["bands"] = [band_record(b) | ({"scale": s, "offset": o} if per_band else {})
                         for b, s, o in zip(known.band_objects(), scales, offsets)]
        return spec

    def physical_ranges(self) -> tuple[tuple[float, float], ...] | None:
        """Per band, the ``(lowest, highest)`` physical value an integer ``dtype`` can hold (``None`` for
        floating or complex data, which have no such bound)."""
        if self.complex is not None or not np.issubdtype(np.dtype(self.dtype), np.integer):
            return None
        info = np.iinfo(np.dtype(self.dtype))
        return tuple(tuple(sorted((info.min * scale + offset, info.max * scale + offset)))
                     for scale, offset in zip(*self.calibration()))


def _differences(new: Any, known: Any) -> str:
    return ", ".join(f"{f.name} {getattr(new, f.name)!r} (known: {getattr(known, f.name)!r})"
                     for f in fields(new) if f.compare and getattr(new, f.name) != getattr(known, f.name))


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Catalog:
    """An immutable set of bands (by name) and sensors (by name and alias): what band names mean.

    Built from the built-ins (:func:`builtin`), YAML files (:func:`load_sensor_files`), a partner's data
    summary or an artifact's card (:meth:`from_records`); :meth:`with_sensor` and :meth:`merge` return
    a new catalog and refuse a band or sensor that differs from one of the same name with one line."""

    bands: Mapping[str, Band] = field(default_factory=dict)
    sensors: Mapping[str, Sensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", _frozen(self.bands))
        object.__setattr__(self, "sensors", _frozen(self.sensors))

    def band(self, name: str) -> Band:
        try:
            return self.bands[name]
        except KeyError:
            raise BandError(f"unknown band {name!r}; known bands: {sorted(self.bands)}") from None

    def sensor(self, name: str) -> Sensor:
        try:
            return self.sensors[name]
        except KeyError:
            raise BandError(f"unknown sensor {name!r}; known sensors: {sorted(self.sensors)}") from None

    def sensor_name(self, name: str) -> str:
        """The canonical name of a known sensor or alias; an unknown name as given."""
        known = self.sensors.get(name)
        return known.name if known is not None else name

    def with_sensor(self, sensor: Sensor, bands: Iterable[Band] = (), source: str = "") -> "Catalog":
        """This catalog plus ``sensor`` and the bands it declares (a band of ``bands`` already known must be
        identical; its ``gsd_m`` is this sensor's and may differ; the sensor's other bands must be known). The
        sensor's ``gsd`` defaults to the declared bands' ``gsd_m``, else the known bands'."""
        where = f"{source}: " if source else ""
        declared = {b.name: b for b in bands}
        for band in declared.values():
            known = self.bands.get(band.name)
            if known is not None and known != band:
                raise InputError(f"{where}band {band.name!r} conflicts with its known definition: "
                                 f"{_differences(band, known)}")
        unknown = [b for b in sensor.bands if b not in self.bands and b not in declared]
        if unknown:
            raise BandError(f"{where}sensor {sensor.name!r}: unknown bands {unknown}; declare them first")
        if len(set(sensor.bands)) != len(sensor.bands):
            raise InputError(f"{where}sensor {sensor.name!r}: duplicate band names in {sensor.bands}")
        objects = tuple(declared.get(b) or self.bands[b] for b in sensor.bands)
        gsd = sensor.gsd or tuple(float(b.gsd_m) for b in objects)
        sensor = replace(sensor, gsd=gsd, descriptors=tuple(replace(b, gsd_m=g) for b, g in zip(objects, gsd)))
        for key in (sensor.name, *sensor.aliases):
            known_sensor = self.sensors.get(key)
            if known_sensor is not None and known_sensor != sensor:
                what = "sensor" if key == sensor.name else f"alias of sensor {sensor.name!r}"
                raise InputError(f"{where}{what} {key!r} conflicts with the known sensor {known_sensor.name!r}: "
                                 f"{_differences(sensor, known_sensor) or 'another sensor'}")
        added = {name: band for name, band in declared.items() if name not in self.bands}
        return Catalog({**self.bands, **added}, {**self.sensors, **dict.fromkeys((sensor.name, *sensor.aliases), sensor)})

    def with_bands(self, bands: Iterable[Band], source: str = "") -> "Catalog":
        """This catalog plus ``bands`` (one of the same name must be identical)."""
        return self.merge(Catalog({b.name: b for b in bands}), source)

    def merge(self, other: "Catalog", source: str = "") -> "Catalog":
        """Both catalogs' bands and sensors; a band or sensor of ``other`` that differs from this one's of
        the same name raises :class:`InputError` naming it (and ``source``)."""
        for band in other.bands.values():
            known = self.bands.get(band.name)
            if known is not None and known != band:
                where = f"{source}: " if source else ""
                raise InputError(f"{where}band {band.name!r} conflicts with its known definition: "
                                 f"{_differences(band, known)}")
        merged = Catalog({**other.bands, **self.bands}, self.sensors)
        for sensor in {s.name: s for s in other.sensors.values()}.values():
            merged = merged.with_sensor(sensor, sensor.band_objects(), source)
        return merged

    def describe(self, sensor: str) -> dict[str, Any]:
        """``sensor`` as the mapping of a sensor YAML file (:meth:`Sensor.describe`)."""
        return self.sensor(sensor).describe()

    def band_records(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{name: descriptor}`` of the named bands (:func:`band_record`): what a card seals."""
        return {name: band_record(self.band(name)) for name in names}

    @classmethod
    def from_records(cls, bands: Mapping[str, Any] = {}, sensors: Iterable[Any] = (),  # noqa: B006
                     source: str = "descriptors") -> "Catalog":
        """A catalog of fully described ``bands`` (``{name: descriptor}``, :func:`band_record`) and
        ``sensors`` (mappings as :meth:`describe` writes them); every band must be described (no name is
        looked up elsewhere). Raises :class:`InputError` naming ``source`` and what is wrong."""
        try:
            catalog = Catalog()
            for name, record in bands.items():
                if not isinstance(record, Mapping) or record.get("name", name) != name:
                    raise InputError(f"band {name!r}: descriptor must be a mapping of that band, got {record!r}")
                band, use = _parse_band(dict(record, name=name), catalog, described=True)
                if use:
                    raise InputError(f"band {name!r}: scale/offset belong to a sensor, not a band descriptor")
                catalog = catalog.with_bands([band])
            for spec in sensors:
                catalog = catalog.with_sensor(*_parse_sensor(spec, catalog, described=True))
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: invalid descriptor: {exc}") from None
        return catalog


def band_record(band: Band) -> dict[str, Any]:
    """A band's full descriptor as JSON: its identity fields that are set, and its ``gsd_m``."""
    record: dict[str, Any] = {"name": band.name, "kind": band.kind}
    for key in ("wavelength_nm", "range_nm", "bandwidth_nm", "polarisation", "frequency_band"):
        value = getattr(band, key)
        if value is not None:
            record[key] = list(value) if key == "range_nm" else value
    if band.range_nm is not None:
        record.pop("wavelength_nm", None)  # centred in its range unless said otherwise
        if band.wavelength_nm != sum(band.range_nm) / 2:
            record["wavelength_nm"] = band.wavelength_nm
    record["gsd_m"] = float(band.gsd_m)
    return record


_ACTIVE: ContextVar["Catalog | None"] = ContextVar("eosfed_sensor_catalog", default=None)


@contextmanager
def using(catalog: Catalog) -> Iterator[Catalog]:
    """Make ``catalog`` the one band and sensor names resolve in (:func:`current`) inside this block (this
    thread or task only): a run's federation catalog, a node's, a command's ``--sensors``."""
    token = _ACTIVE.set(catalog)
    try:
        yield catalog
    finally:
        _ACTIVE.reset(token)


def current() -> Catalog:
    """The catalog names resolve in: the one of the innermost :func:`using` block, else :func:`default`."""
    return _ACTIVE.get() or default()


def get_band(name: str, catalog: Catalog | None = None) -> Band:
    return (catalog or current()).band(name)


def get_sensor(name: str, catalog: Catalog | None = None) -> Sensor:
    return (catalog or current()).sensor(name)


def sensor_name(name: str, catalog: Catalog | None = None) -> str:
    """The canonical name of a known sensor or alias; an unknown name as given."""
    return (catalog or current()).sensor_name(name)


_SENSOR_KEYS = {f.name for f in fields(Sensor)} - {"gsd", "band_scale", "band_offset", "descriptors"}
_IDENTITY_KEYS = {f.name for f in fields(Band)} - {"name", "gsd_m"}
_USE_KEYS = ("gsd_m", "scale", "offset")


def _product_use(name: str, entry: dict[str, Any]) -> dict[str, float]:
    """The ``scale``/``offset`` a band's ``product`` fixes (:data:`PRODUCT_SCALES`); none without one."""
    if "product" not in entry:
        return {}
    product = entry["product"]
    if product not in PRODUCT_SCALES:
        raise InputError(f"band {name!r}: product {product!r} is not one of {sorted(PRODUCT_SCALES)}")
    given = sorted({"scale", "offset"} & set(entry))
    if given:
        raise InputError(f"band {name!r}: product {product!r} fixes its scale and offset; drop {given}")
    return {"scale": PRODUCT_SCALES[product], "offset": 0.0}


def _parse_band(entry: Any, catalog: Catalog, described: bool = False) -> tuple[Band, dict[str, float]]:
    """A YAML band entry -> (the band it names or declares, with this sensor's ``gsd_m`` when given;
    its per-band ``scale``/``offset``, given or fixed by its ``product``). A name alone, or a mapping
    without identity fields, is a band of ``catalog``; ``described``: every band must carry its identity."""
    if isinstance(entry, str) and not described:
        return catalog.band(entry), {}
    if not isinstance(entry, dict) or "name" not in entry:
        raise InputError(f"band entry {entry!r}: expected {'' if described else 'a band name or '}a mapping "
                         f"with a 'name'")
    name = str(entry["name"])
    unknown = sorted(set(entry) - {"name", "product", *_IDENTITY_KEYS, *_USE_KEYS})
    if unknown:
        raise InputError(f"band {name!r}: unknown fields {unknown}")
    use = {k: float(entry[k]) for k in _USE_KEYS if k in entry} | _product_use(name, entry)
    gsd = {"gsd_m": use.pop("gsd_m")} if "gsd_m" in use else {}
    identity = {k: entry[k] for k in _IDENTITY_KEYS if k in entry}
    if "range_nm" in identity:
        if not isinstance(identity["range_nm"], (list, tuple)) or len(identity["range_nm"]) != 2:
            raise InputError(f"band {name!r}: range_nm must be [lo, hi], got {identity['range_nm']!r}")
        identity["range_nm"] = tuple(identity["range_nm"])
    if described and (not identity or (set(identity) == {"kind"} and identity["kind"] not in AUXILIARY_KINDS)):
        if set(identity) != {"kind"} or identity["kind"] not in AUXILIARY_KINDS:
            raise InputError(f"band {name!r}: a descriptor needs its wavelength, range, polarisation or "
                             f"auxiliary kind, got {entry!r}")
    band = Band(name, **identity, **gsd) if identity else replace(catalog.band(name), **gsd)
    return band, use


def _parse_sensor(spec: Any, catalog: Catalog, described: bool = False) -> tuple[Sensor, list[Band]]:
    if not isinstance(spec, dict):
        raise InputError(f"expected a mapping per sensor, got {type(spec).__name__}")
    missing = [k for k in ("name", "bands") if k not in spec]
    if missing:
        raise InputError(f"missing fields {missing}")
    unknown = sorted(set(spec) - _SENSOR_KEYS)
    if unknown:
        raise InputError(f"sensor {spec['name']!r}: unknown fields {unknown}")
    if not isinstance(spec["bands"], list) or not spec["bands"]:
        raise InputError(f"sensor {spec['name']!r}: bands must be a non-empty list")
    parsed = [_parse_band(entry, catalog, described) for entry in spec["bands"]]
    bands = [band for band, _ in parsed]
    scale, offset = float(spec.get("scale", 1.0)), float(spec.get("offset", 0.0))
    per_band = any(use for _, use in parsed)
    sensor = Sensor(
        name=str(spec["name"]),
        bands=tuple(b.name for b in bands),
        scale=scale,
        offset=offset,
        nodata=spec.get("nodata"),
        dtype=str(spec.get("dtype", "float32")),
        description=str(spec.get("description", "")),
        aliases=tuple(spec.get("aliases", ())),
        band_scale=tuple(use.get("scale", scale) for _, use in parsed) if per_band else (),
        band_offset=tuple(use.get("offset", offset) for _, use in parsed) if per_band else (),
        complex=spec.get("complex"),
    )
    return sensor, bands


MAX_SENSOR_FILE_BYTES = 1 << 20


class _PlainLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: a sensor file cannot expand itself (no "billion laughs")."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 (yaml's signature)
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*name) are not allowed {self.peek_event().start_mark}")
        return super().compose_node(parent, index)


def load_sensor_yaml(path: str | Path, base: Catalog | None = None) -> Catalog:
    """``base`` (default: :func:`current`) plus the sensor (a mapping) or sensors (a list) described in a
    YAML file (module docstring); at most :data:`MAX_SENSOR_FILE_BYTES`, no aliases. Nothing is registered."""
    path = Path(path)
    catalog = current() if base is None else base
    try:
        if path.stat().st_size > MAX_SENSOR_FILE_BYTES:
            raise InputError(f"{path}: a sensor file is at most {MAX_SENSOR_FILE_BYTES} bytes")
        raw = yaml.load(path.read_text(), Loader=_PlainLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise FileNotFoundError(f"sensor file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    for spec in raw if isinstance(raw, list) else [raw]:
        try:
            catalog = catalog.with_sensor(*_parse_sensor(spec, catalog))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: invalid sensor description: {exc}") from exc
    return catalog


def sensor_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files of ``paths``: files, or folders of ``*.yaml`` files (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.yaml"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"sensor file not found: {path}")
    return files


def load_sensor_files(paths: Iterable[str | Path], base: Catalog | None = None) -> Catalog:
    """``base`` (default: :func:`current`) plus every sensor in ``paths``: YAML files, or folders of
    ``*.yaml`` files (sorted). Nothing is registered: the catalog is returned."""
    catalog = current() if base is None else base
    for file in sensor_files(paths):
        catalog = load_sensor_yaml(file, catalog)
    return catalog


def env_sensor_paths() -> list[Path]:
    """The files and folders listed in ``$EOSFED_SENSORS`` (``os.pathsep``-separated)."""
    return [Path(p) for p in os.environ.get(SENSORS_ENV, "").split(os.pathsep) if p]


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


def equivalent_band(want: str | Band, have: Sequence[str | Band], tolerance_nm: float,
                    catalog: Catalog | None = None) -> str | None:
    """The name of the band of ``have`` that can stand in for ``want``: itself, the same SAR polarisation
    at the same frequency band (undeclared matches only undeclared: an L-band HH never stands in for a
    C-band HH), or the closest centre wavelength within ``tolerance_nm``. ``None`` if there is none
    (auxiliary bands stand in for nothing). Bands are descriptors, or names resolved in ``catalog``
    (default: :func:`current`)."""
    resolve = (lambda b: b if isinstance(b, Band) else get_band(b, catalog))
    target = resolve(want)
    names = [b.name if isinstance(b, Band) else b for b in have]
    if target.name in names:
        return target.name
    if target.is_auxiliary:
        return None
    best, best_gap = None, tolerance_nm
    for item in have:
        band = resolve(item)
        if band.is_auxiliary:
            continue
        if target.is_sar or band.is_sar:
            if (target.polarisation is not None and band.polarisation == target.polarisation
                    and band.frequency_band == target.frequency_band):
                return band.name
            continue
        gap = abs(band.wavelength_nm - target.wavelength_nm)  # type: ignore[operator]
        if gap <= best_gap:
            best, best_gap = band.name, gap
    return best


# --- built-in sensors -------------------------------------------------------------------------

_S2 = [
    Band("B01", 442.7, gsd_m=60), Band("B02", 492.4, gsd_m=10), Band("B03", 559.8, gsd_m=10),
    Band("B04", 664.6, gsd_m=10), Band("B05", 704.1, gsd_m=20), Band("B06", 740.5, gsd_m=20),
    Band("B07", 782.8, gsd_m=20), Band("B08", 832.8, gsd_m=10), Band("B8A", 864.7, gsd_m=20),
    Band("B09", 945.1, gsd_m=60), Band("B10", 1373.5, gsd_m=60), Band("B11", 1613.7, gsd_m=20),
    Band("B12", 2202.4, gsd_m=20),
]
_S1 = [Band("VV", polarisation="VV", gsd_m=10, frequency_band="C"),
       Band("VH", polarisation="VH", gsd_m=10, frequency_band="C")]
_OLI = [
    Band("OLI_B1", 443.0, gsd_m=30), Band("OLI_B2", 482.0, gsd_m=30), Band("OLI_B3", 561.5, gsd_m=30),
    Band("OLI_B4", 654.5, gsd_m=30), Band("OLI_B5", 865.0, gsd_m=30), Band("OLI_B6", 1608.5, gsd_m=30),
    Band("OLI_B7", 2200.5, gsd_m=30), Band("OLI_B9", 1373.5, gsd_m=30),
]
_CAMERA = [
    Band("BLUE", 470.0, gsd_m=0.5), Band("GREEN", 550.0, gsd_m=0.5),
    Band("RED", 640.0, gsd_m=0.5), Band("NIR", 820.0, gsd_m=0.5),
]

_BUILTIN_SENSORS = (
    (Sensor(
        "sentinel2_l1c",
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"),
        scale=1e-4, nodata=0, dtype="uint16", aliases=("s2_l1c",),
        description="Sentinel-2 MSI top-of-atmosphere, 13 bands in EuroSAT order, DN = reflectance x 10000",
    ), _S2),
    (Sensor(
        "sentinel2_l2a",
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        scale=1e-4, nodata=0, dtype="uint16", aliases=("s2", "s2_l2a", "sentinel2"),
        description="Sentinel-2 MSI surface reflectance, 12 bands (no cirrus B10), DN = reflectance x 10000",
    ), ()),
    (Sensor("sentinel1_grd", ("VV", "VH"), aliases=("s1", "sentinel1"),
            description="Sentinel-1 C-band GRD backscatter, VV and VH in dB"), _S1),
    (Sensor(
        "landsat8_oli",
        ("OLI_B1", "OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7"),
        scale=2.75e-5, offset=-0.2, nodata=0, dtype="uint16", aliases=("landsat9_oli", "landsat", "l8"),
        description="Landsat-8/9 OLI Collection-2 surface reflectance (scale 2.75e-5, offset -0.2)",
    ), _OLI),
    (Sensor("aerial_rgbn", ("RED", "GREEN", "BLUE", "NIR"), scale=1 / 255, nodata=None, dtype="uint8",
            aliases=("aerial",), description="Aerial orthophoto, 8-bit RGB + near infrared, sub-metre"), _CAMERA),
    (Sensor("rgb", ("RED", "GREEN", "BLUE"), scale=1 / 255, nodata=None, dtype="uint8",
            description="Plain 8-bit RGB camera"), ()),
)


@functools.cache
def builtin() -> Catalog:
    """The built-in catalog: the sensors above and every ``configs/sensors/*.yaml`` of this checkout."""
    catalog = Catalog()
    for sensor, bands in _BUILTIN_SENSORS:
        catalog = catalog.with_sensor(sensor, bands)
    return load_sensor_files([SENSOR_CONFIG_DIR], catalog) if SENSOR_CONFIG_DIR.is_dir() else catalog


@functools.cache
def _with_files(paths: tuple[str, ...]) -> Catalog:
    return load_sensor_files(paths, builtin())


def default() -> Catalog:
    """The catalog a process starts with: :func:`builtin` plus the sensor files of ``$EOSFED_SENSORS``."""
    return _with_files(tuple(str(p) for p in env_sensor_paths()))
