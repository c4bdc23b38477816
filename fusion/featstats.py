"""Per-channel feature statistics measured on proxy data, used to standardise specialists' features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import logging

import torch
from geodata.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["ChannelMoments", "FeatureMoments", "FeatureStats", "global_pool", "measured_stats"]

_MIN_STD = 1e-4


def global_pool(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C]`` spatial mean (the pooled feature every encoder exposes)."""
    return feature.mean(dim=(-2, -1))


class ChannelMoments:
    """Running per-channel mean and std over every axis but the channel axis 1 (float64 sums); with
    ``covariance`` also the channel covariance (for :func:`fusion.phis.phi_s`)."""

    def __init__(self, covariance: bool = False) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None
        self.tracks_covariance = covariance
        self.total_outer: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        if self.total is None:
            self.total, self.total_sq = x.sum(1), x.square().sum(1)
        else:
            self.total += x.sum(1)
            self.total_sq += x.square().sum(1)
        if self.tracks_covariance:
            self.total_outer = x @ x.T if self.total_outer is None else self.total_outer + x @ x.T
        self.count += x.shape[1]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.total is None:
            raise InputError("no features were seen; cannot compute channel statistics")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp_min(0)
        return mean.float(), var.sqrt().float().clamp_min(_MIN_STD)

    def covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, covariance)`` of the channels (float64); needs ``covariance=True``."""
        if self.total is None or self.total_outer is None:
            raise InputError("no features were seen, or no covariance was tracked")
        mean = self.total / self.count
        return mean, self.total_outer / self.count - torch.outer(mean, mean)


@dataclass
class FeatureStats:
    """Channel mean/std of each scale of one specialist's features, plus of its pooled feature."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    pooled_mean: torch.Tensor
    pooled_std: torch.Tensor

    @classmethod
    def identity(cls, dims: Sequence[int]) -> "FeatureStats":
        return cls([torch.zeros(d) for d in dims], [torch.ones(d) for d in dims],
                   torch.zeros(dims[-1]), torch.ones(dims[-1]))

    def standardise(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for f, mean, std in zip(features, self.means, self.stds):
            out.append((f - mean.to(f.device).view(1, -1, 1, 1)) / std.to(f.device).view(1, -1, 1, 1))
        return out

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"pooled.mean": self.pooled_mean, "pooled.std": self.pooled_std}
        for i, (m, s) in enumerate(zip(self.means, self.stds)):
            out[f"scale{i}.mean"], out[f"scale{i}.std"] = m, s
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = "feature stats") -> "FeatureStats":
        n = sum(1 for k in tensors if k.startswith("scale") and k.endswith(".mean"))
        try:
            return cls([tensors[f"scale{i}.mean"] for i in range(n)], [tensors[f"scale{i}.std"] for i in range(n)],
                       tensors["pooled.mean"], tensors["pooled.std"])
        except KeyError as exc:
            raise InputError(f"{source}: missing tensor {exc}") from None


class FeatureMoments:
    """Streaming :class:`FeatureStats`: ``update`` with each batch's multi-scale features."""

    def __init__(self) -> None:
        self.scales: list[ChannelMoments] = []
        self.pooled = ChannelMoments()

    def update(self, features: Sequence[torch.Tensor]) -> None:
        if not self.scales:
            self.scales = [ChannelMoments() for _ in features]
        for moments, f in zip(self.scales, features):
            moments.update(f)
        self.pooled.update(global_pool(features[-1]))

    def result(self) -> FeatureStats:
        if not self.scales:
            raise InputError("no features were seen; cannot compute feature statistics")
        results = [m.result() for m in self.scales]
        return FeatureStats([r[0] for r in results], [r[1] for r in results], *self.pooled.result())


def measured_stats(moments: Mapping[str, FeatureMoments]) -> dict[str, FeatureStats]:
    """Each specialist's statistics from its ``moments``; one that saw no input keeps its own (a warning says
    so); an :class:`InputError` when none saw any."""
    unseen = [n for n, m in moments.items() if not m.scales]
    if moments and len(unseen) == len(moments):
        raise InputError(f"calibration data has no input that any of {unseen} can read")
    if unseen:
        log.warning("calibration data has no input that specialists %s can read; they keep their statistics", unseen)
    return {n: m.result() for n, m in moments.items() if m.scales}
