"""The one trunk factory: a features-only timm ConvNeXtV2 (4 scales), built locally.

Every trunk (a specialist's encoder, the student's trunk) is made here with ``pretrained=False``.
A variant must be a local timm ConvNeXtV2 architecture (:data:`VARIANTS`); a hub name
(``hf-hub:...``), a pretrained tag, a URL or a path is refused before timm is called, so building a
trunk never touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn
from geodata.errors import InputError

__all__ = ["build_trunk", "check_variant", "pyramid_pool", "DEFAULT_VARIANT", "VARIANTS"]

DEFAULT_VARIANT = "convnextv2_atto"
VARIANTS: tuple[str, ...] = tuple(timm.list_models("convnextv2_*"))
OUT_INDICES = (0, 1, 2, 3)


def check_variant(variant: object) -> None:
    """Raise ``ValueError`` unless ``variant`` is one of :data:`VARIANTS`."""
    if variant not in VARIANTS:
        raise InputError(f"variant {variant!r} is not a local timm ConvNeXtV2 model; expected one of {list(VARIANTS)}")


def build_trunk(variant: str = DEFAULT_VARIANT, in_chans: int = 3, depths: Sequence[int] | None = None) -> nn.Module:
    """A randomly initialised features-only ``variant`` taking ``in_chans`` bands; ``depths`` overrides
    the variant's blocks per stage."""
    check_variant(variant)
    overrides = {"depths": tuple(depths)} if depths else {}
    return timm.create_model(
        variant, pretrained=False, features_only=True, out_indices=OUT_INDICES, in_chans=in_chans, **overrides
    )


def pyramid_pool(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[B, 2 * sum(C_i)]``: every scale's channel means, then their standard deviations over space.

    The pooled feature every learned encoder (specialist, student, ensemble) gives probes: first- and
    second-order statistics of each stage, so the spectral and textural evidence of the early stages
    reaches a linear probe beside the last stage's semantics (measured on real data: README, results).
    """
    flat = [f.float() for f in features]
    return torch.cat([f.mean(dim=(-2, -1)) for f in flat] + [f.std(dim=(-2, -1), correction=0) for f in flat], dim=1)
