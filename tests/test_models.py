"""eosfed.create_model: a student, a specialist and a registry opened as timm-style modules."""

from __future__ import annotations

import pytest
import torch
from fusion_toys import S1_BANDS, S2_BANDS, make_registry, make_specialist

import eosfed
from fusion.student import Student, save_student
from specialists.io import save_specialist


def test_specialist_reads_its_own_bands_and_gives_pooled_or_feature_maps(tmp_path):
    specialist = make_specialist("s2", "sentinel2_l2a", S2_BANDS, seed=0)
    save_specialist(specialist, tmp_path / "s2")
    model = eosfed.create_model(tmp_path / "s2")
    assert model.pretrained_cfg["kind"] == "specialist" and model.pretrained_cfg["bands"] == list(S2_BANDS)
    assert model.pretrained_cfg["members"]["s2"]["mean"] == specialist.card.norm_mean
    x = torch.rand(2, len(S2_BANDS), 64, 64)
    assert model(x).shape == (2, model.num_features)
    maps = eosfed.create_model(tmp_path / "s2", features_only=True)(x)
    assert [m.shape[1] for m in maps] == model.feature_info.channels() and model.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ValueError, match=r"expected \[B, 4, H, W\]"):
        model(torch.rand(2, 3, 64, 64))


def test_student_and_registry_need_the_input_bands(tmp_path):
    student = Student.create(band_stats={"B04": [0.2, 0.1], "VV": [0.1, 0.05]}, depths=(1, 1, 1, 1), seed=0)
    save_student(student, tmp_path / "student")
    with pytest.raises(ValueError, match="a student reads any bands"):
        eosfed.create_model(tmp_path / "student")
    model = eosfed.create_model(tmp_path / "student", bands=("VV", "B04"))
    assert model.pretrained_cfg["mean"] == [0.1, 0.2] and model.pretrained_cfg["weights_sha256"]
    assert model(torch.rand(1, 2, 32, 32)).shape == (1, model.num_features)
    make_registry(tmp_path / "registry")
    with pytest.raises(ValueError, match="an ensemble of 3 specialists: give bands"):
        eosfed.create_model(tmp_path / "registry")
    radar = eosfed.create_model(tmp_path / "registry", bands=S1_BANDS, features_only=True)
    assert radar.pretrained_cfg["kind"] == "registry" and len(radar(torch.rand(1, 2, 32, 32))) == 4
