"""Server-side arithmetic over what nodes send: checked state dicts, FedAvg, pooled band statistics."""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["State", "check_state", "fedavg", "pool_norm", "weighted_metrics"]

State = dict[str, torch.Tensor]


def check_state(reference: State, update: State, source: str) -> State:
    """``update`` if it has exactly ``reference``'s keys, shapes and dtypes and finite values;
    otherwise ``ValueError`` naming ``source`` and the first offending tensor."""
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        raise ValueError(f"{source}: tensors missing {missing[:5]}, unexpected {extra[:5]}")
    for key, ref in reference.items():
        value = update[key]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(f"{source}: tensor {key!r} is {value.dtype}{list(value.shape)}, "
                             f"expected {ref.dtype}{list(ref.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source}: tensor {key!r} has non-finite values")
    return update


def fedavg(states: Sequence[State], weights: Sequence[float]) -> State:
    """Weighted mean of floating tensors (others are taken from the first state)."""
    if not states or len(states) != len(weights) or sum(weights) <= 0:
        raise ValueError(f"fedavg needs states with positive total weight, got {len(states)} / {list(weights)}")
    total = float(sum(weights))
    out: State = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = torch.zeros_like(first, dtype=torch.float64)
            for state, weight in zip(states, weights):
                acc += state[key].to(torch.float64) * (weight / total)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def pool_norm(means: Sequence[Sequence[float]], stds: Sequence[Sequence[float]],
              counts: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the union of samples, from each part's mean, std and size."""
    total = float(sum(counts))
    bands = range(len(means[0]))
    mean = [sum(n * m[b] for m, n in zip(means, counts)) / total for b in bands]
    second = [sum(n * (s[b] ** 2 + m[b] ** 2) for m, s, n in zip(means, stds, counts)) / total for b in bands]
    return mean, [math.sqrt(max(q - mu**2, 1e-12)) for q, mu in zip(second, mean)]


def weighted_metrics(per_member: dict[str, dict[str, float]]) -> dict[str, float]:
    """``<split>_<metric>`` averaged over members, weighted by each member's ``<split>_count``."""
    out: dict[str, float] = {}
    keys = sorted({k for m in per_member.values() for k in m if not k.endswith("_count")})
    for key in keys:
        split = key.split("_", 1)[0]
        pairs = [(m[key], m.get(f"{split}_count", 1.0)) for m in per_member.values() if key in m]
        total = sum(w for _, w in pairs)
        if total > 0:
            out[key] = sum(v * w for v, w in pairs) / total
    return out
