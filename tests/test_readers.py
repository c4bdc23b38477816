"""Real-layout readers on ../shared/data: EuroSAT-MS, BigEarthNet S2 + S1 twins, the eo-learn patch."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geodata.errors import RasterError
from geodata.manifest import Manifest
from geodata.raster import read_band_files, read_mask, read_tile, write_geotiff
from geodata.readers.bigearthnet import build_bigearthnet_manifest
from geodata.readers.eolearn import SOURCE_BANDS, build_eolearn_manifest
from geodata.readers.eurosat import EUROSAT_CLASSES, build_eurosat_manifest, split_per_class
from geodata.sensors import get_sensor


def ben_roots(shared_data: Path) -> tuple[Path, Path]:
    root = shared_data / "bigearthnet-tiny"
    return root / "BigEarthNet-S2-Example", root / "BigEarthNet-S1-Example"


# --- EuroSAT --------------------------------------------------------------------------------------

def test_eurosat_manifest(tmp_path, shared_data):
    manifest = build_eurosat_manifest(shared_data / "eurosat-ms", tmp_path, train_per_class=8)
    assert Manifest.load(tmp_path / "manifest.json") == manifest
    assert manifest.tasks["scene"].classes == list(EUROSAT_CLASSES)
    assert len(manifest.tiles) == 120 and {t.sensor for t in manifest.tiles} == {"sentinel2_l1c"}
    assert Counter(t.split for t in manifest.tiles) == {"train": 80, "test": 40}
    for tile in manifest.tiles:
        assert Path(tile.path).parent.name == EUROSAT_CLASSES[tile.targets["scene"]]
    forest_train = sorted(t.id for t in manifest.select(split="train") if "Forest" in t.id)
    assert forest_train == sorted(f"eurosat-Forest_{n}" for n in range(1, 9))  # numeric, not lexical order
    raster = read_tile(manifest.tiles[0].path, "sentinel2_l1c")
    assert raster.data.shape == (13, 64, 64)


def test_split_per_class_is_deterministic():
    files = {"A": [Path(f"a{i}") for i in range(5)], "B": [Path(f"b{i}") for i in range(3)]}
    split = split_per_class(files, train=2, val=1)
    assert [split[p] for p in files["A"]] == ["train", "train", "val", "test", "test"]
    assert [split[p] for p in files["B"]] == ["train", "train", "val"]


def test_eurosat_unknown_class_folder(tmp_path):
    (tmp_path / "Clouds").mkdir()
    with pytest.raises(RasterError, match=r"Clouds: class 'Clouds' is not one of the EuroSAT classes"):
        build_eurosat_manifest(tmp_path, tmp_path / "out")


# --- BigEarthNet ----------------------------------------------------------------------------------

def test_bigearthnet_manifest_pairs_twins(tmp_path, shared_data):
    s2_root, s1_root = ben_roots(shared_data)
    first = sorted(p.name for p in s2_root.iterdir())[0]
    manifest = build_bigearthnet_manifest(s2_root, tmp_path, s1_root=s1_root, splits={first: "test"})
    s2, s1 = manifest.select(sensor="sentinel2_l2a"), manifest.select(sensor="sentinel1_grd")
    assert len(s2) == 6 and len(s1) == 6
    assert all(set(t.band_paths) == set(get_sensor("sentinel2_l2a").bands) for t in s2)
    assert all(set(t.band_paths) == {"VV", "VH"} for t in s1)
    by_scene = {t.scene: t for t in s2}
    for tile in s1:
        twin = by_scene[tile.scene]
        assert tile.split == twin.split and tile.targets == twin.targets
    assert [t.split for t in s2 if t.id == first] == ["test"]
    classes = manifest.tasks["corine"].classes
    assert classes == sorted(classes) and "Pastures" in classes and "Coniferous forest" in classes
    meta = json.loads((s2_root / first / f"{first}_labels_metadata.json").read_text())
    assert [classes[i] for i in by_scene[first].targets["corine"]] == sorted(meta["labels"])
    sar = read_band_files(s1[0].band_paths, "sentinel1_grd")
    assert sar.data.shape == (2, 120, 120) and -50 < np.nanmean(sar.data) < 5  # dB


def test_bigearthnet_missing_band_file(tmp_path, shared_data):
    s2_root, _ = ben_roots(shared_data)
    patch = sorted(s2_root.iterdir())[0]
    copy = tmp_path / "s2" / patch.name
    shutil.copytree(patch, copy)
    (copy / f"{patch.name}_B09.tif").unlink()
    problem = rf"{patch.name}_B09\.tif: missing band file for B09 of sensor sentinel2_l2a"
    with pytest.raises(RasterError, match=problem):
        build_bigearthnet_manifest(tmp_path / "s2", tmp_path / "out")


def test_bigearthnet_twin_on_another_grid(tmp_path, shared_data):
    s2_root, s1_root = ben_roots(shared_data)
    s1_patch = sorted(s1_root.iterdir())[0]
    copy = tmp_path / "s1" / s1_patch.name
    shutil.copytree(s1_patch, copy)
    vv = copy / f"{s1_patch.name}_VV.tif"
    with rasterio.open(vv) as src:
        crs, transform = src.crs, src.transform
    write_geotiff(vv, np.zeros((1, 60, 60), np.float32), transform @ transform.scale(2), crs)
    with pytest.raises(RasterError, match=r"_VV\.tif: shape 60x60 does not match shape 120x120 of its twin .*_B02"):
        build_bigearthnet_manifest(s2_root, tmp_path / "out", s1_root=tmp_path / "s1")
    write_geotiff(vv, np.zeros((1, 120, 120), np.float32), from_origin(0, 0, 10, 10), "EPSG:3035")
    with pytest.raises(RasterError, match=r"_VV\.tif: CRS EPSG:3035 does not match CRS .* of its twin .*_B02"):
        build_bigearthnet_manifest(s2_root, tmp_path / "out", s1_root=tmp_path / "s1")


def test_bigearthnet_label_outside_class_list(tmp_path, shared_data):
    s2_root, _ = ben_roots(shared_data)
    problem = r"labels_metadata\.json: labels \[.*\] are not in the class list of task 'corine'"
    with pytest.raises(RasterError, match=problem):
        build_bigearthnet_manifest(s2_root, tmp_path, classes=["Pastures"])


# --- eo-learn -------------------------------------------------------------------------------------

def test_eolearn_chips_and_masks(tmp_path, shared_data):
    root = shared_data / "eolearn-testpatch"
    manifest = build_eolearn_manifest(root, tmp_path, chip=32)
    spec = manifest.tasks["lulc"]
    assert spec.type == "segmentation" and spec.classes == [
        "cultivated land", "forest", "grassland", "schrubland", "artificial surface"]
    assert len(manifest.tiles) == 5 * 3 * 3
    assert Counter(t.split for t in manifest.tiles) == {"train": 30, "test": 15}
    scenes = np.load(root / "REFERENCE_SCENES.npy")
    lulc = np.load(root / "TestEOPatch" / "mask_timeless" / "LULC.npy")[..., 0]
    order = [SOURCE_BANDS.index(b) for b in get_sensor("sentinel2_l1c").bands]
    tile = next(t for t in manifest.tiles if t.id == "eolearn-t2-r1c2")
    raster = read_tile(manifest.resolve(tile.path), "sentinel2_l1c")
    expected = scenes[2, 32:64, 64:96][..., order].transpose(2, 0, 1)
    np.testing.assert_allclose(raster.data, expected, atol=6e-5)
    mask = read_mask(manifest.resolve(tile.targets["lulc"]), spec.num_classes, spec.ignore_index)
    values = np.array([-1, 0, 1, 2, 3, -1, -1, -1, 4])  # class index of LULC values 1,2,3,4,8
    source = lulc[32:64, 64:96]
    np.testing.assert_array_equal(mask[source > 0], values[source[source > 0]])
    assert (mask[source == 0] == spec.ignore_index).all()
    with rasterio.open(manifest.resolve(tile.path)) as src:
        bbox = json.loads((root / "TestEOPatch" / "bbox.geojson").read_text())["coordinates"][0]
        assert src.crs == "EPSG:32633" and src.descriptions[12] == "B8A"
        assert src.transform.c == pytest.approx(min(x for x, _ in bbox) + 64 * src.transform.a)
