"""Batches for fusion from a manifest: proxy batches over several sensors, labelled loaders per split."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from geodata.dataset import TileDataset, collate_samples
from geodata.manifest import Manifest
from geodata.raster import read_source, tile_source, tile_window
from geodata.stats import BandStats, load_or_compute_stats
from geodata.errors import InputError

__all__ = ["CropSizes", "ProxyBatches", "crop_id", "dataset_gsd", "labelled_loader", "proxy_sensors",
           "scene_partners"]


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


def dataset_gsd(dataset: TileDataset) -> tuple[float, ...]:
    """The ground sampling distance (m) of each of ``dataset``'s bands as its samples carry them: the sensor's
    (:meth:`~geodata.sensors.Sensor.band_gsd`), times native side / ``resize`` for a resampled dataset (the
    native side read from its first tile)."""
    factor = 1.0
    if dataset.resize is not None:
        tile = dataset.tiles[0]
        native = read_source(tile_source(dataset.manifest, tile), dataset.sensor, window=tile_window(tile),
                             size=dataset.size).data.shape[-1]
        factor = native / dataset.resize
    return tuple(dataset.sensor.band_gsd(b) * factor for b in dataset.bands)


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

    def band_gsd(self) -> dict[str, float]:
        """Each band's GSD (m) in these batches (:func:`dataset_gsd`); a band of several sensors takes the
        geometric mean of theirs."""
        logs: dict[str, list[float]] = {}
        for loader in self.loaders:
            for band, gsd in zip(loader.dataset.bands, dataset_gsd(loader.dataset)):
                logs.setdefault(band, []).append(math.log(gsd))
        return {b: math.exp(sum(v) / len(v)) for b, v in logs.items()}

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


def crop_id(sample: str, size: int) -> str:
    """The id of ``sample``'s centre crop of ``size`` px (its teacher targets are cached under it)."""
    return f"{sample}@{size}px"


def _centre_crop(batch: Mapping, size: int) -> dict:
    """``batch`` centre-cropped to ``size`` x ``size``, its ids those of the crops; a batch no larger
    than ``size`` is returned as it is (its ids unchanged, so targets cached at full size stay valid)."""
    height, width = batch["image"].shape[-2:]
    if size >= min(height, width):
        return dict(batch)
    top, left = (height - size) // 2, (width - size) // 2
    out = dict(batch, image=batch["image"][..., top:top + size, left:left + size],
               id=[crop_id(i, size) for i in batch["id"]])
    if "valid" in batch:
        out["valid"] = batch["valid"][..., top:top + size, left:left + size]
    return out


class CropSizes:
    """Multi-resolution proxy batches: each batch of ``batches`` centre-cropped to one of ``sizes`` (px),
    drawn per batch (seeded; new draws on every pass). Centre crops are fixed, so a teacher's targets of a
    crop are computed once at the crop's size and cached under :func:`crop_id`; :meth:`every_size` yields
    each batch at every size (what the cache is filled from). Re-iterable, with a length, like
    :class:`ProxyBatches`, whose ``stats`` and ``sensors`` it exposes."""

    def __init__(self, batches: ProxyBatches, sizes: Sequence[int], seed: int = 0) -> None:
        if not sizes:
            raise InputError("CropSizes needs at least one crop size")
        self.batches, self.sizes, self.seed, self._passes = batches, sorted(set(sizes)), seed, 0
        self.stats, self.sensors = batches.stats, batches.sensors

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self._passes)
        self._passes += 1
        for batch in self.batches:
            yield _centre_crop(batch, self.sizes[int(torch.randint(len(self.sizes), (1,), generator=generator))])

    def every_size(self) -> Iterator[dict]:
        for batch in self.batches:
            for size in self.sizes:
                yield _centre_crop(batch, size)

    def scene_partners(self) -> dict[str, list[str]]:
        """:meth:`ProxyBatches.scene_partners`, for the full tiles and for each crop size."""
        partners = self.batches.scene_partners()
        out = dict(partners)
        for size in self.sizes:
            out |= {crop_id(i, size): [crop_id(j, size) for j in others] for i, others in partners.items()}
        return out


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
