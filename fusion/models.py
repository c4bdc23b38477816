"""``create_model``: open any eosfed artifact the way timm opens a model (``eosfed.create_model``).

A student, a specialist, a registry (the ensemble) or a fine-tuned task model, from its folder, as one
``nn.Module`` in eval mode that takes ``[B, len(bands), H, W]`` in physical units in the order of
``model.pretrained_cfg["bands"]`` (a student or ensemble reads any bands: give ``bands``). Outputs:
``features_only=True`` the 4 feature maps (``model.feature_info``: channels and reductions per
scale), else the pooled feature ``[B, num_features]`` (every scale's channel means and stds; the logits for a task model). ``pretrained_cfg`` holds
what timm keeps there: the kind, the bands with their normalisation, the source and the weights'
sha256. Nothing is fetched: ``path`` is a local folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fusion.encoders import encoder_kind, open_encoder
from fusion.ensemble import Ensemble
from fusion.finetune import TASK_MODEL_KIND, load_task_model
from fusion.student import Student
from specialists.artifact import CARD_FILE
from geodata.errors import InputError

__all__ = ["create_model", "EosfedModel", "FeatureInfo"]


@dataclass(frozen=True)
class FeatureInfo:
    """timm's ``feature_info`` of the 4 scales: ``channels()`` and ``reduction()``."""

    _channels: tuple[int, ...]
    _reductions: tuple[int, ...]

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reductions)


class EosfedModel(nn.Module):
    """An eosfed artifact behind timm's calling convention (module docstring)."""

    def __init__(self, inner: nn.Module, bands: tuple[str, ...], features_only: bool,
                 pretrained_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.inner, self.bands, self.features_only = inner, bands, features_only
        self.pretrained_cfg = pretrained_cfg
        self.is_task_model = pretrained_cfg["kind"] == TASK_MODEL_KIND
        with torch.no_grad():
            zeros = torch.zeros(1, len(bands), 64, 64)
            features = self._features(zeros)
            pooled = None if self.is_task_model else self.inner.pooled(zeros, bands)
        self.feature_info = FeatureInfo(tuple(int(f.shape[1]) for f in features),
                                        tuple(64 // int(f.shape[-1]) for f in features))
        # what a head reads, as timm's: the pooled feature's width (the last scale's for a task model)
        self.num_features = self.feature_info.channels()[-1] if pooled is None else int(pooled.shape[1])
        self.eval()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.inner.encoder(x) if self.is_task_model else self.inner(x, self.bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise InputError(f"expected [B, {len(self.bands)}, H, W] in the bands {self.bands}, got {tuple(x.shape)}")
        if self.features_only:
            return self._features(x)
        if self.is_task_model:
            return self.inner(x)
        return self.inner.pooled(x, self.bands)


def _card(path: Path) -> dict[str, Any]:
    file = path / CARD_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def create_model(path: str | Path, features_only: bool = False, bands: Sequence[str] | None = None,
                 map_location: str = "cpu", *, tolerance_nm: float) -> EosfedModel:
    """The artifact at ``path`` as an :class:`EosfedModel` (module docstring); ``bands``: the input's band
    order (default: the artifact's own; required for a student or an ensemble of several sensors);
    ``tolerance_nm``: how far a specialist's band may be stood in for by an input band of another name
    (:func:`fusion.views.plan_view`; ``eosfed.create_model`` gives the run's setting by default)."""
    path = Path(path)
    card = _card(path)
    if card.get("extra", {}).get("kind") == TASK_MODEL_KIND:
        model = load_task_model(path, map_location)
        own, kind = tuple(model.card.bands), TASK_MODEL_KIND
        if bands is not None and tuple(bands) != own:
            raise InputError(f"{path}: a task model reads its own bands {own}, not {tuple(bands)}")
        cfg = {"mean": list(model.card.norm_mean), "std": list(model.card.norm_std),
               "weights_sha256": model.card.weights_sha256}
        return EosfedModel(model, own, features_only, {"kind": kind, "bands": list(own), "source": str(path), **cfg})
    kind = encoder_kind(path)
    inner = open_encoder(path, tolerance_nm=tolerance_nm, map_location=map_location)
    if isinstance(inner, Student):
        if bands is None:
            raise InputError(f"{path}: a student reads any bands: give bands=(...) in the input's order")
        table = inner.card.band_stats
        cfg = {"mean": [table.get(b, [None])[0] for b in bands], "std": [table.get(b, [None, None])[1] for b in bands],
               "weights_sha256": inner.card.weights_sha256}
    else:
        assert isinstance(inner, Ensemble)
        members = list(inner.specialists.values())
        if bands is None:
            if len(members) != 1:
                raise InputError(f"{path}: an ensemble of {len(members)} specialists: give bands=(...)")
            bands = members[0].bands
        cfg = {"members": {n: {"bands": list(s.bands), "mean": list(s.card.norm_mean), "std": list(s.card.norm_std),
                               "weights_sha256": s.card.weights_sha256} for n, s in inner.specialists.items()}}
    return EosfedModel(inner, tuple(bands), features_only,
                       {"kind": kind, "bands": list(bands), "source": str(path), **cfg})
