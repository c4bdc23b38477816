"""Local training of one specialist and its task head, with early stopping on a validation split.

The pieces are plain functions over ``(specialist, head)`` so that federated rounds can reuse them:
load a global state with ``specialist.encoder.load_state_dict(...)``, call :func:`train_one_epoch`
on local data, send ``specialist.encoder.state_dict()`` back.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torchmetrics
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from geodata.dataset import collate_samples
from geodata.sensors import select_bands
from specialists.card import SpecialistCard
from specialists.heads import LOSSES, build_head, task_loss
from specialists.init import load_encoder_weights
from specialists.model import Specialist
from geodata.errors import InputError

__all__ = [
    "OptimConfig",
    "TrainConfig",
    "resolve_device",
    "MONITOR",
    "seed_everything",
    "make_loader",
    "make_optimizer",
    "make_scheduler",
    "augment",
    "train_one_epoch",
    "evaluate",
    "fit",
    "record_training",
    "train_specialist",
]

log = logging.getLogger(__name__)

MONITOR = {"classification": "accuracy", "multilabel": "map", "segmentation": "miou"}
"""Validation metric that early stopping maximises, per task type."""


@dataclass
class OptimConfig:
    """How a specialist's optimiser runs, locally or in federated rounds: AdamW at ``lr`` after a linear
    warm-up of ``warmup_epochs``; ``device`` ``auto`` picks the GPU the process may use, else the CPU;
    ``amp`` trains in bfloat16 autocast on GPUs."""

    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    device: str = "auto"
    amp: bool = False


@dataclass
class TrainConfig(OptimConfig):
    """How to train one specialist (``max_steps`` caps optimiser steps over all epochs, 0: no cap; ``augment``: random
    flips/rotations; ``gain_jitter``: the std of a random log-gain per sample and band that multiplies the
    training images, against illumination and sensor-calibration shifts between scenes, 0: off; ``loss``:
    ``ce``, or for segmentation ``ce_dice``, ``focal``, ``focal_dice`` (:class:`specialists.heads.SegmentationLoss`))."""

    epochs: int = 30
    patience: int = 5
    seed: int = 0
    num_workers: int = 0
    max_steps: int = 0
    augment: bool = True
    init_weights: str | None = None
    freeze: str = "none"
    class_weights: list[float] | None = None
    gain_jitter: float = 0.0
    loss: str = "ce"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.patience < 0:
            raise InputError(f"TrainConfig: lr > 0, weight_decay/warmup_epochs/patience >= 0 required: {self}")
        if self.gain_jitter < 0:
            raise InputError(f"TrainConfig.gain_jitter must be >= 0, got {self.gain_jitter}")
        if self.loss not in LOSSES:
            raise InputError(f"TrainConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.max_steps < 0:
            raise InputError(f"TrainConfig.max_steps must be >= 0 (0: no cap), got {self.max_steps}")


def resolve_device(device: str) -> str:
    """``auto``: the GPU this process may use (Ray sets ``CUDA_VISIBLE_DEVICES`` in simulation), else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(dataset: Dataset, cfg: TrainConfig, shuffle: bool) -> DataLoader:
    """A loader of batched sample dicts; shuffling follows ``cfg.seed``."""
    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=cfg.num_workers,
        collate_fn=collate_samples, generator=generator, persistent_workers=cfg.num_workers > 0,
    )


def make_optimizer(modules: Iterable[nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (no weight decay on norms and biases)."""
    return create_optimizer_v2(nn.ModuleList(modules), opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   decay: bool = True) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then (``decay``) cosine decay to zero, stepped once per optimiser step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if not decay:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BandEncoder(Protocol):
    """What the loops train: a module with a band tuple, taking ``[B, len(bands), H, W]`` to 4 scales
    (a :class:`Specialist`, or any encoder seen through a fixed band tuple)."""

    bands: tuple[str, ...]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def _inputs(batch: dict[str, Any], specialist: BandEncoder, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    image = select_bands(batch["image"], batch["bands"], specialist.bands, dim=1)
    return image.to(device, non_blocking=True), batch["target"].to(device, non_blocking=True)


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def augment(image: torch.Tensor, target: torch.Tensor, segmentation: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent random flip/rotation per sample (of the 8 square symmetries; half-turns only for
    non-square tiles), applied to its mask too for segmentation."""
    quarter = 1 if image.shape[-1] == image.shape[-2] else 2
    turns = torch.randint(4 // quarter, (len(image),)) * quarter
    flips = torch.randint(2, (len(image),)).bool()
    image = torch.stack([_dihedral(x, int(k), bool(f)) for x, k, f in zip(image, turns, flips)])
    if segmentation:
        target = torch.stack([_dihedral(t, int(k), bool(f)) for t, k, f in zip(target, turns, flips)])
    return image, target


def _jitter_gain(image: torch.Tensor, std: float) -> torch.Tensor:
    """``image`` ``[B, C, H, W]`` times ``exp(N(0, std))``, one draw per sample and band."""
    return image * torch.exp(torch.randn(*image.shape[:2], 1, 1, device=image.device) * std)


def _autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")


def train_one_epoch(
    specialist: BandEncoder,
    head: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    task_type: str,
    cfg: TrainConfig,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_steps: int | None = None,
    ignore_index: int = 255,
    desc: str = "train",
) -> tuple[float, int]:
    """One pass over ``loader`` (at most ``max_steps`` optimiser steps); returns (mean loss, steps)."""
    device = torch.device(resolve_device(cfg.device))
    specialist.train(), head.train()
    criterion = task_loss(task_type, ignore_index, cfg.class_weights, cfg.loss).to(device)
    total, steps = 0.0, 0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        if max_steps is not None and steps >= max_steps:
            break
        image, target = _inputs(batch, specialist, device)
        if cfg.augment:
            image, target = augment(image, target, task_type == "segmentation")
        if cfg.gain_jitter > 0:
            image = _jitter_gain(image, cfg.gain_jitter)
        with _autocast(cfg, device):
            logits = head(specialist(image), image.shape[-2:], image)
        loss = criterion(logits.float(), target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item()
        steps += 1
    return total / max(steps, 1), steps


def _metrics(task_type: str, num_classes: int, ignore_index: int) -> torchmetrics.MetricCollection:
    if task_type == "classification":
        metrics = {
            "accuracy": torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": torchmetrics.classification.MulticlassF1Score(num_classes, average="macro"),
        }
    elif task_type == "multilabel":
        metrics = {
            "map": torchmetrics.classification.MultilabelAveragePrecision(num_classes, average="macro"),
            "macro_f1": torchmetrics.classification.MultilabelF1Score(num_classes, average="macro"),
            "micro_f1": torchmetrics.classification.MultilabelF1Score(num_classes, average="micro"),
        }
    elif task_type == "segmentation":
        metrics = {
            "miou": torchmetrics.classification.MulticlassJaccardIndex(
                num_classes, average="macro", ignore_index=ignore_index),
            "pixel_accuracy": torchmetrics.classification.MulticlassAccuracy(
                num_classes, average="micro", ignore_index=ignore_index),
        }
    else:
        raise InputError(f"unknown task type {task_type!r}; expected one of {tuple(MONITOR)}")
    return torchmetrics.MetricCollection(metrics)


@torch.no_grad()
def evaluate(
    specialist: BandEncoder,
    head: nn.Module,
    loader: DataLoader,
    task_type: str,
    num_classes: int,
    cfg: TrainConfig,
    ignore_index: int = 255,
    desc: str = "eval",
) -> dict[str, float]:
    """Loss and task metrics (accuracy/macro-F1, mAP/F1, or mIoU/pixel accuracy) over ``loader``."""
    device = torch.device(resolve_device(cfg.device))
    specialist.eval(), head.eval()
    criterion = task_loss(task_type, ignore_index)
    metrics = _metrics(task_type, num_classes, ignore_index).to(device)
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        image, target = _inputs(batch, specialist, device)
        with _autocast(cfg, device):
            logits = head(specialist(image), image.shape[-2:], image)
        logits = logits.float()
        total += criterion(logits, target).item() * len(image)
        count += len(image)
        if task_type == "multilabel":
            metrics.update(logits.sigmoid(), target.long())
        else:
            metrics.update(logits.argmax(1), target)
    if count == 0:
        raise InputError(f"{desc}: the loader yielded no samples")
    return {"loss": total / count, **{k: float(v) for k, v in metrics.compute().items()}}


def fit(
    encoder: BandEncoder,
    head: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset | None,
    task_type: str,
    num_classes: int,
    cfg: TrainConfig,
    ignore_index: int = 255,
    name: str = "model",
) -> tuple[list[dict[str, Any]], int | None]:
    """Train ``encoder`` (its trainable parameters) and ``head`` with AdamW, warm-up and cosine decay.

    With ``val_ds``, every epoch is validated on ``MONITOR[task_type]``; training stops after
    ``cfg.patience`` epochs without improvement (0: never) and the best epoch's weights are restored.
    Returns one history record per epoch and the best epoch (``None`` without ``val_ds``).
    """
    train_loader = make_loader(train_ds, cfg, shuffle=True)
    val_loader = make_loader(val_ds, cfg, shuffle=False) if val_ds is not None else None
    total_steps = cfg.epochs * len(train_loader)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = make_optimizer([encoder, head], cfg)
    scheduler = make_scheduler(optimizer, total_steps, round(cfg.warmup_epochs * len(train_loader)))
    monitor = MONITOR[task_type]
    log.info("training %s (%d train tiles, %s val) for up to %d epochs / %d steps",
                name, len(train_ds), len(val_ds) if val_ds is not None else "no", cfg.epochs, total_steps)

    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict, dict] | None = None
    steps = 0
    for epoch in range(1, cfg.epochs + 1):
        loss, done = train_one_epoch(encoder, head, train_loader, optimizer, task_type, cfg, scheduler,
                                     max_steps=total_steps - steps, ignore_index=ignore_index,
                                     desc=f"epoch {epoch}/{cfg.epochs}")
        steps += done
        record: dict[str, Any] = {"epoch": epoch, "steps": steps, "train_loss": loss,
                                  "lr": optimizer.param_groups[0]["lr"]}
        if val_loader is not None:
            val = evaluate(encoder, head, val_loader, task_type, num_classes, cfg, ignore_index, desc=f"val {epoch}")
            record.update({f"val_{k}": v for k, v in val.items()})
            if best is None or val[monitor] > best[0]:
                best = (val[monitor], epoch, copy.deepcopy(encoder.state_dict()), copy.deepcopy(head.state_dict()))
        history.append(record)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        if best is not None and cfg.patience and epoch - best[1] >= cfg.patience:
            log.info("early stop at epoch %d: val_%s did not beat %.4g (epoch %d) for %d epochs",
                        epoch, monitor, best[0], best[1], cfg.patience)
            break
        if steps >= total_steps:
            break
    if best is None:
        return history, None
    encoder.load_state_dict(best[2])
    head.load_state_dict(best[3])
    return history, best[1]


def train_specialist(
    train_ds: Dataset,
    val_ds: Dataset | None,
    card: SpecialistCard,
    cfg: TrainConfig,
    ignore_index: int = 255,
    *,
    tolerance_nm: float | None,
) -> tuple[Specialist, nn.Module, list[dict[str, Any]]]:
    """Train a new specialist described by ``card`` (bands, norm stats, task, variant) with :func:`fit`,
    from ``cfg.init_weights`` when given (its stem adapted to the card's bands within ``tolerance_nm``,
    which is needed then).

    Returns the specialist (card metrics filled), its head, and one history record per epoch.
    """
    seed_everything(cfg.seed)
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))
    device = torch.device(cfg.device)
    specialist = Specialist.from_card(card, freeze=cfg.freeze)
    if cfg.init_weights is not None:
        if tolerance_nm is None:
            raise InputError(f"init_weights {cfg.init_weights}: adapting its stem to {card.name!r}'s bands needs "
                             "tolerance_nm")
        card.extra["init"] = load_encoder_weights(specialist.encoder, cfg.init_weights, card.bands,
                                                  tolerance_nm=tolerance_nm).record()
    specialist.to(device)
    head = build_head(card.task_type, specialist.feature_dims, card.num_classes).to(device)
    history, best = fit(specialist, head, train_ds, val_ds, card.task_type, card.num_classes, cfg, ignore_index,
                        name=f"{card.name} ({card.variant})")
    record_training(card, history, best, train_ds, val_ds, cfg)
    return specialist.eval(), head.eval(), history


def record_training(card: SpecialistCard, history: list[dict[str, Any]], best: int | None, train_ds: Dataset,
                    val_ds: Dataset | None, cfg: TrainConfig) -> None:
    """Fill the card's metrics (the best epoch's validation scores), tile counts and training config."""
    if best is not None:
        card.metrics.update({k: v for k, v in history[best - 1].items() if k.startswith("val_")})
        card.metrics["best_epoch"] = best
    card.metrics["epochs_run"] = len(history)
    card.data_summary.setdefault("tiles", {}).update(
        {"train": len(train_ds), **({"val": len(val_ds)} if val_ds is not None else {})})
    card.extra["train_config"] = asdict(cfg)
