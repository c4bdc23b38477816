"""eosfed inside TerraTorch (fusion/terratorch.py): the backbone contract, and ``terratorch fit`` of
configs/terratorch/student_upernet.yaml for a few steps on the real wildfire-s2 scenes, for the student and
for a specialist."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
from fusion_toys import TOLERANCE_NM, S1_BANDS, S2_BANDS, make_registry, make_specialist
from terratorch.cli_tools import build_lightning_cli
from terratorch.registry import BACKBONE_REGISTRY

from fusion.student import Student, load_student, save_student
from fusion.terratorch import EosfedBackbone, eosfed_specialist, eosfed_student
from geodata.sensors import PRODUCT_SCALES
from specialists import load_specialist
from specialists.io import save_specialist

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "configs" / "terratorch" / "student_upernet.yaml"
WILDFIRE_BANDS = ("TCI_R", "TCI_G", "TCI_B", "B08", "B12")
WILDFIRE_SENSOR = {"sensor": "sentinel2_tci_nir_swir", "sensor_files": [REPO / "configs" / "samples" / "wildfire_sensor.yaml"]}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny student, a Sentinel-2 (B02 B03 B04 B08) specialist and a registry of three, on disk."""
    root = tmp_path_factory.mktemp("terratorch")
    save_student(Student.create(band_stats={"B04": [0.2, 0.1], "B08": [0.3, 0.1]}, depths=(1, 1, 1, 1), seed=0),
                 root / "student")
    save_specialist(make_specialist("s2", "sentinel2_l2a", S2_BANDS, seed=1), root / "specialist")
    make_registry(root / "registry")
    return {"student": root / "student", "specialist": root / "specialist", "ensemble": root / "registry"}


@pytest.mark.parametrize("kind, bands", [("student", ("VV", "B04")), ("specialist", None), ("ensemble", S1_BANDS)])
def test_backbone_contract(artifacts, kind, bands):
    tolerance = {} if kind == "student" else {"tolerance_nm": TOLERANCE_NM}
    backbone = BACKBONE_REGISTRY.build(f"eosfed_{kind}", path=str(artifacts[kind]), bands=bands, **tolerance)
    assert isinstance(backbone, EosfedBackbone) and backbone.bands == (bands or S2_BANDS)
    features = backbone(torch.rand(2, len(backbone.bands), 64, 64))
    assert len(features) == len(backbone.out_channels) == 4
    assert [f.shape[1] for f in features] == backbone.out_channels
    assert [64 // f.shape[-1] for f in features] == [4, 8, 16, 32]
    assert features[-1].requires_grad == (kind != "ensemble")  # the ensemble's specialists stay frozen


def test_specialist_reads_the_wildfire_files_by_wavelength_and_calibrates_them(artifacts):
    own = eosfed_specialist(artifacts["specialist"], TOLERANCE_NM).eval()
    fire = eosfed_specialist(artifacts["specialist"], TOLERANCE_NM, bands=WILDFIRE_BANDS, **WILDFIRE_SENSOR).eval()
    reflectance = torch.rand(1, 4, 64, 64) * 0.2  # B02 B03 B04 B08
    tci = reflectance[:, [2, 1, 0]] / PRODUCT_SCALES["tci"]  # TCI_R TCI_G TCI_B: B04 B03 B02 in 8-bit counts
    stored = torch.cat([tci, reflectance[:, 3:] * 10000, torch.rand(1, 1, 64, 64) * 5000], dim=1)
    with torch.no_grad():
        for a, b in zip(own(reflectance), fire(stored)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bad_input_is_refused_in_one_line(artifacts):
    with pytest.raises(ValueError, match="unknown band 'B99'"):  # through TerraTorch's registry, message intact
        BACKBONE_REGISTRY.build("eosfed_student", path=str(artifacts["student"]), bands=("B04", "B99"))
    with pytest.raises(ValueError, match="a student reads any bands: give bands"):
        eosfed_student(artifacts["student"])
    with pytest.raises(ValueError, match="a student, not a specialist"):
        eosfed_specialist(artifacts["student"], TOLERANCE_NM)
    with pytest.raises(ValueError, match=r"cannot read bands \['VV', 'VH'\]"):
        eosfed_specialist(artifacts["specialist"], TOLERANCE_NM, bands=S1_BANDS)
    with pytest.raises(ValueError, match=r"expected \[B, 2, H, W\]"):
        eosfed_student(artifacts["student"], bands=S1_BANDS)(torch.rand(1, 3, 64, 64))


@pytest.fixture
def terratorch_cli(monkeypatch: pytest.MonkeyPatch):
    """TerraTorch's own CLI (``terratorch <args>``) run in process from the repository root (the YAML's paths);
    what it changes in ``os.environ`` and ``sys.path`` is undone afterwards."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "path", list(sys.path))  # custom_modules_path inserts its parent folder
    monkeypatch.setattr(sys, "argv", ["terratorch"])
    saved = dict(os.environ)
    yield build_lightning_cli
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("kind", ["student", "specialist"])
def test_terratorch_fit_of_the_yaml_on_wildfire(artifacts, shared_data, terratorch_cli, tmp_path, kind):
    path = artifacts[kind]
    cli = terratorch_cli(["fit", "-c", str(YAML), f"--model.init_args.model_args.backbone=eosfed_{kind}",
                          f"--model.init_args.model_args.backbone_path={path}", "--trainer.max_steps=2",
                          *([] if kind == "student" else [f"--model.init_args.model_args.backbone_tolerance_nm={TOLERANCE_NM}"]),
                          "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and 0 <= float(metrics["val/mIoU"]) <= 1
    backbone = cli.model.model.encoder
    assert isinstance(backbone, EosfedBackbone) and backbone.bands == WILDFIRE_BANDS
    start = (load_student if kind == "student" else load_specialist)(path).state_dict()
    tuned = backbone.view.encoder.state_dict()
    assert any(not torch.equal(start[k], tuned[k]) for k in start), "the backbone did not train"
    batch = next(iter(cli.datamodule.val_dataloader()))
    cli.model.eval()
    with torch.no_grad():
        logits = cli.model(batch["image"]).output
    assert logits.shape == (batch["mask"].shape[0], 2, *batch["mask"].shape[-2:])
