"""Specialist contract: card JSON, encoder init and freezing, save/load with hash, seal and band checks."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from geodata.sensors import get_sensor
from specialists import (
    ArtifactError,
    Specialist,
    SpecialistCard,
    load_specialist,
    save_specialist,
)
from specialists.artifact import SCHEMA_VERSION
from specialists.encoder import build_encoder, freeze_encoder
from specialists.init import load_encoder_weights
from fusion_toys import TOLERANCE_NM

L1C = list(get_sensor("sentinel2_l1c").bands)


def make_card(bands: list[str] = L1C, **overrides) -> SpecialistCard:
    fields = dict(
        name="s2-eurosat",
        institutions=["inst0"],
        sensor="sentinel2_l1c",
        bands=list(bands),
        norm_mean=[0.1 + 0.01 * i for i in range(len(bands))],
        norm_std=[0.05] * len(bands),
        task="scene",
        task_type="classification",
        classes=["a", "b", "c"],
    )
    fields.update(overrides)
    return SpecialistCard(**fields)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads stall 10-30x under contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def specialist() -> Specialist:
    torch.manual_seed(0)
    return Specialist.from_card(make_card())


# --- card ---------------------------------------------------------------------------------


def test_card_json_roundtrip():
    card = make_card(data_summary={"tiles": {"train": 80}}, metrics={"test_accuracy": 0.5})
    again = SpecialistCard.from_json(card.to_json())
    assert again == card
    assert json.loads(card.to_json())["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    "change, field",
    [
        ({"norm_std": [0.0] * 13}, "norm_std"),
        ({"norm_mean": [0.1] * 12}, "norm_mean"),
        ({"task_type": "detection"}, "task_type"),
        ({"bands": L1C[:-1] + ["B01"]}, "bands"),
        ({"classes": []}, "classes"),
        ({"institutions": "inst0"}, "institutions"),
    ],
)
def test_card_validation_names_the_field(change, field):
    raw = make_card().to_dict() | change
    with pytest.raises(ValueError, match=f"'{field}'"):
        SpecialistCard.from_dict(raw)


def test_card_refuses_unknown_schema_and_fields():
    raw = make_card().to_dict()
    with pytest.raises(ValueError, match="schema_version"):
        SpecialistCard.from_dict(raw | {"schema_version": SCHEMA_VERSION - 1})
    with pytest.raises(ValueError, match="unknown fields"):
        SpecialistCard.from_dict(raw | {"colour": "red"})
    del raw["sensor"]
    with pytest.raises(ValueError, match="missing fields \\['sensor'\\]"):
        SpecialistCard.from_dict(raw)


# --- model ----------------------------------------------------------------------------------


def test_specialist_forward_contract(specialist):
    assert specialist.bands == tuple(L1C)
    assert specialist.feature_dims == (40, 80, 160, 320)
    assert specialist.feature_reductions == (4, 8, 16, 32)
    feats = specialist(torch.rand(2, 13, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4), (2, 320, 2, 2)]
    assert specialist.pooled(torch.rand(2, 13, 64, 64)).shape == (2, 1200)  # means and stds of 4 scales
    with pytest.raises(ValueError, match="expects \\[B, 13, H, W\\]"):
        specialist(torch.rand(2, 12, 64, 64))


def test_specialist_normalises_with_card_stats(specialist):
    x = torch.rand(1, 13, 32, 32)
    expected = (x - torch.tensor(specialist.card.norm_mean).view(1, -1, 1, 1)) / 0.05
    torch.testing.assert_close(specialist.normalise(x), expected)


# --- save / load ----------------------------------------------------------------------------


def test_save_load_roundtrip(specialist, tmp_path):
    out = save_specialist(specialist, tmp_path / "spec")
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "weights.safetensors"]
    loaded = load_specialist(out)
    assert loaded.card.weights_sha256 == specialist.card.weights_sha256 != ""
    assert loaded.card.num_params == sum(p.numel() for p in specialist.encoder.parameters())
    x = torch.rand(2, 13, 64, 64)
    specialist.eval(), loaded.eval()
    with torch.no_grad():
        for a, b in zip(specialist(x), loaded(x)):
            torch.testing.assert_close(a, b)


def test_load_refuses_tampered_weights(specialist, tmp_path):
    out = save_specialist(specialist, tmp_path / "spec")
    weights = out / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights_sha256"):
        load_specialist(out)


def _rewrite_card(directory, **change) -> None:
    """Edit ``card.json`` by hand (its seal left as it was)."""
    path = directory / "card.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change))


def _reseal_card(directory, **change) -> None:
    """Replace ``card.json`` by a consistent, sealed card that claims ``change`` about the same weights."""
    path = directory / "card.json"
    path.write_text(dataclasses.replace(SpecialistCard.from_json(path.read_text()), **change).to_json())


def test_load_refuses_band_count_mismatch(specialist, tmp_path):
    out = save_specialist(specialist, tmp_path / "spec")
    _reseal_card(out, bands=L1C[:12], norm_mean=[0.1] * 12, norm_std=[0.1] * 12)
    with pytest.raises(ArtifactError, match=r"'stem_0.weight' has shape \(40, 13, 4, 4\), .* needs \(40, 12, 4, 4\)"):
        load_specialist(out)


def test_load_refuses_unknown_or_foreign_band(specialist, tmp_path):
    out = save_specialist(specialist, tmp_path / "spec")
    _rewrite_card(out, bands=L1C[:12] + ["B99"])
    with pytest.raises(ArtifactError, match="field 'bands'.*B99"):
        load_specialist(out)
    _rewrite_card(out, bands=L1C[:12] + ["VV"])
    with pytest.raises(ArtifactError, match="not bands of sensor 'sentinel2_l1c'"):
        load_specialist(out)


def test_load_refuses_variant_shape_mismatch_and_nan(specialist, tmp_path):
    out = save_specialist(specialist, tmp_path / "spec")
    _reseal_card(out, variant="convnextv2_femto", feature_dims=[48, 96, 192, 384])
    with pytest.raises(ArtifactError, match="shape"):
        load_specialist(out)

    state = {k: v.clone() for k, v in specialist.encoder.state_dict().items()}
    state["stem_0.bias"][0] = float("nan")
    nan_dir = tmp_path / "nan"
    save_specialist(specialist, nan_dir)
    save_file(state, str(nan_dir / "weights.safetensors"))
    _rewrite_card(nan_dir, weights_sha256=hashlib.sha256((nan_dir / "weights.safetensors").read_bytes()).hexdigest())
    with pytest.raises(ArtifactError, match="stem_0.bias.*NaN"):
        load_specialist(nan_dir)


def test_load_refuses_missing_card(tmp_path):
    with pytest.raises(ArtifactError, match="card not found"):
        load_specialist(tmp_path)


# --- encoder init and freeze ----------------------------------------------------------------


def test_init_from_timm_checkpoint_adapts_bands_by_wavelength(tmp_path):
    import timm

    torch.manual_seed(1)
    full = timm.create_model("convnextv2_atto", pretrained=False, in_chans=3, num_classes=7)
    path = tmp_path / "timm.safetensors"
    save_file(full.state_dict(), str(path))
    bands = get_sensor("sentinel2_l1c").bands
    enc = build_encoder("convnextv2_atto", in_chans=13)
    load_encoder_weights(enc, path, bands, tolerance_nm=TOLERANCE_NM)
    torch.testing.assert_close(enc.state_dict()["stages_3.blocks.1.mlp.fc2.weight"], full.stages[3].blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(enc.state_dict()["stem_0.weight"][:, bands.index("B04")], full.stem[0].weight[:, 0])


def test_init_from_saved_specialist(specialist, tmp_path):
    out = save_specialist(specialist, tmp_path / "spec")
    enc = build_encoder("convnextv2_atto", in_chans=13)
    assert load_encoder_weights(enc, out, specialist.bands, tolerance_nm=TOLERANCE_NM).sha256 == specialist.card.weights_sha256
    for k, v in specialist.encoder.state_dict().items():
        torch.testing.assert_close(enc.state_dict()[k], v)


def test_init_refuses_wrong_variant_and_missing_file(specialist, tmp_path):
    out = save_specialist(specialist, tmp_path / "spec")
    with pytest.raises(ValueError, match=r"spec: tensor '[^']+' has shape"):
        load_encoder_weights(build_encoder("convnextv2_femto", in_chans=13), out, tolerance_nm=TOLERANCE_NM)
    with pytest.raises(FileNotFoundError, match="initial weights not found"):
        load_encoder_weights(build_encoder(in_chans=13), tmp_path / "nope.safetensors", tolerance_nm=TOLERANCE_NM)


def _frozen_children(enc) -> dict[str, bool]:
    return {n: not any(p.requires_grad for p in m.parameters()) for n, m in enc.named_children()}


def test_freeze_policies():
    enc = build_encoder(in_chans=4)
    assert not any(_frozen_children(enc).values())
    freeze_encoder(enc, "stem")
    assert _frozen_children(enc) == {
        "stem_0": True, "stem_1": True, "stages_0": False, "stages_1": False, "stages_2": False, "stages_3": False
    }
    freeze_encoder(enc, "stages:2")
    assert [n for n, f in _frozen_children(enc).items() if f] == ["stem_0", "stem_1", "stages_0", "stages_1"]
    freeze_encoder(enc, "backbone")
    assert all(_frozen_children(enc).values())
    freeze_encoder(enc, "none")
    assert not any(_frozen_children(enc).values())
    for bad in ("stages:0", "stages:5", "stages:x", "head"):
        with pytest.raises(ValueError, match="freeze policy"):
            freeze_encoder(enc, bad)


def test_frozen_backbone_gets_no_gradient():
    enc = build_encoder(in_chans=4, freeze="stages:3")
    sum(f.sum() for f in enc(torch.rand(1, 4, 32, 32))).backward()
    assert enc.stages_2.blocks[0].conv_dw.weight.grad is None
    assert enc.stages_3.blocks[0].conv_dw.weight.grad is not None
