"""Batches for fusion from a manifest: proxy batches over several sensors, labelled loaders per split."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from geodata.dataset import TileDataset, collate_samples
from geodata.manifest import Manifest
from geodata.stats import BandStats, load_or_compute_stats
from geodata.errors import InputError

__all__ = ["ProxyBatches", "labelled_loader", "proxy_sensors", "scene_partners"]


def proxy_sensors(manifest: Manifest, split: str | None) -> list[str]:
    """Canonical names of the sensors with tiles in ``split`` (all splits when ``None``)."""
    return sorted({manifest.sensor(t.sensor).name for t in manifest.tiles if split is None or t.split == split})


def scene_partners(manifest: Manifest, sensors: Sequence[str] | None = None,
                   split: str | None = None) -> dict[str, list[str]]:
    """For every tile of ``sensors`` (all when ``None``) in ``split``: the ids of the other selected
    sensors' tiles of the same ``scene`` (co-registered views of one place), in manifest order.
    Tiles without a scene, or alone in theirs, are left out."""
    wanted = {manifest.sensor(s).name for s in sensors} if sensors else None
    scenes: dict[str, list[str]] = {}
    for tile in manifest.tiles:
        if tile.scene is None or (split is not None and tile.split != split):
            continue
        if wanted is None or manifest.sensor_name(tile.sensor) in wanted:
            scenes.setdefault(tile.scene, []).append(tile.id)
    return {i: [j for j in ids if j != i] for ids in scenes.values() if len(ids) > 1 for i in ids}


class ProxyBatches:
    """Unlabelled batches of every listed sensor (one band set per batch), re-iterable, with a length.

    Each sensor's tiles are normalised-filled with that sensor's band statistics (``self.stats``).
    Batches of the sensors are interleaved round-robin, so every stretch of training sees every sensor;
    with ``shuffle`` each sensor's tile order changes every epoch (deterministically from ``seed``).
    Tiles are centre-cropped to ``size``, except those of a sensor in ``resize``: resampled whole to its size.
    """

    def __init__(self, manifest: Manifest | str | Path, sensors: Sequence[str] | None = None,
                 split: str | None = "train", size: int | None = None, batch_size: int = 32,
                 shuffle: bool = True, seed: int = 0, num_workers: int = 0,
                 resize: Mapping[str, int] | None = None) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        names = list(sensors) if sensors else proxy_sensors(self.manifest, split)
        self.sensors, self.split = names, split
        self.stats: dict[str, BandStats] = {s: load_or_compute_stats(self.manifest, s, split or "train") for s in names}
        resize = {self.manifest.sensor(s).name: px for s, px in (resize or {}).items()}
        unknown = sorted(set(resize) - {self.manifest.sensor(s).name for s in names})
        if unknown:
            raise InputError(f"resize names sensors {unknown} that have no proxy tiles (sensors: {names})")
        self.loaders = [
            DataLoader(TileDataset(self.manifest, s, split=split, size=None if self.manifest.sensor(s).name in resize else size,
                                   stats=self.stats[s], resize=resize.get(self.manifest.sensor(s).name)),
                       batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate_samples,
                       generator=torch.Generator().manual_seed(seed))
            for s in names
        ]

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)

    def scene_partners(self) -> dict[str, list[str]]:
        """:func:`scene_partners` of these batches' sensors and split."""
        return scene_partners(self.manifest, self.sensors, self.split)

    def __iter__(self) -> Iterator[dict]:
        iterators = [iter(loader) for loader in self.loaders]
        while iterators:
            for it in list(iterators):
                try:
                    yield next(it)
                except StopIteration:
                    iterators.remove(it)


def labelled_loader(manifest: Manifest, sensor: str, task: str, split: str, size: int | None = None,
                    batch_size: int = 64, stats: BandStats | None = None, num_workers: int = 0,
                    institution: str | None = None, region: str | None = None,
                    resize: int | None = None) -> DataLoader:
    """Batches of ``split`` tiles of ``sensor`` (optionally one institution or region) with targets for
    ``task``, in a fixed order, cropped to ``size`` then resampled to ``resize``; invalid pixels are
    filled with ``stats`` (default: the train split's)."""
    stats = stats or load_or_compute_stats(manifest, sensor, "train", institution=institution, region=region)
    dataset = TileDataset(manifest, sensor, split=split, task=task, size=size, stats=stats,
                          institution=institution, region=region, resize=resize)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_samples)
