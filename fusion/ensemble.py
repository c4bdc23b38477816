"""The ensemble: frozen specialists, each on its own view of the input, standardised and concatenated.

For an input with bands ``bands`` every specialist gets a :class:`~fusion.views.ViewPlan`; only the
applicable ones run (under ``torch.inference_mode``), so a specialist that is not in the ensemble, or
cannot read the input, costs nothing. Each one's multi-scale features are standardised with its
:class:`~fusion.featstats.FeatureStats` (measured on proxy data by :meth:`Ensemble.calibrate`) and
concatenated per scale in the ensemble's specialist order. An optional 1x1 fusion per scale projects
the concatenation to fixed widths; for a partial band set it uses only the weight columns of the
specialists that ran (the same as zero-filling the others, without their compute).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusion.featstats import FeatureMoments, FeatureStats, measured_stats
from fusion.registry import Registry
from fusion.views import ViewPlan, plan_view
from specialists import Specialist
from specialists.trunk import pyramid_pool
from geodata.errors import InputError

__all__ = ["Ensemble", "run_view"]

log = logging.getLogger(__name__)


def run_view(specialist: Specialist, plan: ViewPlan, x: torch.Tensor) -> list[torch.Tensor]:
    """The specialist's raw multi-scale features on its view of ``x`` (inference mode)."""
    with torch.inference_mode():
        return specialist(plan.select(x))


class Ensemble(nn.Module):
    """Frozen specialists behind one ``forward(x, bands)`` / ``pooled(x, bands)`` interface."""

    def __init__(
        self,
        specialists: Mapping[str, Specialist],
        stats: Mapping[str, FeatureStats] | None = None,
        *,
        tolerance_nm: float,
        fuse_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not specialists:
            raise InputError("an ensemble needs at least one specialist")
        self.specialists = nn.ModuleDict(dict(specialists))
        for p in self.specialists.parameters():
            p.requires_grad_(False)
        self.specialists.eval()
        self.tolerance_nm = tolerance_nm
        self.stats: dict[str, FeatureStats] = {}
        for name, spec in specialists.items():
            given = (stats or {}).get(name)
            if given is None:
                log.info("ensemble: specialist %s has no proxy feature statistics yet (identity until calibrated)",
                            name)
                given = FeatureStats.identity(spec.feature_dims)
            self.stats[name] = given
        self.fusion: nn.ModuleList | None = None
        if fuse_dims is not None:
            widths = [sum(s.feature_dims[i] for s in specialists.values()) for i in range(len(fuse_dims))]
            self.fusion = nn.ModuleList(nn.Conv2d(w, d, 1) for w, d in zip(widths, fuse_dims))
        self._plans: dict[tuple[str, ...], list[ViewPlan]] = {}

    @classmethod
    def from_registry(
        cls,
        registry: Registry | str,
        names: Iterable[str] | None = None,
        *,
        tolerance_nm: float,
        fuse_dims: Sequence[int] | None = None,
        map_location: str = "cpu",
    ) -> "Ensemble":
        """Load the registry's specialists (all, or ``names``) with their stored feature statistics."""
        registry = registry if isinstance(registry, Registry) else Registry(registry)
        specialists = registry.load_all(names, map_location)
        stats = {n: s for n in specialists if (s := registry.feature_stats(n)) is not None}
        return cls(specialists, stats, tolerance_nm=tolerance_nm, fuse_dims=fuse_dims)

    def train(self, mode: bool = True) -> "Ensemble":
        super().train(mode)
        self.specialists.eval()  # frozen: batch statistics and dropout never change
        return self

    @property
    def names(self) -> list[str]:
        return list(self.specialists)

    def plan(self, bands: Sequence[str]) -> list[ViewPlan]:
        """One view plan per specialist, in ensemble order (cached per band tuple)."""
        key = tuple(bands)
        if key not in self._plans:
            self._plans[key] = [plan_view(n, s.descriptors, key, self.tolerance_nm) for n, s in self.specialists.items()]
        return self._plans[key]

    def applicable(self, bands: Sequence[str]) -> list[str]:
        return [p.specialist for p in self.plan(bands) if p.applicable]

    def _require_applicable(self, bands: Sequence[str]) -> list[ViewPlan]:
        plans = [p for p in self.plan(bands) if p.applicable]
        if not plans:
            raise InputError(f"no specialist of the ensemble can read bands {tuple(bands)}: "
                             + "; ".join(p.describe() for p in self.plan(bands)))
        return plans

    def feature_dims(self, bands: Sequence[str]) -> tuple[int, ...]:
        """Per-scale widths of ``forward`` for an input with ``bands``."""
        if self.fusion is not None:
            return tuple(conv.out_channels for conv in self.fusion)
        plans = self._require_applicable(bands)
        dims = [self.specialists[p.specialist].feature_dims for p in plans]
        return tuple(sum(d[i] for d in dims) for i in range(len(dims[0])))

    def num_params(self, bands: Sequence[str] | None = None) -> int:
        """Parameters that run for ``bands`` (all specialists when ``None``)."""
        names = self.names if bands is None else self.applicable(bands)
        return sum(p.numel() for n in names for p in self.specialists[n].parameters())

    def specialist_features(self, x: torch.Tensor, bands: Sequence[str]) -> dict[str, list[torch.Tensor]]:
        """Standardised multi-scale features of every applicable specialist (others do not run)."""
        out = {}
        for plan in self._require_applicable(bands):
            raw = run_view(self.specialists[plan.specialist], plan, x)
            with torch.no_grad():
                out[plan.specialist] = self.stats[plan.specialist].standardise(raw)
        return out

    def forward(self, x: torch.Tensor, bands: Sequence[str]) -> list[torch.Tensor]:
        per_specialist = self.specialist_features(x, bands)
        scales = [torch.cat(fs, dim=1) for fs in zip(*per_specialist.values())]
        if self.fusion is None:
            return scales
        columns = self._fusion_columns(list(per_specialist))
        return [F.conv2d(f, conv.weight[:, cols], conv.bias) for f, conv, cols in zip(scales, self.fusion, columns)]

    def pooled(self, x: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """:func:`specialists.trunk.pyramid_pool` of :meth:`forward`: every scale of every applicable
        specialist, standardised."""
        return pyramid_pool(self.forward(x, bands))

    def _fusion_columns(self, names: list[str]) -> list[torch.Tensor]:
        columns = []
        for i in range(len(self.fusion)):
            start, cols = 0, []
            for n, spec in self.specialists.items():
                width = spec.feature_dims[i]
                if n in names:
                    cols.append(torch.arange(start, start + width))
                start += width
            columns.append(torch.cat(cols))
        return columns

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Mapping], max_batches: int | None = None) -> dict[str, FeatureStats]:
        """Measure every specialist's feature statistics on proxy batches (``{"image", "bands"}``).

        Each specialist sees the batches it can read; one that can read none keeps its statistics (a
        warning says so). Returns the new statistics (also installed).
        """
        moments = {n: FeatureMoments() for n in self.names}
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            for plan in self.plan(batch["bands"]):
                if plan.applicable:
                    moments[plan.specialist].update(run_view(self.specialists[plan.specialist], plan, batch["image"]))
        measured = measured_stats(moments)
        self.stats.update(measured)
        return measured
