"""A specialist on disk or on the wire: its encoder as a sealed artifact (see :mod:`specialists.artifact`).

``weights.safetensors`` holds the encoder only; ``card.json`` is the :class:`SpecialistCard`. Loading
checks everything :func:`specialists.artifact.load` checks and raises
:class:`~specialists.artifact.ArtifactError` naming the file and field at fault.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from specialists import artifact
from specialists.artifact import ArtifactError
from specialists.card import SpecialistCard
from specialists.encoder import build_encoder
from specialists.model import Specialist
from geodata.errors import InputError

__all__ = [
    "save_specialist", "load_specialist", "specialist_to_bytes", "specialist_from_bytes", "bytes_tensor",
    "tensor_bytes",
]


def _encoder(card: SpecialistCard) -> nn.Module:
    return build_encoder(card.variant, in_chans=card.num_bands)


def _specialist(card: SpecialistCard, encoder: nn.Module, card_source: str) -> Specialist:
    try:
        return Specialist(card, encoder)
    except ValueError as exc:
        raise ArtifactError(f"{card_source}: {exc}") from exc


def specialist_to_bytes(specialist: Specialist) -> bytes:
    """The encoder weights as safetensors bytes; fills the card's sha256 and parameter count."""
    return artifact.to_bytes(specialist.card, specialist.encoder)


def save_specialist(specialist: Specialist, directory: str | Path) -> Path:
    """Write the encoder weights and the sealed card; return the folder."""
    return artifact.save(specialist.card, specialist.encoder, directory)


def load_specialist(directory: str | Path, map_location: str | torch.device = "cpu") -> Specialist:
    """Read a saved specialist, checking the card against the weights (see module docstring)."""
    card, encoder = artifact.load(directory, SpecialistCard, _encoder)
    return _specialist(card, encoder, str(Path(directory) / artifact.CARD_FILE)).to(map_location)


def specialist_from_bytes(card_json: str, data: bytes, source: str) -> Specialist:
    """A specialist received as card JSON + safetensors bytes, with every check of :func:`load_specialist`;
    errors name ``source`` (e.g. the sending institution)."""
    card, encoder = artifact.from_bytes(SpecialistCard, card_json, data, _encoder, f"{source} card",
                                        f"{source} weights")
    return _specialist(card, encoder, f"{source} card")


def bytes_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (how a file travels in a Flower ``ArrayRecord``)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def tensor_bytes(tensor: torch.Tensor, source: str) -> bytes:
    """The bytes a :func:`bytes_tensor` carried; refuses another dtype or shape (sizes are checked on the
    record, before it is deserialised: :mod:`wire.messages`)."""
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise InputError(f"{source}: expected a 1-D uint8 byte tensor, got {tensor.dtype}{list(tensor.shape)}")
    return tensor.numpy().tobytes()
