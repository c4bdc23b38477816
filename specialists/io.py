"""A specialist on disk: ``weights.safetensors`` (encoder only) + ``card.json`` (sha256 of the weights).

Loading trusts nothing: the hash, the bands, the band count, every tensor's name and shape, and
finiteness are checked, and any disagreement raises :class:`SpecialistMismatchError` naming the file
and field at fault. :func:`write_sealed` / :func:`read_sealed` are the same card + weights + sha256
seal for any set of tensors described by a card (e.g. a fine-tuned encoder with its task head).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from geodata.files import atomic_write_bytes, atomic_write_text
from geodata.sensors import SENSORS, BandError, get_band
from specialists.card import SpecialistCard
from specialists.encoder import STEM_WEIGHT, build_encoder
from specialists.model import Specialist

__all__ = [
    "SpecialistMismatchError", "save_specialist", "load_specialist", "specialist_to_bytes", "specialist_from_bytes",
    "bytes_tensor", "tensor_bytes", "write_sealed", "read_sealed", "WEIGHTS_FILE", "CARD_FILE",
]

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"


class SpecialistMismatchError(ValueError):
    """A specialist's card and weights disagree, or either is malformed."""


def _seal_bytes(state: dict[str, torch.Tensor], card: SpecialistCard, metadata: dict[str, str]) -> bytes:
    """``state`` as safetensors bytes; fills the card's sha256 and parameter count."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    data = save_safetensors_bytes(state, metadata=metadata)
    card.weights_sha256 = hashlib.sha256(data).hexdigest()
    card.num_params = sum(int(v.numel()) for v in state.values())
    return data


def specialist_to_bytes(specialist: Specialist) -> bytes:
    """The encoder weights as safetensors bytes; fills the card's sha256 and parameter count."""
    return _seal_bytes(specialist.encoder.state_dict(), specialist.card, {"variant": specialist.card.variant})


def write_sealed(directory: str | Path, state: dict[str, torch.Tensor], card: SpecialistCard,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` as ``weights.safetensors`` and ``card`` (with their sha256 and parameter count)."""
    directory = Path(directory)
    data = _seal_bytes(state, card, metadata or {"variant": card.variant})
    atomic_write_bytes(directory / WEIGHTS_FILE, data)
    atomic_write_text(directory / CARD_FILE, card.to_json())
    return directory


def save_specialist(specialist: Specialist, directory: str | Path) -> Path:
    """Write the encoder weights and the card (with their sha256 and parameter count); return the folder."""
    return write_sealed(directory, specialist.encoder.state_dict(), specialist.card)


def bytes_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (how a file travels in a Flower ``ArrayRecord``)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def tensor_bytes(tensor: torch.Tensor, source: str, max_bytes: int | None = None) -> bytes:
    """The bytes a :func:`bytes_tensor` carried; refuses another dtype or shape, or more than ``max_bytes``."""
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(f"{source}: expected a 1-D uint8 byte tensor, got {tensor.dtype}{list(tensor.shape)}")
    if max_bytes is not None and tensor.numel() > max_bytes:
        raise ValueError(f"{source}: payload of {tensor.numel()} bytes exceeds the limit of {max_bytes} bytes")
    return tensor.numpy().tobytes()


def _read_card(path: Path) -> SpecialistCard:
    try:
        return SpecialistCard.from_json(path.read_bytes(), source=str(path))
    except FileNotFoundError:
        raise SpecialistMismatchError(f"{path}: card not found") from None
    except ValueError as exc:
        raise SpecialistMismatchError(str(exc)) from exc


def _check_bands(card: SpecialistCard, path: Path | str) -> None:
    for band in card.bands:
        try:
            get_band(band)
        except BandError as exc:
            raise SpecialistMismatchError(f"{path}: field 'bands': {exc}") from None
    sensor = SENSORS.get(card.sensor)
    if sensor is not None:
        foreign = [b for b in card.bands if b not in sensor.bands]
        if foreign:
            raise SpecialistMismatchError(
                f"{path}: field 'bands': {foreign} are not bands of sensor {card.sensor!r} {sensor.bands}"
            )


def _read_folder(directory: str | Path) -> tuple[SpecialistCard, bytes, Path, Path]:
    directory = Path(directory)
    card_path, weights_path = directory / CARD_FILE, directory / WEIGHTS_FILE
    card = _read_card(card_path)
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise SpecialistMismatchError(f"{weights_path}: weights not found") from None
    return card, data, card_path, weights_path


def load_specialist(directory: str | Path, map_location: str | torch.device = "cpu") -> Specialist:
    """Read a saved specialist, checking the card against the weights (see module docstring)."""
    card, data, card_path, weights_path = _read_folder(directory)
    return _checked(card, data, card_path, weights_path).to(map_location)


def read_sealed(directory: str | Path) -> tuple[SpecialistCard, dict[str, torch.Tensor]]:
    """The card and tensors of a folder written by :func:`write_sealed`: bands, sha256, parameter count and
    finiteness checked (the caller checks names and shapes against the model the card describes)."""
    card, data, card_path, weights_path = _read_folder(directory)
    state = _verified_state(card, data, card_path, weights_path)
    held = sum(int(v.numel()) for v in state.values())
    if held != card.num_params:
        raise SpecialistMismatchError(f"{card_path}: field 'num_params' is {card.num_params}, {weights_path} "
                                      f"holds {held}")
    return card, state


def specialist_from_bytes(card_json: str, data: bytes, source: str) -> Specialist:
    """A specialist received as card JSON + safetensors bytes, with every check of :func:`load_specialist`;
    errors name ``source`` (e.g. the sending institution)."""
    try:
        card = SpecialistCard.from_json(card_json, source=f"{source} card")
    except ValueError as exc:
        raise SpecialistMismatchError(str(exc)) from exc
    return _checked(card, data, f"{source} card", f"{source} weights")


def _verified_state(card: SpecialistCard, data: bytes, card_path: Path | str,
                    weights_path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of ``data`` after checking the card's bands and sha256, and that every tensor is finite."""
    _check_bands(card, card_path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.weights_sha256:
        raise SpecialistMismatchError(
            f"{weights_path}: sha256 {digest} does not match field 'weights_sha256' "
            f"{card.weights_sha256!r} of {card_path}"
        )
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as exc:
        raise SpecialistMismatchError(f"{weights_path}: not a safetensors file: {exc}") from exc
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SpecialistMismatchError(f"{weights_path}: tensor {name!r} holds NaN or infinite values")
    return state


def _checked(card: SpecialistCard, data: bytes, card_path: Path | str, weights_path: Path | str) -> Specialist:
    state = _verified_state(card, data, card_path, weights_path)
    if STEM_WEIGHT in state and state[STEM_WEIGHT].shape[1] != card.num_bands:
        raise SpecialistMismatchError(
            f"{weights_path}: encoder takes {state[STEM_WEIGHT].shape[1]} input bands but field 'bands' "
            f"of {card_path} lists {card.num_bands}: {card.bands}"
        )
    try:
        encoder = build_encoder(card.variant, in_chans=card.num_bands)
    except ValueError as exc:
        raise SpecialistMismatchError(f"{card_path}: field 'variant': {exc}") from exc
    own = encoder.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise SpecialistMismatchError(
            f"{weights_path}: tensors do not match variant {card.variant!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise SpecialistMismatchError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"variant {card.variant!r} needs {tuple(own[name].shape)}"
            )
    encoder.load_state_dict(state, strict=True)
    declared_params = card.num_params
    try:
        specialist = Specialist(card, encoder)
    except ValueError as exc:
        raise SpecialistMismatchError(f"{card_path}: {exc}") from exc
    if specialist.card.num_params != declared_params:
        raise SpecialistMismatchError(
            f"{card_path}: field 'num_params' is {declared_params}, {weights_path} holds {specialist.card.num_params}"
        )
    return specialist
