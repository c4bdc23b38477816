"""Open any saved encoder behind the probe interface (``forward(x, bands)``, ``pooled(x, bands)``).

``open_encoder(path)`` reads a student folder (``card.json`` with ``kind: "student"``), a specialist
folder (as a one-member ensemble), or a registry folder (``index.json``: the ensemble);
``random:<variant>`` gives a random-initialised student of that variant (the same-size baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from fusion.ensemble import Ensemble
from fusion.registry import INDEX_FILE
from fusion.student import Student, load_student
from specialists import load_specialist
from specialists.artifact import CARD_FILE

__all__ = ["open_encoder", "encoder_kind", "RANDOM_PREFIX", "ENCODER_KINDS"]

RANDOM_PREFIX = "random:"
ENCODER_KINDS = ("random", "registry", "student", "specialist")


def encoder_kind(spec: str | Path) -> str:
    """Which of :data:`ENCODER_KINDS` ``spec`` names (see module docstring)."""
    text = str(spec)
    if text.startswith(RANDOM_PREFIX):
        return "random"
    path = Path(spec)
    if (path / INDEX_FILE).is_file():
        return "registry"
    card = path / CARD_FILE
    if not card.is_file():
        raise FileNotFoundError(f"{path}: not an encoder folder (no {INDEX_FILE} or {CARD_FILE}), "
                                f"nor '{RANDOM_PREFIX}<variant>'")
    return "student" if json.loads(card.read_text()).get("kind") == "student" else "specialist"


def open_encoder(spec: str | Path, tolerance_nm: float, seed: int = 0,
                 map_location: str = "cpu") -> nn.Module:
    """The encoder named by ``spec`` (see module docstring), in eval mode."""
    kind = encoder_kind(spec)
    if kind == "random":
        return Student.create(variant=str(spec)[len(RANDOM_PREFIX):], seed=seed).to(map_location).eval()
    if kind == "registry":
        return Ensemble.from_registry(spec, tolerance_nm=tolerance_nm, map_location=map_location).eval()
    if kind == "student":
        return load_student(spec, map_location)
    specialist = load_specialist(spec, map_location)
    return Ensemble({specialist.card.name: specialist}, tolerance_nm=tolerance_nm).eval()
