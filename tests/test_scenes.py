"""``eosfed manifest scenes``: real wildfire scenes, one file per band, label maps, co-registration, map-block
splits, user errors."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import Affine
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rasterio.windows import Window, bounds

from eosfed.cli import main
from geodata.dataset import TileDataset
from geodata.raster import read_labelled, read_tile, tile_source, tile_window
from geodata.sensors import PRODUCT_SCALES, BandError, get_sensor
from geodata.manifest import Manifest
from geodata.tiling import split_scenes

SENSOR_YAML = Path(__file__).resolve().parents[1] / "configs" / "samples" / "wildfire_sensor.yaml"
WILDFIRE = "sentinel2_tci_nir_swir"


def _wildfire_args(shared_data: Path, out: Path, *extra: str, images: str = "") -> list[str]:
    fire = shared_data / "wildfire-s2"
    return ["manifest", "scenes", "--images", f"{WILDFIRE}={fire / 'post_fire' / images}", "--labels", str(fire / "masks"),
            "--sensors", str(SENSOR_YAML), "--out", str(out), "--task", "burned", "--classes", "not_burned,burned",
            *extra]


def test_wildfire_scenes_become_windows_with_the_sensor_beside(shared_data, tmp_path):
    out = tmp_path / "fire"
    assert main(_wildfire_args(shared_data, out, "--size", "64", "--stride", "64", "--train-first", "14",
                               "--val", "2")) == 0
    assert WILDFIRE in (out / "sensors.yaml").read_text()  # the sensor, described in full beside the manifest
    with pytest.raises(BandError):
        get_sensor(WILDFIRE)  # what this process knows: nothing was registered
    manifest = Manifest.load(out / "manifest.json")  # its catalog: the sensors beside it
    assert manifest.sensor(WILDFIRE).bands == ("TCI_R", "TCI_G", "TCI_B", "B08", "B12")
    events = sorted({t.region for t in manifest.tiles})
    assert len(events) == 20
    by_split = {s: {t.region for t in manifest.tiles if t.split == s} for s in ("train", "val", "test")}
    assert by_split["test"] == set(events[14:]) and len(by_split["val"]) == 2
    assert by_split["train"] | by_split["val"] == set(events[:14]) and not by_split["train"] & by_split["val"]
    tile = manifest.tiles[0]
    assert tile.window[2:] == [64, 64] and Path(tile.path).parent == shared_data.resolve() / "wildfire-s2" / "post_fire"
    assert not (out / "scenes").exists()  # the originals are read in place
    sample = TileDataset(manifest, WILDFIRE, split="train", task="burned")[0]
    assert sample["image"].shape == (5, 64, 64) and set(sample["target"].unique().tolist()) <= {0, 1}
    with rasterio.open(tile_source(manifest, tile)) as src:
        raw = src.read(window=tile_window(tile))
    scale = np.array([PRODUCT_SCALES["tci"]] * 3 + [1e-4] * 2)[:, None, None]  # TCI by its product, B08/B12 x 1e-4
    np.testing.assert_allclose(sample["image"].numpy(), raw * scale, rtol=1e-5)


def _write(path: Path, data: np.ndarray, crs: str, transform, descriptions=(), nodata=None) -> Path:
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for i, name in enumerate(descriptions, start=1):
            dst.set_band_description(i, name)
    return path


BAND_FOLDERS = {"TCI_R": "red", "TCI_G": "green", "TCI_B": "blue", "B8": "nir", "B12": "swir"}
EVENTS = ("CANAL_20240530", "CODY_20240608")


def _band_folders(shared_data: Path, root: Path) -> str:
    """Two wildfire scenes as one single-band GeoTIFF per band, a folder per band; the ``--images`` value."""
    for event in EVENTS:
        with rasterio.open(shared_data / "wildfire-s2" / "post_fire" / f"{event}.tif") as src:
            image, crs, transform = src.read(), src.crs, src.transform
        for band, folder in zip(image, BAND_FOLDERS.values()):
            (root / folder).mkdir(exist_ok=True)
            _write(root / folder / f"{event}.tif", band, crs, transform)
    return f"{WILDFIRE}=" + ",".join(f"{band}:{root / folder}" for band, folder in BAND_FOLDERS.items())


def _band_args(shared_data: Path, images: str, out: Path) -> list[str]:
    return ["manifest", "scenes", "--images", images, "--labels", str(shared_data / "wildfire-s2" / "masks"),
            "--sensors", str(SENSOR_YAML), "--out", str(out), "--task", "burned", "--classes", "not_burned,burned",
            "--size", "64", "--test-scenes", EVENTS[1]]


def test_one_file_per_band_scenes_read_as_their_multiband_originals(shared_data, tmp_path):
    out = tmp_path / "bands"
    assert main(_band_args(shared_data, _band_folders(shared_data, tmp_path), out)) == 0
    manifest = Manifest.load(out / "manifest.json")
    assert {t.region for t in manifest.tiles} == set(EVENTS) and {t.split for t in manifest.tiles} == {"train", "test"}
    tile = manifest.tiles[0]
    assert tile.path is None and list(tile.band_paths) == ["TCI_R", "TCI_G", "TCI_B", "B08", "B12"]
    assert Path(tile.band_paths["B12"]) == (tmp_path / "swir" / f"{tile.region}.tif").resolve()

    whole = tmp_path / "whole"  # the same scenes from the multi-band files: the same tiles
    assert main(_wildfire_args(shared_data, whole, "--size", "64", "--test-scenes", EVENTS[1],
                               images="C[AO][ND]*.tif")) == 0
    reference = Manifest.load(whole / "manifest.json")
    assert [(t.id, t.window, t.split) for t in reference.tiles] == [(t.id, t.window, t.split) for t in manifest.tiles]
    dataset = TileDataset(manifest, WILDFIRE, task="burned")
    for index in (0, len(dataset) - 1):
        tile = dataset.tiles[index]
        original = read_tile(tile_source(reference, reference.tiles[index]), reference.sensor(WILDFIRE),
                             window=tile_window(tile))
        np.testing.assert_array_equal(dataset[index]["image"].numpy(), original.data)


def test_band_folders_refuse_a_missing_file_and_another_grid_in_one_line(shared_data, tmp_path, capsys):
    images = _band_folders(shared_data, tmp_path)
    (tmp_path / "nir" / f"{EVENTS[1]}.tif").rename(tmp_path / f"{EVENTS[1]}.tif")
    assert main(_band_args(shared_data, images, tmp_path / "a")) == 2
    assert f"{tmp_path / 'nir'}: scene '{EVENTS[1]}' has no {WILDFIRE} B08 file here" in _error_line(capsys)
    (tmp_path / f"{EVENTS[1]}.tif").rename(tmp_path / "nir" / f"{EVENTS[1]}.tif")

    with rasterio.open(tmp_path / "swir" / f"{EVENTS[0]}.tif", "r+") as dst:
        dst.transform = dst.transform @ Affine.translation(1, 0)
    assert main(_band_args(shared_data, images, tmp_path / "b")) == 2
    err = _error_line(capsys)
    assert f"{tmp_path / 'swir' / EVENTS[0]}.tif: B12 file is on another grid" in err
    assert f"than {tmp_path / 'red' / EVENTS[0]}.tif" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture
def toy_scenes(tmp_path):
    """Two 48x48 scenes: RGB (UTM, 10 m) + a Sentinel-1 raster on another CRS and grid, labels -1/0/255."""
    rng = np.random.default_rng(0)
    for folder in ("rgb", "s1", "labels"):
        (tmp_path / folder).mkdir()
    for name, (x, y) in {"alpha": (500000, 4500000), "beta": (510000, 4500000)}.items():
        utm = from_origin(x, y, 10, 10)
        _write(tmp_path / "rgb" / f"{name}.tif", rng.integers(1, 255, (3, 48, 48), dtype=np.uint8), "EPSG:32633", utm,
               ("BLUE", "GREEN", "RED"))  # stored in another order than the sensor's RED GREEN BLUE
        with rasterio.open(tmp_path / "rgb" / f"{name}.tif") as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        _write(tmp_path / "s1" / f"{name}.tif", rng.normal(-12, 2, (2, 30, 30)).astype(np.float32), "EPSG:4326",
               from_origin(west - 0.001, north + 0.001, (east - west + 0.002) / 30, (north - south + 0.002) / 30),
               ("VV", "VH"))
        labels = np.zeros((48, 48), dtype=np.int16)
        labels[:, 24:] = 255
        labels[:4] = -1
        _write(tmp_path / "labels" / f"{name}_mask.tif", labels, "EPSG:32633", utm)
    return tmp_path


def _toy_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["manifest", "scenes", "--images", f"rgb={root / 'rgb'}", "--images", f"sentinel1_grd={root / 's1'}",
            "--labels", str(root / "labels" / "*_mask.tif"), "--match", r"^([a-z]+)", "--out", str(out),
            "--task", "cover", "--classes", "bare,built", *extra]


def test_label_map_and_co_registration(toy_scenes, tmp_path):
    out = tmp_path / "toy"
    assert main(_toy_args(toy_scenes, out, "--label-map=-1:ignore,255:1", "--size", "16", "--stride", "16",
                          "--test-scenes", "beta", "--min-valid", "0.1")) == 0
    manifest = Manifest.load(out / "manifest.json")
    assert {t.split for t in manifest.tiles if t.region == "beta"} == {"test"}
    assert {t.sensor for t in manifest.tiles} == {"rgb", "sentinel1_grd"}
    tile = next(t for t in manifest.tiles if t.sensor == "sentinel1_grd" and t.window[:2] == [16, 0])
    raster, labels = read_labelled(tile_source(manifest, tile), "sentinel1_grd", manifest.resolve(tile.targets["cover"]),
                                   2, window=tile_window(tile))
    assert raster.data.shape == (2, 16, 16) and raster.valid.all()  # warped onto the RGB grid
    assert (labels[:4] == 255).all() and set(np.unique(labels[4:]).tolist()) == {0, 1}
    with rasterio.open(manifest.resolve(tile.path)) as copy, rasterio.open(toy_scenes / "rgb" / "alpha.tif") as ref:
        assert copy.crs == ref.crs and copy.transform == ref.transform and copy.shape == ref.shape
    rgb = next(t for t in manifest.tiles if t.sensor == "rgb" and t.region == "alpha")
    with rasterio.open(toy_scenes / "rgb" / "alpha.tif") as src:
        blue_first = src.read(window=tile_window(rgb))
    picked = read_labelled(tile_source(manifest, rgb), "rgb", manifest.resolve(rgb.targets["cover"]), 2,
                           window=tile_window(rgb))[0].data
    np.testing.assert_allclose(picked, blue_first[::-1] / 255, rtol=1e-6)  # RED GREEN BLUE by description


def _blocks(transform: Affine, window: list[int], side: float) -> set[tuple[int, int]]:
    """The map blocks of a tile's corner pixel centres."""
    col, row, width, height = window
    corners = [transform @ (c + 0.5, r + 0.5) for c in (col, col + width - 1) for r in (row, row + height - 1)]
    return {(int(np.floor(x / side)), int(np.floor(y / side))) for x, y in corners}


def test_block_splits_never_straddle(shared_data, tmp_path):
    with rasterio.open(shared_data / "wildfire-s2" / "post_fire" / "CANAL_20240530.tif") as src:
        side = 64 * src.res[0]  # 64 px, in the rasters' degrees
    out = tmp_path / "blocks"
    assert main(_wildfire_args(shared_data, out, "--split-by", "block", "--block-size", repr(side), "--size", "32",
                               "--stride", "16", "--test-fraction", "0.3", "--val-fraction", "0.2",
                               images="C*.tif")) == 0
    manifest = Manifest.load(out / "manifest.json")
    assert {t.split for t in manifest.tiles} == {"train", "val", "test"}
    grids: dict[str, Affine] = {}
    owner: dict[tuple[int, int], str] = {}
    for tile in manifest.tiles:
        if tile.region not in grids:
            with rasterio.open(tile_source(manifest, tile)) as src:
                grids[tile.region] = src.transform
        blocks = _blocks(grids[tile.region], tile.window, side)
        assert len(blocks) == 1  # inside one map block
        assert owner.setdefault(blocks.pop(), tile.split) == tile.split


def test_dates_of_one_place_keep_each_block_of_ground_in_one_split(shared_data, tmp_path, capsys):
    fire = shared_data / "wildfire-s2"
    with rasterio.open(fire / "post_fire" / "CANAL_20240530.tif") as src:
        image, crs, grid, names = src.read(), src.crs, src.transform, src.descriptions
    with rasterio.open(fire / "masks" / "CANAL_20240530.tif") as src:
        mask = src.read(1)
    shifted = grid @ Affine.translation(37, 21)  # a footprint 37 px east and 21 px south of the others
    grids = {"canal_d1": grid, "canal_d2": grid, "canal_d3": shifted}
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for name, transform in grids.items():
        _write(tmp_path / "images" / f"{name}.tif", image, crs, transform, names)
        _write(tmp_path / "labels" / f"{name}.tif", mask, crs, transform)
    def site(out: Path, side: float) -> int:
        return main(["manifest", "scenes", "--images", f"{WILDFIRE}={tmp_path / 'images'}", "--labels",
                     str(tmp_path / "labels"), "--sensors", str(SENSOR_YAML), "--out", str(out), "--task", "burned",
                     "--classes", "not_burned,burned", "--size", "16", "--split-by", "block", "--block-size",
                     repr(side), "--test-fraction", "0.4", "--val-fraction", "0"])

    assert site(tmp_path / "tiny", 0.001) == 2
    assert "a block of 0.001 map units is 5.6 px on this grid, less than the tile size 16" in _error_line(capsys)
    assert site(tmp_path / "site", 48 * grid.a) == 0
    manifest = Manifest.load(tmp_path / "site" / "manifest.json")
    tiles = manifest.tiles
    assert manifest.name == "site"
    assert {t.split for t in tiles} == {"train", "test"}
    by_date = {d: {(tuple(t.window), t.split) for t in tiles if t.region == d} for d in grids}
    assert by_date["canal_d1"] == by_date["canal_d2"]  # one grid, two dates: the same tiles in the same splits
    box = np.array([bounds(Window(*t.window), grids[t.region]) for t in tiles])  # left, bottom, right, top
    split = np.array([t.split for t in tiles])
    wide = np.minimum(box[:, None, 2], box[None, :, 2]) - np.maximum(box[:, None, 0], box[None, :, 0])
    high = np.minimum(box[:, None, 3], box[None, :, 3]) - np.maximum(box[:, None, 1], box[None, :, 1])
    shared = (wide > 0.01 * grid.a) & (high > 0.01 * grid.a)  # tiles that share ground
    across = np.array([t.region == "canal_d3" for t in tiles])
    assert (shared & (across[:, None] != across[None, :])).sum() > 100  # the shifted date overlaps the others
    assert not (shared & (split[:, None] != split[None, :])).any()  # ... and no ground is on both sides


def test_split_scenes_rules():
    names = [f"s{i}" for i in range(6)]
    first = split_scenes(names, train_first=4, val=1, seed=3)
    assert [n for n, s in first.items() if s == "test"] == ["s4", "s5"]
    assert sum(s == "val" for s in first.values()) == 1
    seeded = split_scenes(names, test=2, val=1, seed=1)
    assert seeded == split_scenes(names, test=2, val=1, seed=1)
    assert sorted(seeded.values()).count("test") == 2
    with pytest.raises(ValueError, match="not among"):
        split_scenes(names, test_names=["nope"])


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed")]  # not progress bars
    assert len(err) == 1, err
    return err[0]


def test_user_errors_are_one_line(toy_scenes, tmp_path, capsys):
    (toy_scenes / "labels" / "beta_mask.tif").rename(toy_scenes / "beta_mask.tif")
    assert main(_toy_args(toy_scenes, tmp_path / "a", "--label-map=-1:ignore,255:1")) == 2
    assert "scene 'beta' has no label raster" in _error_line(capsys)
    (toy_scenes / "beta_mask.tif").rename(toy_scenes / "labels" / "beta_mask.tif")

    assert main(_toy_args(toy_scenes, tmp_path / "b", "--label-map=255:1")) == 2
    assert "label values [-1] are not in the label map" in _error_line(capsys)

    with rasterio.open(toy_scenes / "rgb" / "alpha.tif", "r+") as dst:
        dst.set_band_description(3, "NIR")
    assert main(_toy_args(toy_scenes, tmp_path / "c", "--label-map=-1:ignore,255:1")) == 2
    assert "bands ['RED'] missing" in _error_line(capsys)
    assert not (tmp_path / "c").exists()


def test_test_only_and_train_only_scene_sets(toy_scenes, tmp_path, capsys):
    def splits(name: str, *flags: str) -> set[str]:
        assert main(_toy_args(toy_scenes, tmp_path / name, "--label-map=-1:ignore,255:1", "--size", "16",
                              "--min-valid", "0.1", *flags)) == 0
        return {t.split for t in Manifest.load(tmp_path / name / "manifest.json").tiles}

    assert splits("first0", "--train-first", "0") == {"test"}
    assert splits("all-test", "--test", "2") == {"test"}
    assert splits("all-train", "--train-first", "2") == {"train"}
    assert main(_toy_args(toy_scenes, tmp_path / "x", "--train-first", "3")) == 2
    assert "--train-first 3: there are 2 scenes" in _error_line(capsys)
    assert main(_toy_args(toy_scenes, tmp_path / "x", "--test", "1", "--val", "2")) == 2
    assert "cannot hold out 2 val scenes of the 1 train scenes" in _error_line(capsys)


def test_scenes_of_one_file_name_in_two_folders_are_refused_naming_both(toy_scenes, tmp_path, capsys):
    for event in ("flood1", "flood2"):
        (toy_scenes / event).mkdir()
        (toy_scenes / event / "alpha.tif").hardlink_to(toy_scenes / "rgb" / "alpha.tif")
    argv = _toy_args(toy_scenes, tmp_path / "m", "--label-map=-1:ignore,255:1")
    argv[argv.index(f"rgb={toy_scenes / 'rgb'}")] = f"rgb={toy_scenes / 'flood*' / '*.tif'}"
    assert main(argv) == 2
    err = _error_line(capsys)
    assert f"{toy_scenes / 'flood2' / 'alpha.tif'}: rgb images: scene 'alpha' is also " \
           f"{toy_scenes / 'flood1' / 'alpha.tif'}" in err
    assert not (tmp_path / "m").exists()
