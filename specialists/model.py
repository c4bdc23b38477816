"""``Specialist``: a card plus its encoder; takes physical-unit bands, returns 4 feature scales."""

from __future__ import annotations

import torch
from torch import nn

from geodata.sensors import Band
from specialists.card import SpecialistCard
from specialists.encoder import build_encoder, encoder_in_chans
from specialists.trunk import pyramid_pool
from geodata.errors import InputError

__all__ = ["Specialist"]


class Specialist(nn.Module):
    """Frozen-or-trainable encoder that normalises its input with the card's per-band statistics.

    ``forward(x)`` takes ``x`` of shape ``[B, len(bands), H, W]`` in physical units, in the card's
    band order, and returns the list of 4 multi-scale features (``feature_dims`` channels at
    ``feature_reductions`` strides).
    """

    def __init__(self, card: SpecialistCard, encoder: nn.Module) -> None:
        super().__init__()
        if encoder_in_chans(encoder) != card.num_bands:
            raise InputError(
                f"specialist {card.name!r}: encoder takes {encoder_in_chans(encoder)} channels "
                f"but the card lists {card.num_bands} bands {card.bands}"
            )
        dims = [int(c) for c in encoder.feature_info.channels()]
        reductions = [int(r) for r in encoder.feature_info.reduction()]
        if card.feature_dims and (card.feature_dims != dims or card.feature_reductions != reductions):
            raise InputError(
                f"specialist {card.name!r}: card feature_dims/reductions {card.feature_dims}/"
                f"{card.feature_reductions} do not match encoder {card.variant!r} ({dims}/{reductions})"
            )
        card.feature_dims, card.feature_reductions = dims, reductions
        card.num_params = sum(p.numel() for p in encoder.parameters())
        self.card = card
        self.encoder = encoder
        shape = (1, card.num_bands, 1, 1)
        self.register_buffer("norm_mean", torch.tensor(card.norm_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("norm_std", torch.tensor(card.norm_std, dtype=torch.float32).view(shape), persistent=False)

    @classmethod
    def from_card(
        cls, card: SpecialistCard, freeze: str = "none"
    ) -> "Specialist":
        """A new specialist whose encoder (``card.variant``, one input per band) is built fresh."""
        encoder = build_encoder(card.variant, in_chans=card.num_bands, freeze=freeze)
        return cls(card, encoder)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.card.bands)

    @property
    def descriptors(self) -> tuple[Band, ...]:
        """Its bands' descriptors, from its card (what its band names mean wherever it is loaded)."""
        if getattr(self, "_descriptors", None) is None or len(self._descriptors) != len(self.card.bands):
            self._descriptors = self.card.descriptors()
        return self._descriptors

    @property
    def feature_dims(self) -> tuple[int, ...]:
        return tuple(self.card.feature_dims)

    @property
    def feature_reductions(self) -> tuple[int, ...]:
        return tuple(self.card.feature_reductions)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.card.num_bands:
            raise InputError(
                f"specialist {self.card.name!r} expects [B, {self.card.num_bands}, H, W] "
                f"(bands {self.bands}), got shape {tuple(x.shape)}"
            )
        return (x - self.norm_mean) / self.norm_std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(self.normalise(x)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 2 * sum(feature_dims)]``: :func:`specialists.trunk.pyramid_pool` of every scale (what
        linear probes read)."""
        return pyramid_pool(self.forward(x))
