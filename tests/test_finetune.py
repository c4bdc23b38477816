"""``eosfed finetune`` -> ``eosfed predict`` on real wildfire scenes; a 4000x4000 scene in bounded memory."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from safetensors.torch import save_file

from eosfed.cli import main
from fusion.finetune import load_task_model
from fusion.predict import blend_weights, dihedral_logits
from geodata.sensors import PRODUCT_SCALES
from specialists.artifact import ArtifactError

REPO = Path(__file__).resolve().parents[1]
SENSOR_YAML = REPO / "configs" / "samples" / "wildfire_sensor.yaml"
WILDFIRE = "sentinel2_tci_nir_swir"
REFLECTANCE_BANDS = ("B2", "B3", "B4", "B8", "B12")


@pytest.fixture(scope="module")
def fire_model(shared_data, tmp_path_factory):
    """A task model fine-tuned for one epoch on 3 wildfire events (val: 1, test: 1) with cross-entropy plus
    Dice, its trunk started from a timm checkpoint."""
    root = tmp_path_factory.mktemp("fire")
    save_file(timm.create_model("convnextv2_atto", pretrained=False).state_dict(), str(root / "atto.safetensors"))
    fire = shared_data / "wildfire-s2"
    assert main(["manifest", "scenes", "--images", f"{WILDFIRE}={fire / 'post_fire' / 'C[AL]*.tif'}",
                 "--labels", str(fire / "masks"), "--sensors", str(SENSOR_YAML), "--out", str(root / "manifest"),
                 "--task", "burned", "--classes", "not_burned,burned", "--size", "64", "--stride", "64",
                 "--val-scenes", "CANAL_20240530", "--test-scenes", "CLEAR_20240626"]) == 0
    assert main(["finetune", "--encoder", "random:convnextv2_atto", "--manifest", str(root / "manifest" / "manifest.json"),
                 "--task", "burned", "--out", str(root / "model"), "--epochs", "1", "--batch-size", "8",
                 "--unfreeze", "last_stage", "--decoder", "fpn", "--class-weights", "balanced",
                 "--gain-jitter", "0.1", "--loss", "ce_dice", "--init-weights", str(root / "atto.safetensors")]) == 0
    return root / "model"


def test_gain_jitter_scales_each_sample_and_band_by_one_factor():
    from specialists.train import TrainConfig, _jitter_gain

    torch.manual_seed(0)
    image = torch.rand(6, 5, 8, 8) + 0.5
    out = _jitter_gain(image, 0.2)
    ratio = out / image
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio))  # one factor per sample and band
    factors = ratio[:, :, 0, 0]
    assert len(set(factors.flatten().tolist())) == 30 and (factors > 0).all()
    assert 0.05 < factors.log().std() < 0.4
    assert TrainConfig().gain_jitter == 0.0
    with pytest.raises(ValueError, match="gain_jitter"):
        TrainConfig(gain_jitter=-0.1)


def test_finetune_writes_a_verified_task_model(fire_model):
    card = json.loads((fire_model / "card.json").read_text())
    assert card["task_type"] == "segmentation" and card["classes"] == ["not_burned", "burned"]
    assert card["bands"] == ["TCI_R", "TCI_G", "TCI_B", "B08", "B12"] and len(card["norm_mean"]) == 5
    assert card["extra"]["encoder"]["kind"] == "random" and card["extra"]["unfreeze"] == "last_stage"
    assert card["extra"]["tile_size"] == 64 and len(card["extra"]["train_config"]["class_weights"]) == 2
    assert card["extra"]["train_config"]["gain_jitter"] == 0.1 and card["extra"]["train_config"]["loss"] == "ce_dice"
    assert len(card["extra"]["encoder"]["card"]["distill"]["init"]["sha256"]) == 64
    assert {"val_miou", "test_miou", "best_epoch"} <= set(card["metrics"])
    assert 0 < card["metrics"]["trainable_params"] < card["num_params"]
    assert not (fire_model / "sensors").exists() and card["band_descriptors"]["TCI_R"]["wavelength_nm"] == 664.6
    assert card["extra"]["sensor"]["name"] == WILDFIRE  # its user sensor travels in the card, no file beside
    model = load_task_model(fire_model)
    assert model.catalog().sensor(WILDFIRE).calibration()[0][0] == PRODUCT_SCALES["tci"]
    assert model(torch.zeros(2, 5, 64, 64)).shape == (2, 2, 64, 64)

    weights = fire_model / "weights.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ArtifactError, match="sha256"):
            load_task_model(fire_model)
    finally:
        weights.write_bytes(original)


def test_create_model_opens_a_task_model_like_timm(fire_model):
    import eosfed

    model = eosfed.create_model(fire_model)
    assert model.pretrained_cfg["kind"] == "task_model" and model.pretrained_cfg["bands"] == list(model.bands)
    x = torch.rand(1, len(model.bands), 64, 64)
    assert model(x).shape == (1, 2, 64, 64)  # the burned / not-burned logits
    assert len(eosfed.create_model(fire_model, features_only=True)(x)) == 4
    with pytest.raises(ValueError, match="a task model reads its own bands"):
        eosfed.create_model(fire_model, bands=("B08",))


def test_predict_keeps_the_scene_grid(fire_model, shared_data, tmp_path):
    scene = shared_data / "wildfire-s2" / "post_fire" / "CANAL_20240530.tif"
    args = ["predict", "--model", str(fire_model), "--input", str(scene), "--out", str(tmp_path), "--probabilities",
            "--overlap", "32"]
    assert main(args) == 0
    out, probs = tmp_path / "CANAL_20240530_classes.tif", tmp_path / "CANAL_20240530_probabilities.tif"
    with rasterio.open(scene) as src, rasterio.open(out) as cls, rasterio.open(probs) as p:
        assert cls.crs == src.crs and cls.transform == src.transform and cls.shape == src.shape
        assert cls.dtypes == ("uint8",) and cls.nodata == 255 and p.count == 2 and p.dtypes[0] == "float32"
        classes, prob = cls.read(1), p.read()
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)
    assert (classes == prob.argmax(0)).all()
    assert main(args) == 2  # outputs exist: refused without --overwrite


def _crop(source: Path, out: Path, size: int = 64) -> Path:
    with rasterio.open(source) as src:
        profile = {**src.profile, "width": size, "height": size,
                   "transform": src.window_transform(Window(0, 0, size, size))}
        out.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=Window(0, 0, size, size)))
            dst.descriptions = src.descriptions
    return out


def test_predict_several_inputs_with_the_model_loaded_once(fire_model, shared_data, tmp_path, capsys, monkeypatch):
    import eosfed.commands.predict as predict_command

    fire = shared_data / "wildfire-s2" / "post_fire"
    first = _crop(fire / "APACHE_20240624.tif", tmp_path / "in" / "APACHE.tif")
    for scene in ("CAMPBELL_20241028", "CLEAR_20240626"):
        _crop(fire / f"{scene}.tif", tmp_path / "folder" / f"{scene.split('_')[0]}.tif")
    _crop(fire / "CANAL_20240530.tif", tmp_path / "listed" / "CANAL.tif")
    (tmp_path / "listed" / "scenes.txt").write_text("CANAL.tif\n\n")
    loads = []
    monkeypatch.setattr(predict_command, "load_task_model", lambda *a: loads.append(a) or load_task_model(*a))
    out = tmp_path / "maps"
    argv = ["predict", "--model", str(fire_model), "--out", str(out), "--input", str(first),
            str(tmp_path / "folder"), str(tmp_path / "listed" / "scenes.txt")]
    assert main(argv) == 0
    assert len(loads) == 1
    assert sorted(p.name for p in out.iterdir()) == [f"{e}_classes.tif" for e in ("APACHE", "CAMPBELL", "CANAL", "CLEAR")]
    with rasterio.open(out / "CANAL_classes.tif") as cls, rasterio.open(tmp_path / "listed" / "CANAL.tif") as src:
        assert cls.transform == src.transform and cls.shape == (64, 64)
    capsys.readouterr()
    assert main(argv) == 2  # every output is checked before the model loads
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed")]
    assert err == [f"eosfed predict: error: {out / 'APACHE_classes.tif'} exists; pass --overwrite to replace it"]
    assert len(loads) == 1
    assert main([*argv, "--overwrite"]) == 0

    (tmp_path / "folder" / "APACHE.tif").write_bytes(first.read_bytes())
    assert main([*argv, "--overwrite"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed")]
    assert len(err) == 1 and f"{tmp_path / 'folder' / 'APACHE.tif'} and {first} would both write" in err[0]
    assert main(["predict", "--model", str(fire_model), "--input", str(first), "--out", str(tmp_path / "m.tif")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed")]
    assert len(err) == 1 and "is a folder" in err[0]


def test_dihedral_logits_map_each_view_back_and_make_the_map_equivariant():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 2, 1)  # orientation-free: every view gives the same map
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(dihedral_logits(pointwise, x, 8), pointwise(x), atol=1e-6)
        skewed = torch.nn.Conv2d(3, 2, 3, padding=1)  # orientation-specific kernel
        mean = dihedral_logits(skewed, x, 8)
        assert not torch.allclose(mean, skewed(x), atol=1e-4)
        for turn in (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2)):
            np.testing.assert_allclose(dihedral_logits(skewed, turn(x), 8), turn(mean), atol=1e-5)
        np.testing.assert_allclose(dihedral_logits(skewed, x.flip(-1), 4), dihedral_logits(skewed, x, 4).flip(-1),
                                   atol=1e-5)


def test_predict_with_tta_averages_the_flips(fire_model, shared_data, tmp_path):
    scene = _crop(shared_data / "wildfire-s2" / "post_fire" / "CANAL_20240530.tif", tmp_path / "CANAL.tif")
    probs = {}
    for tta in ("none", "d4"):
        assert main(["predict", "--model", str(fire_model), "--input", str(scene), "--out", str(tmp_path / tta),
                     "--probabilities", "--tta", tta]) == 0
        with rasterio.open(tmp_path / tta / "CANAL_probabilities.tif") as src:
            probs[tta] = src.read()
    np.testing.assert_allclose(probs["d4"].sum(0), 1.0, atol=1e-5)
    assert np.abs(probs["d4"] - probs["none"]).max() > 1e-4  # eight views differ from one


def test_blend_weights_are_positive_and_peak_in_the_middle():
    w = blend_weights(8)
    assert w.min() > 0 and w[3:5, 3:5].min() == w.max() and np.allclose(w, w.T)


def test_predict_names_missing_bands(fire_model, tmp_path, capsys):
    scene = tmp_path / "four.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=64, height=64, count=4, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(0, 1, 0.001, 0.001)) as dst:
        dst.write(np.ones((4, 64, 64), dtype=np.float32))
        for i, name in enumerate(("TCI_R", "TCI_G", "TCI_B", "B8"), start=1):
            dst.set_band_description(i, name)
    assert main(["predict", "--model", str(fire_model), "--input", str(scene), "--out", str(tmp_path / "x")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed")]
    assert len(err) == 1 and "bands ['B12'] missing" in err[0]

def test_predict_calibrates_each_band_as_training_does(fire_model, shared_data, tmp_path):
    """A sensor with per-band scales (TCI on 0..255 of 1/255 reflectance, reflectance at 1e-4) predicts the same
    map as the training sensor on the same physical values: one calibration path for reading and predicting."""
    scene = _crop(shared_data / "wildfire-s2" / "post_fire" / "CANAL_20240530.tif", tmp_path / "a" / "CANAL.tif")
    with rasterio.open(scene) as src:
        profile, raw, names = src.profile, src.read(), src.descriptions
    other = tmp_path / "b" / "CANAL.tif"
    other.parent.mkdir()
    with rasterio.open(other, "w", **profile) as dst:  # the wildfire sensor's TCI reflectance, stored x 255
        dst.write(np.concatenate([raw[:3] * PRODUCT_SCALES["tci"] * 255, raw[3:]]))
        dst.descriptions = names
    (tmp_path / "tci.yaml").write_text(
        "name: t_predict_tci\ndtype: float64\nscale: 0.0001\nbands:\n"
        + "".join(f"  - {{name: {b}, wavelength_nm: {w}, gsd_m: 10, scale: 0.00392156862745098}}\n"
                  for b, w in (("TCI_R", 664.6), ("TCI_G", 559.8), ("TCI_B", 492.4)))
        + "  - B08\n  - B12\n")
    for folder, extra in (("a", []), ("b", ["--sensors", str(tmp_path / "tci.yaml"), "--sensor", "t_predict_tci"])):
        assert main(["predict", "--model", str(fire_model), "--input", str(tmp_path / folder / "CANAL.tif"),
                     "--out", str(tmp_path / f"out_{folder}"), "--probabilities", *extra]) == 0
    with rasterio.open(tmp_path / "out_a" / "CANAL_probabilities.tif") as a, \
            rasterio.open(tmp_path / "out_b" / "CANAL_probabilities.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-4)


def _reflectance(source: Path, out: Path) -> Path:
    """The wildfire scene ``source`` (TCI_R TCI_G TCI_B B8 B12) as ``B2 B3 B4 B8 B12`` reflectance x 10000: the
    same ground in another encoding, its TCI values turned into reflectance by the declared TCI rule."""
    with rasterio.open(source) as src:
        profile, raw = src.profile, src.read()
    blue_green_red = raw[2::-1] * PRODUCT_SCALES["tci"] * 1e4
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **{**profile, "dtype": "float32"}) as dst:
        dst.write(np.concatenate([blue_green_red, raw[3:]]).astype(np.float32))
        dst.descriptions = REFLECTANCE_BANDS
    return out


def _stand_in_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " <- " in r.getMessage()]


def test_predict_reads_the_tci_bands_from_reflectance_stand_ins(fire_model, shared_data, tmp_path, caplog):
    """A scene whose file names its bands B2 B3 B4 B8 B12 (reflectance; the built-in sentinel2_l2a names them) is
    read by the model of TCI_R TCI_G TCI_B B08 B12: the same ground gives the same map as in its own encoding."""
    event = shared_data / "wildfire-s2" / "post_fire" / "CANAL_20240530.tif"
    other = _reflectance(event, tmp_path / "reflectance" / event.name)
    assert main(["predict", "--model", str(fire_model), "--input", str(event), "--out", str(tmp_path / "own")]) == 0
    caplog.set_level(logging.INFO, "fusion.predict")
    assert main(["predict", "--model", str(fire_model), "--input", str(other), "--out", str(tmp_path / "stand_in"),
                 "--sensor", "sentinel2_l2a"]) == 0
    (line,) = _stand_in_lines(caplog)
    assert line.endswith("reads TCI_R <- B04 (664.6 vs 664.6 nm), TCI_G <- B03 (559.8 vs 559.8 nm), "
                         "TCI_B <- B02 (492.4 vs 492.4 nm)")
    name = f"{event.stem}_classes.tif"
    with rasterio.open(tmp_path / "own" / name) as a, rasterio.open(tmp_path / "stand_in" / name) as b:
        assert a.transform == b.transform
        own, stand_in = a.read(1), b.read(1)
    assert (own == stand_in).mean() >= 0.98  # B8's zeros are nodata to sentinel2_l2a: the rest agrees


def test_predict_refuses_a_band_without_stand_in_in_one_line(fire_model, tmp_path, capsys):
    scene = tmp_path / "swir1.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=64, height=64, count=5, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(0, 1, 0.001, 0.001)) as dst:
        dst.write(np.full((5, 64, 64), 1000, dtype=np.float32))
        dst.descriptions = ("B2", "B3", "B4", "B8", "B11")
    argv = ["predict", "--model", str(fire_model), "--input", str(scene), "--sensor", "sentinel2_l2a"]
    assert main([*argv, "--out", str(tmp_path / "maps")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed")]
    assert len(err) == 1 and f"{scene}: bands ['B12'] missing: no band of the file by name or within 50 nm" in err[0]
    assert main([*argv, "--out", str(tmp_path / "wide"), "--tolerance-nm", "600"]) == 0  # B12 <- B11, 589 nm apart


def test_an_unknown_product_is_one_line_naming_the_file_and_band(fire_model, tmp_path, capsys):
    sensor = tmp_path / "jpeg.yaml"
    sensor.write_text("name: t_jpeg\nbands:\n  - B08\n  - {name: T_JPEG_R, wavelength_nm: 664.6, product: jpeg}\n")
    assert main(["predict", "--model", str(fire_model), "--input", str(tmp_path / "scene.tif"), "--out",
                 str(tmp_path / "maps"), "--sensors", str(sensor)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed")]
    assert len(err) == 1 and err[0].startswith(f"eosfed predict: error: {sensor}: ")
    assert "band 'T_JPEG_R': product 'jpeg' is not one of ['tci', 'tci_l1c']" in err[0]


def test_finetune_reads_a_reflectance_manifest_through_a_tci_specialist(fire_model, shared_data, tmp_path, caplog):
    """A specialist of the wildfire bands (its trunk started from the wildfire model) fine-tunes on the same events
    re-encoded as B2 B3 B4 B8 B12 reflectance, its TCI bands read from B04, B03, B02; the task model keeps the view."""
    specialist = tmp_path / "specialist"
    assert main(["train-specialist", "--manifest", str(fire_model.parent / "manifest" / "manifest.json"), "--sensor",
                 WILDFIRE, "--task", "burned", "--out", str(specialist), "--epochs", "1", "--max-steps", "1",
                 "--batch-size", "8", "--val-split", "", "--test-split", "", "--init-weights", str(fire_model)]) == 0
    fire = shared_data / "wildfire-s2"
    for event in ("CAMPBELL_20241028", "CANAL_20240530"):
        _reflectance(fire / "post_fire" / f"{event}.tif", tmp_path / "scenes" / f"{event}.tif")
    (tmp_path / "five.yaml").write_text("name: t_s2_five\nscale: 0.0001\nbands: [B02, B03, B04, B08, B12]\n")
    assert main(["manifest", "scenes", "--images", f"t_s2_five={tmp_path / 'scenes'}", "--labels", str(fire / "masks"),
                 "--sensors", str(tmp_path / "five.yaml"), "--out", str(tmp_path / "manifest"), "--task", "burned",
                 "--classes", "not_burned,burned", "--size", "64", "--stride", "64", "--train-first", "2"]) == 0
    caplog.set_level(logging.INFO, "fusion.finetune")
    assert main(["finetune", "--encoder", str(specialist), "--manifest", str(tmp_path / "manifest" / "manifest.json"),
                 "--task", "burned", "--out", str(tmp_path / "model"), "--epochs", "1", "--max-steps", "1",
                 "--batch-size", "8", "--decoder", "fpn"]) == 0
    (line,) = _stand_in_lines(caplog)
    assert "TCI_R <- B04 (664.6 vs 664.6 nm), TCI_G <- B03 (559.8 vs 559.8 nm), TCI_B <- B02" in line
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["bands"] == ["B02", "B03", "B04", "B08", "B12"] and card["extra"]["encoder"]["kind"] == "specialist"
    model = load_task_model(tmp_path / "model")  # the view rebuilt from the card
    assert model.encoder.plan.source_bands == ("B04", "B03", "B02", "B08", "B12")
    assert model(torch.rand(1, 5, 64, 64)).shape == (1, 2, 64, 64)


PEAK_SCRIPT = """
import resource, subprocess, sys
rc = subprocess.call([sys.executable, "-m", "eosfed.cli", *sys.argv[1:]])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
"""


@pytest.mark.slow
def test_4000px_scene_in_bounded_memory(fire_model, tmp_path):
    scene = tmp_path / "big.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(scene, "w", driver="GTiff", width=4000, height=4000, count=5, dtype="float32",
                       crs="EPSG:32611", transform=from_origin(600000, 4000000, 20, 20), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as dst:
        for i, name in enumerate(("TCI_R", "TCI_G", "TCI_B", "B8", "B12"), start=1):
            dst.set_band_description(i, name)
        base = np.array([60, 60, 50, 2500, 1800], dtype=np.float32)[:, None, None]
        for row in range(0, 4000, 500):
            strip = base * rng.uniform(0.5, 1.5, (5, 500, 4000)).astype(np.float32)
            dst.write(strip, window=Window(0, row, 4000, 500))
    out = tmp_path / "big_classes.tif"
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, "predict", "--model", str(fire_model), "--input", str(scene),
         "--out", str(tmp_path), "--tile-size", "256", "--overlap", "32", "--batch-size", "16"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    peak_kib = int(run.stdout.strip().splitlines()[-1])
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    with rasterio.open(out) as cls, rasterio.open(scene) as src:
        assert cls.shape == (4000, 4000) and cls.transform == src.transform and cls.crs == src.crs
        assert cls.overviews(1)  # cloud-optimised: overviews inside
        assert set(np.unique(cls.read(1, window=Window(0, 0, 512, 512))).tolist()) <= {0, 1}


def test_finetune_from_the_base_fits_the_student_stem_to_the_base_stem(fire_model, tmp_path):
    """A new student encoder started from the base loads its trunk and fits its spectral stem to the base's
    stem read through the task's bands, so the base's stages do not read a random stem."""
    manifest = fire_model.parent / "manifest" / "manifest.json"
    assert main(["finetune", "--encoder", "random:convnextv2_atto", "--manifest", str(manifest), "--task", "burned",
                 "--out", str(tmp_path / "model"), "--epochs", "1", "--batch-size", "8", "--max-steps", "1",
                 "--unfreeze", "none", "--decoder", "fpn", "--init-weights", "base"]) == 0
    init = json.loads((tmp_path / "model" / "card.json").read_text())["extra"]["encoder"]["card"]["distill"]["init"]
    assert len(init["sha256"]) == 64 and init["stem_fit_error"] < 0.05


def test_finetune_and_predict_take_a_working_gsd(fire_model, shared_data, tmp_path, monkeypatch):
    """``--gsd``: a student reads its tiles at that GSD (resampled from the sensor's, per band) and the map stays on
    the scene's grid; a task model records the GSD it was fine-tuned at."""
    import fusion.student

    card = json.loads((fire_model / "card.json").read_text())
    assert card["extra"]["gsd"] == {"input": [10.0, 10.0, 10.0, 10.0, 20.0], "working": None}  # the sensor's
    factors = []
    original = fusion.student.resample_to_gsd
    monkeypatch.setattr(fusion.student, "resample_to_gsd", lambda x, f, **k: factors.append(f) or original(x, f, **k))
    scene = _crop(shared_data / "wildfire-s2" / "post_fire" / "CANAL_20240530.tif", tmp_path / "in" / "scene.tif", 96)
    assert main(["predict", "--model", str(fire_model), "--input", str(scene), "--out", str(tmp_path / "out"),
                 "--tile-size", "64", "--gsd", "40"]) == 0
    assert factors and factors[0] == pytest.approx(2 ** 1.8)  # 40 m over 10 m (4 bands) and 20 m (B12)
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "out" / "scene_classes.tif") as cls:
        assert cls.shape == src.shape and cls.transform == src.transform
    assert main(["predict", "--model", str(fire_model), "--input", str(scene), "--out", str(tmp_path / "out"),
                 "--tile-size", "64", "--gsd", "0", "--overwrite"]) == 2  # a user error, in one line

    manifest = fire_model.parent / "manifest" / "manifest.json"
    assert main(["finetune", "--encoder", "random:convnextv2_atto", "--manifest", str(manifest), "--task", "burned",
                 "--out", str(tmp_path / "model"), "--epochs", "1", "--batch-size", "8", "--decoder", "fpn",
                 "--gsd", "20"]) == 0
    assert json.loads((tmp_path / "model" / "card.json").read_text())["extra"]["gsd"]["working"] == 20.0
    assert load_task_model(tmp_path / "model").encoder.working_gsd == 20.0
