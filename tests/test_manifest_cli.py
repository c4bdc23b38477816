"""``eosfed manifest <layout>`` on the real data, user sensors from files, and specialists trained on the result."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

from eosfed.cli import main
from geodata.manifest import Manifest
from geodata.raster import write_geotiff
from geodata.readers.bigearthnet import build_bigearthnet_manifest
from geodata.readers.eurosat import EUROSAT_CLASSES, build_eurosat_manifest
from geodata.sensors import SENSORS_ENV, get_sensor
from specialists.io import load_specialist

S2_L1C = get_sensor("sentinel2_l1c").bands


def ok(*argv: str) -> None:
    assert main(list(argv)) == 0


def test_aid_folders_manifest_and_a_specialist_trained_on_it(tmp_path, shared_data):
    out = tmp_path / "aid"
    ok("manifest", "folders", "--root", str(shared_data / "aid"), "--sensor", "rgb", "--out", str(out),
       "--classes", "Airport,Beach,Forest", "--per-class", "4", "--val-count", "1", "--test-count", "1", "--seed", "3")
    manifest = Manifest.load(out / "manifest.json")
    assert manifest.tasks["scene"].classes == ["Airport", "Beach", "Forest"]
    assert {t.sensor for t in manifest.tiles} == {"rgb"}
    per_class = Counter((t.split, t.targets["scene"]) for t in manifest.tiles)
    assert per_class == {(s, c): n for s, n in (("train", 2), ("val", 1), ("test", 1)) for c in range(3)}
    for tile in manifest.tiles:
        assert Path(tile.path).parent.name == manifest.tasks["scene"].classes[tile.targets["scene"]]

    again = tmp_path / "aid-again"
    ok("manifest", "folders", "--root", str(shared_data / "aid"), "--sensor", "rgb", "--out", str(again),
       "--classes", "Airport,Beach,Forest", "--per-class", "4", "--val-count", "1", "--test-count", "1", "--seed", "3")
    assert (again / "manifest.json").read_text() == (out / "manifest.json").read_text()  # deterministic

    spec = tmp_path / "spec"
    ok("train-specialist", "--manifest", str(out / "manifest.json"), "--sensor", "rgb", "--task", "scene",
       "--out", str(spec), "--epochs", "1", "--size", "32", "--batch-size", "4", "--variant", "convnextv2_atto")
    card = load_specialist(spec).card
    assert card.bands == ["RED", "GREEN", "BLUE"] and card.classes == ["Airport", "Beach", "Forest"]
    assert card.data_summary["tiles"] == {"train": 6, "val": 3, "test": 3}
    assert all(0 < m < 1 for m in card.norm_mean)  # uint8 / 255
    assert {"val_accuracy", "test_accuracy"} <= set(card.metrics)


def test_eurosat_through_folders_and_its_own_layout(tmp_path, shared_data):
    ok("manifest", "folders", "--root", str(shared_data / "eurosat-ms"), "--sensor", "sentinel2_l1c",
       "--out", str(tmp_path / "folders"), "--val-count", "1", "--test", "0.25")
    folders = Manifest.load(tmp_path / "folders" / "manifest.json")
    assert folders.tasks["scene"].classes == list(EUROSAT_CLASSES)  # sorted folder names
    counts = Counter((t.split, t.targets["scene"]) for t in folders.tiles)
    assert counts == {(s, c): n for s, n in (("train", 8), ("val", 1), ("test", 3)) for c in range(10)}

    ok("manifest", "eurosat", "--root", str(shared_data / "eurosat-ms"), "--out", str(tmp_path / "eurosat"),
       "--train", "6", "--val", "2")
    assert Manifest.load(tmp_path / "eurosat" / "manifest.json") == build_eurosat_manifest(
        shared_data / "eurosat-ms", tmp_path / "direct", 6, 2)


def test_bigearthnet_and_eolearn_layouts(tmp_path, shared_data):
    root = shared_data / "bigearthnet-tiny"
    s2_root, s1_root = root / "BigEarthNet-S2-Example", root / "BigEarthNet-S1-Example"
    first = sorted(p.name for p in s2_root.iterdir())[0]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({first: "test"}))
    ok("manifest", "bigearthnet", "--s2-root", str(s2_root), "--s1-root", str(s1_root), "--splits", str(splits),
       "--out", str(tmp_path / "ben"))
    manifest = Manifest.load(tmp_path / "ben" / "manifest.json")
    assert manifest == build_bigearthnet_manifest(s2_root, tmp_path / "direct", s1_root, {first: "test"})
    assert Counter((t.sensor, t.split) for t in manifest.tiles) == {
        ("sentinel2_l2a", "train"): 5, ("sentinel2_l2a", "test"): 1,
        ("sentinel1_grd", "train"): 5, ("sentinel1_grd", "test"): 1}

    ok("manifest", "eolearn", "--root", str(shared_data / "eolearn-testpatch"), "--out", str(tmp_path / "eol"),
       "--chip", "50")
    eol = Manifest.load(tmp_path / "eol" / "manifest.json")
    assert len(eol.tiles) == 5 * 2 * 2 and eol.tasks["lulc"].type == "segmentation"
    assert (tmp_path / "eol" / eol.tiles[0].path).is_file()  # chips travel with the staged folder


def test_png_class_folders_and_a_wrong_band_count(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_png_folders(tmp_path / "png")
    ok("manifest", "folders", "--root", str(tmp_path / "png"), "--sensor", "rgb", "--out", str(tmp_path / "m"),
       "--test-count", "1")
    assert Counter(t.split for t in Manifest.load(tmp_path / "m" / "manifest.json").tiles) == {"train": 4, "test": 2}
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8)).save(tmp_path / "png" / "a" / "0.png")
    assert main(["manifest", "folders", "--root", str(tmp_path / "png"), "--sensor", "rgb", "--out",
                 str(tmp_path / "m2"), "--test-count", "1", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected 3 bands for sensor rgb, found 4" in err and ".png" in err


def write_qa_folders(root: Path) -> None:
    """Two classes of 3 tiles: 13 L1C bands (reflectance x 10000), then QA60 and a cloud probability."""
    rng = np.random.default_rng(0)
    for label, cls in enumerate(("bright", "dark")):
        for i in range(3):
            data = rng.integers(500, 1500, (15, 32, 32), dtype=np.uint16) + np.uint16(2000 * (1 - label))
            data[13] = rng.choice([0, 1024, 2048], (32, 32))  # QA60 bits, 0 where clear
            data[14] = rng.integers(0, 100, (32, 32))  # cloud probability, percent
            write_geotiff(root / cls / f"{cls}_{i}.tif", data, from_origin(400000, 5000000, 10, 10), "EPSG:32633")


QA_SENSOR = """name: t_user_s2_qa
description: Sentinel-2 L1C with QA60 and a cloud probability band
scale: 0.0001
nodata: 0
dtype: uint16
bands: [B01, B02, B03, B04, B05, B06, B07, B08, B09, B10, B11, B12, B8A,
        {name: QA60, kind: quality, scale: 1}, {name: T_CLOUD_PROB, kind: probability, scale: 0.01}]
"""


def test_user_sensor_from_a_file_with_auxiliary_bands_reads_and_trains(tmp_path):
    write_qa_folders(tmp_path / "data")
    sensor_file = tmp_path / "my_sensor.yaml"
    sensor_file.write_text(QA_SENSOR)
    out = tmp_path / "m"
    ok("manifest", "folders", "--root", str(tmp_path / "data"), "--sensors", str(sensor_file),
       "--sensor", "t_user_s2_qa", "--out", str(out), "--test-count", "1")
    from geodata.sensors import builtin, load_sensor_files
    carried = load_sensor_files([out / "sensors.yaml"], builtin()).sensor("t_user_s2_qa")  # the manifest carries it
    assert carried == load_sensor_files([sensor_file], builtin()).sensor("t_user_s2_qa")
    spec = tmp_path / "spec"
    ok("train-specialist", "--manifest", str(out / "manifest.json"), "--sensor", "t_user_s2_qa", "--task", "scene",
       "--out", str(spec), "--epochs", "1", "--size", "32", "--batch-size", "4", "--variant", "convnextv2_atto")
    card = load_specialist(spec).card
    assert card.bands == list(S2_L1C) and len(card.norm_mean) == 13  # QA60 and the cloud probability skipped
    assert card.data_summary["tiles"] == {"train": 4, "test": 2} and "test_accuracy" in card.metrics


def test_user_sensor_from_the_environment(tmp_path, shared_data, monkeypatch):
    folder = tmp_path / "sensors"
    folder.mkdir()
    (folder / "l1c_copy.yaml").write_text(f"name: t_env_l1c\nscale: 0.0001\nnodata: 0\nbands: [{', '.join(S2_L1C)}]\n")
    monkeypatch.setenv(SENSORS_ENV, str(folder))
    ok("manifest", "folders", "--root", str(shared_data / "eurosat-ms"), "--sensor", "t_env_l1c",
       "--classes", "Forest,River", "--per-class", "3", "--test-count", "1", "--out", str(tmp_path / "m"))
    manifest = Manifest.load(tmp_path / "m" / "manifest.json")
    assert {t.sensor for t in manifest.tiles} == {"t_env_l1c"} and len(manifest.tiles) == 6


def test_split_fractions_are_per_class():
    from geodata.readers.folders import per_class_count
    assert [per_class_count(12, f) for f in (0.0, 0.25, 0.5, 1.0)] == [0, 3, 6, 12]
    assert per_class_count(12, 0.5, count=2) == 2
    with pytest.raises(ValueError, match="fraction must be in"):
        per_class_count(12, 1.5)


def write_png_folders(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_folder_splits_take_fractions_as_fractions_and_counts_as_counts(tmp_path, capsys):
    root = write_png_folders(tmp_path / "png", per_class=4)

    def splits(name: str, *flags: str) -> Counter:
        ok("manifest", "folders", "--root", str(root), "--sensor", "rgb", "--out", str(tmp_path / name), *flags)
        return Counter(t.split for t in Manifest.load(tmp_path / name / "manifest.json").tiles)

    assert splits("all-test", "--test", "1.0") == {"test": 8}  # a test-only set, not one image per class
    assert splits("counted", "--test-count", "4") == {"test": 8}
    assert splits("train-only", "--test", "0") == {"train": 8}
    assert splits("mixed", "--test", "0.5", "--val-count", "1") == {"test": 4, "val": 2, "train": 2}
    capsys.readouterr()
    assert main(["manifest", "folders", "--root", str(root), "--sensor", "rgb", "--out", str(tmp_path / "x"),
                 "--test", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "eosfed manifest: error: --test 50 is not a fraction in [0, 1]; for 50 images per class give " \
                  "--test-count 50"
    assert main(["manifest", "folders", "--root", str(root), "--sensor", "rgb", "--out", str(tmp_path / "x"),
                 "--test-count", "3", "--val-count", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class 'a' has 4 images, fewer than 3 test + 2 val" in err
    assert not (tmp_path / "x").exists()


def test_merge_a_train_folder_and_a_test_folder(tmp_path, capsys):
    write_png_folders(tmp_path / "release" / "train")
    (tmp_path / "release" / "test").mkdir()
    for cls in ("a", "b"):
        (tmp_path / "release" / "train" / cls).rename(tmp_path / "release" / "test" / cls)
    write_png_folders(tmp_path / "release" / "train", per_class=2)
    ok("manifest", "folders", "--root", str(tmp_path / "release" / "train"), "--sensor", "rgb", "--test", "0",
       "--out", str(tmp_path / "train"))
    ok("manifest", "folders", "--root", str(tmp_path / "release" / "test"), "--sensor", "rgb", "--test", "1",
       "--out", str(tmp_path / "test"))
    test_json = tmp_path / "test" / "manifest.json"
    raw = json.loads(test_json.read_text())
    for tile in raw["tiles"]:  # relative paths travel with their manifest
        tile["path"] = str(Path("..") / "release" / "test" / Path(tile["path"]).parent.name / Path(tile["path"]).name)
    test_json.write_text(json.dumps(raw))

    out = tmp_path / "joined" / "release"
    ok("manifest", "merge", str(tmp_path / "train" / "manifest.json"), str(test_json), "--out", str(out),
       "--prefix-ids")  # both folders hold a/0.png
    merged = Manifest.load(out / "manifest.json")
    assert {"train/a-0", "test/a-0"} <= {t.id for t in merged.tiles}
    assert Counter(t.split for t in merged.tiles) == {"train": 4, "test": 6} and merged.name == "release"
    moved = next(t for t in merged.tiles if t.split == "test")
    assert moved.path.startswith("../../release/test/") and merged.resolve(moved.path).is_file()
    assert Path(next(t for t in merged.tiles if t.split == "train").path).is_absolute()

    capsys.readouterr()
    assert main(["manifest", "merge", str(tmp_path / "train" / "manifest.json"), str(tmp_path / "train" / "manifest.json"),
                 "--out", str(tmp_path / "twice")]) == 2
    err = capsys.readouterr().err.strip()
    first = Manifest.load(tmp_path / "train" / "manifest.json").tiles[0].id
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'train' / 'manifest.json'}: tile {first!r} is also in" in err
    assert err.endswith("; --prefix-ids tells them apart by manifest name")
    raw["tasks"]["scene"]["classes"] = ["a", "c"]
    test_json.write_text(json.dumps(raw))
    assert main(["manifest", "merge", str(tmp_path / "train" / "manifest.json"), str(test_json),
                 "--out", str(tmp_path / "mismatch")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{test_json}: task 'scene' is" in err and "['a', 'c']" in err
    assert not (tmp_path / "twice").exists() and not (tmp_path / "mismatch").exists()
