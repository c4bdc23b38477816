"""``eosfed manifest torchgeo``: EuroSAT in torchgeo's layout and a torchgeo RasterDataset's scenes, from real
EuroSAT-MS tiles written into torchgeo's layouts; a specialist trains on the result."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from torchgeo.datasets import BigEarthNet, EuroSAT, Sentinel2

from eosfed.cli import main
from geodata.dataset import TileDataset
from geodata.manifest import Manifest
from geodata.readers.eurosat import EUROSAT_CLASSES
from geodata.sensors import get_sensor
from specialists.io import load_specialist

CLASSES = ("AnnualCrop", "Forest", "River")
SPLITS = ("train", "train", "val", "test")  # per class, files 1..4; file 5 is in no split file


def ok(*argv: str) -> None:
    assert main(list(argv)) == 0


def eurosat_tree(root: Path, shared_data: Path) -> Path:
    """A tiny EuroSAT in torchgeo's layout: ``<base_dir>/<Class>/<Class>_<n>.tif`` and split files of .jpg names."""
    listed: dict[str, list[str]] = {split: [] for split in EuroSAT.split_filenames}
    for cls in CLASSES:
        folder = root / EuroSAT.base_dir / cls
        folder.mkdir(parents=True)
        for n in range(1, 6):
            shutil.copyfile(shared_data / "eurosat-ms" / cls / f"{cls}_{n}.tif", folder / f"{cls}_{n}.tif")
            if n <= len(SPLITS):
                listed[SPLITS[n - 1]].append(f"{cls}_{n}.jpg")
    for split, filename in EuroSAT.split_filenames.items():
        (root / filename).write_text("\n".join(listed[split]) + "\n")
    return root


def test_eurosat_in_torchgeos_layout_and_a_specialist_trained_on_it(tmp_path, shared_data):
    root = eurosat_tree(tmp_path / "eurosat", shared_data)
    out = tmp_path / "m"
    ok("manifest", "torchgeo", "eurosat", "--root", str(root), "--out", str(out))
    manifest = Manifest.load(out / "manifest.json")
    assert manifest.tasks["scene"].classes == list(EUROSAT_CLASSES)
    assert get_sensor({t.sensor for t in manifest.tiles}.pop()).bands == EuroSAT.all_band_names
    got = Counter((t.split, EUROSAT_CLASSES[t.targets["scene"]]) for t in manifest.tiles)
    assert got == {(s, c): n for s, n in Counter(SPLITS).items() for c in CLASSES}
    assert all(Path(t.path).parent.name == EUROSAT_CLASSES[t.targets["scene"]] for t in manifest.tiles)
    assert main(["manifest", "torchgeo", "eurosat", "--root", str(root), "--out", str(out)]) == 2  # no --overwrite

    spec = tmp_path / "spec"
    ok("train-specialist", "--manifest", str(out / "manifest.json"), "--sensor", "sentinel2_l1c", "--task", "scene",
       "--out", str(spec), "--epochs", "1", "--size", "32", "--batch-size", "4", "--variant", "convnextv2_atto")
    card = load_specialist(spec).card
    assert card.bands == list(EuroSAT.all_band_names)
    assert card.data_summary["tiles"] == {"train": 6, "val": 3, "test": 3}


def test_eurosat_without_a_split_file_is_refused_naming_it(tmp_path, shared_data, capsys):
    root = eurosat_tree(tmp_path / "eurosat", shared_data)
    (root / EuroSAT.split_filenames["val"]).unlink()
    assert main(["manifest", "torchgeo", "eurosat", "--root", str(root), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and EuroSAT.split_filenames["val"] in err
    assert not (tmp_path / "m").exists()


def test_bigearthnet_in_torchgeos_layout_takes_its_split_files(tmp_path, shared_data):
    real, root = shared_data / "bigearthnet-tiny", tmp_path / "ben"
    twins = {}
    for patch in sorted((real / "BigEarthNet-S1-Example").iterdir()):
        twins[json.loads(next(patch.glob("*.json")).read_text())["corresponding_s2_patch"]] = patch.name
        shutil.copytree(patch, root / BigEarthNet.metadata["s1"]["directory"] / patch.name)
    for patch in sorted((real / "BigEarthNet-S2-Example").iterdir()):
        shutil.copytree(patch, root / BigEarthNet.metadata["s2"]["directory"] / patch.name)
    s2 = sorted(twins)
    splits = {"train": s2[:3], "val": s2[3:4], "test": s2[4:5]}  # s2[5] is in no split file
    for split, meta in BigEarthNet.splits_metadata.items():
        (root / meta["filename"]).write_text("".join(f"{p},{twins[p]}\n" for p in splits[split]))
    ok("manifest", "torchgeo", "bigearthnet", "--root", str(root), "--out", str(tmp_path / "m"))
    manifest = Manifest.load(tmp_path / "m" / "manifest.json")
    assert manifest.tasks["corine"].classes == list(BigEarthNet.class_sets[43])
    assert Counter((t.sensor, t.split) for t in manifest.tiles) == {
        (sensor, split): len(patches) for sensor in ("sentinel2_l2a", "sentinel1_grd")
        for split, patches in splits.items()}
    assert {t.scene for t in manifest.tiles} == set(s2[:5])


def sentinel2_scene(folder: Path, tile: Path, name: str) -> np.ndarray:
    """One band file per band named as torchgeo's Sentinel2 expects (``<name>_<band>.tif``) from a real EuroSAT-MS
    tile; returns its vegetation label (NDVI > 0.3)."""
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(tile) as src:
        data, profile = src.read(), src.profile | {"count": 1}
    for band in Sentinel2.all_bands:
        with rasterio.open(folder / f"{name}_{band}.tif", "w", **profile) as dst:
            dst.write(data[EuroSAT.all_band_names.index(band)][None])
    red, nir = (data[EuroSAT.all_band_names.index(b)].astype(float) for b in ("B04", "B08"))
    return ((nir - red) / (nir + red + 1) > 0.3).astype("uint8")


def write_label(path: Path, like: Path, label: np.ndarray) -> None:
    with rasterio.open(like) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(label[None])


def test_a_sentinel2_raster_dataset_becomes_a_scene_manifest(tmp_path, shared_data):
    root, labels = tmp_path / "s2", tmp_path / "labels"
    tiles = {"T32ULU_20200101T103021": shared_data / "eurosat-ms/Forest/Forest_1.tif",
             "T32TLT_20200611T103031": shared_data / "eurosat-ms/River/River_1.tif"}
    for i, (name, tile) in enumerate(sorted(tiles.items())):
        # label files named unlike their scenes: paired by footprint, as torchgeo intersects datasets
        write_label(labels / f"mask_{1 - i}.tif", tile, sentinel2_scene(root / name, tile, name))
    out = tmp_path / "m"
    ok("manifest", "torchgeo", "raster", "--dataset", "torchgeo.datasets.Sentinel2", "--root", str(root),
       "--labels", str(labels), "--out", str(out), "--task", "vegetation", "--classes", "other,vegetation",
       "--size", "32", "--test-scenes", "T32TLT_20200611T103031")
    manifest = Manifest.load(out / "manifest.json")
    assert {t.sensor for t in manifest.tiles} == {"sentinel2_l1c"}
    assert Counter((t.region, t.split) for t in manifest.tiles) == {
        ("T32ULU_20200101T103021", "train"): 4, ("T32TLT_20200611T103031", "test"): 4}
    for tile in manifest.tiles:
        assert list(tile.band_paths) == list(get_sensor("sentinel2_l1c").bands)
        assert Path(tile.band_paths["B8A"]).name == f"{tile.region}_B8A.tif"
        mask = "mask_0.tif" if tile.region == "T32ULU_20200101T103021" else "mask_1.tif"
        assert Path(tile.targets["vegetation"]).name == mask
    tile = manifest.tiles[-1]
    sample = TileDataset(manifest, "sentinel2_l1c", task="vegetation")[len(manifest.tiles) - 1]
    col, row, size, _ = tile.window
    with rasterio.open(tiles[tile.region]) as src:  # EuroSAT's band order is the sensor's
        raw = src.read(window=Window(col, row, size, size))
    np.testing.assert_allclose(sample["image"].numpy(), raw * 1e-4, rtol=1e-5)
    assert set(sample["target"].unique().tolist()) <= {0, 1}


def test_a_band_no_sensor_has_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "mytg.py").write_text(
        "from torchgeo.datasets import RasterDataset\n\n\n"
        "class Odd(RasterDataset):\n    filename_glob = 'odd_*.tif'\n    all_bands = ('B02', 'B03', 'XX9')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with rasterio.open(tmp_path / "odd_1.tif", "w", driver="GTiff", width=8, height=8, count=3, dtype="uint16",
                       crs="EPSG:32632", transform=from_origin(500000, 5500000, 10, 10)) as dst:
        dst.write(np.ones((3, 8, 8), "uint16"))
    code = main(["manifest", "torchgeo", "raster", "--dataset", "mytg.Odd", "--root", str(tmp_path), "--labels",
                 str(tmp_path), "--sensor", "sentinel2_l1c", "--out", str(tmp_path / "m"), "--task", "t",
                 "--classes", "a,b"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'XX9'" in err
