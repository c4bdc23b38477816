"""The two baselines every score sits beside: a random-initialised encoder of the same size, and band statistics.

- :func:`untrained_twin`: an untrained student with the compared student's variant and depths (or the
  default variant), normalised with the task's own band statistics, so the deep features' gain over
  an untrained network of the same shape is visible.
- :class:`BandStatistics`: no learned weights at all. ``pooled`` is the per-band mean and standard
  deviation of the tile (what a logistic regression on band statistics reads); ``forward`` hands the
  bands themselves to the probe as one map (per-pixel bands on the encoders' finest grid, for segmentation).

Both go through exactly the probes the encoders do (:mod:`fusion.probes`), with the same label
fractions and seeds; their names in every table are :data:`RANDOM_INIT` and :data:`BAND_STATS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusion.student import Student, band_stats_table
from geodata.stats import BandStats
from specialists.trunk import DEFAULT_VARIANT

__all__ = ["BAND_STATS", "RANDOM_INIT", "BandStatistics", "baseline_encoders", "input_stats", "untrained_twin"]

RANDOM_INIT = "random-init"
BAND_STATS = "band-stats"


def input_stats(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2 * bands]``: each band's mean, then each band's standard deviation, over the tile."""
    x = x.float()
    return torch.cat([x.mean(dim=(-2, -1)), x.std(dim=(-2, -1), unbiased=False)], dim=1)


class BandStatistics(nn.Module):
    """The band-statistics baseline behind the probe interface (no parameters). Its map is the bands
    average-pooled onto a ``grid``-pixel grid: the stride of the encoders' finest maps (4 for ConvNeXt),
    so the segmentation probe reads bands on the grid it reads features on (and stays as cheap)."""

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor, bands: Sequence[str]) -> list[torch.Tensor]:
        return [F.avg_pool2d(x.float(), self.grid, ceil_mode=True)]

    def pooled(self, x: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """``[B, 2 * bands]``: each band's mean, then each band's standard deviation, over the tile."""
        return input_stats(x)


def untrained_twin(stats: BandStats | Mapping[str, Sequence[float]], like: Student | None = None,
                seed: int = 0) -> Student:
    """An untrained student shaped like ``like`` (default: the default variant), normalised with ``stats``."""
    variant = like.card.variant if like is not None else DEFAULT_VARIANT
    depths = like.card.depths if like is not None else None
    return Student.create(variant, band_stats_table([stats]), name=RANDOM_INIT, seed=seed, depths=depths).eval()


def baseline_encoders(stats: BandStats | Mapping[str, Sequence[float]], like: Student | None = None,
                      seed: int = 0) -> dict[str, nn.Module]:
    """Both baselines by table name: the random twin of ``like`` and band statistics."""
    return {RANDOM_INIT: untrained_twin(stats, like, seed), BAND_STATS: BandStatistics()}
