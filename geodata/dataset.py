"""A torch Dataset of manifest tiles returning the project's sample dict, and its collate function.

Sample: ``{"image": float32 [C, H, W] physical units, "bands": tuple[str, ...], "valid": bool [H, W],
"id": str, "target": ...}``. Invalid pixels of ``image`` are filled with the band means of the given
:class:`~geodata.stats.BandStats` (0 without stats). ``target`` (only with a ``task``) is an ``int``
(classification), a float32 multi-hot ``[K]`` (multilabel) or an int64 ``[H, W]`` mask with the task's
``ignore_index`` wherever the image is invalid (segmentation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from geodata.errors import InputError, RasterError
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.raster import read_labelled, read_source, tile_source, tile_window
from geodata.sensors import BandError, Sensor
from geodata.stats import BandStats

__all__ = ["TileDataset", "collate_samples", "resample", "MAX_TILE_PX"]

MAX_TILE_PX = 2048
"""The largest tile side a model reads: the most a ``resize`` may ask, and what a message may carry."""


def _check_labels(manifest: Manifest, tile: TileEntry, task: str, spec: TaskSpec) -> Any:
    """The tile's target for ``task``, checked against the class list (mask paths pass through)."""
    value = tile.targets[task]
    if spec.type == "segmentation":
        return value
    labels = [value] if spec.type == "classification" else value
    if spec.type == "multilabel" and not isinstance(value, list):
        raise RasterError(f"{manifest.source}: tile {tile.id!r}",
                          f"multilabel target of task {task!r} must be a list, got {value!r}")
    for label in labels:
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < spec.num_classes:
            raise RasterError(f"{manifest.source}: tile {tile.id!r}",
                              f"label {label!r} outside the {spec.num_classes} classes of task {task!r}")
    return value


def resample(image: torch.Tensor, valid: torch.Tensor, target: Any, size: int,
             ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """A ``[C, H, W]`` image (filled: no NaN) resampled to ``size`` x ``size`` by area averaging, its
    validity (a pixel is valid when every source pixel under it was) and a ``[H, W]`` mask target
    (nearest, ``ignore_index`` where invalid); other targets pass through."""
    image = F.interpolate(image[None], size=(size, size), mode="area")[0]
    valid = F.interpolate(valid[None, None].float(), size=(size, size), mode="area")[0, 0] > 1 - 1e-6
    if isinstance(target, torch.Tensor) and target.ndim == 2:
        target = F.interpolate(target[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()
        target[~valid] = ignore_index
    return image, valid, target


class TileDataset(Dataset):
    """Tiles of one sensor from a manifest, optionally filtered, cropped to a centred ``size`` (of the
    tile's window, if it has one), then resampled to ``resize`` x ``resize`` (the whole scene at a
    coarser ground sampling distance, where ``size`` keeps native pixels and drops the rest).

    Samples carry the sensor's image bands (``self.bands``: spectral and SAR, not its auxiliary bands)."""

    def __init__(
        self,
        manifest: Manifest | str | Path,
        sensor: str | Sensor,
        split: str | None = None,
        task: str | None = None,
        institution: str | None = None,
        region: str | None = None,
        size: int | None = None,
        stats: BandStats | None = None,
        resize: int | None = None,
    ) -> None:
        if resize is not None and not 1 <= resize <= MAX_TILE_PX:
            raise InputError(f"resize must be a size in pixels, 1..{MAX_TILE_PX}, got {resize}")
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.sensor = self.manifest.sensor(sensor) if isinstance(sensor, str) else sensor
        self.bands = self.sensor.image_bands
        self.size, self.resize = size, resize
        filters = dict(sensor=self.sensor.name, split=split, task=task, institution=institution, region=region)
        self.tiles = self.manifest.select(**filters)
        if not self.tiles:
            given = ", ".join(f"{k}={v!r}" for k, v in filters.items() if v is not None)
            raise RasterError(f"manifest {self.manifest.name!r} in {self.manifest.root}", f"no tiles match {given}")
        self.task = task
        self.task_spec = self.manifest.task(task) if task is not None else None
        self._sources = [tile_source(self.manifest, t) for t in self.tiles]
        self._targets = ([_check_labels(self.manifest, t, task, self.task_spec) for t in self.tiles]
                         if task is not None else [])
        if self.task_spec is not None and self.task_spec.type == "segmentation":
            self._targets = [self.manifest.resolve(path) for path in self._targets]
        if stats is not None and tuple(stats.bands) != self.bands:
            raise BandError(f"band stats are for {tuple(stats.bands)}, sensor {self.sensor.name} has {self.bands}")
        mean = stats.mean if stats is not None else (0.0,) * len(self.bands)
        self._fill = np.asarray(mean, dtype=np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, Any]:
        tile, spec = self.tiles[index], self.task_spec
        window = tile_window(tile)
        if spec is not None and spec.type == "segmentation":
            raster, labels = read_labelled(self._sources[index], self.sensor, self._targets[index], spec.num_classes,
                                           spec.ignore_index, window=window, size=self.size)
            target: int | torch.Tensor = torch.from_numpy(labels)
        else:
            raster = read_source(self._sources[index], self.sensor, window=window, size=self.size)
            target = self._target(index) if spec is not None else None
        image = raster.data if raster.valid.all() else np.where(raster.valid, raster.data, self._fill)
        image, valid = torch.from_numpy(image), torch.from_numpy(raster.valid)
        if self.resize is not None:
            image, valid, target = resample(image, valid, target, self.resize, spec.ignore_index if spec else 255)
        sample = {"image": image, "bands": self.bands, "valid": valid, "id": tile.id}
        if spec is not None:
            sample["target"] = target
        return sample

    def _target(self, index: int) -> int | torch.Tensor:
        """Classification index or multilabel multi-hot of a tile."""
        value = self._targets[index]
        if self.task_spec.type == "classification":
            return value
        hot = torch.zeros(self.task_spec.num_classes, dtype=torch.float32)
        hot[value] = 1.0
        return hot


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch; all must carry the same band tuple."""
    bands = samples[0]["bands"]
    for s in samples:
        if s["bands"] != bands:
            raise BandError(f"cannot batch sample {s['id']!r} with bands {s['bands']} and sample "
                            f"{samples[0]['id']!r} with bands {bands}")
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "bands": bands,
        "valid": torch.stack([s["valid"] for s in samples]),
        "id": [s["id"] for s in samples],
    }
    if "target" in samples[0]:
        targets = [s["target"] for s in samples]
        batch["target"] = (torch.tensor(targets, dtype=torch.int64) if isinstance(targets[0], int)
                           else torch.stack(targets))
    return batch
