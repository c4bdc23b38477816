"""Task heads, kept outside the encoder: used while training, never part of a saved specialist.

Every head is called as ``head(features, size, image)`` with the encoder's 4 multi-scale features,
the input's ``(H, W)`` and the input itself (physical units, the encoder's bands; read only by the
full-resolution skip of ``upernet_skip``); it returns logits ``[B, K]`` (classification, multilabel)
or ``[B, K, H, W]`` (segmentation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specialists.card import TASK_TYPES
from geodata.errors import InputError

__all__ = ["PooledLinearHead", "FPNSegmentationHead", "UPerNetHead", "UPerNetSkipHead", "SegmentationLoss", "DECODERS",
           "LOSSES", "build_head", "task_loss"]

DECODERS = ("fpn", "upernet", "upernet_skip")
"""Segmentation decoders: the light FPN, the UPerNet-style one (pyramid pooling + FPN + fusion), and
UPerNet with a full-resolution skip (its fused features refined with the input bands at every pixel)."""


class PooledLinearHead(nn.Module):
    """LayerNorm + linear on the global average of the last scale (classification and multilabel)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int] | None = None,
                image: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.norm(features[-1].mean(dim=(-2, -1))))


def _conv_block(in_dim: int, out_dim: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(8, out_dim), out_dim),
        nn.GELU(),
    )


class FPNSegmentationHead(nn.Module):
    """Light FPN decoder: 1x1 laterals, top-down sum, 3x3 fuse at the finest scale, upsample to input."""

    def __init__(self, feature_dims: Sequence[int], num_classes: int, dim: int = 64) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in feature_dims)
        self.fuse = _conv_block(dim, dim, 3)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int],
                image: torch.Tensor | None = None) -> torch.Tensor:
        x = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            x = lateral(feature) + F.interpolate(x, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(x))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class UPerNetHead(nn.Module):
    """UPerNet-style decoder: pyramid pooling on the last scale, FPN with 3x3 convs per level, every level
    upsampled to the finest scale, concatenated, fused by a 3x3 conv, classified and upsampled to input."""

    def __init__(self, feature_dims: Sequence[int], num_classes: int, dim: int = 64,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_block(feature_dims[-1], dim, 1))
                                   for s in pool_scales)
        self.bottleneck = _conv_block(feature_dims[-1] + len(pool_scales) * dim, dim, 3)
        self.laterals = nn.ModuleList(_conv_block(c, dim, 1) for c in feature_dims[:-1])
        self.smooth = nn.ModuleList(_conv_block(dim, dim, 3) for _ in feature_dims[:-1])
        self.fuse = _conv_block(len(feature_dims) * dim, dim, 3)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def fused(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused ``dim``-channel map at the finest scale, before the classifier."""
        last = features[-1]
        pooled = [F.interpolate(pool(last), size=last.shape[-2:], mode="bilinear", align_corners=False)
                  for pool in self.pools]
        levels = [self.bottleneck(torch.cat([last, *pooled], dim=1))]
        for lateral, feature in zip(reversed(self.laterals), reversed(features[:-1])):
            up = F.interpolate(levels[0], size=feature.shape[-2:], mode="bilinear", align_corners=False)
            levels.insert(0, lateral(feature) + up)
        finest = levels[0].shape[-2:]
        outs = [smooth(x) for smooth, x in zip(self.smooth, levels[:-1])] + [levels[-1]]
        outs = [x if x.shape[-2:] == finest else F.interpolate(x, size=finest, mode="bilinear", align_corners=False)
                for x in outs]
        return self.fuse(torch.cat(outs, dim=1))

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int],
                image: torch.Tensor | None = None) -> torch.Tensor:
        return F.interpolate(self.classifier(self.fused(features)), size=tuple(size), mode="bilinear",
                             align_corners=False)


class UPerNetSkipHead(UPerNetHead):
    """UPerNet whose fused map, upsampled to the input, is refined with the input bands at full resolution
    (standardised by a BatchNorm that learns their statistics; a 3x3 conv block, then the classifier):
    edges follow the pixels instead of a stride-4 map blurred by upsampling."""

    def __init__(self, feature_dims: Sequence[int], num_classes: int, in_bands: int, dim: int = 64,
                 refine_dim: int = 32) -> None:
        super().__init__(feature_dims, num_classes, dim)
        self.input_norm = nn.BatchNorm2d(in_bands)
        self.refine = _conv_block(dim + in_bands, refine_dim, 3)
        self.classifier = nn.Conv2d(refine_dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int],
                image: torch.Tensor | None = None) -> torch.Tensor:
        if image is None or tuple(image.shape[-2:]) != tuple(size):
            raise InputError("the upernet_skip decoder needs the input image at the output size")
        up = F.interpolate(self.fused(features), size=tuple(size), mode="bilinear", align_corners=False)
        return self.classifier(self.refine(torch.cat([up, self.input_norm(image)], dim=1)))


def build_head(task_type: str, feature_dims: Sequence[int], num_classes: int, decoder: str = "fpn",
               in_bands: int | None = None) -> nn.Module:
    """The head for ``task_type`` over an encoder with ``feature_dims`` channels per scale (``decoder``:
    one of :data:`DECODERS`, segmentation only; ``upernet_skip`` needs the number of input bands)."""
    if num_classes < 1:
        raise InputError(f"a {task_type} head needs at least one class, got {num_classes}")
    if task_type in ("classification", "multilabel"):
        return PooledLinearHead(feature_dims[-1], num_classes)
    if task_type == "segmentation":
        if decoder == "fpn":
            return FPNSegmentationHead(feature_dims, num_classes)
        if decoder == "upernet":
            return UPerNetHead(feature_dims, num_classes)
        if decoder == "upernet_skip":
            if not in_bands:
                raise InputError("the upernet_skip decoder needs the number of input bands")
            return UPerNetSkipHead(feature_dims, num_classes, in_bands)
        raise InputError(f"unknown segmentation decoder {decoder!r}; expected one of {DECODERS}")
    raise InputError(f"unknown task type {task_type!r}; expected one of {TASK_TYPES}")


LOSSES = ("ce", "ce_dice", "focal", "focal_dice")
FOCAL_GAMMA = 2.0  # Lin et al. 2017's choice


class SegmentationLoss(nn.Module):
    """Segmentation cross-entropy, optionally focal (each pixel's term scaled by ``(1 - p_t)^gamma``: the
    easy, confidently right pixels fade, the hard ones (edges, look-alikes of the rare class) count), plus
    optionally soft Dice (one minus the mean over classes of ``2|P.Y| / (|P| + |Y|)`` on the batch's softmax
    ``P`` and one-hot ``Y``: a class weighs by its own area, so a rare class (burned pixels) counts as much as
    the background). Pixels at ``ignore_index`` are left out of every term."""

    def __init__(self, weight: torch.Tensor | None, ignore_index: int, gamma: float = 0.0, dice: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index, self.gamma, self.dice = ignore_index, gamma, dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe = target.where(valid, 0)
        log_probs = logits.float().log_softmax(1)
        log_pt = log_probs.gather(1, safe.unsqueeze(1))[:, 0]
        weight = self.weight[safe] * valid if self.weight is not None else valid.float()
        terms = -log_pt * weight
        if self.gamma:
            terms = terms * (1 - log_pt.exp()).pow(self.gamma)
        loss = terms.sum() / weight.sum().clamp_min(1e-12)
        if not self.dice:
            return loss
        mask = valid.unsqueeze(1)
        probs = log_probs.exp() * mask
        onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2) * mask
        inter, total = (probs * onehot).sum((0, 2, 3)), (probs + onehot).sum((0, 2, 3))
        return loss + 1 - ((2 * inter + 1) / (total + 1)).mean()


def task_loss(task_type: str, ignore_index: int = 255, class_weights: Sequence[float] | None = None,
              loss: str = "ce") -> nn.Module:
    """Cross-entropy (classification; segmentation with ``ignore_index``: ``ce``, focal with ``focal``, plus soft
    Dice with ``ce_dice``/``focal_dice``, :class:`SegmentationLoss`) or BCE on logits (multilabel).

    ``class_weights``: one weight per class (cross-entropy) or positive weight per label (BCE)."""
    if loss not in LOSSES:
        raise InputError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if loss != "ce" and task_type != "segmentation":
        raise InputError(f"loss {loss!r} is for segmentation, not {task_type}")
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    if task_type == "classification":
        return nn.CrossEntropyLoss(weight=weight)
    if task_type == "multilabel":
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    if task_type == "segmentation":
        if loss == "ce":
            return nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        return SegmentationLoss(weight, ignore_index, FOCAL_GAMMA if loss.startswith("focal") else 0.0,
                                dice=loss.endswith("_dice"))
    raise InputError(f"unknown task type {task_type!r}; expected one of {TASK_TYPES}")
