"""The specialist card: who trained a specialist, on what bands and task, and how well.

A card travels beside the encoder weights as ``card.json``. Its ``bands`` fix the input order and
its ``norm_mean``/``norm_std`` (physical units, one per band) are what the specialist normalises
with; ``weights_sha256`` ties the card to exactly one ``weights.safetensors``.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

__all__ = ["SpecialistCard", "CARD_SCHEMA_VERSION", "TASK_TYPES", "DEFAULT_VARIANT"]

CARD_SCHEMA_VERSION = 1
TASK_TYPES = ("classification", "multilabel", "segmentation")
DEFAULT_VARIANT = "convnextv2_atto"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class SpecialistCard:
    """Everything needed to use, trust and compare one specialist (see module docstring)."""

    name: str
    institutions: list[str]
    sensor: str
    bands: list[str]
    norm_mean: list[float]
    norm_std: list[float]
    task: str
    task_type: str
    classes: list[str]
    variant: str = DEFAULT_VARIANT
    feature_dims: list[int] = field(default_factory=list)
    feature_reductions: list[int] = field(default_factory=list)
    data_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0
    weights_sha256: str = ""
    created: str = field(default_factory=_utc_now)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = CARD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self, source: str = "card") -> None:
        """Raise ``ValueError`` naming the first bad field."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{source}: field {name!r} {why}")

        if self.schema_version != CARD_SCHEMA_VERSION:
            raise bad("schema_version", f"is {self.schema_version!r}; this eosfed reads version {CARD_SCHEMA_VERSION}")
        for name in ("name", "sensor", "task", "variant"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise bad(name, f"must be a non-empty string, got {value!r}")
        for name in ("institutions", "bands", "classes"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise bad(name, f"must be a non-empty list of non-empty strings, got {value!r}")
        if len(set(self.bands)) != len(self.bands):
            raise bad("bands", f"has duplicates: {self.bands}")
        if self.task_type not in TASK_TYPES:
            raise bad("task_type", f"is {self.task_type!r}; expected one of {TASK_TYPES}")
        for name in ("norm_mean", "norm_std"):
            value = getattr(self, name)
            if not isinstance(value, list) or len(value) != len(self.bands):
                raise bad(name, f"must list one number per band ({len(self.bands)}), got {value!r}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise bad(name, f"must hold finite numbers, got {value!r}")
        if not all(v > 0 for v in self.norm_std):
            raise bad("norm_std", f"must be positive for every band, got {self.norm_std}")
        for name in ("feature_dims", "feature_reductions"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
                raise bad(name, f"must be a list of positive integers, got {value!r}")
        if len(self.feature_dims) != len(self.feature_reductions):
            raise bad("feature_reductions", "must have as many entries as feature_dims")
        for name in ("data_summary", "metrics", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, f"must be an object, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.num_params, int) or self.num_params < 0:
            raise bad("num_params", f"must be a non-negative integer, got {self.num_params!r}")
        if not isinstance(self.weights_sha256, str):
            raise bad("weights_sha256", "must be a string")
        if not isinstance(self.created, str):
            raise bad("created", "must be an ISO time string")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        self.validate()
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "card") -> "SpecialistCard":
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: a card must be a JSON object")
        version = raw.get("schema_version")
        if version != CARD_SCHEMA_VERSION:
            raise ValueError(
                f"{source}: field 'schema_version' is {version!r}; this eosfed reads version {CARD_SCHEMA_VERSION}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown fields {unknown}")
        missing = [
            f.name for f in fields(cls)
            if f.name not in raw and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ValueError(f"{source}: missing fields {missing}")
        card = cls.__new__(cls)
        for f in fields(cls):
            if f.name in raw:
                value = raw[f.name]
            else:
                value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            setattr(card, f.name, value)
        card.validate(source)
        return card

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "card") -> "SpecialistCard":
        try:
            raw = json.loads(text)
        except ValueError as exc:  # not JSON, or bytes that are not UTF-8 text (e.g. a pickle)
            raise ValueError(f"{source}: not valid JSON: {exc}") from exc
        return cls.from_dict(raw, source)
