"""Every user mistake ends in one line on stderr naming the file, band, field or name at fault, exit status 2."""

import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from eosfed.cli import main
from geodata.manifest import Manifest
from geodata.raster import write_geotiff
from geodata.readers.folders import build_folder_manifest


def fails(capsys, argv: list[str], *names: str) -> str:
    """Run ``argv``: exit 2 and one stderr line ``eosfed <cmd>: error: ...`` containing every name.

    Lines are what a terminal shows: a progress bar that erased itself (``\\r``) leaves nothing."""
    capsys.readouterr()
    assert main(argv) == 2
    shown = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.split("\n")]
    shown = [line for line in shown if line.strip()]
    assert len(shown) == 1, shown
    err = shown[0]
    assert err.startswith(f"eosfed {argv[0]}: error: "), err
    for name in names:
        assert name in err, (name, err)
    return err


@pytest.fixture(scope="module")
def aid(tmp_path_factory, shared_data) -> Path:
    """A tiny AID manifest: 2 classes x 3 images, 1 test image per class."""
    out = tmp_path_factory.mktemp("aid")
    build_folder_manifest(shared_data / "aid", out, "rgb", classes=["Beach", "Forest"], per_class=3, test_count=1)
    return out / "manifest.json"


def train(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["train-specialist", "--manifest", str(manifest), "--sensor", "rgb", "--task", "scene", "--out", str(out),
            "--epochs", "1", "--size", "32", "--variant", "convnextv2_atto", *extra]


def evaluate(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--encoder", "random:convnextv2_atto", "--manifest", str(manifest), "--task", "scene",
            "--sensor", "rgb", "--out", str(out), *extra]


def test_missing_manifest(capsys, tmp_path):
    fails(capsys, train(tmp_path / "nope.json", tmp_path / "o"), "manifest not found", "nope.json")
    fails(capsys, train(tmp_path, tmp_path / "o"), "is a folder; give its manifest.json")


def test_misspelt_split(capsys, aid, tmp_path):
    err = fails(capsys, evaluate(aid, tmp_path / "e.json", "--test-split", "tset"), str(aid), "--test-split 'tset'")
    assert "splits with such tiles: ['test', 'train']" in err
    fails(capsys, evaluate(aid, tmp_path / "e.json", "--val-split", "vla"), "--val-split 'vla'", "['test', 'train']")
    fails(capsys, train(aid, tmp_path / "s", "--test-split", "tset"), "--test-split 'tset'", "['test', 'train']")
    assert not (tmp_path / "s").exists()


def test_misspelt_task_name(capsys, aid, tmp_path):
    argv = train(aid, tmp_path / "s")
    argv[argv.index("scene")] = "scen"
    fails(capsys, argv, "no task 'scen'", "tasks: ['scene']")


def test_misspelt_task_type_in_the_manifest(capsys, aid, tmp_path):
    raw = json.loads(aid.read_text())
    raw["tasks"]["scene"]["type"] = "clasification"
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(raw))
    fails(capsys, train(bad, tmp_path / "s"), str(bad), "task 'scene'", "type 'clasification' is not one of",
          "classification")


def test_unknown_sensor(capsys, aid, tmp_path):
    argv = train(aid, tmp_path / "s")
    argv[argv.index("rgb")] = "sentinel3"
    fails(capsys, argv, "unknown sensor 'sentinel3'", "known sensors:", "sentinel2_l2a")
    fails(capsys, ["manifest", "folders", "--root", str(aid.parent), "--sensor", "sentinel3", "--out",
                   str(tmp_path / "m")], "unknown sensor 'sentinel3'")


def test_unknown_class_name(capsys, shared_data, tmp_path):
    fails(capsys, ["manifest", "folders", "--root", str(shared_data / "aid"), "--sensor", "rgb", "--out",
                   str(tmp_path / "m"), "--classes", "Beach,Forrest"], "unknown classes ['Forrest']", "'Forest'")


def test_out_exists_without_overwrite(capsys, aid, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    fails(capsys, train(aid, tmp_path / "s"), str(tmp_path / "s"), "exists; pass --overwrite")
    assert (tmp_path / "s" / "keep.txt").read_text() == "mine"


def test_label_outside_the_class_list_names_the_file(capsys, aid, tmp_path):
    raw = json.loads(aid.read_text())
    raw["tiles"][0]["targets"]["scene"] = 7
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(raw))
    fails(capsys, train(bad, tmp_path / "s"), str(bad), f"tile {raw['tiles'][0]['id']!r}", "label 7 outside")


def test_mask_label_outside_the_class_list_names_the_mask(capsys, tmp_path):
    transform = from_origin(400000, 5000000, 10, 10)
    image = np.full((12, 32, 32), 1000, dtype=np.uint16)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[5, 5] = 9
    write_geotiff(tmp_path / "img.tif", image, transform, "EPSG:32633")
    write_geotiff(tmp_path / "mask.tif", mask, transform, "EPSG:32633")
    manifest = Manifest.from_dict({
        "tasks": {"lc": {"type": "segmentation", "classes": ["a", "b"]}},
        "tiles": [{"id": "t", "sensor": "sentinel2_l2a", "split": "train", "path": "img.tif",
                   "targets": {"lc": "mask.tif"}}]})
    manifest.save(tmp_path / "manifest.json")
    argv = ["train-specialist", "--manifest", str(tmp_path / "manifest.json"), "--sensor", "sentinel2_l2a", "--task",
            "lc", "--out", str(tmp_path / "s"), "--epochs", "1", "--variant", "convnextv2_atto"]
    fails(capsys, argv, f"{tmp_path / 'mask.tif'}: labels [9] outside the 2 classes")


def test_bad_sensor_files(capsys, aid, tmp_path, monkeypatch):
    conflict = tmp_path / "conflict.yaml"
    conflict.write_text("name: t_err_l\nbands:\n  - {name: VH, polarisation: VH, frequency_band: L}\n")
    fails(capsys, train(aid, tmp_path / "s", "--sensors", str(conflict)), str(conflict), "band 'VH' conflicts",
          "frequency_band 'L'")
    fails(capsys, train(aid, tmp_path / "s", "--sensors", str(tmp_path / "nope.yaml")),
          "sensor file not found", "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    fails(capsys, evaluate(aid, tmp_path / "e.json", "--sensors", str(broken)), str(broken), "not valid YAML")
    monkeypatch.setenv("EOSFED_SENSORS", str(tmp_path / "gone"))
    fails(capsys, train(aid, tmp_path / "s"), "sensor file not found", "gone")


def test_complex_sar_without_a_declared_mode(capsys, tmp_path):
    z = np.full((2, 32, 32), 0.1 + 0.1j, dtype=np.complex64)
    write_geotiff(tmp_path / "slc.tif", z, from_origin(400000, 5000000, 10, 10), "EPSG:32633")
    Manifest.from_dict({"tasks": {"scene": {"type": "classification", "classes": ["a"]}},
                        "tiles": [{"id": "t", "sensor": "sentinel1_grd", "split": "train", "path": "slc.tif",
                                   "targets": {"scene": 0}}]}).save(tmp_path / "manifest.json")
    argv = ["train-specialist", "--manifest", str(tmp_path / "manifest.json"), "--sensor", "s1", "--task", "scene",
            "--out", str(tmp_path / "s"), "--epochs", "1"]
    fails(capsys, argv, f"{tmp_path / 'slc.tif'}: complex values (complex64)", "complex: intensity_db")


def test_gateway_refuses_a_superlink_off_loopback(capsys, tmp_path: Path) -> None:
    files = [tmp_path / n for n in ("server.pem", "server.key", "ca.crt")]
    for f in files:
        f.write_text("x")
    fails(capsys, ["gateway", "--superlink", "10.0.0.5:9093", "--certfile", str(files[0]), "--keyfile",
                   str(files[1]), "--ca-cert", str(files[2])], "--superlink", "loopback")
    fails(capsys, ["gateway", "--certfile", str(tmp_path / "none.pem"), "--keyfile", str(files[1]),
                   "--ca-cert", str(files[2])], "--certfile", "none.pem")


def test_prune_redistill_flags(capsys, tmp_path):
    base = ["prune", "--registry", str(tmp_path / "reg"), "--manifest", str(tmp_path / "m.json"),
            "--eval", "scene@sentinel2_l2a", "--out", str(tmp_path / "out"), "--keep-top-k", "1"]
    fails(capsys, [*base, "--redistill"], "--redistill needs --student")
    fails(capsys, [*base, "--student", str(tmp_path)], "--student: only with --redistill")
    fails(capsys, [*base, "--redistill", "--redistill-epochs", "0", "--student", str(tmp_path)], "--redistill-epochs")
    fails(capsys, [*base, "--redistill", "--student", str(tmp_path)], "student/card.json", "distill_history.json")
