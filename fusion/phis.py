"""PHI-S teacher balancing (Ranzinger et al., 2024): an isotropic standardisation of each target.

Per-channel standardisation leaves a teacher whose variance sits in a few directions with most of
its loss there. PHI-S rotates a target into its principal axes (``U^T``), spreads the variance
evenly over every channel with a normalised Hadamard matrix ``H`` (all entries ``±1/sqrt(D)``), and
divides by one scalar ``phi = sqrt(mean eigenvalue)``: ``x' = H U^T (x - mean) / phi`` has unit
variance on every channel and keeps the geometry of the teacher's space (one scale, one rotation).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from geodata.errors import InputError

__all__ = ["hadamard", "phi_s"]


def _paley(q: int) -> torch.Tensor:
    """Hadamard matrix of order ``q + 1`` (Paley construction I, ``q`` a prime with ``q % 4 == 3``)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if i in residues else -1 for i in range(1, q)], dtype=torch.float64)
    jacobsthal = torch.stack([chi.roll(i) for i in range(q)])  # Q[i, j] = chi(j - i)
    core = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    core[0, 1:], core[1:, 0], core[1:, 1:] = 1.0, -1.0, jacobsthal
    return torch.eye(q + 1, dtype=torch.float64) + core


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


@lru_cache(maxsize=16)
def hadamard(n: int) -> torch.Tensor:
    """A normalised ``n`` x ``n`` Hadamard matrix (orthogonal, entries ``±1/sqrt(n)``), float64: Sylvester
    doublings of 1 or of a Paley matrix of order ``q + 1``. Raises ``ValueError`` for an order neither
    construction reaches (every ConvNeXtV2 width is reached)."""
    base, doublings = n, 0
    while base % 2 == 0 and base > 1:
        base, doublings = base // 2, doublings + 1
    for k in range(doublings + 1):
        order = n >> k  # n = order * 2**k
        if order == 1:
            matrix = torch.ones(1, 1, dtype=torch.float64)
        elif order % 4 == 0 and _is_prime(order - 1) and (order - 1) % 4 == 3:
            matrix = _paley(order - 1)
        else:
            continue
        for _ in range(k):
            matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
        return matrix / n ** 0.5
    raise InputError(f"no Hadamard matrix of order {n} from Sylvester or Paley I constructions")


def phi_s(mean: torch.Tensor, covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, std, rotation)`` of the PHI-S standardisation ``rotation @ ((x - mean) / std)``: ``std`` is
    ``phi`` on every channel, ``rotation = H U^T``."""
    cov = covariance.to(torch.float64)
    eigenvalues, vectors = torch.linalg.eigh((cov + cov.T) / 2)
    phi = eigenvalues.clamp_min(0).mean().sqrt().clamp_min(1e-6)
    rotation = hadamard(cov.shape[0]) @ vectors.T
    return mean.float(), torch.full_like(mean, float(phi)).float(), rotation.float()
