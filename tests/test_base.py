"""The base checkpoint (``eosfed base``, specialists.base): made on a world of its own seed, written with its
stem's bands, adapted to every sensor by wavelength; the shipped one is the default start of runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from eosfed.cli import main
from fusion.distill import DistillConfig
from fusion.student import Student, StudentCard
from geodata.sensors import get_sensor
from pipeline.settings import TrainSettings
from specialists import init as init_module
from specialists.base import union_bands
from specialists.encoder import build_encoder
from specialists.init import BASE, adapt_stem, base_path, check_init, load_encoder_weights, read_checkpoint
from fusion_toys import TOLERANCE_NM

DEMO_SENSORS = ("sentinel2_l2a", "sentinel1_grd", "aerial_rgbn", "landsat8_oli")


def test_union_stem_gives_each_sensor_band_its_own_channel() -> None:
    bands, index = union_bands(["aerial_rgbn", "sentinel1_grd", "sentinel2_l2a"], TOLERANCE_NM)
    assert bands == (*get_sensor("sentinel2_l2a").bands, "VV", "VH")  # most bands first; aerial maps into S2's
    for name, channels in index.items():
        assert len(set(channels)) == len(channels) == len(get_sensor(name).image_bands)
    assert [bands[i] for i in index["aerial_rgbn"]] == ["B04", "B03", "B02", "B08"]


@pytest.fixture(scope="module")
def made_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base.safetensors"
    assert main(["base", "--out", str(out), "--cache-dir", str(out.parent / "cache"), "--tiles-per-institution", "8",
                 "--epochs", "1", "--batch-size", "8"]) == 0
    return out


def test_base_command_writes_bands_and_recipe_and_refuses_to_overwrite(made_base: Path, capsys) -> None:
    with safe_open(str(made_base), "pt") as handle:
        meta = handle.metadata()
        assert handle.get_tensor("stem_0.weight").dtype == torch.float16
    recipe = json.loads(meta["recipe"])
    assert json.loads(meta["bands"]) == list(union_bands(["sentinel2_l2a", "sentinel1_grd", "aerial_rgbn"],
                                                         TOLERANCE_NM)[0])
    assert recipe["tolerance_nm"] == TOLERANCE_NM  # the run setting's default, through --tolerance-nm
    assert recipe["config"]["world_seed"] != 0 and "landsat8_oli" not in recipe["tiles"]
    assert set(recipe["val_accuracy"]) == {"sentinel2_l2a", "sentinel1_grd", "aerial_rgbn"}
    assert main(["base", "--out", str(made_base), "--epochs", "1"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_a_sensor_adapted_stem_computes_what_the_base_computed_on_that_sensor(made_base: Path) -> None:
    union = tuple(json.loads(safe_open(str(made_base), "pt").metadata()["bands"]))
    whole, radar = build_encoder(in_chans=len(union)), build_encoder(in_chans=2)
    load_encoder_weights(whole, made_base, union, tolerance_nm=TOLERANCE_NM)
    load_encoder_weights(radar, made_base, ("VH", "VV"), tolerance_nm=TOLERANCE_NM)
    whole, radar = whole.eval(), radar.eval()
    x = torch.randn(2, 2, 32, 32)
    scattered = torch.zeros(2, len(union), 32, 32)
    scattered[:, union.index("VH")], scattered[:, union.index("VV")] = x[:, 0], x[:, 1]
    with torch.no_grad():
        torch.testing.assert_close(radar(x)[-1], whole(scattered)[-1], atol=1e-4, rtol=1e-4)


def test_shipped_base_starts_every_demo_sensor_and_the_student() -> None:
    path = base_path()
    assert path.stat().st_size <= 20 * 2**20
    ckpt = read_checkpoint(BASE, TOLERANCE_NM)
    assert ckpt.path == path and len(ckpt.sha256) == 64 and {"B04", "VV", "VH"} <= set(ckpt.bands)
    for name in DEMO_SENSORS:
        bands = get_sensor(name).image_bands
        encoder = build_encoder(in_chans=len(bands))
        assert load_encoder_weights(encoder, BASE, bands, tolerance_nm=TOLERANCE_NM).sha256 == ckpt.sha256
    student = Student(StudentCard(depths=[2, 2, 5, 2]))
    load_encoder_weights(student.trunk, BASE, tolerance_nm=TOLERANCE_NM)  # the trunk only: the spectral stem is the student's own
    assert TrainSettings().init == DistillConfig().init == BASE


def test_student_stem_learns_to_generate_the_base_stem_of_each_sensor() -> None:
    ckpt = read_checkpoint(BASE, TOLERANCE_NM)
    weight, bias = ckpt.state["stem_0.weight"].float(), ckpt.state["stem_0.bias"].float()
    targets = [(get_sensor(n).image_bands, adapt_stem(weight, ckpt.bands, get_sensor(n).image_bands, ckpt.path,
                                                       TOLERANCE_NM), bias)
               for n in DEMO_SENSORS[:3]]
    student = Student.create(depths=[2, 2, 5, 2], seed=0)
    with torch.no_grad():
        before = [float((student.stem.kernel(b)[0] - w).pow(2).mean() / w.pow(2).mean()) for b, w, _ in targets]
    assert student.stem.fit_kernels(targets) < 0.02
    with torch.no_grad():
        for (bands, w, c), first in zip(targets, before):
            got_w, got_c = student.stem.kernel(bands)
            assert float((got_w - w).pow(2).mean() / w.pow(2).mean()) < min(0.05, first / 10)
            torch.testing.assert_close(got_c, c, atol=0.05, rtol=0.1)


def test_missing_base_or_bad_band_metadata_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(init_module, "_BASE_FILE", Path("specialists/weights/none.safetensors"))
    monkeypatch.setattr(init_module, "_install_roots", lambda: [])
    with pytest.raises(ValueError, match="^train.init: init 'base': no base checkpoint at .*none.safetensors.*eosfed base"):
        check_init(BASE, "train.init")
    bad = tmp_path / "bad.safetensors"
    save_file({"stem_0.weight": torch.zeros(40, 2, 4, 4)}, str(bad), metadata={"bands": "VV,VH"})
    with pytest.raises(ValueError, match="bad.safetensors: metadata 'bands' is not a JSON list"):
        read_checkpoint(bad, TOLERANCE_NM)
