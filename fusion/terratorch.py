"""eosfed artifacts as TerraTorch backbones; needs the ``terratorch`` extra, and nothing else imports it.

Importing this module registers three factories in TerraTorch's ``TERRATORCH_BACKBONE_REGISTRY``:
``eosfed_student`` (a student folder), ``eosfed_specialist`` (a specialist folder) and
``eosfed_ensemble`` (a registry folder: its frozen specialists). Each builds, from a local folder
``path`` (nothing is fetched), an :class:`EosfedBackbone` on the input's ``bands`` (names, in the
input's channel order) as ``eosfed finetune`` sees an encoder (:class:`fusion.finetune.BandView`): a
specialist reads each of its bands from the band of that name or a stand-in within ``tolerance_nm``
(:func:`fusion.views.plan_view`), a student reads any bands, an ensemble runs the members that can
read them. The input is in physical units, or, with ``sensor``, that sensor's stored values, calibrated
with its per-band scale and offset (:func:`geodata.raster.band_calibration`); ``sensor_files``: sensor
YAML files the band names are read in (bands such as ``TCI_R`` are declared only there; a student's or
specialist's own bands are described by its card). The backbone exposes
what TerraTorch's ``EncoderDecoderFactory`` and its UPerNet decoder read: ``out_channels`` (one width
per scale, strides 4, 8, 16, 32) and ``forward(x) -> list[Tensor]``.

In a TerraTorch YAML (``configs/terratorch/student_upernet.yaml``): ``custom_modules_path:
configs/terratorch/eosfed_backbones`` (a folder whose import runs this one) and ``model_args:
{backbone: eosfed_student, backbone_path: ..., backbone_bands: [...]}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import nn

from fusion.encoders import encoder_kind, load_encoder
from fusion.finetune import BandView
from geodata.errors import InputError
from geodata.raster import band_calibration
from geodata.sensors import BandError, Catalog, current, load_sensor_files, using

__all__ = ["EosfedBackbone", "eosfed_student", "eosfed_specialist", "eosfed_ensemble"]

log = logging.getLogger(__name__)


class EosfedBackbone(nn.Module):
    """An eosfed encoder on a fixed band tuple: ``forward(x) -> 4 scales``, ``out_channels`` their widths."""

    def __init__(self, view: BandView, sensor: str | None = None, catalog: Catalog | None = None) -> None:
        super().__init__()
        self.view, self.bands = view, view.bands
        self.catalog = catalog or current()  # what the band names mean (the backbone's --sensors files)
        n = len(self.bands)
        scale, offset = (band_calibration(self.catalog.sensor(sensor), self.bands) if sensor is not None else
                         (np.ones(n, np.float32), np.zeros(n, np.float32)))
        self.register_buffer("scale", torch.from_numpy(scale).view(1, n, 1, 1), persistent=False)
        self.register_buffer("offset", torch.from_numpy(offset).view(1, n, 1, 1), persistent=False)
        self.out_channels = view.feature_shapes()[0]
        self.train()  # opened in eval mode; an ensemble's specialists stay frozen in eval

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise InputError(f"expected [B, {len(self.bands)}, H, W] in the bands {self.bands}, got {tuple(x.shape)}")
        with using(self.catalog):
            return self.view(x * self.scale + self.offset)


def _build(kind: str, path: str | Path, bands: Sequence[str] | None, sensor: str | None,
           sensor_files: Sequence[str | Path], tolerance_nm: float | None,
           own_bands: Callable[[nn.Module], Sequence[str]] | None = None) -> EosfedBackbone:
    """The :class:`EosfedBackbone` of the ``kind`` folder at ``path``. A band error is re-raised as a
    ``ValueError``: TerraTorch's registry takes a ``KeyError`` for "no such backbone" and drops its message."""
    path = Path(path)
    if tolerance_nm is not None:  # TerraTorch's model_args are untyped: a YAML or flag value may come as text
        try:
            tolerance_nm = float(tolerance_nm)
        except ValueError:
            raise InputError(f"backbone_tolerance_nm must be a number of nm, got {tolerance_nm!r}") from None
    found = encoder_kind(path)
    if found != kind:
        raise InputError(f"{path}: a {found}, not a {kind} (use the eosfed_{'ensemble' if found == 'registry' else found} "
                         "backbone)")
    try:
        with using(load_sensor_files(sensor_files)) as catalog:
            encoder = load_encoder(path, tolerance_nm)
            if bands is None:
                if own_bands is None:
                    raise InputError(f"{path}: a {kind} reads any bands: give bands (backbone_bands) in the input's order")
                bands = own_bands(encoder)
            backbone = EosfedBackbone(BandView(encoder, tuple(bands), tolerance_nm), sensor, catalog)
    except BandError as e:
        raise InputError(f"{path}: {e}") from None
    log.info("TerraTorch backbone eosfed_%s from %s on bands %s: out_channels %s", kind, path, backbone.bands,
             backbone.out_channels)
    return backbone


@TERRATORCH_BACKBONE_REGISTRY.register
def eosfed_student(path: str | Path, bands: Sequence[str] | None = None, sensor: str | None = None,
                   sensor_files: Sequence[str | Path] = ()) -> EosfedBackbone:
    """The student at ``path`` (trainable), reading ``bands`` (module docstring)."""
    return _build("student", path, bands, sensor, sensor_files, None)


@TERRATORCH_BACKBONE_REGISTRY.register
def eosfed_specialist(path: str | Path, tolerance_nm: float, bands: Sequence[str] | None = None,
                      sensor: str | None = None, sensor_files: Sequence[str | Path] = ()) -> EosfedBackbone:
    """The specialist at ``path`` (trainable), its bands read from ``bands`` (default: its own) by name or
    wavelength within ``tolerance_nm`` (the run's setting; module docstring)."""
    return _build("specialist", path, bands, sensor, sensor_files, tolerance_nm, lambda specialist: specialist.bands)


@TERRATORCH_BACKBONE_REGISTRY.register
def eosfed_ensemble(path: str | Path, tolerance_nm: float, bands: Sequence[str] | None = None,
                    sensor: str | None = None, sensor_files: Sequence[str | Path] = ()) -> EosfedBackbone:
    """The registry at ``path`` as its ensemble (frozen specialists), reading ``bands`` (module docstring)."""
    return _build("registry", path, bands, sensor, sensor_files, tolerance_nm)
