"""Tiny specialists and proxy batches shared by the fusion tests (32x32 inputs)."""

from __future__ import annotations

from pathlib import Path

import torch

from fusion.registry import Registry
from pipeline.settings import ExperimentConfig
from specialists import Specialist, SpecialistCard

TOLERANCE_NM = ExperimentConfig.tolerance_nm  # the run's default setting

S2_BANDS = ("B02", "B03", "B04", "B08")
S1_BANDS = ("VV", "VH")
AERIAL_BANDS = ("RED", "GREEN", "BLUE", "NIR")


def make_specialist(name: str, sensor: str, bands: tuple[str, ...], seed: int = 0) -> Specialist:
    """An untrained convnextv2_atto specialist (deterministic from ``seed``)."""
    torch.manual_seed(seed)
    card = SpecialistCard(name=name, institutions=[f"{name}-inst"], sensor=sensor, bands=list(bands),
                          norm_mean=[0.1] * len(bands), norm_std=[0.1] * len(bands), task="scene",
                          task_type="classification", classes=["a", "b"])
    return Specialist.from_card(card).eval()


def make_registry(root: Path) -> Registry:
    """A registry of three tiny specialists: Sentinel-2 (4 bands), Sentinel-1, aerial RGBN."""
    registry = Registry.create(root)
    registry.add(make_specialist("s2", "sentinel2_l2a", S2_BANDS, seed=1))
    registry.add(make_specialist("s1", "sentinel1_grd", S1_BANDS, seed=2))
    registry.add(make_specialist("aerial", "aerial_rgbn", AERIAL_BANDS, seed=3))
    return registry


def proxy_batches(bands: tuple[str, ...], n_batches: int = 2, batch: int = 4, size: int = 32,
                  seed: int = 0, prefix: str = "p") -> list[dict]:
    """Random physical-unit batches (``{"image", "bands", "id"}``) with unique ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        image = torch.rand(batch, len(bands), size, size, generator=g) * 0.4
        ids = [f"{prefix}-{'-'.join(bands)}-{b}-{i}" for i in range(batch)]
        out.append({"image": image, "bands": bands, "id": ids})
    return out
