"""FCMAE: ConvNeXtV2's self-supervised recipe (Woo et al., 2023) on unlabelled tiles, labels ignored.

Random square patches of the (normalised) input are masked; the encoder sees the masked image, with the
mask applied again after the stem and after every stage (the dense form of FCMAE's sparse convolutions:
masked positions stay zero, so no information leaks into them through the 7x7 depthwise kernels); a light
decoder (one ConvNeXtV2 block with GRN on the last stage, a 1x1 projection to ``stride^2 x bands`` values
and a pixel shuffle) reconstructs the image, and the loss is the mean squared error of per-patch
normalised pixels on the **masked** patches only. The decoder is thrown away after pretraining (in the
federated phase it travels and is averaged with the encoder between rounds); the encoder's weights start
a specialist (``eosfed train-specialist --init-weights``) or a federated group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXtBlock
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from geodata.errors import InputError

from geodata.dataset import collate_samples
from specialists.train import resolve_device

__all__ = ["FcmaeOptim", "FcmaeConfig", "Fcmae", "random_patch_mask", "fcmae_loader", "planned_steps", "pretrain"]

log = logging.getLogger(__name__)


@dataclass
class FcmaeOptim:
    """How masked autoencoding runs, locally or in federated rounds: ``patch`` px masking squares
    (dividing the tile size), the fraction ``mask_ratio`` of them masked, AdamW at ``lr``;
    ``max_steps`` caps the optimiser steps (0: no cap); ``device`` ``auto``: the GPU if there is one."""

    batch_size: int = 64
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    mask_ratio: float = 0.6
    patch: int = 8
    device: str = "auto"
    max_steps: int = 0


@dataclass
class FcmaeConfig(FcmaeOptim):
    """One pretraining: ``epochs`` epochs (or ``max_steps`` steps), the learning rate decayed by a cosine over
    its steps, seeded by ``seed``."""

    epochs: int = 10
    seed: int = 0


def random_patch_mask(batch: int, height: int, width: int, patch: int, ratio: float,
                      generator: torch.Generator) -> torch.Tensor:
    """A ``(batch, 1, height, width)`` float mask, 1 where masked: ``ratio`` of the ``patch`` squares."""
    if height % patch or width % patch:
        raise InputError(f"fcmae: tile {height}x{width} is not a multiple of the {patch} px mask patch")
    gh, gw = height // patch, width // patch
    n = gh * gw
    keep = max(1, min(n - 1, round(n * (1 - ratio))))
    order = torch.rand(batch, n, generator=generator).argsort(dim=1)
    mask = torch.ones(batch, n)
    mask.scatter_(1, order[:, :keep], 0.0)
    return mask.view(batch, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


class Fcmae(nn.Module):
    """An encoder (the features-only ConvNeXtV2 trunk: ``stem_0``, ``stages_0..3``) and its light decoder."""

    def __init__(self, encoder: nn.Module, in_chans: int, patch: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch = patch
        self.stride = encoder.feature_info.reduction()[-1]
        width = encoder.feature_info.channels()[-1]
        self.decoder = nn.Sequential(ConvNeXtBlock(width, use_grn=True, ls_init_value=None),
                                     nn.Conv2d(width, self.stride ** 2 * in_chans, 1), nn.PixelShuffle(self.stride))

    def _encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        visible = 1.0 - mask
        h = x * visible
        for name, module in self.encoder.named_children():
            h = module(h)
            if name.startswith(("stem", "stages")):
                h = h * F.interpolate(visible, size=h.shape[-2:], mode="area").gt(0.5).to(h.dtype)
        return h

    def loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error of per-patch normalised pixels over the masked patches."""
        recon = self.decoder(self._encode(x, mask))
        p = self.patch
        b, c, hh, ww = x.shape

        def patches(t: torch.Tensor) -> torch.Tensor:
            return t.unfold(2, p, p).unfold(3, p, p).reshape(b, t.shape[1], -1, p * p)

        target = patches(x)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        error = ((patches(recon) - target) ** 2).mean(dim=(1, 3))  # (b, patches)
        masked = patches(mask.expand(b, 1, hh, ww))[:, 0, :, 0]
        return (error * masked).sum() / masked.sum().clamp(min=1.0)


def fcmae_loader(data: Dataset, cfg: FcmaeConfig) -> DataLoader:
    """``data`` in shuffled batches of ``cfg.batch_size`` (the order seeded by ``cfg.seed``)."""
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_samples, drop_last=False,
                      generator=torch.Generator().manual_seed(cfg.seed))


def planned_steps(cfg: FcmaeConfig, batches: int) -> int:
    """The optimiser steps :func:`pretrain` takes with ``batches`` batches an epoch."""
    return min(cfg.max_steps or cfg.epochs * batches, cfg.epochs * batches)


def pretrain(model: Fcmae, loader: DataLoader, mean: torch.Tensor, std: torch.Tensor,
             cfg: FcmaeConfig) -> list[float]:
    """Pretrain ``model`` (its encoder and decoder) in place on ``loader``'s images (normalised by
    ``mean``/``std`` per band), at most ``cfg.max_steps`` steps when given; returns the mean masked-patch
    loss of each epoch begun. Stops with an error if the loss becomes non-finite."""
    torch.manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    model.to(device).train()
    left = planned_steps(cfg, len(loader))
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(1, left))
    generator = torch.Generator().manual_seed(cfg.seed)
    mean, std = mean.view(1, -1, 1, 1).to(device), std.view(1, -1, 1, 1).to(device)
    history: list[float] = []
    for epoch in range(cfg.epochs):
        if left <= 0:
            break
        total, count = 0.0, 0
        for batch in tqdm(loader, desc=f"fcmae epoch {epoch + 1}/{cfg.epochs}", leave=False):
            if left <= 0:
                break
            x = ((batch["image"].to(device) - mean) / std).float()
            mask = random_patch_mask(x.shape[0], x.shape[2], x.shape[3], cfg.patch, cfg.mask_ratio,
                                     generator).to(device)
            loss = model.loss(x, mask)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fcmae: loss became {loss.item()} at epoch {epoch + 1}")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            left -= 1
            total += loss.item() * x.shape[0]
            count += x.shape[0]
        history.append(total / max(count, 1))
        log.info("fcmae epoch %d/%d: masked-patch loss %.4f", epoch + 1, cfg.epochs, history[-1])
    return history
