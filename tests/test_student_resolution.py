"""Resolution in the student (issue 21): the working GSD (``distill.gsd_aware``, card field ``gsd``, the input
resampled to it before the trunk) and multi-resolution distillation (``distill.crop_sizes``)."""

import argparse
import math

import pytest
import torch
from fusion_toys import make_registry

from eosfed.commands import distill as distill_command

from fusion.data import CropSizes, ProxyBatches, crop_id, dataset_gsd, proxy_sensors
from fusion.distill import DistillConfig
from fusion.student import Student, StudentCard, load_student, resample_to_gsd, save_student
from fusion.teacher_cache import TeacherCache
from geodata.dataset import TileDataset
from geodata.errors import InputError
from geodata.readers.eurosat import build_eurosat_manifest
from geodata.synth import generate_world, load_world_config
from geodata.sensors import get_sensor
from specialists.artifact import ArtifactError
from pipeline.distill import distil
from pipeline.settings import RunSettings, load_experiment

CONFIG = DistillConfig(epochs=1, init="random")


@pytest.fixture(scope="module")
def real_eurosat(shared_data, tmp_path_factory):
    """EuroSAT-MS test tiles (real Sentinel-2, 64 px at 10 m; B05 declared at 20 m)."""
    manifest = build_eurosat_manifest(shared_data / "eurosat-ms", tmp_path_factory.mktemp("eurosat"))
    return TileDataset(manifest, "sentinel2_l1c", split="test")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("resolution")
    manifest = generate_world(load_world_config("tiny"), root / "world", progress=False)
    return root, manifest, make_registry(root / "registry")


def test_multi_resolution_distillation_caches_targets_per_crop_size(world, tmp_path):
    root, manifest, registry = world
    batches = ProxyBatches(manifest, None, None, None, 8, seed=0,
                           resize={s: 64 for s in proxy_sensors(manifest, None)})  # toy tiles are 32 px
    cache = TeacherCache(tmp_path / "cache")
    config = DistillConfig(epochs=2, init="random", crop_sizes=[32, 64])
    distilled = distil(registry, batches, cache, config, seed=0, tolerance_nm=50, name="s")
    sha = registry.entries[0].weights_sha256
    some = next(iter(batches))["id"][0]
    assert cache.has(sha, [some]) and cache.has(sha, [crop_id(some, 32)])  # full tile and its crop, each cached
    full, crop = cache.get(sha, [some]), cache.get(sha, [crop_id(some, 32)])
    assert full["stage2"].shape[-1] == 2 * crop["stage2"].shape[-1]  # targets computed at the crop's size
    assert distilled.history.total and all(math.isfinite(v) for v in distilled.history.total)
    assert distilled.student.card.distill["last_config"]["crop_sizes"] == [32, 64]
    sizes = {b["image"].shape[-1] for b in CropSizes(batches, [32, 64], seed=0)}
    assert sizes == {32, 64}  # one size per batch, both drawn
    with pytest.raises(InputError, match="crop_sizes"):
        DistillConfig(crop_sizes=[16])


def test_gsd_aware_distillation_records_the_proxy_gsd_on_the_card(world, tmp_path):
    root, manifest, registry = world
    batches = ProxyBatches(manifest, None, None, 32, 8, seed=0)
    distilled = distil(registry, batches, TeacherCache(), DistillConfig(epochs=1, init="random", gsd_aware=True),
                       seed=0, tolerance_nm=50, name="s")
    expected = {b: get_sensor(s).band_gsd(b) for s in batches.sensors for b in get_sensor(s).image_bands}
    assert distilled.student.card.gsd == pytest.approx(expected)
    save_student(distilled.student, tmp_path / "student")
    assert load_student(tmp_path / "student").card.gsd == pytest.approx(expected)  # the card field round-trips
    assert not distil(registry, batches, TeacherCache(), CONFIG, seed=0, tolerance_nm=50,
                      name="s").student.card.gsd  # the default: GSD-blind


def test_resampling_to_the_working_gsd_on_a_real_sample(real_eurosat):
    dataset = real_eurosat
    sample = dataset[0]["image"][None]
    gsd = dataset_gsd(dataset)
    assert gsd[dataset.bands.index("B02")] == 10.0 and gsd[dataset.bands.index("B05")] == 20.0
    coarse = resample_to_gsd(sample, 2.0)  # 10 m -> 20 m: each output pixel the mean of a 2 x 2 block
    assert coarse.shape[-2:] == (32, 32)
    assert torch.allclose(coarse[0, :, 0, 0], sample[0, :, :2, :2].mean(dim=(-2, -1)), rtol=1e-5)
    student = Student.create(band_stats={}, seed=0, depths=(1, 1, 1, 1))
    student.set_gsd({b: g for b, g in zip(dataset.bands, gsd)})
    with torch.no_grad():
        native = student(sample, dataset.bands, gsd)
        # the same tile at twice the GSD, told as such, is brought back to 64 px before the trunk
        shifted = student(coarse, dataset.bands, [2 * g for g in gsd])
        blind = student(coarse, dataset.bands)
    assert shifted[0].shape == native[0].shape and blind[0].shape[-1] == native[0].shape[-1] // 2
    assert student.gsd_factor(dataset.bands, [2 * g for g in gsd]) == pytest.approx(0.5)
    assert student.gsd_factor(dataset.bands, gsd, working_gsd=40.0) == pytest.approx(2 ** (
        sum(math.log2(40.0 / g) for g in gsd) / len(gsd)))
    with pytest.raises(Exception, match="GSD"):
        student(sample, dataset.bands, [10.0])


def test_card_gsd_field_is_checked():
    with pytest.raises(ArtifactError, match="field 'gsd'"):
        StudentCard(gsd={"B02": -1.0}).validate()


def test_settings_keys_and_distill_flags():
    cfg, _ = load_experiment(RunSettings("default", ("distill.gsd_aware=true", "distill.crop_sizes=[32,64]"), "x"))
    assert cfg.distill.gsd_aware is True and list(cfg.distill.crop_sizes) == [32, 64]
    default, _ = load_experiment(RunSettings("default", (), "x"))
    assert default.distill.gsd_aware is False and list(default.distill.crop_sizes) == []  # one default each
    with pytest.raises(InputError, match="crop_sizes"):
        load_experiment(RunSettings("default", ("distill.crop_sizes=[8]",), "x"))
    parser = argparse.ArgumentParser()
    distill_command.add_arguments(parser)
    args = parser.parse_args(["--registry", "r", "--proxy", "p", "--out", "o", "--gsd-aware", "--crop-sizes", "32", "64"])
    assert args.gsd_aware is True and args.crop_sizes == [32, 64]
