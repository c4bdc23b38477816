"""Sealed artifacts: one save/load path for specialists and students; edited cards, tampered weights
and non-local variants are refused with an error naming the file and field."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import timm
import torch

from fusion import load_student
from fusion.student import Student, StudentCard, save_student, student_from_bytes
from fusion_toys import S2_BANDS, make_specialist
from specialists import ArtifactError, Specialist, SpecialistCard, load_specialist, save_specialist
from specialists.artifact import CARD_FILE, WEIGHTS_FILE, read_card, to_bytes
from specialists.encoder import build_encoder
from specialists.io import specialist_from_bytes
from specialists.trunk import VARIANTS, build_trunk

HUB_VARIANT = "hf-hub:timm/convnextv2_atto.fcmae"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def specialist() -> Specialist:
    return make_specialist("s2", "sentinel2_l2a", S2_BANDS)


@pytest.fixture(scope="module")
def student() -> Student:
    return Student.create(band_stats={"B02": [0.05, 0.02], "B04": [0.1, 0.05]}, depths=(1, 1, 1, 1), seed=0).eval()


def _edit(folder: Path, **change) -> None:
    """Edit ``card.json`` by hand, as a person with a text editor would (the seal is left as it was)."""
    path = folder / CARD_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | change, indent=1))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def no_timm(monkeypatch):
    """Fail the test if anything asks timm for a model."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"timm.create_model was called with {args} {kwargs}")
    monkeypatch.setattr(timm, "create_model", refuse)


# --- round trips ------------------------------------------------------------------------------


def test_specialist_round_trip_on_disk_and_wire(specialist, tmp_path):
    folder = save_specialist(specialist, tmp_path / "spec")
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    raw = json.loads((folder / CARD_FILE).read_text())
    assert raw["kind"] == "specialist" and sorted(raw["seal"]) == sorted((*SpecialistCard.SEALED, "band_descriptors"))
    x = torch.rand(2, len(S2_BANDS), 32, 32)
    wire = specialist_from_bytes((folder / CARD_FILE).read_text(), (folder / WEIGHTS_FILE).read_bytes(), "lab-x")
    for loaded in (load_specialist(folder).eval(), wire.eval()):
        assert loaded.card == specialist.card
        with torch.no_grad():
            torch.testing.assert_close(loaded.pooled(x), specialist.pooled(x))


def test_student_round_trip_on_disk_and_wire(student, tmp_path):
    folder = save_student(student, tmp_path / "student")
    raw = json.loads((folder / CARD_FILE).read_text())
    assert raw["kind"] == "student" and sorted(raw["seal"]) == sorted((*StudentCard.SEALED, "band_descriptors"))
    x = torch.rand(1, len(S2_BANDS), 32, 32)
    wire = student_from_bytes((folder / CARD_FILE).read_text(), (folder / WEIGHTS_FILE).read_bytes(), "c", "w")
    for loaded in (load_student(folder), wire):
        assert not loaded.training and loaded.card == student.card
        with torch.no_grad():
            torch.testing.assert_close(loaded.pooled(x, S2_BANDS), student.pooled(x, S2_BANDS))


def test_weights_bytes_do_not_depend_on_the_process(student):
    """Keepers re-hash the weights they receive, in another process: safetensors writes several metadata
    keys in a per-process order, so the header must hold one key at most."""
    data = to_bytes(dataclasses.replace(student.card), student)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"] == {"kind": "student"}


# --- edited cards -----------------------------------------------------------------------------


@pytest.mark.parametrize("change, field", [
    ({"bands": ["B03", "B02", "B04", "B08"]}, "bands"),  # two bands swapped
    ({"norm_mean": [0.1, 0.1, 0.2, 0.1]}, "norm_mean"),
    ({"norm_std": [0.1, 0.1, 0.1, 0.3]}, "norm_std"),
    ({"variant": "convnextv2_femto"}, "variant"),
    ({"classes": ["b", "a"]}, "classes"),
    ({"task_type": "multilabel"}, "task_type"),
])
def test_edited_specialist_card_is_refused(specialist, tmp_path, change, field):
    folder = save_specialist(specialist, tmp_path / "spec")
    _edit(folder, **change)
    with pytest.raises(ArtifactError) as err:
        load_specialist(folder)
    message = str(err.value)
    assert message.startswith(f"{folder / CARD_FILE}: field '{field}' does not match the card's seal")
    assert "\n" not in message


def test_unsealed_fields_may_be_edited(specialist, tmp_path):
    folder = save_specialist(specialist, tmp_path / "spec")
    _edit(folder, metrics={"test_accuracy": 0.9}, extra={"note": "reviewed"})
    assert load_specialist(folder).card.metrics == {"test_accuracy": 0.9}


@pytest.mark.parametrize("change, field", [
    ({"band_stats": {"B02": [0.05, 0.02], "B04": [0.2, 0.05]}}, "band_stats"),
    ({"depths": [1, 1, 2, 1]}, "depths"),
    ({"variant": "convnextv2_femto"}, "variant"),
])
def test_edited_student_card_is_refused(student, tmp_path, change, field):
    folder = save_student(student, tmp_path / "student")
    _edit(folder, **change)
    with pytest.raises(ArtifactError, match=f"^{folder / CARD_FILE}: field '{field}' does not match the card's seal"):
        load_student(folder)


def test_card_without_seal_or_of_another_kind_is_refused(specialist, student, tmp_path):
    folder = save_specialist(specialist, tmp_path / "spec")
    raw = json.loads((folder / CARD_FILE).read_text())
    with pytest.raises(ArtifactError, match=r"missing fields \['seal'\]"):
        SpecialistCard.from_dict({k: v for k, v in raw.items() if k != "seal"})
    with pytest.raises(ArtifactError, match="field 'seal'"):
        SpecialistCard.from_dict(raw | {"seal": {"bands": raw["seal"]["bands"]}})
    save_student(student, tmp_path / "student")
    with pytest.raises(ArtifactError, match="field 'kind' is 'student', expected 'specialist'"):
        load_specialist(tmp_path / "student")
    with pytest.raises(ArtifactError, match=f"^{tmp_path / 'spec' / CARD_FILE}: field 'kind' is 'specialist'"):
        load_student(folder)


# --- tampered weights -------------------------------------------------------------------------


def test_tampered_weights_are_refused(specialist, student, tmp_path):
    for folder, load in ((save_specialist(specialist, tmp_path / "spec"), load_specialist),
                         (save_student(student, tmp_path / "student"), load_student)):
        _flip_last_byte(folder / WEIGHTS_FILE)
        with pytest.raises(ArtifactError, match=f"^{folder / WEIGHTS_FILE}: sha256 .* field 'weights_sha256'"):
            load(folder)
        (folder / WEIGHTS_FILE).unlink()
        with pytest.raises(ArtifactError, match="weights not found"):
            load(folder)


# --- variants: local timm architectures only ----------------------------------------------------


def test_variant_allow_list_is_local_convnextv2():
    assert "convnextv2_atto" in VARIANTS and all(v.startswith("convnextv2_") for v in VARIANTS)
    assert not any(":" in v or "/" in v or "." in v for v in VARIANTS)


@pytest.mark.parametrize("variant", [HUB_VARIANT, "convnextv2_atto.fcmae", "https://example.org/atto.pth",
                                     "/tmp/atto.safetensors", "resnet50", ""])
def test_non_local_variant_is_refused_before_timm(specialist, variant, no_timm):
    with pytest.raises(ArtifactError, match="field 'variant' refused"):
        dataclasses.replace(specialist.card, variant=variant)
    with pytest.raises(ArtifactError, match="field 'variant' refused"):
        StudentCard(variant=variant)
    for build in (build_trunk, build_encoder):
        with pytest.raises(ValueError, match="not a local timm ConvNeXtV2 model"):
            build(variant)


def test_hub_variant_in_a_saved_card_is_refused_before_timm(specialist, student, tmp_path, no_timm):
    for folder, card_type, load in ((save_specialist(specialist, tmp_path / "spec"), SpecialistCard, load_specialist),
                                    (save_student(student, tmp_path / "student"), StudentCard, load_student)):
        _edit(folder, variant=HUB_VARIANT)
        with pytest.raises(ArtifactError, match=f"^{folder / CARD_FILE}: field 'variant' refused: .*hf-hub"):
            load(folder)
        with pytest.raises(ArtifactError, match="field 'variant' refused"):
            read_card(folder / CARD_FILE, card_type)


# --- an artifact's bands travel in its card (issue 22) -----------------------------------------

_LOAD_BOTH = """
import json, sys, torch
from fusion.ensemble import Ensemble
from geodata.sensors import BandError, get_band
from specialists import load_specialist
seen = []
for folder in sys.argv[1:]:
    spec = load_specialist(folder)
    catalog = spec.card.catalog()
    run = Ensemble({"m": spec}, tolerance_nm=50.0)(torch.rand(1, len(spec.bands), 32, 32), spec.bands)
    seen.append({"name": spec.card.name, "bands": sorted(catalog.bands),
                 "wavelengths": [b.wavelength_nm for b in spec.descriptors], "ran": len(run) == 4})
try:
    get_band("TCI_R")
    registered = True
except BandError:
    registered = False
print(json.dumps({"seen": seen, "registered": registered}))
"""


def test_a_saved_artifact_loads_in_a_fresh_process_from_its_card_alone(tmp_path):
    """A user sensor's specialist (the wildfire sensor) and a Sentinel-2 one, saved with no sensor file beside
    them, load in a fresh process in both orders: each reads its own bands from its card, nothing is registered
    (the order-dependent copy of the wildfire sensor into a Sentinel-2 artifact cannot happen)."""
    import subprocess
    import sys

    from geodata.sensors import load_sensor_files, using

    wildfire_yaml = Path(__file__).resolve().parents[1] / "configs" / "samples" / "wildfire_sensor.yaml"
    with using(load_sensor_files([wildfire_yaml])):
        fire = save_specialist(make_specialist("fire", "sentinel2_tci_nir_swir", ("TCI_R", "TCI_G", "TCI_B", "B08",
                                                                                    "B12")), tmp_path / "fire")
    s2 = save_specialist(make_specialist("s2", "sentinel2_l2a", S2_BANDS), tmp_path / "s2")
    for folder in (fire, s2):
        assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]  # no sensor file beside
    expected = {"fire": (["B08", "B12", "TCI_B", "TCI_G", "TCI_R"], [664.6, 559.8, 492.4, 832.8, 2202.4]),
                "s2": (sorted(S2_BANDS), [492.4, 559.8, 664.6, 832.8])}
    for order in ((s2, fire), (fire, s2)):
        out = subprocess.run([sys.executable, "-c", _LOAD_BOTH, *map(str, order)], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, "EOSFED_SENSORS": ""})
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert not result["registered"]
        for seen in result["seen"]:
            assert (seen["bands"], seen["wavelengths"]) == expected[seen["name"]] and seen["ran"], (order, seen)
