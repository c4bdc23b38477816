"""The specialist card: who trained a specialist, on what bands and task, and how well.

A card travels beside the encoder weights as ``card.json`` (a sealed artifact, see
:mod:`specialists.artifact`). Its ``bands`` fix the input order and its ``norm_mean``/``norm_std``
(physical units, one per band) are what the specialist normalises with; every band is described in
its ``band_descriptors`` (:mod:`specialists.artifact`), and must be a band of the card's sensor when
that sensor is known where the card is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from geodata.names import NAME_RULE, is_safe_name
from geodata.sensors import Band, current
from specialists.artifact import Card, field_error

__all__ = ["SpecialistCard", "TASK_TYPES", "MAX_CLASSES"]

TASK_TYPES = ("classification", "multilabel", "segmentation")
MAX_CLASSES = 1024  # a task's classes (a head's width): more is refused, not allocated


@dataclass
class SpecialistCard(Card):
    """Everything needed to use, trust and compare one specialist (see module docstring)."""

    KIND: ClassVar[str] = "specialist"
    SEALED: ClassVar[tuple[str, ...]] = ("variant", "bands", "norm_mean", "norm_std", "task_type", "classes")
    PRIVATE: ClassVar[tuple[str, ...]] = ("data_summary", "metrics", "extra")  # per-member tiles, scores, history

    name: str
    institutions: list[str]
    sensor: str
    bands: list[str]
    norm_mean: list[float]
    norm_std: list[float]
    task: str
    task_type: str
    classes: list[str]
    data_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def descriptors(self) -> tuple[Band, ...]:
        """The descriptors of :attr:`bands`, in order (from ``band_descriptors``)."""
        catalog = self.catalog()
        return tuple(catalog.band(b) for b in self.bands)

    def validate(self, source: str = "card") -> None:
        """Raise :class:`~specialists.artifact.ArtifactError` naming the first bad field."""
        super().validate(source)
        if not isinstance(self.name, str) or not self.name:
            raise field_error(source, "name", f"must be a non-empty string, got {self.name!r}")
        for name in ("sensor", "task"):  # they name a group's folders
            value = getattr(self, name)
            if not is_safe_name(value):
                raise field_error(source, name, f"must be {NAME_RULE}, got {value!r}")
        for name in ("institutions", "bands", "classes"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise field_error(source, name, f"must be a non-empty list of non-empty strings, got {value!r}")
        if len(self.classes) > MAX_CLASSES:
            raise field_error(source, "classes", f"has {len(self.classes)} entries, at most {MAX_CLASSES}")
        if len(set(self.bands)) != len(self.bands):
            raise field_error(source, "bands", f"has duplicates: {self.bands}")
        sensor = current().sensors.get(self.sensor)
        if sensor is not None:
            foreign = [b for b in self.bands if b not in sensor.bands]
            if foreign:
                raise field_error(source, "bands", f"{foreign} are not bands of sensor {self.sensor!r} {sensor.bands}")
        if self.task_type not in TASK_TYPES:
            raise field_error(source, "task_type", f"is {self.task_type!r}; expected one of {TASK_TYPES}")
        for name in ("norm_mean", "norm_std"):
            value = getattr(self, name)
            if not isinstance(value, list) or len(value) != len(self.bands):
                raise field_error(source, name, f"must list one number per band ({len(self.bands)}), got {value!r}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise field_error(source, name, f"must hold finite numbers, got {value!r}")
        if not all(v > 0 for v in self.norm_std):
            raise field_error(source, "norm_std", f"must be positive for every band, got {self.norm_std}")
        for name in ("data_summary", "metrics", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise field_error(source, name, f"must be an object, got {type(getattr(self, name)).__name__}")
