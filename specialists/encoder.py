"""The specialist encoder: the ConvNeXtV2 trunk of :mod:`specialists.trunk`, returning its four stage outputs.

Initial weights come only from a local file, never the network. The file may be a timm checkpoint
of the same variant (``stem.0.weight``, ``stages.0...``; the classifier is dropped) or a saved
specialist's ``weights.safetensors``. A different input band count is adapted by timm's
``adapt_input_conv``. Every encoder tensor must come from the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from timm.models import adapt_input_conv, load_state_dict
from torch import nn

from specialists.artifact import WEIGHTS_FILE
from specialists.trunk import DEFAULT_VARIANT, build_trunk

__all__ = [
    "build_encoder", "load_encoder_weights", "freeze_encoder", "encoder_in_chans", "FREEZE_POLICIES", "STEM_WEIGHT",
]

log = logging.getLogger(__name__)

FREEZE_POLICIES = ("none", "stem", "stages:K", "backbone")
STEM_WEIGHT = "stem_0.weight"
_DROPPED_PREFIXES = ("head.", "norm_pre.")  # classifier parts of a full timm checkpoint


def build_encoder(
    variant: str = DEFAULT_VARIANT,
    in_chans: int = 3,
    init_weights: str | Path | None = None,
    freeze: str = "none",
) -> nn.Module:
    """A features-only encoder (4 scales), optionally initialised from a local file and frozen."""
    encoder = build_trunk(variant, in_chans=in_chans)
    if init_weights is not None:
        load_encoder_weights(encoder, init_weights)
    freeze_encoder(encoder, freeze)
    return encoder


def _weights_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"initial weights not found: {path}")
    return path


def _to_encoder_key(key: str) -> str:
    """``stages.0.blocks...`` (timm model) -> ``stages_0.blocks...`` (features-only wrapper)."""
    head, _, rest = key.partition(".")
    sub, _, tail = rest.partition(".")
    return f"{head}_{sub}.{tail}" if sub.isdigit() and tail else key


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into ``encoder`` strictly (see module docstring)."""
    path = _weights_file(path)
    state = load_state_dict(str(path), weights_only=True)
    state = {_to_encoder_key(k): v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}
    own = encoder.state_dict()
    stem = own[STEM_WEIGHT]
    if STEM_WEIGHT in state and state[STEM_WEIGHT].shape[1] != stem.shape[1]:
        have = state[STEM_WEIGHT].shape[1]
        state[STEM_WEIGHT] = adapt_input_conv(stem.shape[1], state[STEM_WEIGHT], base_chans=have).to(stem.dtype)
        log.info("adapted %s from %d to %d input channels", path, have, stem.shape[1])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: not a checkpoint of this encoder: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:5]]}"
        )
    encoder.load_state_dict(state, strict=True)
    log.info("initialised encoder from %s", path)


def _stage_modules(encoder: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    children = dict(encoder.named_children())
    stem = [m for n, m in children.items() if n.startswith("stem")]
    stages = [m for n, m in children.items() if n.startswith("stages")]
    if not stem or not stages:
        raise ValueError(f"encoder has no stem/stages children: {list(children)}")
    return stem, stages


def freeze_encoder(encoder: nn.Module, policy: str = "none") -> None:
    """Freeze part of the encoder: ``none``, ``stem``, ``stages:K`` (stem + stages 0..K-1), ``backbone``."""
    stem, stages = _stage_modules(encoder)
    if policy == "none":
        frozen: list[nn.Module] = []
    elif policy == "stem":
        frozen = stem
    elif policy == "backbone":
        frozen = [encoder]
    elif policy.startswith("stages:") and policy[len("stages:"):].isdigit():
        k = int(policy[len("stages:"):])
        if not 1 <= k <= len(stages):
            raise ValueError(f"freeze policy {policy!r}: K must be in 1..{len(stages)}")
        frozen = stem + stages[:k]
    else:
        raise ValueError(f"unknown freeze policy {policy!r}; expected one of {FREEZE_POLICIES}")
    for p in encoder.parameters():
        p.requires_grad_(True)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


def encoder_in_chans(encoder: nn.Module) -> int:
    """Number of input bands the encoder's stem takes."""
    return int(encoder.get_submodule(STEM_WEIGHT.rsplit(".", 1)[0]).in_channels)

