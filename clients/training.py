"""Local work on a group's specialist: train it a few epochs from the received weights (one FedAvg
round), pretrain its encoder by FCMAE on the train tiles (one federated pretraining round), or evaluate it
on the local labelled splits. Weights arrive and leave as state dicts;
the model is always rebuilt from the card, never unpickled.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from clients.data import institution_tiles, open_manifest
from clients.institution import InstitutionSpec
from geodata.dataset import TileDataset
from geodata.manifest import Manifest
from geodata.stats import BandStats
from specialists.card import SpecialistCard
from specialists.encoder import build_encoder
from specialists.fcmae import Fcmae, FcmaeConfig, fcmae_loader, planned_steps, pretrain
from specialists.heads import build_head
from specialists.model import Specialist
from specialists.train import (TrainConfig, evaluate, make_loader, make_optimizer, make_scheduler, resolve_device,
                               seed_everything, train_one_epoch)

__all__ = ["build_model", "fit", "fit_fcmae", "evaluate_splits"]

log = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


def build_model(card: SpecialistCard, encoder: State, head: State) -> tuple[Specialist, nn.Module]:
    """The card's specialist and task head holding exactly the given weights. The modules are built
    on the meta device and take the received tensors as they are: no random init is computed only
    to be overwritten (that init costs about a second per message on a CPU)."""
    with torch.device("meta"):
        net = build_encoder(card.variant, in_chans=card.num_bands)
        task_head = build_head(card.task_type, [int(c) for c in net.feature_info.channels()], card.num_classes)
    net.load_state_dict(encoder, strict=True, assign=True)
    task_head.load_state_dict(head, strict=True, assign=True)
    return Specialist(card, net), task_head


def _dataset(manifest: Manifest, spec: InstitutionSpec, card: SpecialistCard, split: str) -> TileDataset:
    stats = BandStats(tuple(card.bands), tuple(card.norm_mean), tuple(card.norm_std))
    return TileDataset(manifest, spec.sensor, split=split, task=spec.task, region=spec.region or None, stats=stats,
                       resize=spec.resize or None)


def _splits(manifest: Manifest, spec: InstitutionSpec, wanted: tuple[str, ...]) -> list[str]:
    return [split for split in wanted if institution_tiles(manifest, spec, split)]


def _copy(state: State) -> State:
    return {k: v.clone() for k, v in state.items()}


def _cpu_state(module: nn.Module) -> State:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def evaluate_splits(manifest: Manifest, spec: InstitutionSpec, card: SpecialistCard, specialist: Specialist,
                    head: nn.Module, cfg: TrainConfig, splits: tuple[str, ...]) -> dict[str, float]:
    """``<split>_<metric>`` and ``<split>_count`` for each of ``splits`` this institution has."""
    task = manifest.task(spec.task)
    metrics: dict[str, float] = {}
    for split in _splits(manifest, spec, splits):
        data = _dataset(manifest, spec, card, split)
        scores = evaluate(specialist, head, make_loader(data, cfg, shuffle=False), card.task_type, card.num_classes,
                          cfg, task.ignore_index, desc=f"{spec.name} {split}")
        metrics.update({f"{split}_{k}": v for k, v in scores.items()})
        metrics[f"{split}_count"] = len(data)
    return metrics


def fit(spec: InstitutionSpec, card: SpecialistCard, encoder: State, head: State,
        cfg: TrainConfig) -> tuple[State, State, dict[str, float]]:
    """One round: evaluate the received model on ``val``, then train ``cfg.epochs`` local epochs at ``cfg.lr``,
    ramped up linearly over the first ``cfg.warmup_epochs`` of them (the coordinator sends what is left of
    the run's warm-up)."""
    seed_everything(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    # build_model adopts the tensors it is given: copy them so the caller's state is never trained in place
    specialist, task_head = build_model(card, _copy(encoder), _copy(head))
    specialist.to(device), task_head.to(device)
    manifest = open_manifest(spec)
    metrics = evaluate_splits(manifest, spec, card, specialist, task_head, cfg, ("val",))
    data = _dataset(manifest, spec, card, "train")
    loader = make_loader(data, cfg, shuffle=True)
    optimizer = make_optimizer([specialist, task_head], cfg)
    scheduler = make_scheduler(optimizer, cfg.epochs * len(loader), round(cfg.warmup_epochs * len(loader)),
                               decay=False)
    first_lr = optimizer.param_groups[0]["lr"]
    losses, steps = [], 0
    for epoch in range(cfg.epochs):
        budget = cfg.max_steps - steps if cfg.max_steps else None
        if budget is not None and budget <= 0:
            break
        loss, done = train_one_epoch(specialist, task_head, loader, optimizer, card.task_type, cfg, scheduler,
                                     max_steps=budget, ignore_index=manifest.task(spec.task).ignore_index,
                                     desc=f"{spec.name} epoch {epoch + 1}/{cfg.epochs}")
        losses.append(loss)
        steps += done
    metrics.update({"num_examples": len(data), "train_loss": sum(losses) / max(len(losses), 1), "steps": steps,
                    "first_lr": first_lr})
    log.info("Institution %s: %d steps on %d tiles, train loss %.4g", spec.name, steps, len(data),
             metrics["train_loss"])
    return _cpu_state(specialist.encoder), _cpu_state(task_head), metrics


def fit_fcmae(spec: InstitutionSpec, card: SpecialistCard, encoder: State, decoder: State,
              cfg: FcmaeConfig) -> tuple[State, State, dict[str, float]]:
    """One federated FCMAE round on this institution's ``train`` tiles only (labels ignored; a manifest marks no
    other unlabelled tiles), normalised by the card's band statistics: the encoder and decoder after
    ``cfg.epochs`` local epochs (at most ``cfg.max_steps`` steps)."""
    with torch.device("meta"):
        model = Fcmae(build_encoder(card.variant, in_chans=card.num_bands), card.num_bands, cfg.patch)
    model.encoder.load_state_dict(_copy(encoder), strict=True, assign=True)
    model.decoder.load_state_dict(_copy(decoder), strict=True, assign=True)
    data = _dataset(open_manifest(spec), spec, card, "train")
    loader = fcmae_loader(data, cfg)
    history = pretrain(model, loader, torch.tensor(card.norm_mean), torch.tensor(card.norm_std), cfg)
    steps = planned_steps(cfg, len(loader))
    metrics = {"num_examples": len(data), "loss": history[-1], "first_loss": history[0], "steps": steps}
    log.info("Institution %s: FCMAE %d steps on %d train tiles, masked-patch loss %.4g -> %.4g", spec.name, steps,
             len(data), history[0], history[-1])
    return _cpu_state(model.encoder), _cpu_state(model.decoder), metrics
