"""TileDataset sample contract, band stats stored once, invalid-pixel filling and bad manifests."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

import geodata.stats
from geodata.dataset import TileDataset, collate_samples
from geodata.errors import RasterError
from geodata.manifest import Manifest, TaskSpec, TileEntry
from geodata.raster import write_geotiff
from geodata.readers.bigearthnet import build_bigearthnet_manifest
from geodata.readers.eolearn import build_eolearn_manifest
from geodata.readers.eurosat import build_eurosat_manifest
from geodata.sensors import BandError, get_sensor
from geodata.stats import BandStats, load_or_compute_stats

L1C = "sentinel2_l1c"


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory, shared_data) -> Manifest:
    return build_eurosat_manifest(shared_data / "eurosat-ms", tmp_path_factory.mktemp("eurosat"))


def tiny_manifest(tmp_path, stack: np.ndarray, mask: np.ndarray | None = None, targets=None,
                  task_type: str = "segmentation") -> Manifest:
    """A one-tile L1C manifest from arrays (mask values are class indices)."""
    transform = from_origin(400000, 5000000, 10, 10)
    write_geotiff(tmp_path / "tile.tif", stack, transform, "EPSG:32633", nodata=0)
    if mask is not None:
        write_geotiff(tmp_path / "mask.tif", mask, transform, "EPSG:32633")
        targets = {"task": "mask.tif"}
    tile = TileEntry(id="tiny", sensor=L1C, split="train", path="tile.tif", targets=targets or {})
    manifest = Manifest(tasks={"task": TaskSpec(task_type, ["a", "b", "c"])}, tiles=[tile], name="tiny")
    manifest.save(tmp_path / "manifest.json")
    return manifest


def test_classification_sample_contract(eurosat):
    ds = TileDataset(eurosat, L1C, split="test", task="scene")
    assert len(ds) == 40
    sample = ds[0]
    assert set(sample) == {"image", "bands", "valid", "id", "target"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (13, 64, 64)
    assert sample["valid"].dtype == torch.bool and sample["valid"].shape == (64, 64)
    assert sample["bands"] == ds.sensor.bands and sample["bands"][-1] == "B8A"
    assert isinstance(sample["target"], int) and sample["id"].startswith("eurosat-AnnualCrop_")
    images = torch.stack([ds[i]["image"] for i in range(0, 40, 4)])
    assert ((images >= 0) & (images <= 1.5)).float().mean() > 0.99  # top-of-atmosphere reflectance
    batch = collate_samples([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 13, 64, 64) and batch["target"].dtype == torch.int64
    assert batch["valid"].shape == (3, 64, 64) and len(batch["id"]) == 3


def test_centre_crop(eurosat):
    full, crop = TileDataset(eurosat, L1C)[5]["image"], TileDataset(eurosat, L1C, size=32)[5]["image"]
    assert torch.equal(crop, full[:, 16:48, 16:48])


def test_resize_keeps_the_whole_scene(eurosat):
    full = TileDataset(eurosat, L1C)[5]["image"]
    sample = TileDataset(eurosat, L1C, size=48, resize=24)[5]
    assert sample["image"].shape == (13, 24, 24) and sample["valid"].shape == (24, 24) and sample["valid"].all()
    assert torch.allclose(sample["image"], torch.nn.functional.avg_pool2d(full[None, :, 8:56, 8:56], 2)[0])
    with pytest.raises(ValueError, match=r"resize must be a size in pixels, 1..2048, got 0"):
        TileDataset(eurosat, L1C, resize=0)


def test_proxy_batches_resize_per_sensor(eurosat):
    from fusion.data import ProxyBatches

    batch = next(iter(ProxyBatches(eurosat, [L1C], "train", size=32, batch_size=4, resize={"s2_l1c": 16})))
    assert batch["image"].shape == (4, 13, 16, 16)  # the whole 64 px tile, not its 32 px crop, resampled
    with pytest.raises(ValueError, match=r"resize names sensors \['sentinel1_grd'\]"):
        ProxyBatches(eurosat, [L1C], "train", resize={"sentinel1_grd": 16})


def test_resize_segmentation_mask_nearest(tmp_path):
    stack = np.full((13, 8, 8), 1000, np.uint16)
    stack[:, 0, 0] = 0  # nodata: its 2x2 cell becomes invalid and ignored
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 2
    sample = TileDataset(tiny_manifest(tmp_path, stack, mask), L1C, task="task", resize=4)[0]
    assert sample["target"].dtype == torch.int64 and sample["target"].shape == (4, 4)
    assert sample["target"][0, 0] == 255 and (sample["target"][:, 2:] == 2).all() and (sample["target"][1:, :2] == 0).all()
    assert not sample["valid"][0, 0] and sample["valid"].sum() == 15


def test_collate_refuses_mixed_bands(eurosat):
    sample = TileDataset(eurosat, L1C)[0]
    other = {**sample, "bands": sample["bands"][:-1] + ("B8X",), "id": "other"}
    with pytest.raises(BandError, match="cannot batch sample 'other'"):
        collate_samples([sample, other])


def test_stats_computed_once_and_reused(tmp_path, eurosat, monkeypatch):
    manifest = Manifest.from_dict(eurosat.to_dict(), root=tmp_path)
    stats = load_or_compute_stats(manifest, L1C)
    files = list((tmp_path / "stats").iterdir())
    assert len(files) == 1 and files[0].name.startswith("sentinel2_l1c__train__")
    train = torch.stack([s["image"] for s in TileDataset(manifest, L1C, split="train")]).double()
    np.testing.assert_allclose(stats.mean, train.mean((0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats.std, train.std((0, 2, 3), unbiased=False), rtol=1e-5)
    assert BandStats.from_dict(json.loads(files[0].read_text())) == stats

    def refuse(*args, **kwargs):
        raise AssertionError("stats recomputed although stored")

    monkeypatch.setattr(geodata.stats, "compute_band_stats", refuse)
    assert load_or_compute_stats(manifest, L1C) == stats
    manifest.tiles.pop(0)  # a changed selection gets new stats
    with pytest.raises(AssertionError, match="recomputed"):
        load_or_compute_stats(manifest, L1C)


def test_stats_are_keyed_by_the_sensor_calibration(tmp_path, eurosat):
    """Values that now mean other physical values (a band's scale declared anew) get statistics of their own."""
    manifest = Manifest.from_dict(eurosat.to_dict(), root=tmp_path)
    sensor = get_sensor(L1C)
    first = load_or_compute_stats(manifest, sensor)
    doubled = load_or_compute_stats(manifest, replace(sensor, band_scale=(2e-4,) * sensor.num_bands))
    np.testing.assert_allclose(doubled.mean, 2 * np.asarray(first.mean), rtol=1e-6)
    assert len(list((tmp_path / "stats").iterdir())) == 2


def test_invalid_pixels_filled_with_band_mean(tmp_path):
    stack = np.full((13, 8, 8), 1000, np.uint16)
    stack[:, 0, :] = 0
    manifest = tiny_manifest(tmp_path, stack, targets={"task": 1}, task_type="classification")
    stats = BandStats(TileDataset(manifest, L1C).bands, tuple(np.arange(13) / 10), (1.0,) * 13)
    sample = TileDataset(manifest, L1C, task="task", stats=stats)[0]
    assert not sample["valid"][0].any() and sample["valid"][1:].all() and sample["target"] == 1
    assert torch.allclose(sample["image"][:, 0, 0], torch.arange(13) / 10)
    assert torch.allclose(sample["image"][:, 1, 1], torch.full((13,), 0.1))
    assert (TileDataset(manifest, L1C)[0]["image"][:, 0] == 0).all()  # no stats: filled with 0
    wrong = BandStats(("B02",), (0.0,), (1.0,))
    with pytest.raises(BandError, match="band stats are for"):
        TileDataset(manifest, L1C, stats=wrong)


def test_segmentation_ignores_invalid_pixels(tmp_path):
    stack = np.full((13, 8, 8), 1000, np.uint16)
    stack[:, 2, 3] = 0
    mask = np.full((8, 8), 2, np.uint8)
    sample = TileDataset(tiny_manifest(tmp_path, stack, mask), L1C, task="task")[0]
    assert sample["target"].dtype == torch.int64 and sample["target"].shape == (8, 8)
    assert sample["target"][2, 3] == 255 and (sample["target"] == 2).sum() == 63


def test_real_segmentation_and_multilabel(tmp_path, shared_data):
    eo = build_eolearn_manifest(shared_data / "eolearn-testpatch", tmp_path / "eo")
    sample = TileDataset(eo, L1C, split="test", task="lulc", size=16)[0]
    assert sample["image"].shape == (13, 16, 16) and sample["target"].shape == (16, 16)
    assert set(sample["target"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    root = shared_data / "bigearthnet-tiny"
    ben = build_bigearthnet_manifest(root / "BigEarthNet-S2-Example", tmp_path / "ben",
                                     s1_root=root / "BigEarthNet-S1-Example")
    s2, s1 = TileDataset(ben, "sentinel2_l2a", task="corine"), TileDataset(ben, "sentinel1_grd", task="corine")
    a, b = s2[0], next(s1[i] for i in range(len(s1)) if s1.tiles[i].scene == s2.tiles[0].scene)
    assert a["image"].shape == (12, 120, 120) and b["image"].shape == (2, 120, 120)
    assert a["target"].dtype == torch.float32 and a["target"].shape == (len(ben.tasks["corine"].classes),)
    assert torch.equal(a["target"], b["target"]) and a["target"].sum() >= 1
    assert collate_samples([a, s2[1]])["target"].shape == (2, len(ben.tasks["corine"].classes))


# --- bad input ------------------------------------------------------------------------------------

def test_label_outside_class_list(tmp_path, eurosat):
    raw = eurosat.to_dict()
    raw["tiles"][3]["targets"]["scene"] = 12
    manifest = Manifest.from_dict(raw, root=tmp_path)
    problem = r"tile 'eurosat-AnnualCrop_4': label 12 outside the 10 classes of task 'scene'"
    with pytest.raises(RasterError, match=problem):
        TileDataset(manifest, L1C, task="scene")
    stack = np.full((13, 8, 8), 1000, np.uint16)
    dataset = TileDataset(tiny_manifest(tmp_path, stack, np.full((8, 8), 7, np.uint8)), L1C, task="task")
    with pytest.raises(RasterError, match=r"mask\.tif: labels \[7\] outside the 3 classes"):
        dataset[0]


def test_empty_split(eurosat):
    problem = r"manifest 'eurosat-ms' in .*: no tiles match sensor='sentinel2_l1c', split='val'"
    with pytest.raises(RasterError, match=problem):
        TileDataset(eurosat, L1C, split="val")
    with pytest.raises(RasterError, match=r"no tiles for band stats .*split='val'"):
        load_or_compute_stats(eurosat, L1C, split="val")
