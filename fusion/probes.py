"""Frozen-encoder probes: linear and kNN classification on pooled features, a light segmentation
decoder on multi-scale features; label fractions and seeds; mean and spread.

Any encoder with ``forward(x, bands) -> list[Tensor]`` and ``pooled(x, bands) -> Tensor`` is probed
the same way: a specialist (wrapped in a one-member :class:`~fusion.ensemble.Ensemble`), the
ensemble, the student or a random-initialised student. Features are extracted once per split
(:func:`extract_features`); every probe after that reads only the stored features.

Metrics: accuracy (classification), macro average precision over classes with a positive test
sample (multilabel), mean IoU over classes present in the test masks (segmentation).
Linear probe: logistic regression (softmax or per-class sigmoid) on z-scored features, full-batch
L-BFGS, weight decay picked on a validation split from a small grid.
kNN: cosine similarity, k=20, votes weighted by ``exp(sim / 0.07)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import binary_average_precision, multiclass_jaccard_index
from tqdm import tqdm

from fusion.featstats import ChannelMoments
from geodata.manifest import TaskSpec
from specialists.heads import FPNSegmentationHead, task_loss
from specialists.trunk import pyramid_pool
from geodata.errors import InputError

__all__ = [
    "Encoder",
    "FeatureSet",
    "ProbeResult",
    "extract_features",
    "label_subset",
    "linear_probe",
    "knn_probe",
    "segmentation_probe",
    "probe_features",
    "probe_encoder",
    "task_metric",
    "results_markdown",
    "score_predictions",
    "WEIGHT_DECAYS",
]

log = logging.getLogger(__name__)

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
DEFAULT_SEEDS = (0, 1, 2)


class Encoder(Protocol):
    def forward(self, x: torch.Tensor, bands: Sequence[str]) -> list[torch.Tensor]: ...

    def pooled(self, x: torch.Tensor, bands: Sequence[str]) -> torch.Tensor: ...


@dataclass
class FeatureSet:
    """Frozen features of one split: pooled ``[N, D]``; optional maps (fp16, per scale); targets."""

    pooled: torch.Tensor
    targets: torch.Tensor
    ids: list[str]
    maps: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: torch.Tensor) -> "FeatureSet":
        maps = [m[index] for m in self.maps] if self.maps is not None else None
        return FeatureSet(self.pooled[index], self.targets[index], [self.ids[i] for i in index.tolist()], maps)

    @staticmethod
    def concat(parts: Sequence["FeatureSet"]) -> "FeatureSet":
        """Features of several encoders on the same samples side by side (a coalition)."""
        first = parts[0]
        maps = None
        if all(p.maps is not None for p in parts):
            maps = [torch.cat(scale, dim=1) for scale in zip(*(p.maps for p in parts))]
        return FeatureSet(torch.cat([p.pooled for p in parts], dim=1), first.targets, first.ids, maps)


@dataclass
class ProbeResult:
    encoder: str
    task: str
    method: str
    fraction: float
    metric: str
    mean: float
    std: float
    values: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def extract_features(encoder: Encoder, batches: Iterable[Mapping], with_maps: bool = False,
                     device: str = "cpu", desc: str = "features") -> FeatureSet:
    """Run the frozen ``encoder`` once over labelled ``batches`` (``image``, ``bands``, ``target``, ``id``)."""
    if isinstance(encoder, nn.Module):
        encoder.eval()
    pooled, targets, ids, maps = [], [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        x = batch["image"].to(device)
        if with_maps:
            features = encoder.forward(x, batch["bands"])
            pooled.append(pyramid_pool(features).cpu())
            maps.append([f.half().cpu() for f in features])
        else:
            pooled.append(encoder.pooled(x, batch["bands"]).float().cpu())
        targets.append(torch.as_tensor(batch["target"]))
        ids.extend(batch["id"])
    if not ids:
        raise InputError(f"{desc}: no batches to extract features from")
    stacked = [torch.cat(scale) for scale in zip(*maps)] if with_maps else None
    return FeatureSet(torch.cat(pooled), torch.cat(targets), ids, stacked)


def label_subset(targets: torch.Tensor, fraction: float, task: TaskSpec, seed: int) -> torch.Tensor:
    """Indices of a ``fraction`` of the samples, stratified (at least one sample per present class)."""
    n = targets.shape[0]
    g = torch.Generator().manual_seed(seed)
    if fraction >= 1.0:
        return torch.arange(n)
    if task.type == "classification":
        chosen = []
        for c in targets.unique():
            members = (targets == c).nonzero().flatten()
            take = max(1, round(fraction * len(members)))
            chosen.append(members[torch.randperm(len(members), generator=g)[:take]])
        return torch.cat(chosen).sort().values
    order = torch.randperm(n, generator=g)
    chosen = set(order[: max(1, math.ceil(fraction * n))].tolist())
    if task.type == "multilabel":
        for k in range(targets.shape[1]):
            positives = (targets[:, k] > 0).nonzero().flatten().tolist()
            if positives and not chosen.intersection(positives):
                chosen.add(positives[int(torch.randint(len(positives), (1,), generator=g))])
    return torch.tensor(sorted(chosen))


def task_metric(task: TaskSpec) -> str:
    return {"classification": "accuracy", "multilabel": "map", "segmentation": "miou"}[task.type]


def score_predictions(scores: torch.Tensor, targets: torch.Tensor, task: TaskSpec) -> float:
    """Accuracy, macro mAP (classes with positives) or mIoU (classes present) of predictions."""
    if task.type == "classification":
        return float((scores.argmax(1) == targets).float().mean())
    if task.type == "multilabel":
        present = (targets > 0).any(0)
        if not present.any():
            raise InputError("multilabel test split has no positive label at all")
        return float(np.mean([float(binary_average_precision(scores[:, k], targets[:, k].int()))
                              for k in present.nonzero().flatten().tolist()]))
    per_class = multiclass_jaccard_index(scores.argmax(1), targets, num_classes=task.num_classes, average="none",
                                         ignore_index=task.ignore_index)
    present = torch.bincount(targets[targets != task.ignore_index].flatten(), minlength=task.num_classes) > 0
    return float(per_class[present].mean())


def _zscore(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _fit_linear(x: torch.Tensor, y: torch.Tensor, task: TaskSpec, weight_decay: float,
                max_iter: int = 100) -> nn.Linear:
    layer = nn.Linear(x.shape[1], task.num_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    loss_fn = task_loss(task.type)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(layer(x), y) + 0.5 * weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return layer


def linear_probe(train: FeatureSet, test: FeatureSet, task: TaskSpec, val: FeatureSet | None = None,
                 weight_decays: Sequence[float] = WEIGHT_DECAYS, seed: int = 0) -> float:
    """Test score of a logistic regression on pooled features (weight decay tuned on ``val``).

    Without ``val``, a fifth of ``train`` is held out for tuning when it has at least 10 samples;
    otherwise the middle of the grid is used. The final fit uses all of ``train``.
    """
    if task.type == "segmentation":
        raise InputError("the linear probe reads pooled features; use segmentation_probe for segmentation")
    y_train = train.targets.float() if task.type == "multilabel" else train.targets
    if len(weight_decays) > 1:
        if val is None and len(train) >= 10:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
            cut = len(train) // 5
            val, fit = train.subset(order[:cut]), train.subset(order[cut:])
        else:
            fit = train
        if val is not None:
            xf, xv = _zscore(fit.pooled, val.pooled)
            yf = fit.targets.float() if task.type == "multilabel" else fit.targets
            scores = [score_predictions(_fit_linear(xf, yf, task, wd)(xv).detach(), val.targets, task)
                      for wd in weight_decays]
            weight_decay = weight_decays[int(np.argmax(scores))]
        else:
            weight_decay = weight_decays[len(weight_decays) // 2]
    else:
        weight_decay = weight_decays[0]
    x_train, x_test = _zscore(train.pooled, test.pooled)
    layer = _fit_linear(x_train, y_train, task, weight_decay)
    return score_predictions(layer(x_test).detach(), test.targets, task)


def knn_probe(train: FeatureSet, test: FeatureSet, task: TaskSpec, k: int = 20, temperature: float = 0.07) -> float:
    """Cosine kNN on pooled features z-scored with train's statistics (pooled features mix scales),
    similarity-weighted votes (multilabel: weighted label average)."""
    if task.type == "segmentation":
        raise InputError("kNN reads pooled features; use segmentation_probe for segmentation")
    a, b = (F.normalize(x, dim=1) for x in _zscore(train.pooled, test.pooled))
    sims, index = (b @ a.T).topk(min(k, len(train)), dim=1)
    weights = (sims / temperature).exp()
    if task.type == "classification":
        labels = F.one_hot(train.targets, task.num_classes).float()
    else:
        labels = train.targets.float()
    scores = (weights.unsqueeze(-1) * labels[index]).sum(1) / weights.sum(1, keepdim=True)
    return score_predictions(scores, test.targets, task)


def segmentation_probe(train: FeatureSet, test: FeatureSet, task: TaskSpec, seed: int = 0, epochs: int = 30,
                       batch_size: int = 16, lr: float = 1e-3) -> float:
    """Test mIoU of a light FPN decoder trained on frozen, per-channel standardised multi-scale maps."""
    if train.maps is None or test.maps is None:
        raise InputError("segmentation probe needs multi-scale maps; extract features with with_maps=True")
    stats = []
    for scale in train.maps:
        moments = ChannelMoments()
        moments.update(scale)
        stats.append(moments.result())

    def standardise(maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every map standardised once (float32), not once per batch and epoch: the same values."""
        return [(m.float() - mu.view(1, -1, 1, 1)) / sd.view(1, -1, 1, 1) for m, (mu, sd) in zip(maps, stats)]

    torch.manual_seed(seed)
    head = FPNSegmentationHead([m.shape[1] for m in train.maps], task.num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = task_loss("segmentation", task.ignore_index)
    size = tuple(train.targets.shape[-2:])
    g = torch.Generator().manual_seed(seed)
    maps = standardise(train.maps)
    with torch.enable_grad():
        for _ in range(epochs):
            for index in torch.randperm(len(train), generator=g).split(batch_size):
                loss = loss_fn(head([m[index] for m in maps], size), train.targets[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    del maps
    head.eval()
    maps = standardise(test.maps)
    with torch.no_grad():
        logits = torch.cat([head([m[index] for m in maps], tuple(test.targets.shape[-2:]))
                            for index in torch.arange(len(test)).split(batch_size)])
    return score_predictions(logits, test.targets, task)


def probe_features(
    name: str,
    task_name: str,
    task: TaskSpec,
    train: FeatureSet,
    test: FeatureSet,
    val: FeatureSet | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    methods: Sequence[str] | None = None,
) -> list[ProbeResult]:
    """Every method x label fraction, repeated over ``seeds`` (label subset and init), as mean and std."""
    methods = methods or (("segmentation",) if task.type == "segmentation" else ("linear", "knn"))
    results = []
    for method in methods:
        for fraction in fractions:
            values = []
            for seed in seeds:
                part = train.subset(label_subset(train.targets, fraction, task, seed))
                if method == "linear":
                    values.append(linear_probe(part, test, task, val, seed=seed))
                elif method == "knn":
                    values.append(knn_probe(part, test, task))
                elif method == "segmentation":
                    values.append(segmentation_probe(part, test, task, seed=seed))
                else:
                    raise InputError(f"unknown probe method {method!r}; expected linear, knn or segmentation")
            arr = np.asarray(values)
            results.append(ProbeResult(name, task_name, method, float(fraction), task_metric(task), float(arr.mean()),
                                       float(arr.std()), [float(v) for v in values]))
            log.info("probe %s on %s: %s @%g = %.4f +- %.4f", name, task_name, method, fraction,
                        results[-1].mean, results[-1].std)
    return results


def probe_encoder(
    name: str,
    encoder: Encoder,
    task_name: str,
    task: TaskSpec,
    train_batches: Iterable[Mapping],
    test_batches: Iterable[Mapping],
    val_batches: Iterable[Mapping] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    methods: Sequence[str] | None = None,
    device: str = "cpu",
) -> list[ProbeResult]:
    """Extract features once per split, then :func:`probe_features`."""
    maps = task.type == "segmentation"
    train = extract_features(encoder, train_batches, maps, device, f"{name} train")
    test = extract_features(encoder, test_batches, maps, device, f"{name} test")
    # the segmentation probe tunes nothing on val: its features are not extracted
    val = (extract_features(encoder, val_batches, maps, device, f"{name} val")
           if val_batches is not None and not maps else None)
    return probe_features(name, task_name, task, train, test, val, fractions, seeds, methods)


def results_markdown(results: Sequence[ProbeResult]) -> str:
    """A markdown table: one row per encoder, task and method; one column per label fraction."""
    fractions = sorted({r.fraction for r in results})
    rows: dict[tuple[str, str, str, str], dict[float, ProbeResult]] = {}
    for r in results:
        rows.setdefault((r.encoder, r.task, r.method, r.metric), {})[r.fraction] = r
    lines = ["| encoder | task | probe | metric | " + " | ".join(f"{f:g} labels" for f in fractions) + " |",
             "|---" * (4 + len(fractions)) + "|"]
    for (encoder, task, method, metric), by_fraction in rows.items():
        cells = [f"{by_fraction[f].mean:.4f} ± {by_fraction[f].std:.4f}" if f in by_fraction else "-"
                 for f in fractions]
        lines.append(f"| {encoder} | {task} | {method} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
