"""Starting checkpoints (specialists.init): timm safetensors / .pth, EoS-FM lists, bands by wavelength, a federated
group started from ``train.init``, a student artifact (specialist artifacts: tests/test_specialists.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from flower_harness import InProcessGrid
from geodata.sensors import get_sensor
from server.run import run_experiment
from specialists.encoder import build_encoder
from specialists.init import load_encoder_weights, read_checkpoint
from fusion_toys import TOLERANCE_NM
from tiny_run import simulated_nodes, tiny_run_config

S2 = get_sensor("sentinel2_l2a").bands  # B04 is the 4th band
BLOCK = "stages_3.blocks.1.mlp.fc2.weight"


def _started(in_chans: int, path: Path, bands) -> torch.nn.Module:
    """A new atto encoder loaded from ``path``, its stem reading ``bands``."""
    encoder = build_encoder("convnextv2_atto", in_chans=in_chans)
    load_encoder_weights(encoder, path, bands, tolerance_nm=TOLERANCE_NM)
    return encoder


@pytest.fixture(scope="module")
def rgb_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return timm.create_model("convnextv2_atto", pretrained=False, in_chans=3, num_classes=5)


def _check_rgb(enc: torch.nn.Module, model: torch.nn.Module) -> None:
    own = enc.state_dict()
    torch.testing.assert_close(own[BLOCK], model.stages[3].blocks[1].mlp.fc2.weight)
    stem = model.stem[0].weight
    for band, channel in (("B04", 0), ("B03", 1), ("B02", 2)):  # timm order R, G, B
        torch.testing.assert_close(own["stem_0.weight"][:, S2.index(band)], stem[:, channel])
    torch.testing.assert_close(own["stem_0.weight"][:, S2.index("B11")], stem.mean(dim=1))  # no match: mean


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_timm_checkpoint_maps_rgb_to_sentinel2_by_wavelength(rgb_model, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"atto.{suffix}"
    if suffix == "safetensors":
        save_file(rgb_model.state_dict(), str(path))
    else:
        torch.save({"state_dict": rgb_model.state_dict()}, path)
    enc = _started(len(S2), path, S2)
    _check_rgb(enc, rgb_model)


def test_eosfm_list_picks_the_entry_of_the_target_bands(rgb_model, tmp_path: Path) -> None:
    torch.manual_seed(4)
    s1 = timm.create_model("convnextv2_atto", pretrained=False, in_chans=2, num_classes=0).state_dict()
    path = tmp_path / "eosfm.pth"
    torch.save([(2, s1, {"bands": ["VV", "VH"]}), (3, rgb_model.state_dict(), {"bands": ["RED", "GREEN", "BLUE"]})],
               path)
    enc = _started(len(S2), path, S2)
    _check_rgb(enc, rgb_model)
    radar = _started(2, path, ("VH", "VV"))
    torch.testing.assert_close(radar.state_dict()["stem_0.weight"][:, 0], s1["stem.0.weight"][:, 1])


def test_bad_files_give_one_line_naming_file_and_tensor(rgb_model, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth: not a torch file") as err:
        read_checkpoint(junk, TOLERANCE_NM)
    assert "\n" not in str(err.value)
    wrong = tmp_path / "femto.safetensors"
    save_file(timm.create_model("convnextv2_femto", pretrained=False).state_dict(), str(wrong))
    with pytest.raises(ValueError, match=r"femto\.safetensors: tensor '[^']+' has shape .*, the encoder needs"):
        _started(len(S2), wrong, S2)
    with pytest.raises(FileNotFoundError, match="initial weights not found"):
        read_checkpoint(tmp_path / "nope.safetensors", TOLERANCE_NM)


def test_federated_group_and_student_start_from_their_init(rgb_model, tmp_path: Path) -> None:
    path = tmp_path / "atto.safetensors"
    save_file(rgb_model.state_dict(), str(path))
    sent = []

    def record(message):
        if message.metadata.message_type == "train.specialist" and message.content.config_records["train"]["seed"] == 1:
            sent.append(message.content.array_records["encoder"].to_torch_state_dict())
        return None

    config = tiny_run_config(tmp_path, f"~institutions.city_aerial train.init={path} distill.init={path} "
                                       "train.rounds=1 stop_after=distill")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(1), faults=record), config, flower_run_id=1)
    card = json.loads((run_dir / "specialists" / "sentinel2_l2a-scene" / "card.json").read_text())
    origin = {"source": str(path), "sha256": read_checkpoint(path, TOLERANCE_NM).sha256}
    assert card["extra"]["init"] == origin
    assert json.loads((run_dir / "student" / "card.json").read_text())["distill"]["init"] == origin
    assert sent and all(torch.equal(s[BLOCK], rgb_model.stages[3].blocks[1].mlp.fc2.weight) for s in sent)
    torch.testing.assert_close(sent[0]["stem_0.weight"][:, S2.index("B04")], rgb_model.stem[0].weight[:, 0])


def test_student_trunk_from_timm_and_specialist_from_student_artifact(rgb_model, tmp_path: Path) -> None:
    from fusion.student import Student, save_student

    path = tmp_path / "atto.safetensors"
    save_file(rgb_model.state_dict(), str(path))
    student = Student.create("convnextv2_atto", seed=0)
    load_encoder_weights(student.trunk, path, tolerance_nm=TOLERANCE_NM)  # distill.init: the trunk only, the spectral stem is the student's
    torch.testing.assert_close(student.trunk.state_dict()[BLOCK], rgb_model.stages[3].blocks[1].mlp.fc2.weight)
    out = save_student(student, tmp_path / "student")
    enc = build_encoder("convnextv2_atto", in_chans=len(S2))
    ckpt = load_encoder_weights(enc, out, S2, tolerance_nm=TOLERANCE_NM)  # no fixed stem in the file: the stem keeps its init
    assert ckpt.bands is None and ckpt.sha256 == student.card.weights_sha256
    torch.testing.assert_close(enc.state_dict()[BLOCK], rgb_model.stages[3].blocks[1].mlp.fc2.weight)


def test_a_missing_init_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    from pipeline.settings import ExperimentConfig, TrainSettings

    with pytest.raises(ValueError, match="train.init: .*nope.pth.* is neither 'random', 'base' nor an existing checkpoint"):
        ExperimentConfig(train=TrainSettings(init=str(tmp_path / "nope.pth")))
