"""eosfed: the ``eosfed <command>`` entry point, and :func:`create_model` (timm-style opening of any
eosfed artifact, :mod:`fusion.models`), imported on first use so the CLI starts without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["create_model"]


def create_model(path: str | Path, features_only: bool = False, bands: Sequence[str] | None = None,
                 map_location: str = "cpu", tolerance_nm: float | None = None) -> Any:
    """:func:`fusion.models.create_model`; ``tolerance_nm`` (how far a specialist's band may be stood in for
    by an input band of another name) defaults to the run's setting, ``ExperimentConfig.tolerance_nm``."""
    from fusion.models import create_model as create
    from pipeline.settings import ExperimentConfig

    return create(path, features_only, bands, map_location,
                  tolerance_nm=ExperimentConfig.tolerance_nm if tolerance_nm is None else tolerance_nm)
