"""Differential privacy of a group's FedAvg rounds (``train.dp``) with Flower's own fixed-clipping functions
(:mod:`flwr.supercore.differential_privacy`, those of ``DifferentialPrivacyServerSideFixedClipping`` and
``fixedclipping_mod``) and opacus's RDP accountant.

A member's update is its weights minus the round's global weights, over every floating tensor of encoder and
head together (Flower's flat clip). Clipped to norm C, one member moves the round's weighted mean by at most
its share times C, so the coordinator adds Gaussian noise of std z x C x the largest share (Flower's
``compute_stdv`` with the shares' effective count; z x C / m for m equal shares): each aggregated round is a
Gaussian mechanism of noise multiplier z on every member's data, composed over the rounds (sampling rate 1).

What epsilon covers: the group's weights as every recipient sees them (the members each round, the registry,
whoever receives the specialist). The coordinator is trusted: it sees each (clipped) update and adds the noise;
the metrics members send (losses, val and test scores), the screening of updates and their declared counts are
not accounted for.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update, \
    compute_stdv, get_norm
from opacus.accountants import RDPAccountant

__all__ = ["Parts", "add_noise", "clip_update", "epsilon", "noise_stdv", "update_norm"]

Parts = Sequence[dict[str, torch.Tensor]]  # a model's state in parts (encoder, head)


def _arrays(parts: Parts) -> list[np.ndarray]:
    """The floating tensors of ``parts`` as float32 arrays (copies), in a fixed order."""
    return [v.detach().to(torch.float32).cpu().numpy().copy() for part in parts for v in part.values()
            if v.is_floating_point()]


def _rebuilt(parts: Parts, arrays: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
    """``parts`` with their floating tensors replaced by ``arrays`` (in :func:`_arrays`' order)."""
    values = iter(arrays)
    return [{k: torch.from_numpy(np.ascontiguousarray(next(values))).to(v.dtype) if v.is_floating_point() else v
             for k, v in part.items()} for part in parts]


def update_norm(reference: Parts, parts: Parts) -> float:
    """L2 norm of ``parts`` minus ``reference`` over their floating tensors."""
    return get_norm([a - b for a, b in zip(_arrays(parts), _arrays(reference), strict=True)])


def clip_update(reference: Parts, parts: Parts,
                clipping_norm: float) -> tuple[list[dict[str, torch.Tensor]], float]:
    """``parts`` whose update from ``reference`` is scaled down to L2 norm ``clipping_norm`` if longer, and
    the update's norm before clipping."""
    arrays, before = _arrays(parts), _arrays(reference)
    norm = get_norm([a - b for a, b in zip(arrays, before, strict=True)])
    if norm > clipping_norm:  # Flower's clip divides by the norm: a zero update stays as it is
        compute_clip_model_update(arrays, before, clipping_norm)
    return _rebuilt(parts, arrays), norm


def noise_stdv(noise_multiplier: float, clipping_norm: float, largest_share: float) -> float:
    """Std of the noise on a weighted mean whose largest share is ``largest_share`` (``1/m``: m equal members)."""
    return compute_stdv(noise_multiplier, clipping_norm, 1.0 / largest_share)


@contextlib.contextmanager
def _fresh_numpy_rng() -> Iterator[None]:
    """NumPy's global generator seeded from the OS for the block (Flower draws its noise there; a run's seed
    is no secret, and noise anyone can regenerate protects nothing), its state restored after."""
    state = np.random.get_state()
    np.random.seed()
    try:
        yield
    finally:
        np.random.set_state(state)


def add_noise(parts: Parts, stdv: float) -> list[dict[str, torch.Tensor]]:
    """``parts`` with Gaussian noise of std ``stdv`` added to every floating tensor."""
    arrays = _arrays(parts)
    with _fresh_numpy_rng():
        add_gaussian_noise_inplace(arrays, stdv)
    return _rebuilt(parts, arrays)


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` Gaussian mechanisms of ``noise_multiplier`` on the whole group
    (sampling rate 1), by opacus's RDP accountant; 0 for no round."""
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return float(accountant.get_epsilon(delta)) if rounds else 0.0
