"""The one place that opens an encoder of any kind.

An encoder spec is a student folder (``card.json`` with ``kind: "student"``), a specialist folder, a
registry folder (``index.json``: the ensemble), or ``random:<variant>`` (a random-initialised student of
that variant: the same-size baseline). :func:`load_encoder` gives the module as stored (trainable);
:func:`open_encoder` gives it frozen behind the probe interface (``forward(x, bands)``,
``pooled(x, bands)``: a specialist as a one-member ensemble).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from fusion.ensemble import Ensemble
from fusion.registry import INDEX_FILE
from fusion.student import Student, load_student
from specialists import Specialist, load_specialist
from geodata.errors import InputError
from specialists.artifact import CARD_FILE

__all__ = ["open_encoder", "load_encoder", "encoder_kind", "RANDOM_PREFIX", "ENCODER_KINDS"]

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


def load_encoder(spec: str | Path, tolerance_nm: float | None, seed: int = 0, map_location: str = "cpu",
                 band_stats: Mapping[str, Sequence[float]] | None = None) -> nn.Module:
    """The encoder ``spec`` names as stored: a :class:`Student` (``random:``: a new one, seeded, reading
    ``band_stats``), a :class:`~specialists.Specialist` or an :class:`Ensemble` (``tolerance_nm``: its views;
    ``None`` only where ``spec`` is no registry)."""
    kind = encoder_kind(spec)
    if kind == "random":
        return Student.create(str(spec)[len(RANDOM_PREFIX):], band_stats, seed=seed).to(map_location)
    if kind == "registry":
        if tolerance_nm is None:
            raise InputError(f"{spec}: an ensemble's views need tolerance_nm")
        return Ensemble.from_registry(spec, tolerance_nm=tolerance_nm, map_location=map_location)
    if kind == "student":
        return load_student(spec, map_location)
    return load_specialist(spec, map_location)


def open_encoder(spec: str | Path, tolerance_nm: float, seed: int = 0,
                 map_location: str = "cpu") -> nn.Module:
    """The encoder named by ``spec``, frozen (eval mode) behind the probe interface (module docstring)."""
    encoder = load_encoder(spec, tolerance_nm, seed, map_location)
    if isinstance(encoder, Specialist):
        encoder = Ensemble({encoder.card.name: encoder}, tolerance_nm=tolerance_nm)
    return encoder.eval()
