"""Distil the ensemble into the student on unlabeled proxy data (AM-RADIO/UNIC/Theia style).

Targets: each teacher's standardised ``stage2``/``stage3`` maps and pooled feature, read from the
:class:`~fusion.teacher_cache.TeacherCache` (filled once by the caller, before the first epoch; remote
teachers fill it with features they computed themselves), so training epochs never call a teacher. A batch
trains against every teacher cached for all its samples. Per teacher and target the loss is
``0.5 * (1 - cos) + 0.5 * smooth_l1`` (cosine over channels); a teacher's loss is the mean over its
three targets. Teacher dropping: each step every teacher but the hardest one (highest running mean
loss; a teacher not yet seen counts as hardest) is dropped with probability ``drop_prob``, before
the heads run, so a dropped teacher costs nothing; the step loss is the mean over kept teachers.
Teacher balancing (``balance``): each target standardised per channel, or by PHI-S
(:mod:`fusion.phis`: one rotation and one scale per target, unit variance on every channel).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fusion.adaptors import Adaptors, TeacherRef, match_size
from fusion.plots import save_plot
from fusion.student import STEM_FIT_STEPS, Student
from fusion.teacher_cache import BALANCES, TARGETS, TeacherCache
from specialists.init import BASE
from specialists.trunk import DEFAULT_VARIANT
from specialists.train import resolve_device
from geodata.errors import InputError

__all__ = ["DistillConfig", "DistillHistory", "Distiller", "distill_student", "feature_loss", "drop_teachers",
           "plot_history"]

log = logging.getLogger(__name__)

MIN_CROP_PX = 32  # a crop must cover one cell of the trunk's coarsest (stride 32) map


@dataclass
class DistillConfig:
    """How the student is distilled: a ``variant`` trunk (``depths``: blocks per stage, fewer than the
    variant's; ``None``: the variant's own), AdamW at ``lr`` / ``weight_decay`` with gradients clipped
    at ``grad_clip``, teachers dropped with ``drop_prob`` (the hardest is always kept); ``device``
    ``auto`` picks a GPU when there is one. ``init``: the checkpoint a new student's trunk starts from
    (:mod:`specialists.init`): ``base`` (shipped), a file, or ``random``; where the file's stem names its bands, the
    student's spectral stem is first fitted (``stem_fit_steps`` Adam steps) to generate it for each proxy sensor. ``balance``: how each
    teacher's targets are standardised, ``channel`` or ``phi_s`` (module docstring). ``crop_sizes``: multi-resolution
    distillation, each proxy batch centre-cropped to one of these sizes (px, drawn per batch; targets cached per
    size: :class:`fusion.data.CropSizes`; a remote teacher, which sent features of full tiles, teaches the batches drawn
    at full size only); empty: the proxy tiles as they are. ``gsd_aware``: the student's card
    records the ground sampling distance of every proxy band (its working GSD, :attr:`StudentCard.gsd`), and
    an input at another GSD is resampled to it before the trunk."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    drop_prob: float = 0.5
    grad_clip: float = 1.0
    variant: str = DEFAULT_VARIANT
    depths: Optional[List[int]] = None
    device: str = "auto"
    init: str = BASE
    stem_fit_steps: int = STEM_FIT_STEPS
    balance: str = "channel"
    crop_sizes: List[int] = field(default_factory=list)
    gsd_aware: bool = False

    def __post_init__(self) -> None:
        if any(not isinstance(c, int) or c < MIN_CROP_PX for c in self.crop_sizes):
            raise InputError(f"distill.crop_sizes must be sizes in pixels >= {MIN_CROP_PX} (the trunk's coarsest "
                             f"stride), got {list(self.crop_sizes)}")
        if self.balance not in BALANCES:
            raise InputError(f"distill.balance must be one of {BALANCES}, got {self.balance!r}")
        if self.stem_fit_steps < 0:
            raise InputError(f"distill.stem_fit_steps must be >= 0, got {self.stem_fit_steps}")


@dataclass
class DistillHistory:
    """Per-epoch mean losses: overall and per teacher (over the steps it was kept in), and the fraction of
    the steps with its targets in which it was kept; ``targets_read``: per teacher, the cached targets (one
    per sample) the epochs read."""

    total: list[float] = field(default_factory=list)
    teachers: dict[str, list[float]] = field(default_factory=dict)
    kept_fraction: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    teacher_extractions: int = 0
    targets_read: dict[str, int] = field(default_factory=dict)
    optimizer: dict[str, float] = field(default_factory=dict)  # the settings the optimiser ran with

    def to_dict(self) -> dict:
        return asdict(self)


def feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.5 * (1 - cos) + 0.5 * smooth_l1``, cosine over the channel axis 1, averaged."""
    pred = match_size(pred, target)
    cos = F.cosine_similarity(pred, target, dim=1)
    return 0.5 * (1 - cos).mean() + 0.5 * F.smooth_l1_loss(pred, target)


def drop_teachers(losses: Mapping[str, float], drop_prob: float, generator: torch.Generator) -> list[str]:
    """Teachers kept this step: the hardest always, each other one with probability ``1 - drop_prob``."""
    hardest = max(losses, key=losses.__getitem__)
    draws = torch.rand(len(losses), generator=generator).tolist()
    return [n for n, u in zip(losses, draws) if n == hardest or u >= drop_prob]


class Distiller:
    """Trains ``student`` and its ``adaptors`` against cached teacher targets."""

    def __init__(self, student: Student, adaptors: Adaptors, cache: TeacherCache, config: DistillConfig,
                 seed: int) -> None:
        self.student, self.adaptors, self.cache, self.config = student, adaptors, cache, config
        self.device = torch.device(resolve_device(config.device))
        student.to(self.device)
        adaptors.to(self.device)
        params = list(student.parameters()) + list(adaptors.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.recent_loss: dict[str, float] = {}  # running mean per teacher: who is hardest

    def step(self, batch: Mapping) -> tuple[dict[str, float], list[str]]:
        """One optimisation step: the losses of the kept teachers and the teachers cached for the batch
        (both empty when none is)."""
        ids = list(batch["id"])
        present = [n for n, t in self.adaptors.teachers.items() if self.cache.has(t.weights_sha256, ids)]
        if not present:
            return {}, []
        kept = drop_teachers({n: self.recent_loss.get(n, math.inf) for n in present}, self.config.drop_prob,
                             self.generator)
        features = self.student(batch["image"].to(self.device, non_blocking=True), batch["bands"])
        losses = {}
        for name in kept:
            head = self.adaptors[name]
            cached = self.cache.get(self.adaptors.teachers[name].weights_sha256, ids)
            target = head.standardise({t: v.to(self.device, non_blocking=True) for t, v in cached.items()})
            pred = head(features)
            losses[name] = sum(feature_loss(pred[t], target[t]) for t in TARGETS) / len(TARGETS)
        values = {n: float(v.detach()) for n, v in losses.items()}
        for name, value in values.items():
            last = self.recent_loss.get(name)
            self.recent_loss[name] = value if last is None else 0.9 * last + 0.1 * value
        loss = torch.stack(list(losses.values())).mean()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"distillation loss is not finite (per teacher {values}); the student "
                                     f"would be ruined, so the distillation stops")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.config.grad_clip
            )
        self.optimizer.step()
        return values, present

    def fit(self, batches: Iterable[Mapping], history: DistillHistory | None = None) -> DistillHistory:
        """``config.epochs`` epochs over the (re-iterable) proxy ``batches``, cosine learning rate."""
        history = history or DistillHistory()
        steps_per_epoch = len(batches) if hasattr(batches, "__len__") else None
        total_steps = steps_per_epoch * self.config.epochs if steps_per_epoch else None
        step = 0
        self.student.train()
        self.adaptors.train()
        for epoch in range(self.config.epochs):
            start = time.perf_counter()
            sums: dict[str, list[float]] = {}
            present_counts: dict[str, int] = {}
            for batch in tqdm(batches, desc=f"distill epoch {epoch + 1}/{self.config.epochs}", unit="batch",
                              leave=False):
                if total_steps:
                    for g in self.optimizer.param_groups:
                        g["lr"] = self.config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                values, present = self.step(batch)
                step += 1
                for name in present:
                    present_counts[name] = present_counts.get(name, 0) + 1
                for name, value in values.items():
                    sums.setdefault(name, []).append(value)
                    history.targets_read[name] = history.targets_read.get(name, 0) + len(batch["id"])
            if not sums:
                raise InputError("no proxy batch has cached features of any teacher; fill the teacher cache first")
            history.seconds.append(time.perf_counter() - start)
            for name, count in present_counts.items():  # a teacher dropped all epoch records NaN
                values = sums.get(name, [])
                history.teachers.setdefault(name, []).append(sum(values) / len(values) if values else math.nan)
                history.kept_fraction.setdefault(name, []).append(len(values) / count)
            history.total.append(sum(sum(v) / len(v) for v in sums.values()) / len(sums))
            log.info("distill epoch %d: loss %.4f (%s) in %.1fs", epoch + 1, history.total[-1],
                        ", ".join(f"{n} {history.teachers[n][-1]:.3f}" for n in sums), history.seconds[-1])
        self.student.eval()
        self.adaptors.eval()
        return history


def distill_student(
    student: Student,
    teachers: Sequence[TeacherRef],
    batches: Iterable[Mapping],
    cache: TeacherCache,
    config: DistillConfig,
    *,
    seed: int,
    adaptors: Adaptors | None = None,
) -> tuple[Adaptors, DistillHistory]:
    """Distil every teacher with targets in ``cache`` (filled beforehand, once:
    :func:`~fusion.teacher_cache.fill_cache` for local specialists, partners' replies for remote ones) into ``student``; no teacher runs here.

    Warm start (integrate mode): pass a previously distilled ``student`` and its ``adaptors``; heads
    of unchanged teachers are kept, new teachers get new heads. Records the teachers in
    ``student.card.teachers``.
    """
    torch.manual_seed(seed)
    history = DistillHistory()
    adaptors = adaptors if adaptors is not None else Adaptors(student.feature_dims)
    for name in [n for n in adaptors.teachers if n not in {t.name for t in teachers}]:
        del adaptors[name]  # teachers that left the ensemble (pruned) leave the objective
        del adaptors.teachers[name]
    for teacher in teachers:
        if cache.num_samples(teacher.weights_sha256) == 0:
            log.warning("teacher %s has no cached targets on this proxy data; it does not take part", teacher.name)
            continue
        adaptors.ensure(teacher).set_target_stats(cache.target_stats(teacher.weights_sha256, config.balance))
    distiller = Distiller(student, adaptors, cache, config, seed)
    history.optimizer = {k: distiller.optimizer.param_groups[0][k] for k in ("lr", "weight_decay")}
    distiller.fit(batches, history)
    student.card.teachers = [{"name": t.name, "weights_sha256": t.weights_sha256} for t in adaptors.teachers.values()]
    student.card.distill = {**student.card.distill,  # keeps where a new student's weights started ("init")
                            "total_epochs": student.card.distill.get("total_epochs", 0) + config.epochs,
                            "final_loss": history.total[-1],
                            "last_config": {k: v for k, v in asdict(config).items() if k != "device"}}
    return adaptors, history


def plot_history(history: DistillHistory, path: str | Path) -> Path:
    """PNG of the per-teacher loss curves (and the overall mean)."""

    def draw(ax) -> None:
        for name, values in history.teachers.items():
            ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
        ax.plot(range(1, len(history.total) + 1), history.total, "k--", label="mean")
        ax.set_xlabel("epoch")
        ax.set_ylabel("distillation loss")
        ax.legend(fontsize="small")

    return save_plot(path, draw, dpi=120)
