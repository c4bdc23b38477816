"""Sealed artifacts: a card (``card.json``) beside its weights (``weights.safetensors``), one path for every kind.

A card is a dataclass subclassing :class:`Card` (``SpecialistCard``, ``StudentCard``, a task head's
card, ...). Its JSON carries its ``kind``, its ``schema_version`` and a ``seal``: the sha256 of each
field that changes what the weights compute (the class's ``SEALED`` fields: bands, normalisation,
variant, depths, task type, classes, ...; not metrics or free text), so a card edited after saving
is refused. ``weights_sha256`` ties the card to exactly one weights file. A card that reads bands
carries and seals their full descriptors (``band_descriptors``, :func:`geodata.sensors.band_record`,
filled from the catalog in use when the card is made or written): :meth:`Card.catalog` is what its band
names mean wherever it is loaded, with no sensor file beside it and nothing registered.

:func:`save` / :func:`to_bytes` write a module's tensors and fill the card's ``weights_sha256`` and
``num_params`` (:func:`write` puts bytes already made into a folder). :func:`load` / :func:`from_bytes` trust nothing: the card's fields, kind, version and
seal, the weights' hash and safetensors format, every tensor's name, shape and finiteness, and the
parameter count are checked; any disagreement raises :class:`ArtifactError` naming the file and
field at fault. Weights are only ever parsed as safetensors, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from geodata.files import atomic_write_bytes, atomic_write_text
from geodata.sensors import BandError, Catalog, current
from specialists.trunk import DEFAULT_VARIANT, check_variant
from geodata.errors import InputError

__all__ = [
    "ArtifactError", "Card", "field_error", "save", "save_state", "load", "load_state", "to_bytes", "state_bytes",
    "write", "from_bytes", "read_card", "verify",
    "CARD_FILE", "WEIGHTS_FILE", "SCHEMA_VERSION",
]

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
SCHEMA_VERSION = 3  # 3: cards carry their bands' descriptors (band_descriptors)


class ArtifactError(InputError):
    """A card or its weights are malformed, edited after saving, or disagree (the message names the file
    and field at fault)."""


def field_error(source: str, name: str, why: str) -> ArtifactError:
    return ArtifactError(f"{source}: field {name!r} {why}")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_version(version: object, source: str) -> None:
    if version != SCHEMA_VERSION:
        raise field_error(source, "schema_version", f"is {version!r}; this eosfed reads version {SCHEMA_VERSION}")


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(kw_only=True)
class Card:
    """What every card holds: the trunk variant, the weights' layout, hash and size, provenance."""

    KIND: ClassVar[str]
    SEALED: ClassVar[tuple[str, ...]]  # the fields that change what the weights compute
    PRIVATE: ClassVar[tuple[str, ...]] = ()  # what stays with the coordinator (see :meth:`shared`)

    variant: str = DEFAULT_VARIANT
    feature_dims: list[int] = field(default_factory=list)
    feature_reductions: list[int] = field(default_factory=list)
    num_params: int = 0
    weights_sha256: str = ""
    created: str = field(default_factory=_utc_now)
    schema_version: int = SCHEMA_VERSION
    band_descriptors: dict[str, dict[str, Any]] = field(default_factory=dict)  # {band: descriptor} of band_names()

    def __post_init__(self) -> None:
        self.describe_bands()
        self.check()

    def band_names(self) -> tuple[str, ...]:
        """The bands the weights read (``band_descriptors`` describes each)."""
        return tuple(getattr(self, "bands", None) or getattr(self, "band_stats", None) or ())

    def describe_bands(self, catalog: Catalog | None = None) -> None:
        """Fill ``band_descriptors`` for the bands the card reads: kept where present, else from ``catalog``
        (default: :func:`geodata.sensors.current`); those of bands it no longer reads are dropped."""
        catalog = catalog or current()
        try:
            self.band_descriptors = {name: self.band_descriptors.get(name) or catalog.band_records([name])[name]
                                     for name in self.band_names()}
        except BandError as exc:
            raise field_error("card", "bands", f"names an unknown band: {exc}") from None

    def catalog(self) -> Catalog:
        """What the card's band names mean: a catalog of its ``band_descriptors``."""
        return Catalog.from_records(self.band_descriptors, source=f"{self.KIND} card: field 'band_descriptors'")

    def validate(self, source: str = "card") -> None:
        """Raise :class:`ArtifactError` naming the first bad field (subclasses check their own after these)."""
        _check_version(self.schema_version, source)
        try:
            check_variant(self.variant)
        except ValueError as exc:
            raise field_error(source, "variant", f"refused: {exc}") from None
        for name in ("feature_dims", "feature_reductions"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
                raise field_error(source, name, f"must be a list of positive integers, got {value!r}")
        if len(self.feature_dims) != len(self.feature_reductions):
            raise field_error(source, "feature_reductions", "must have as many entries as feature_dims")
        if not isinstance(self.num_params, int) or self.num_params < 0:
            raise field_error(source, "num_params", f"must be a non-negative integer, got {self.num_params!r}")
        if not isinstance(self.weights_sha256, str):
            raise field_error(source, "weights_sha256", "must be a string")
        if not isinstance(self.created, str):
            raise field_error(source, "created", "must be an ISO time string")

    def check(self, source: str = "card") -> None:
        """:meth:`validate`, then ``band_descriptors``: one valid descriptor per band the card reads."""
        self.validate(source)
        if not isinstance(self.band_descriptors, dict) or sorted(self.band_descriptors) != sorted(self.band_names()):
            raise field_error(source, "band_descriptors", f"must describe each band the card reads "
                              f"{sorted(self.band_names())}, got {sorted(self.band_descriptors) if isinstance(self.band_descriptors, dict) else self.band_descriptors!r}")
        try:
            Catalog.from_records(self.band_descriptors, source="descriptors")
        except ValueError as exc:
            raise field_error(source, "band_descriptors", f"is refused: {exc}") from None

    def sealed_fields(self) -> tuple[str, ...]:
        """``SEALED``, plus ``band_descriptors`` for a card that reads bands."""
        return (*self.SEALED, "band_descriptors") if self.band_names() else self.SEALED

    def seal(self) -> dict[str, str]:
        """The sha256 of each sealed field's canonical JSON."""
        return {name: _digest(getattr(self, name)) for name in self.sealed_fields()}

    def shared(self) -> Self:
        """A copy to send to partners: the :attr:`PRIVATE` fields (other partners' scores, counts, history)
        at their defaults; the sealed fields and the weights' hash are unchanged."""
        own = {f.name: f for f in fields(self)}
        return replace(self, **{name: own[name].default_factory() for name in self.PRIVATE})  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: kind, the kind's own fields, the common fields, the seal."""
        values, common = asdict(self), [f.name for f in fields(Card)]
        own = {k: v for k, v in values.items() if k not in common}
        return {"kind": self.KIND, **own, **{k: values[k] for k in common}, "seal": self.seal()}

    def to_json(self) -> str:
        self.describe_bands()
        self.check()
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "card") -> Self:
        """A card from its JSON object: kind, version, fields and seal checked (module docstring)."""
        if not isinstance(raw, dict):
            raise ArtifactError(f"{source}: a card must be a JSON object")
        _check_version(raw.get("schema_version"), source)  # first: another version may have other fields
        if raw.get("kind") != cls.KIND:
            raise field_error(source, "kind", f"is {raw.get('kind')!r}, expected {cls.KIND!r}")
        own = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(own) - {"kind", "seal"})
        if unknown:
            raise ArtifactError(f"{source}: unknown fields {unknown}")
        required = [n for n, f in own.items() if f.default is MISSING and f.default_factory is MISSING] + ["seal"]
        missing = [n for n in required if n not in raw]
        if missing:
            raise ArtifactError(f"{source}: missing fields {missing}")
        card = cls.__new__(cls)
        for name, f in own.items():
            if name in raw:
                value = raw[name]
            else:
                value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            setattr(card, name, value)
        card.check(source)
        seal = raw["seal"]
        if not isinstance(seal, dict) or sorted(seal) != sorted(card.sealed_fields()):
            raise field_error(source, "seal", f"must hold the sha256 of each of {list(card.sealed_fields())}")
        for name, digest in card.seal().items():
            if seal[name] != digest:
                raise field_error(source, name, "does not match the card's seal (was the card edited after saving?)")
        return card

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "card") -> Self:
        try:
            raw = json.loads(text)
        except ValueError as exc:  # not JSON, or bytes that are not UTF-8 text (e.g. a pickle)
            raise ArtifactError(f"{source}: not valid JSON: {exc}") from exc
        return cls.from_dict(raw, source)


C = TypeVar("C", bound=Card)
M = TypeVar("M", bound=nn.Module)


def to_bytes(card: Card, module: nn.Module) -> bytes:
    """``module``'s tensors as safetensors bytes; fills the card's ``weights_sha256`` and ``num_params``."""
    data = state_bytes(card, module.state_dict())
    card.num_params = _num_params(module)
    return data


def state_bytes(card: Card, state: Mapping[str, torch.Tensor]) -> bytes:
    """``state`` as safetensors bytes; fills the card's ``weights_sha256`` and ``num_params`` (every element)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # one metadata key only: safetensors writes several in an order that differs between processes
    data = save_safetensors_bytes(state, metadata={"kind": card.KIND})
    card.weights_sha256 = hashlib.sha256(data).hexdigest()
    card.num_params = sum(int(v.numel()) for v in state.values())
    return data


def write(card: Card, data: bytes, directory: str | Path) -> Path:
    """Write ``data`` (the bytes :func:`to_bytes` or :func:`state_bytes` made, which filled ``card``) and the
    sealed card into ``directory``; return it."""
    directory = Path(directory)
    card.describe_bands()
    atomic_write_bytes(directory / WEIGHTS_FILE, data)
    atomic_write_text(directory / CARD_FILE, card.to_json())
    return directory


def save(card: Card, module: nn.Module, directory: str | Path) -> Path:
    """Write ``weights.safetensors`` and the sealed ``card.json`` into ``directory``; return it."""
    return write(card, to_bytes(card, module), directory)


def save_state(card: Card, state: Mapping[str, torch.Tensor], directory: str | Path) -> Path:
    """:func:`save` for a set of tensors that no single module holds (e.g. an encoder, its task head and
    feature statistics); :func:`load_state` reads it back."""
    return write(card, state_bytes(card, state), directory)


def read_card(path: str | Path, card_type: type[C]) -> C:
    """The checked card in the file ``path``."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: card not found") from None
    return card_type.from_json(text, source=str(path))


def verify(card: Card, data: bytes, card_source: str, weights_source: str) -> dict[str, torch.Tensor]:
    """The tensors in ``data``, once they hash to the card's ``weights_sha256``, parse as safetensors and
    are all finite."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.weights_sha256:
        raise ArtifactError(f"{weights_source}: sha256 {digest} does not match field 'weights_sha256' "
                            f"{card.weights_sha256!r} of {card_source}")
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as exc:
        raise ArtifactError(f"{weights_source}: not a safetensors file: {exc}") from exc
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{weights_source}: tensor {name!r} holds NaN or infinite values")
    return state


def from_bytes(card_type: type[C], card_json: str | bytes, data: bytes, build: Callable[[C], M],
               card_source: str, weights_source: str) -> tuple[C, M]:
    """A card and the module ``build(card)`` holding ``data``, every check of :func:`load` applied;
    errors name ``card_source`` / ``weights_source`` (e.g. the sending institution)."""
    card = card_type.from_json(card_json, source=card_source)
    return card, _filled(card, data, build, card_source, weights_source)


def _read(directory: str | Path, card_type: type[C]) -> tuple[C, bytes, str, str]:
    directory = Path(directory)
    card_path, weights_path = directory / CARD_FILE, directory / WEIGHTS_FILE
    card = read_card(card_path, card_type)
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{weights_path}: weights not found") from None
    return card, data, str(card_path), str(weights_path)


def load(directory: str | Path, card_type: type[C], build: Callable[[C], M]) -> tuple[C, M]:
    """The card in ``directory`` and the module ``build(card)`` loaded with its weights (module docstring)."""
    card, data, card_source, weights_source = _read(directory, card_type)
    return card, _filled(card, data, build, card_source, weights_source)


def load_state(directory: str | Path, card_type: type[C]) -> tuple[C, dict[str, torch.Tensor]]:
    """The card and tensors :func:`save_state` wrote, verified (seal, sha256, finite values, element count);
    the caller checks names and shapes against the model the card describes."""
    card, data, card_source, weights_source = _read(directory, card_type)
    state = verify(card, data, card_source, weights_source)
    held = sum(int(v.numel()) for v in state.values())
    if held != card.num_params:
        raise field_error(card_source, "num_params", f"is {card.num_params}, {weights_source} holds {held}")
    return card, state


def _filled(card: C, data: bytes, build: Callable[[C], M], card_source: str, weights_source: str) -> M:
    state = verify(card, data, card_source, weights_source)
    declared = card.num_params
    try:
        module = build(card)
    except ValueError as exc:
        raise ArtifactError(f"{card_source}: {exc}") from exc
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ArtifactError(f"{weights_source}: tensors do not match variant {card.variant!r}: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ArtifactError(f"{weights_source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                f"variant {card.variant!r} needs {tuple(own[name].shape)}")
    module.load_state_dict(state, strict=True)
    if _num_params(module) != declared:
        raise field_error(card_source, "num_params", f"is {declared}, {weights_source} holds {_num_params(module)}")
    return module
