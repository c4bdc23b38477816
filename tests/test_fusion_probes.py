"""Probes: stratified label fractions, linear/kNN/segmentation probes on frozen features, one interface."""

import pytest
import torch
from fusion_toys import TOLERANCE_NM, S2_BANDS, make_specialist

from fusion import Ensemble, Student
from fusion.probes import (FeatureSet, extract_features, knn_probe, label_subset, linear_probe, probe_features,
                           segmentation_probe)
from geodata.manifest import TaskSpec

CLASSES = TaskSpec("classification", ["a", "b", "c", "d"])


def blobs(n: int, seed: int, dim: int = 32, noise: float = 0.5) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, dim, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.randint(0, 4, (n,), generator=g)
    return FeatureSet(centres[y] + noise * torch.randn(n, dim, generator=g), y, [f"{seed}-{i}" for i in range(n)])


def test_label_subset_is_stratified():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    index = label_subset(y, 0.01, CLASSES, seed=0)
    assert sorted(y[index].tolist()) == [0, 1, 2]  # at least one per class
    assert len(label_subset(y, 0.1, CLASSES, seed=0)) == 9 + 1 + 1
    multi = torch.zeros(50, 3)
    multi[7, 2] = 1  # the only positive of class 2
    multi[:, 0] = 1
    assert 7 in label_subset(multi, 0.02, TaskSpec("multilabel", ["x", "y", "z"]), seed=3).tolist()


def test_linear_and_knn_probes_separate_blobs():
    train, test = blobs(200, 0), blobs(100, 1)
    assert linear_probe(train, test, CLASSES) > 0.95
    assert knn_probe(train, test, CLASSES) > 0.95
    noise = FeatureSet(torch.randn(200, 32), train.targets, train.ids)
    assert linear_probe(noise, FeatureSet(torch.randn(100, 32), test.targets, test.ids), CLASSES) < 0.5


def test_multilabel_probe_reports_map():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(150, 3, generator=g) < 0.4).float()
    x = y @ torch.randn(3, 16, generator=g) + 0.3 * torch.randn(150, 16, generator=g)
    task = TaskSpec("multilabel", ["x", "y", "z"])
    results = probe_features("toy", "presence", task, FeatureSet(x[:100], y[:100], list(range(100))),
                             FeatureSet(x[100:], y[100:], list(range(50))), fractions=(0.1, 1.0), seeds=(0, 1))
    assert {(r.method, r.fraction) for r in results} == {("linear", 0.1), ("linear", 1.0), ("knn", 0.1), ("knn", 1.0)}
    assert all(r.metric == "map" and len(r.values) == 2 for r in results)
    assert next(r for r in results if r.method == "linear" and r.fraction == 1.0).mean > 0.95


def test_segmentation_probe_learns_from_maps():
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 2, (24, 1, 4, 4), generator=g)
    maps = [torch.cat([masks, 1 - masks], 1).float().repeat_interleave(s, -1).repeat_interleave(s, -2)
            for s in (2, 1)]
    target = masks[:, 0].repeat_interleave(8, -1).repeat_interleave(8, -2)  # 32x32 labels
    target[:, 0, 0] = 255  # ignored pixels
    fs = FeatureSet(maps[-1].mean((2, 3)), target, list(range(24)), [m.half() for m in maps])
    task = TaskSpec("segmentation", ["land", "water"])
    assert segmentation_probe(fs, fs, task, epochs=15, batch_size=8) > 0.8


@pytest.mark.parametrize("kind", ["ensemble", "student"])
def test_one_interface_for_every_encoder(kind):
    encoder = (Ensemble({"s2": make_specialist("s2", "sentinel2_l2a", S2_BANDS)}, tolerance_nm=TOLERANCE_NM) if kind == "ensemble"
               else Student.create(seed=0))
    batches = [{"image": torch.rand(4, 4, 32, 32), "bands": S2_BANDS, "target": torch.arange(4),
                "id": [f"{b}-{i}" for i in range(4)]} for b in range(2)]
    features = extract_features(encoder, batches, with_maps=True)
    assert features.pooled.shape == (8, 2 * (40 + 80 + 160 + 320)) and len(features.maps) == 4  # means, stds
    plain = extract_features(encoder, batches)  # pooled() and the maps' pyramid pool are one feature
    torch.testing.assert_close(plain.pooled, features.pooled, rtol=1e-4, atol=1e-4)
    last = features.maps[-1].float()
    torch.testing.assert_close(features.pooled[:, 280:600], last.mean((2, 3)), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(features.pooled[:, 880:], last.std((2, 3), correction=0), rtol=1e-2, atol=1e-2)
    assert features.maps[0].dtype == torch.float16 and features.ids[4] == "1-0"
    assert not features.pooled.requires_grad
