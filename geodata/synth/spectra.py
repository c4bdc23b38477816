"""Land-cover classes, surface materials and their spectral / radar signatures.

Optical rendering mixes *materials* (green vegetation, dry soil, asphalt, snow, ...) whose
reflectance spectra are tabulated at knot wavelengths from 400 to 2500 nm (values shaped after
typical laboratory library spectra: chlorophyll absorption in the red, red edge near 700-750 nm,
NIR plateau, leaf-water dips near 1450/1950 nm, snow dark in the SWIR) and interpolated at each
band's centre wavelength, so any registered optical sensor renders. Radar rendering uses per-class
C-band backscatter in dB for VV and VH.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from geodata.sensors import get_band
from geodata.errors import InputError

__all__ = ["CLASSES", "MATERIALS", "BACKSCATTER_DB", "reflectance", "material_matrix", "backscatter_linear"]

CLASSES: tuple[str, ...] = (
    "water", "forest", "grassland", "cropland", "bare_soil", "urban", "wetland", "snow_ice",
)

# wavelength (nm) -> reflectance knots, linearly interpolated; flat beyond the ends.
_LIBRARY: dict[str, dict[float, float]] = {
    "water_clear": {400: .060, 450: .060, 500: .055, 550: .045, 600: .025, 650: .015, 700: .010,
                    750: .006, 800: .004, 900: .003, 1000: .002, 1600: .001, 2500: .001},
    "water_turbid": {400: .070, 500: .080, 550: .100, 600: .090, 650: .080, 700: .060, 750: .030,
                     800: .020, 900: .010, 1000: .005, 1600: .002, 2500: .001},
    "green_veg": {400: .030, 450: .040, 500: .050, 550: .100, 600: .070, 650: .040, 680: .035,
                  700: .090, 720: .220, 740: .360, 760: .440, 800: .470, 850: .480, 900: .480,
                  950: .440, 1000: .460, 1100: .450, 1200: .400, 1300: .410, 1400: .200, 1450: .150,
                  1500: .240, 1600: .300, 1700: .290, 1800: .240, 1900: .080, 2000: .100, 2100: .150,
                  2200: .170, 2300: .130, 2400: .090, 2500: .060},
    "dry_veg": {400: .060, 500: .090, 550: .120, 600: .160, 650: .190, 680: .200, 700: .220,
                750: .260, 800: .290, 900: .310, 1000: .330, 1200: .360, 1400: .280, 1500: .330,
                1600: .380, 1800: .370, 1900: .250, 2000: .280, 2200: .330, 2300: .290, 2500: .220},
    "conifer": {400: .020, 450: .025, 500: .030, 550: .060, 600: .040, 650: .025, 680: .022,
                700: .050, 720: .140, 740: .240, 760: .300, 800: .330, 900: .330, 950: .310,
                1000: .320, 1200: .280, 1400: .120, 1500: .150, 1600: .190, 1800: .150, 1900: .050,
                2000: .060, 2200: .090, 2300: .070, 2500: .040},
    "soil_dry": {400: .080, 450: .100, 500: .130, 550: .160, 600: .200, 650: .230, 700: .250,
                 800: .280, 900: .300, 1000: .310, 1200: .340, 1400: .320, 1450: .300, 1600: .380,
                 1800: .390, 1900: .340, 2000: .360, 2200: .360, 2300: .340, 2500: .320},
    "soil_wet": {400: .040, 450: .050, 500: .065, 550: .080, 600: .100, 650: .115, 700: .125,
                 800: .140, 900: .150, 1000: .150, 1200: .150, 1400: .090, 1450: .070, 1600: .120,
                 1800: .120, 1900: .060, 2000: .070, 2200: .090, 2300: .080, 2500: .070},
    "asphalt": {400: .050, 500: .060, 600: .070, 700: .080, 800: .090, 1000: .100, 1600: .120,
                2200: .120, 2500: .110},
    "concrete": {400: .200, 500: .250, 600: .280, 700: .300, 800: .310, 1000: .320, 1600: .340,
                 2200: .300, 2500: .280},
    "roof_tile": {400: .060, 500: .070, 550: .080, 600: .150, 650: .250, 700: .300, 800: .350,
                  1000: .400, 1600: .450, 2200: .400, 2500: .380},
    "roof_dark": {400: .040, 700: .045, 1000: .050, 1600: .060, 2500: .055},
    "metal": {400: .380, 600: .420, 800: .430, 1000: .420, 1600: .380, 2200: .330, 2500: .300},
    "snow": {400: .950, 500: .950, 600: .930, 700: .900, 800: .850, 900: .780, 1000: .650,
             1030: .550, 1100: .600, 1200: .450, 1300: .400, 1400: .100, 1500: .050, 1600: .040,
             1700: .060, 1800: .070, 1900: .020, 2000: .030, 2200: .050, 2300: .030, 2500: .020},
    "ice": {400: .700, 500: .680, 600: .620, 700: .520, 800: .400, 900: .280, 1000: .150,
            1200: .060, 1400: .020, 1600: .010, 2500: .010},
}
MATERIALS: tuple[str, ...] = tuple(_LIBRARY)

# C-band backscatter (dB, ~35 deg incidence) per class: (VV, VH). Textures modulate it per pixel.
BACKSCATTER_DB: dict[str, tuple[float, float]] = {
    "water": (-21.0, -28.0),     # specular: almost nothing returns
    "forest": (-8.0, -13.5),     # canopy volume scattering, strong cross-pol
    "grassland": (-11.0, -18.0),
    "cropland": (-10.5, -17.5),
    "bare_soil": (-12.5, -21.0),  # surface scattering, weak cross-pol
    "urban": (-5.0, -12.0),      # double bounce off walls and ground
    "wetland": (-9.5, -17.0),    # flooded vegetation double bounce
    "snow_ice": (-14.0, -22.0),
}


def reflectance(material: str, wavelength_nm: float | np.ndarray) -> np.ndarray:
    """Surface reflectance of a material at the given wavelength(s)."""
    try:
        knots = _LIBRARY[material]
    except KeyError:
        raise InputError(f"unknown material {material!r}; known: {list(MATERIALS)}") from None
    return np.interp(wavelength_nm, list(knots), list(knots.values()))


@lru_cache(maxsize=64)
def material_matrix(bands: Sequence[str]) -> np.ndarray:
    """Reflectance of every material at every band: float32 ``[len(bands), len(MATERIALS)]``.

    Raises ``ValueError`` for a SAR band (it has no wavelength).
    """
    wavelengths = []
    for name in bands:
        band = get_band(name)
        if band.wavelength_nm is None:
            raise InputError(f"band {name!r} is a SAR channel; optical rendering needs wavelengths")
        wavelengths.append(band.wavelength_nm)
    table = np.stack([reflectance(m, np.asarray(wavelengths)) for m in MATERIALS], axis=1)
    table = table.astype(np.float32)
    table.setflags(write=False)
    return table


def backscatter_linear(polarisation: str) -> np.ndarray:
    """Per-class backscatter in linear power for ``"VV"`` or ``"VH"``: float32 ``[len(CLASSES)]``."""
    index = {"VV": 0, "VH": 1}.get(polarisation)
    if index is None:
        raise InputError(f"no backscatter model for polarisation {polarisation!r} (have VV, VH)")
    return np.array([10 ** (BACKSCATTER_DB[c][index] / 10) for c in CLASSES], dtype=np.float32)
