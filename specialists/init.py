"""Starting weights for a ConvNeXtV2 encoder, from a local file (never the network).

A starting checkpoint (``train.init``, ``distill.init``, ``--init``) is one of:

- ``base``: the base checkpoint shipped with the package (:func:`base_path`, made by ``eosfed base``,
  :mod:`specialists.base`), the default of specialists and students;

- a timm ConvNeXtV2 checkpoint: ``*.safetensors`` (whose metadata may name the stem's bands: ``bands``, a
  JSON list), or a torch file (``.pth``, ``.pt``...) read with ``torch.load(weights_only=True)``, holding
  a state dict (or ``{"state_dict"|"model": ...}``); a 3-channel stem without band names is taken as red,
  green, blue (``RED``, ``GREEN``, ``BLUE``);
- a sealed eosfed artifact folder (specialist or student; its ``weights.safetensors`` names the same),
  verified as on load; a specialist's stem reads its card's bands, a student has no fixed stem;
- an EoS-FM specialist file: a torch file holding a list of ``(in_chans, state_dict, config)``
  entries; ``config["bands"]`` (registered band names) says what each stem reads; the entry covering
  most of the target's bands is used.

Bands are adapted by wavelength: each target band takes the stem kernel of its equivalent band
(:func:`geodata.sensors.equivalent_band` within the caller's ``tolerance_nm``: the run's setting); bands without one take the mean kernel (the stem's
LayerNorm absorbs the change of scale). Keys of the file that the encoder lacks (heads, decoders,
``head.*``) are skipped and logged; encoder tensors the file lacks keep their initial values (logged);
a tensor of another shape, a non-finite value or a file with no stage tensor is one ``ValueError``
naming the file and tensor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from importlib import metadata
from urllib.parse import unquote, urlparse

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from geodata.sensors import BandError, equivalent_band
from specialists import artifact
from specialists.artifact import CARD_FILE, WEIGHTS_FILE, ArtifactError
from geodata.errors import InputError

__all__ = ["RANDOM", "BASE", "base_path", "RGB_BANDS", "STEM_WEIGHT", "Checkpoint", "read_checkpoint", "load_encoder_weights",
           "check_init", "adapt_stem", "STEM_BIAS"]

log = logging.getLogger(__name__)

RANDOM = "random"
"""The ``init`` value that keeps the seeded random initialisation."""
BASE = "base"
"""The ``init`` value naming the base checkpoint shipped with the package."""
BASE_VARIANT = "convnextv2_atto"
"""The variant the shipped base checkpoint is made for."""
_BASE_FILE = Path("specialists") / "weights" / f"base_{BASE_VARIANT}.safetensors"
RGB_BANDS = ("RED", "GREEN", "BLUE")
"""What a 3-channel checkpoint without band names reads (timm's ImageNet order)."""
STEM_WEIGHT = "stem_0.weight"
STEM_BIAS = "stem_0.bias"
_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "trunk.")  # wrappers around the trunk's keys


@dataclass(frozen=True)
class Checkpoint:
    """A starting checkpoint read from ``path``: its tensors under the encoder's key names, the bands its
    stem reads (``None``: unknown) and the sha256 of the file the tensors came from."""

    path: Path
    state: dict[str, torch.Tensor]
    bands: tuple[str, ...] | None
    sha256: str

    def record(self) -> dict[str, str]:
        """What a card records about where its starting weights came from."""
        return {"source": str(self.path), "sha256": self.sha256}


def _install_roots() -> list[Path]:
    """Where the installed ``eosfed`` distribution lives (its source folder first if installed editable)."""
    try:
        dist = metadata.distribution("eosfed")
    except metadata.PackageNotFoundError:
        return []
    roots = [Path(str(dist.locate_file("")))]
    direct = dist.read_text("direct_url.json")
    url = json.loads(direct).get("url", "") if direct else ""
    if url.startswith("file://"):
        roots.insert(0, Path(unquote(urlparse(url).path)))
    return roots


def base_path() -> Path:
    """The shipped base checkpoint: beside this package, else in the installed distribution (a Flower app
    bundle carries no weights); ``FileNotFoundError`` naming where it looked."""
    candidates = [root / _BASE_FILE for root in [Path(__file__).resolve().parent.parent, *_install_roots()]]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"init {BASE!r}: no base checkpoint at {', '.join(map(str, candidates))}; make it with "
                            f"`eosfed base --out {candidates[0]}`, or set init to {RANDOM!r} or a checkpoint file")


def check_init(value: str, field: str) -> None:
    """Refuse an ``init`` setting that is neither ``random``, ``base`` (shipped) nor an existing path (one line
    naming ``field``)."""
    if value == BASE:
        try:
            base_path()
        except FileNotFoundError as exc:
            raise InputError(f"{field}: {exc}") from None
    elif value != RANDOM and not Path(value).exists():
        raise InputError(f"{field}: {value!r} is neither {RANDOM!r}, {BASE!r} nor an existing checkpoint file or folder")


def _encoder_key(key: str) -> str:
    """A checkpoint key -> the features-only trunk's (``stages.0.x`` -> ``stages_0.x``; wrappers dropped)."""
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    head, _, rest = key.partition(".")
    sub, _, tail = rest.partition(".")
    return f"{head}_{sub}.{tail}" if sub.isdigit() and tail else key


def _metadata_bands(text: str | None, path: Path) -> tuple[str, ...] | None:
    """The ``bands`` a safetensors file's metadata names (a JSON list of band names), else ``None``."""
    if text is None:
        return None
    try:
        bands = json.loads(text)
    except ValueError:
        bands = None
    if not (isinstance(bands, list) and bands and all(isinstance(b, str) for b in bands)):
        raise InputError(f"{path}: metadata 'bands' is not a JSON list of band names: {text[:80]!r}")
    return tuple(bands)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tensors(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return {str(k): v for k, v in raw.items()}


def _overlap(bands: Sequence[str] | None, want: Sequence[str] | None, tolerance_nm: float) -> int:
    if not bands or not want:
        return 0
    return sum(equivalent_band(b, bands, tolerance_nm) is not None for b in want)


def _eosfm_entry(entries: list, path: Path, want: Sequence[str] | None,
                 tolerance_nm: float) -> tuple[dict, tuple[str, ...] | None]:
    """The EoS-FM entry covering most of ``want`` (the first on a tie): its tensors and bands."""
    parsed = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[2], dict)):
            raise InputError(f"{path}: entry {i} is not an (in_chans, state_dict, config) triple")
        bands = entry[2].get("bands")
        bands = tuple(str(b) for b in bands) if bands else None
        if bands is not None and len(bands) != int(entry[0]):
            raise InputError(f"{path}: entry {i} lists {len(bands)} bands for in_chans {entry[0]}")
        try:
            parsed.append((_overlap(bands, want, tolerance_nm), i, _tensors(entry[1], path), bands))
        except BandError as exc:
            raise InputError(f"{path}: entry {i}: {exc}") from None
    if not parsed:
        raise InputError(f"{path}: an EoS-FM file with no entries")
    score, i, state, bands = max(parsed, key=lambda p: (p[0], -p[1]))
    log.info("%s: EoS-FM entry %d of %d (bands %s, %d target bands matched)", path, i, len(parsed), bands, score)
    return state, bands


def _artifact(directory: Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...] | None]:
    from fusion.student import StudentCard  # fusion builds on specialists
    from specialists.card import SpecialistCard

    try:
        kind = json.loads((directory / CARD_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{directory / CARD_FILE}: not a readable card: {exc}") from None
    types = {SpecialistCard.KIND: SpecialistCard, StudentCard.KIND: StudentCard}
    if kind not in types:
        raise InputError(f"{directory / CARD_FILE}: kind {kind!r} is not one of {sorted(types)}")
    try:
        card, state = artifact.load_state(directory, types[kind])
    except ArtifactError as exc:
        raise InputError(str(exc)) from None
    return state, tuple(card.bands) if kind == SpecialistCard.KIND else None


def read_checkpoint(path: str | Path, tolerance_nm: float, want: Sequence[str] | None = None) -> Checkpoint:
    """The checkpoint at ``path`` (module docstring); ``want``, the target's bands, picks an EoS-FM entry
    (the one with most bands equivalent within ``tolerance_nm``)."""
    path = base_path() if str(path) == BASE else Path(path)
    if path.is_file() and path.name == WEIGHTS_FILE and (path.parent / CARD_FILE).is_file():
        path = path.parent
    if path.is_dir():
        state, bands = _artifact(path)
        source = path / WEIGHTS_FILE
    elif not path.is_file():
        raise FileNotFoundError(f"initial weights not found: {path}")
    else:
        source, bands = path, None
        if path.suffix == ".safetensors":
            try:
                state = load_file(str(path))
                with safe_open(str(path), "pt") as handle:
                    named = (handle.metadata() or {}).get("bands")
            except (SafetensorError, OSError) as exc:
                raise InputError(f"{path}: not a safetensors file: {exc}") from None
            bands = _metadata_bands(named, path)
        else:
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - pickle and zip errors of every kind
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise InputError(f"{path}: not a torch file of tensors (torch.load weights_only=True): {first}") from None
            state, bands = _eosfm_entry(raw, path, want, tolerance_nm) if isinstance(raw, (list, tuple)) else (_tensors(raw, path), None)
    state = {_encoder_key(k): v for k, v in state.items()}
    return Checkpoint(path, state, bands, _sha256(source))


def adapt_stem(weight: torch.Tensor, have: Sequence[str], want: Sequence[str], path: Path,
               tolerance_nm: float) -> torch.Tensor:
    """The stem kernel reading ``want``: each band's equivalent in ``have`` (within ``tolerance_nm``), else the
    mean kernel."""
    mean = weight.mean(dim=1)
    columns, unmatched = [], []
    for band in want:
        match = equivalent_band(band, have, tolerance_nm)
        columns.append(weight[:, have.index(match)] if match is not None else mean)
        if match is None:
            unmatched.append(band)
    log.info("%s: stem bands %s -> %s by wavelength; mean kernel for %s", path, list(have), list(want),
             unmatched or "none")
    return torch.stack(columns, dim=1)


def load_encoder_weights(encoder: nn.Module, path: str | Path, bands: Sequence[str] | None = None, *,
                         tolerance_nm: float) -> Checkpoint:
    """Load the checkpoint at ``path`` into ``encoder`` (whose stem reads ``bands``, adapted from the file's
    within ``tolerance_nm``; module docstring)."""
    ckpt = read_checkpoint(path, tolerance_nm, bands)
    own = encoder.state_dict()
    state = dict(ckpt.state)
    if STEM_WEIGHT in state and STEM_WEIGHT in own:
        have = ckpt.bands or (RGB_BANDS if state[STEM_WEIGHT].shape[1] == 3 else None)
        if have is not None and len(have) != state[STEM_WEIGHT].shape[1]:
            raise InputError(f"{ckpt.path}: tensor {STEM_WEIGHT!r} reads {state[STEM_WEIGHT].shape[1]} bands, "
                             f"its bands are {list(have)}")
        if have is not None and bands is not None:
            state[STEM_WEIGHT] = adapt_stem(state[STEM_WEIGHT], have, bands, ckpt.path, tolerance_nm)
    skipped = sorted(k for k in state if k not in own)
    loaded = {k: v for k, v in state.items() if k in own}
    for key, value in loaded.items():
        if value.shape != own[key].shape:
            raise InputError(f"{ckpt.path}: tensor {key!r} has shape {tuple(value.shape)}, the encoder needs "
                             f"{tuple(own[key].shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{ckpt.path}: tensor {key!r} has non-finite values")
    if not any(k.startswith("stages") for k in loaded):
        raise InputError(f"{ckpt.path}: no tensor fits this encoder (its keys start {sorted(state)[:3]})")
    kept = sorted(set(own) - set(loaded))
    if skipped:
        log.info("%s: skipped %d tensors the encoder lacks (%s...)", ckpt.path, len(skipped), skipped[:3])
    if kept:
        log.warning("%s: %d encoder tensors not in the file keep their initial values (%s...)", ckpt.path,
                    len(kept), kept[:3])
    encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in loaded.items()}, strict=False)
    log.info("initialised encoder from %s (sha256 %s...)", ckpt.path, ckpt.sha256[:12])
    return ckpt
