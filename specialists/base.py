"""The base checkpoint: the starting weights of every specialist and student unless told otherwise.

One ConvNeXtV2 trunk is trained on a synthetic world of its own seed (:data:`BaseConfig.world_seed`:
no run's world, nor its proxy's), on every sensor of that world but the demo's unseen one. Each
sensor's normalised bands are written into one stem over the union of the sensors' bands (each band at
its wavelength equivalent, :func:`geodata.sensors.equivalent_band`; the bands a sensor lacks are zero),
so a stem adapted to a sensor by :mod:`specialists.init` computes what the base computed on it. The
objective is supervised: the world's scene labels (dominant land-cover class) through a pooled linear
head that is thrown away. The file is fp16 safetensors; its metadata holds the stem's bands (``bands``)
and the recipe (``recipe``: this config, tiles, losses, val accuracy per sensor).

``init: base`` names the file shipped with the package (:func:`specialists.init.base_path`).
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn
from tqdm import tqdm

from geodata.dataset import TileDataset, collate_samples
from geodata.files import atomic_write_bytes
from geodata.sensors import equivalent_band, get_sensor
from geodata.stats import load_or_compute_stats
from geodata.synth.cache import cached_world
from geodata.synth.config import load_world_config
from specialists.heads import build_head
from specialists.train import augment, make_scheduler, seed_everything
from specialists.trunk import DEFAULT_VARIANT, build_trunk

__all__ = ["BaseConfig", "union_bands", "train_base", "save_base"]

log = logging.getLogger(__name__)

@dataclass
class BaseConfig:
    """How the base is made: the ``preset`` world at ``world_seed`` (``aerial_factor``,
    ``tiles_per_institution`` as given), every sensor but ``exclude``; ``epochs`` of AdamW at ``lr``
    (cosine decay after one warm-up epoch) on its train split, batches of ``batch_size`` of one sensor each."""

    preset: str = "default"
    world_seed: int = 7919
    aerial_factor: int = 2
    tiles_per_institution: int = 800
    exclude: list[str] = field(default_factory=lambda: ["landsat8_oli"])
    variant: str = DEFAULT_VARIANT
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0


def union_bands(sensors: Sequence[str], tolerance_nm: float) -> tuple[tuple[str, ...], dict[str, list[int]]]:
    """The stem's bands and, per sensor, the stem channel of each of its image bands: the sensors with the
    most bands first, each band at its equivalent already listed (within ``tolerance_nm``), else (or if another band of its sensor
    took that one) a new channel."""
    bands: list[str] = []
    index: dict[str, list[int]] = {}
    for name in sorted(sensors, key=lambda s: (-len(get_sensor(s).image_bands), s)):
        index[name] = []
        for band in get_sensor(name).image_bands:
            match = equivalent_band(band, bands, tolerance_nm)
            if match is None or bands.index(match) in index[name]:
                bands.append(band)
                match = band
            index[name].append(bands.index(match))
    return tuple(bands), index


class _Scatter(nn.Module):
    """A sensor's raw bands -> normalised, written into the union stem's ``channels`` at ``index``."""

    def __init__(self, index: Sequence[int], channels: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor(list(index)))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-6))
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.channels, *x.shape[2:])
        out[:, self.index] = (x - self.mean) / self.std
        return out


def _sensor_data(cfg: BaseConfig, cache_dir: Path):
    world = load_world_config(cfg.preset, seed=cfg.world_seed, aerial_factor=cfg.aerial_factor,
                              tiles_per_institution=cfg.tiles_per_institution)
    manifest = cached_world(world, cache_dir, f"base-seed{cfg.world_seed}")
    sensors = sorted({t.sensor for t in manifest.tiles} - set(cfg.exclude))
    data = {}
    for name in sensors:
        stats = load_or_compute_stats(manifest, name, "train")
        data[name] = (TileDataset(manifest, name, split="train", task="scene", stats=stats),
                      TileDataset(manifest, name, split="val", task="scene", stats=stats), stats)
    return manifest, data


def _batches(datasets: dict, batch_size: int, rng: random.Random) -> list[tuple[str, list[int]]]:
    """One epoch: every sensor's shuffled tiles in batches of one sensor, the batches interleaved at random."""
    out = []
    for name, ds in datasets.items():
        order = list(range(len(ds)))
        rng.shuffle(order)
        out.extend((name, order[i:i + batch_size]) for i in range(0, len(order), batch_size))
    rng.shuffle(out)
    return out


@torch.no_grad()
def _accuracy(trunk: nn.Module, head: nn.Module, scatter: _Scatter, ds: TileDataset, batch_size: int) -> float:
    trunk.eval(), head.eval()
    right = 0
    for i in range(0, len(ds), batch_size):
        batch = collate_samples([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
        image = scatter(batch["image"])
        right += int((head(trunk(image), image.shape[-2:], image).argmax(1) == batch["target"]).sum())
    return right / len(ds)


def train_base(cfg: BaseConfig, cache_dir: str | Path, tolerance_nm: float) -> tuple[nn.Module, tuple[str, ...], dict]:
    """The base trunk, its stem's bands (sensors' bands merged within ``tolerance_nm``) and the recipe
    (module docstring)."""
    seed_everything(cfg.seed)
    manifest, data = _sensor_data(cfg, Path(cache_dir))
    union, index = union_bands(list(data), tolerance_nm)
    trunk = build_trunk(cfg.variant, in_chans=len(union))
    dims = [int(c) for c in trunk.feature_info.channels()]
    head = build_head("classification", dims, manifest.task("scene").num_classes)
    scatters = {name: _Scatter(index[name], len(union), stats.mean, stats.std) for name, (_, _, stats) in data.items()}
    trains = {name: train for name, (train, _, _) in data.items()}
    rng = random.Random(cfg.seed)
    steps_per_epoch = sum(math.ceil(len(ds) / cfg.batch_size) for ds in trains.values())
    optimizer = torch.optim.AdamW([*trunk.parameters(), *head.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.epochs * steps_per_epoch, steps_per_epoch)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(cfg.epochs):
        trunk.train(), head.train()
        total = 0.0
        plan = _batches(trains, cfg.batch_size, rng)
        for name, indices in tqdm(plan, desc=f"base epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False):
            batch = collate_samples([trains[name][i] for i in indices])
            image, target = augment(scatters[name](batch["image"]), batch["target"], segmentation=False)
            loss = criterion(head(trunk(image), image.shape[-2:], image), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        losses.append(total / len(plan))
        log.info("base epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, losses[-1])
    val = {name: _accuracy(trunk, head, scatters[name], valid, cfg.batch_size) for name, (_, valid, _) in data.items()}
    log.info("base val accuracy (scene): %s", {k: round(v, 3) for k, v in val.items()})
    recipe = {"config": asdict(cfg), "tolerance_nm": tolerance_nm, "world": manifest.name, "objective": "supervised scene classification",
              "tiles": {name: len(ds) for name, ds in trains.items()}, "loss": losses, "val_accuracy": val}
    return trunk, union, recipe


def save_base(trunk: nn.Module, bands: Sequence[str], recipe: dict, path: str | Path) -> Path:
    """Write the trunk as fp16 safetensors with its bands and recipe in the metadata (atomically)."""
    state = {k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in trunk.state_dict().items()}
    meta = {"bands": json.dumps(list(bands)), "recipe": json.dumps(recipe)}
    path = Path(path)
    atomic_write_bytes(path, safetensors_bytes(state, metadata=meta))
    return path
