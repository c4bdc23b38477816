"""Adaptor heads: one small head per teacher on the student's features, outside the student trunk.

A head maps the student's last two scales to the teacher's standardised ``stage2``/``stage3``
feature maps (1x1-conv MLPs) and the student's pooled feature to the teacher's standardised pooled
feature (MLP). It carries the teacher's target statistics, so after distillation the student plus
its adaptors emits each teacher's (and so the ensemble's) standardised feature layout.

On disk a sealed artifact like every other: ``weights.safetensors`` (``<teacher>.<param>``) and ``card.json``
(:class:`AdaptorsCard`: the student's dims and each teacher's name, hash and dims, sealed; the weights' sha256).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fusion.featstats import global_pool
from fusion.teacher_cache import TARGETS
from geodata.errors import InputError
from specialists import Specialist
from specialists.artifact import Card, field_error, load_state, save_state

__all__ = ["TeacherRef", "AdaptorHead", "Adaptors", "AdaptorsCard", "save_adaptors", "load_adaptors"]


@dataclass(frozen=True)
class TeacherRef:
    """What distillation needs to know of a teacher, local or remote."""

    name: str
    weights_sha256: str
    feature_dims: tuple[int, ...]

    @classmethod
    def of(cls, specialist: Specialist, name: str | None = None) -> "TeacherRef":
        return cls(name or specialist.card.name, specialist.card.weights_sha256, tuple(specialist.feature_dims))


def _mlp2d(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 1), nn.GELU(), nn.Conv2d(out_dim, out_dim, 1))


class AdaptorHead(nn.Module):
    """Student features -> one teacher's standardised targets (see module docstring)."""

    def __init__(self, student_dims: Sequence[int], teacher_dims: Sequence[int]) -> None:
        super().__init__()
        self.stage2 = _mlp2d(student_dims[-2], teacher_dims[-2])
        self.stage3 = _mlp2d(student_dims[-1], teacher_dims[-1])
        self.pooled = nn.Sequential(nn.Linear(student_dims[-1], teacher_dims[-1]), nn.GELU(),
                                    nn.Linear(teacher_dims[-1], teacher_dims[-1]))
        for target, dim in zip(TARGETS, (teacher_dims[-2], teacher_dims[-1], teacher_dims[-1])):
            self.register_buffer(f"{target}_mean", torch.zeros(dim))
            self.register_buffer(f"{target}_std", torch.ones(dim))
            self.register_buffer(f"{target}_rotation", torch.eye(dim))  # PHI-S; identity for per-channel

    def forward(self, student_features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "stage2": self.stage2(student_features[-2]),
            "stage3": self.stage3(student_features[-1]),
            "pooled": self.pooled(global_pool(student_features[-1])),
        }

    def set_target_stats(self, stats: Mapping[str, tuple[torch.Tensor, ...]]) -> None:
        """Per target ``(mean, std)`` (per channel) or ``(mean, std, rotation)`` (PHI-S)."""
        for target in TARGETS:
            mean, std, *rotation = stats[target]
            getattr(self, f"{target}_mean").copy_(mean)
            getattr(self, f"{target}_std").copy_(std)
            buffer = getattr(self, f"{target}_rotation")
            buffer.copy_(rotation[0] if rotation else torch.eye(len(mean)))

    def standardise(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw teacher targets -> the standardised space the head predicts in."""
        out = {}
        for target in TARGETS:
            value = targets[target].float()
            shape = (1, -1) + (1,) * (value.ndim - 2)
            mean, std = getattr(self, f"{target}_mean"), getattr(self, f"{target}_std")
            scaled = (value - mean.view(shape)) / std.view(shape)
            out[target] = torch.einsum("ij,bj...->bi...", getattr(self, f"{target}_rotation"), scaled)
        return out


def match_size(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Resize a predicted map to the target's spatial size (teachers of other strides)."""
    if pred.ndim == 4 and pred.shape[-2:] != target.shape[-2:]:
        return F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return pred


class Adaptors(nn.ModuleDict):
    """One :class:`AdaptorHead` per teacher name, remembering each teacher's weights hash."""

    def __init__(self, student_dims: Sequence[int]) -> None:
        super().__init__()
        self.student_dims = tuple(student_dims)
        self.teachers: dict[str, TeacherRef] = {}

    def ensure(self, teacher: TeacherRef) -> AdaptorHead:
        """The head of ``teacher``: kept if it was trained for the same weights, else new."""
        known = self.teachers.get(teacher.name)
        if known is None or known != teacher:
            self[teacher.name] = AdaptorHead(self.student_dims, teacher.feature_dims)
            self.teachers[teacher.name] = teacher
        return self[teacher.name]


@dataclass(kw_only=True)
class AdaptorsCard(Card):
    """What a saved set of adaptor heads is: the student's feature dims and, per head, its teacher's name,
    weights' sha256 and feature dims (all sealed: they fix what the heads compute and for whom)."""

    KIND: ClassVar[str] = "adaptors"
    SEALED: ClassVar[tuple[str, ...]] = ("student_dims", "teachers")

    student_dims: list[int] = field(default_factory=list)
    teachers: list[dict[str, Any]] = field(default_factory=list)

    def validate(self, source: str = "adaptors card") -> None:
        super().validate(source)
        if not isinstance(self.student_dims, list) or not all(isinstance(d, int) and d > 0 for d in self.student_dims):
            raise field_error(source, "student_dims", f"must be a list of positive integers, got {self.student_dims!r}")
        for t in self.teachers:
            if (not isinstance(t, dict) or sorted(t) != ["feature_dims", "name", "weights_sha256"]
                    or not isinstance(t["name"], str) or not isinstance(t["weights_sha256"], str)
                    or not isinstance(t["feature_dims"], list)
                    or not all(isinstance(d, int) and d > 0 for d in t["feature_dims"])):
                raise field_error(source, "teachers", f"each entry needs name, weights_sha256 and feature_dims, got {t!r}")


def save_adaptors(adaptors: Adaptors, directory: str | Path) -> Path:
    """Write ``adaptors`` as a sealed artifact into ``directory``."""
    card = AdaptorsCard(student_dims=list(adaptors.student_dims),
                        teachers=[{"name": t.name, "weights_sha256": t.weights_sha256,
                                   "feature_dims": list(t.feature_dims)} for t in adaptors.teachers.values()])
    return save_state(card, adaptors.state_dict(), directory)


def load_adaptors(directory: str | Path) -> Adaptors:
    """The adaptor heads :func:`save_adaptors` wrote, verified against their card (seal, sha256, shapes)."""
    card, state = load_state(directory, AdaptorsCard)
    adaptors = Adaptors(card.student_dims)
    for t in card.teachers:
        adaptors.ensure(TeacherRef(t["name"], t["weights_sha256"], tuple(t["feature_dims"])))
    try:
        adaptors.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{directory}: the adaptor weights do not match their card: {first}") from None
    return adaptors
