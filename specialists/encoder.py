"""The specialist encoder: the ConvNeXtV2 trunk of :mod:`specialists.trunk`, returning its four stage outputs.

Initial weights come only from a local file, never the network (:mod:`specialists.init`: timm,
eosfed or EoS-FM checkpoints, bands adapted by wavelength).
"""

from __future__ import annotations

from torch import nn

from specialists.init import STEM_WEIGHT
from specialists.trunk import DEFAULT_VARIANT, build_trunk
from geodata.errors import InputError

__all__ = [
    "build_encoder", "freeze_encoder", "encoder_in_chans", "FREEZE_POLICIES", "STEM_WEIGHT",
]

FREEZE_POLICIES = ("none", "stem", "stages:K", "backbone")


def build_encoder(variant: str = DEFAULT_VARIANT, in_chans: int = 3, freeze: str = "none") -> nn.Module:
    """A features-only encoder (4 scales), randomly initialised and frozen by ``freeze``; starting weights
    are loaded by :func:`specialists.init.load_encoder_weights`."""
    encoder = build_trunk(variant, in_chans=in_chans)
    freeze_encoder(encoder, freeze)
    return encoder


def _stage_modules(encoder: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    children = dict(encoder.named_children())
    stem = [m for n, m in children.items() if n.startswith("stem")]
    stages = [m for n, m in children.items() if n.startswith("stages")]
    if not stem or not stages:
        raise InputError(f"encoder has no stem/stages children: {list(children)}")
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
            raise InputError(f"freeze policy {policy!r}: K must be in 1..{len(stages)}")
        frozen = stem + stages[:k]
    else:
        raise InputError(f"unknown freeze policy {policy!r}; expected one of {FREEZE_POLICIES}")
    for p in encoder.parameters():
        p.requires_grad_(True)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


def encoder_in_chans(encoder: nn.Module) -> int:
    """Number of input bands the encoder's stem takes."""
    return int(encoder.get_submodule(STEM_WEIGHT.rsplit(".", 1)[0]).in_channels)

