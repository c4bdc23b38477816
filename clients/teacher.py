"""Teacher work at an institution that keeps its weights home: features of its kept specialist on the
proxy images the coordinator sends, returned as fp16 targets (never the weights)."""

from __future__ import annotations

import logging

import torch

from clients.institution import InstitutionSpec
from clients.store import kept_specialist
from fusion.teacher_cache import TeacherFeatures, extract_teacher_features
from geodata.errors import InputError

__all__ = ["teacher_features"]

log = logging.getLogger(__name__)


def teacher_features(spec: InstitutionSpec, sha: str, images: torch.Tensor, bands: list[str], ids: list[str],
                     tolerance_nm: float, batch_size: int = 64) -> TeacherFeatures:
    """The kept specialist ``sha``'s targets on ``images`` (``[N, len(bands), H, W]``, physical units,
    finite: :class:`wire.messages.FeaturesRequest` checked them)."""
    specialist = kept_specialist(spec, sha)
    batches = [{"image": images[i:i + batch_size], "bands": tuple(bands), "id": ids[i:i + batch_size]}
               for i in range(0, len(ids), batch_size)]
    features = extract_teacher_features(specialist, batches, tolerance_nm)
    if not features.ids:
        raise InputError(f"institution {spec.name!r}: specialist {specialist.card.name!r} cannot read bands {bands}")
    log.info("Institution %s: teacher features of %s on %d proxy tiles", spec.name, specialist.card.name,
             len(features.ids))
    return features
