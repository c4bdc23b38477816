"""The synthetic world: determinism, physics of the spectra and radar, geometry, labels, config errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eosfed.cli import main as eosfed_main
from geodata.dataset import TileDataset
from geodata.manifest import Manifest
from geodata.raster import read_mask
from geodata.sensors import get_sensor
from geodata.synth import CLASSES, generate_world, iter_scenes, load_world_config, render_scene
from geodata.synth.landcover import SceneGrid
from geodata.synth.render import RadarLook, render_sar

S2, S1, AERIAL = "sentinel2_l2a", "sentinel1_grd", "aerial_rgbn"
C = {name: i for i, name in enumerate(CLASSES)}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny():
    return load_world_config("tiny")


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(tiny, out, progress=False)


@pytest.fixture(scope="module")
def scenes(tiny):
    """More scenes of the all-class institution, in memory: Sentinel-2 and Sentinel-1 views."""
    return list(iter_scenes(tiny.replace(tiles_per_institution=24), sensors=(S2, S1)))


def _band(scene, name: str) -> np.ndarray:
    sensor = get_sensor(S2)
    return scene.tiles[S2].raw[sensor.bands.index(name)].astype(np.float64) * sensor.scale + sensor.offset


def _pixels(scenes, values, classes) -> np.ndarray:
    return np.concatenate([values(s)[np.isin(s.tiles[S2].mask, [C[c] for c in classes])] for s in scenes])


def test_same_seed_same_bytes_whatever_the_workers(tiny, world, tmp_path):
    root, _ = world
    generate_world(tiny, tmp_path, progress=False, workers=2)
    first, second = _hashes(root), _hashes(tmp_path)
    assert len(first) == 30 and first == second  # 28 rasters, manifest.json, world.json


def test_different_seed_different_pixels(tiny):
    a = render_scene(tiny, "north_s2", 0).tiles[S2].raw
    b = render_scene(tiny.replace(seed=1), "north_s2", 0).tiles[S2].raw
    assert not np.array_equal(a, b)


def test_scene_does_not_depend_on_order_or_other_sensors(tiny):
    alone = render_scene(tiny, "north_s2", 3, sensors=(S2,))
    together = list(iter_scenes(tiny))[3]
    assert together.id == alone.id
    assert np.array_equal(alone.tiles[S2].raw, together.tiles[S2].raw)


def test_manifest_loads_with_tasks_splits_and_files(tiny, world):
    root, _ = world
    manifest = Manifest.load(root / "manifest.json")
    assert manifest.task("scene").classes == list(CLASSES) and len(CLASSES) >= 8
    assert manifest.task("presence").type == "multilabel"
    assert manifest.task("landcover").type == "segmentation"
    assert {t.sensor for t in manifest.tiles} == {S2, S1, AERIAL}
    assert {t.split for t in manifest.select(institution="south_s2")} == {"train", "val", "test"}
    for tile in manifest.tiles:
        assert manifest.resolve(tile.path).is_file() and manifest.resolve(tile.targets["landcover"]).is_file()
    # the sensors of one scene share its split and labels
    north = [t for t in manifest.tiles if t.scene == "north_s2-r0-00000"]
    assert {t.sensor for t in north} == {S2, S1} and len({(t.split, t.targets["scene"]) for t in north}) == 1


@pytest.mark.parametrize("sensor, task, shape", [(S2, "landcover", (32, 32)), (AERIAL, "landcover", (128, 128)),
                                                  (S1, "presence", (len(CLASSES),))])
def test_tile_dataset_reads_the_world(world, sensor, task, shape):
    root, _ = world
    sample = TileDataset(root / "manifest.json", sensor, split="train", task=task)[0]
    assert sample["valid"].all() and tuple(sample["target"].shape) == shape
    assert sample["image"].shape[0] == get_sensor(sensor).num_bands


def test_geotiffs_are_georeferenced_and_coregistered(world):
    root, manifest = world
    s2, s1 = (manifest.resolve(t.path) for t in manifest.tiles if t.scene == "north_s2-r0-00001")
    with rasterio.open(s2) as a, rasterio.open(s1) as b:
        assert a.crs.to_epsg() == 32632 and a.res == (10.0, 10.0) and a.shape == (32, 32)
        assert a.dtypes[0] == "uint16" and a.nodata == 0 and a.descriptions == get_sensor(S2).bands
        assert b.dtypes[0] == "float32" and b.transform == a.transform and b.crs == a.crs
        assert a.read().min() >= 1  # DN 0 is nodata: rendered pixels never are
    other = next(t for t in manifest.tiles if t.institution == "south_s2")
    with rasterio.open(manifest.resolve(other.path)) as c:
        assert c.crs.to_epsg() == 32633  # another region, another place
    aerial = next(t for t in manifest.tiles if t.sensor == AERIAL)
    with rasterio.open(manifest.resolve(aerial.path)) as d, rasterio.open(manifest.resolve(aerial.targets["landcover"])) as m:
        assert d.res == (2.5, 2.5) and d.shape == (128, 128) and d.dtypes[0] == "uint8"
        assert m.shape == d.shape and m.transform == d.transform


def test_scene_label_is_mask_argmax_and_presence_its_threshold(tiny, world):
    _, manifest = world
    for tile in manifest.select(sensor=S2):
        mask = read_mask(manifest.resolve(tile.targets["landcover"]), len(CLASSES))
        share = np.bincount(mask.ravel(), minlength=len(CLASSES)) / mask.size
        assert tile.targets["scene"] == int(np.argmax(share))
        assert tile.targets["presence"] == np.flatnonzero(share >= tiny.presence_threshold).tolist()


def test_aerial_mask_refines_the_sentinel2_mask(tiny):
    scene = render_scene(tiny, "north_s2", 2, sensors=(S2, AERIAL))
    coarse, fine = scene.tiles[S2].mask, scene.tiles[AERIAL].mask
    centres = fine[2::4, 2::4]  # fine pixels nearest the coarse pixel centres
    assert fine.shape == (4 * coarse.shape[0], 4 * coarse.shape[1])
    assert (centres == coarse).mean() > 0.9


def test_vegetation_ndvi_above_half_above_water(scenes):
    ndvi = lambda s: (_band(s, "B08") - _band(s, "B04")) / (_band(s, "B08") + _band(s, "B04"))  # noqa: E731
    vegetation = _pixels(scenes, ndvi, ["forest", "grassland"])
    water = _pixels(scenes, ndvi, ["water"])
    assert np.median(vegetation) > 0.5 > np.median(water)
    assert np.median(water) < 0


def test_water_darker_than_vegetation_in_nir_and_swir(scenes):
    for band in ("B08", "B8A", "B11", "B12"):
        water = _pixels(scenes, lambda s: _band(s, band), ["water"]).mean()
        vegetation = _pixels(scenes, lambda s: _band(s, band), ["forest", "grassland"]).mean()
        assert water < 0.5 * vegetation, band


def test_snow_bright_in_visible_dark_in_swir(scenes):
    blue = _pixels(scenes, lambda s: _band(s, "B02"), ["snow_ice"]).mean()
    swir = _pixels(scenes, lambda s: _band(s, "B11"), ["snow_ice"]).mean()
    assert blue > 0.5 > 0.15 > swir


def test_sar_water_darker_than_urban_and_forest_bright_in_vh(scenes):
    both = [s for s in scenes if S1 in s.tiles]
    vv = lambda s: s.tiles[S1].raw[0]  # noqa: E731
    vh = lambda s: s.tiles[S1].raw[1]  # noqa: E731
    assert _pixels(both, vv, ["water"]).mean() < _pixels(both, vv, ["urban"]).mean() - 8
    assert _pixels(both, vh, ["forest"]).mean() > _pixels(both, vh, ["bare_soil"]).mean() + 2


def test_speckle_has_the_coefficient_of_variation_of_its_looks():
    power = np.full((128, 128), 0.1, dtype=np.float32)
    grid = SceneGrid(mask=np.zeros((128, 128), np.uint8), abundance=np.ones((1, 128, 128), np.float32),
                     vv=power, vh=power)
    db = render_sar(grid, ("VV", "VH"), RadarLook(looks=4.4), np.random.default_rng(0))
    linear = 10 ** (db / 10)
    cv = linear.std(axis=(1, 2)) / linear.mean(axis=(1, 2))
    assert np.allclose(cv, 1 / np.sqrt(4.4), rtol=0.05)
    assert db.dtype == np.float32


def test_landsat_renders_coregistered_with_sentinel2(tiny):
    scene = render_scene(tiny, "north_s2", 1, sensors=(S2, "landsat8_oli"))
    oli = scene.tiles["landsat8_oli"]
    sensor = get_sensor("landsat8_oli")
    assert oli.raw.dtype == np.uint16 and oli.raw.shape == (7, 32, 32) and oli.raw.min() >= 1
    nir = oli.raw[sensor.bands.index("OLI_B5")] * sensor.scale + sensor.offset
    assert 0.0 < nir.mean() < 1.0
    assert np.corrcoef(nir.ravel(), _band(scene, "B8A").ravel())[0, 1] > 0.8
    assert oli.transform == scene.tiles[S2].transform


@pytest.mark.parametrize("change, message", [
    ({"class_priors": {"lava": 1.0}}, "unknown classes"),
    ({"region": "mars"}, "unknown region"),
    ({"domain_shift": 2.0}, "domain_shift"),
])
def test_bad_institution_is_named(tiny, change, message):
    raw = tiny.to_dict()
    raw["institutions"][0].update(change)
    with pytest.raises(ValueError, match=message) as info:
        type(tiny).from_dict(raw)
    assert "north_s2" in str(info.value)


def test_unknown_sensor_and_preset_are_named(tiny):
    raw = tiny.to_dict()
    raw["institutions"][0]["sensors"] = ["hyperion"]
    with pytest.raises(ValueError, match="north_s2.*unknown sensor 'hyperion'"):
        type(tiny).from_dict(raw)
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_world_config("no_such_world")


def test_cli_writes_a_world(tmp_path):
    assert eosfed_main(["synth", "--out", str(tmp_path), "--preset", "tiny", "--seed", "3", "--tiles", "2"]) == 0
    manifest = Manifest.load(tmp_path / "manifest.json")
    assert manifest.name == "tiny-seed3" and len(manifest.select(institution="south_s2")) == 2
    assert eosfed_main(["synth", "--out", str(tmp_path / "x"), "--preset", "no_such_world"]) == 2
