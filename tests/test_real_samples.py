"""The real samples of ``../shared/data`` as manifests (fixed splits), the proxy union, the baselines, and the
real-data federation (``experiment=real``) in one process."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from flower_harness import InProcessGrid
from fusion.baselines import BAND_STATS, RANDOM_INIT, BandStatistics, baseline_encoders
from fusion.student import Student
from geodata.manifest import Manifest
from pipeline.samples import PROXY_SETS, prepare_samples
from server.run import run_experiment
from tiny_run import simulated_nodes


@pytest.fixture(scope="module")
def samples(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_samples(shared_data, tmp_path_factory.mktemp("real") / "samples")


def test_sample_splits_never_share_a_scene_event_or_block(samples: Path) -> None:
    eurosat = Manifest.load(samples / "eurosat" / "manifest.json")
    assert Counter(t.split for t in eurosat.tiles) == {"train": 60, "val": 20, "test": 40}
    halves = Counter((t.region, t.targets["scene"]) for t in eurosat.tiles if t.split == "train")
    assert set(halves.values()) == {3}  # class-balanced parts: 3 train tiles of each class in each half
    aid = Manifest.load(samples / "aid" / "manifest.json")  # every image of the shared folder
    assert Counter(t.split for t in aid.tiles) == {"train": 30 * 100, "val": 30 * 20, "test": 30 * 40}
    wildfire = Manifest.load(samples / "wildfire" / "manifest.json")
    events = {s: {t.region for t in wildfire.tiles if t.split == s} for s in ("train", "val", "test")}
    assert len(events["test"]) == 6 and not events["test"] & (events["train"] | events["val"])
    assert sorted(events["test"])[0] > max(events["train"] | events["val"])  # the 6 events sorting last
    eolearn = Manifest.load(samples / "eolearn" / "manifest.json")
    rows = {s: {t.id.rsplit("-", 1)[1].split("c")[0] for t in eolearn.tiles if t.split == s} for s in ("train", "test")}
    assert not rows["train"] & rows["test"]  # a spatial block (the last chip row) is test


def test_proxy_union_holds_no_test_tile_and_only_eurosat_labels(samples: Path) -> None:
    proxy = Manifest.load(samples / "proxy" / "manifest.json")
    assert {t.split for t in proxy.tiles} == {"train", "val"}
    assert {t.id.split("-")[0] for t in proxy.tiles} == set(PROXY_SETS)
    assert list(proxy.tasks) == ["scene"] and all(bool(t.targets) == t.id.startswith("eurosat-") for t in proxy.tiles)
    assert {t.sensor for t in proxy.tiles} >= {"rgb", "sentinel2_tci_nir_swir", "sentinel1_grd"}
    assert "sentinel2_tci_nir_swir" in proxy.catalog.sensors  # described in full beside the proxy manifest
    assert "sentinel2_tci_nir_swir" in (samples / "proxy" / "sensors.yaml").read_text()


def test_baselines() -> None:
    x = torch.rand(2, 3, 8, 8)
    pooled = BandStatistics().pooled(x, ("RED", "GREEN", "BLUE"))
    assert torch.allclose(pooled[:, :3], x.mean((-2, -1))) and torch.allclose(pooled[:, 3:], x.std((-2, -1), unbiased=False))
    assert torch.allclose(BandStatistics().forward(x, ("RED", "GREEN", "BLUE"))[0], x.view(2, 3, 2, 4, 2, 4).mean((3, 5)))
    student = Student.create(band_stats={"RED": [0.3, 0.1]}, depths=(1, 1, 2, 1), seed=0)
    twin = baseline_encoders({"RED": [0.5, 0.2]}, student)[RANDOM_INIT]
    assert twin.card.depths == [1, 1, 2, 1] and twin.card.num_params == student.card.num_params
    assert twin.card.band_stats == {"RED": [0.5, 0.2]} and set(baseline_encoders({})) == {RANDOM_INIT, BAND_STATS}


def test_real_experiment_in_process(samples: Path, tmp_path: Path) -> None:
    # AID's 150 px scenes are left out here (the costliest to probe); `flwr run . -c 'experiment="real"'` has them
    overrides = (f"output_dir={tmp_path} samples.out={samples} ~institutions.aid train.rounds=1 train.local_epochs=1 "
                 "train.max_steps=2 distill.epochs=1 proxy.split=val prune.permutations=4 federation.reply_timeout_s=300")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2)),
                             {"experiment": "real", "overrides": overrides, "run-name": "real"}, flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert roster["groups"]["sentinel2_l1c-scene"]["members"] == ["eurosat_a", "eurosat_b"]  # FedAvg of the halves
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())["institutions"]
    assert sorted(evaluation) == ["eolearn", "eurosat_a", "eurosat_b", "wildfire"]
    for name, result in evaluation.items():
        assert {r["encoder"] for r in result["results"]} >= {"student", RANDOM_INIT, BAND_STATS}, name
    report = (run_dir / "report.md").read_text()
    assert "| eurosat_a | sentinel2_l1c |" in report and "band-stats" in report


def test_artifacts_carry_their_user_sensors(samples: Path, tmp_path: Path) -> None:
    from fusion.student import load_student, save_student

    from geodata.sensors import using

    with using(Manifest.load(samples / "wildfire" / "manifest.json").catalog):  # the wildfire sensor beside it
        student = Student.create(band_stats={"TCI_R": [100.0, 30.0], "B08": [0.3, 0.1]}, depths=(1, 1, 1, 1), seed=0)
    save_student(student, tmp_path / "student")
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["card.json", "weights.safetensors"]
    loaded = load_student(tmp_path / "student")  # its card describes TCI_R: no sensor file, nothing registered
    assert loaded.card.band_stats == student.card.band_stats
    assert loaded.catalog.band("TCI_R").wavelength_nm == 664.6 and loaded.card.band_descriptors["TCI_R"]["kind"] == "spectral"
    assert loaded.pooled(torch.rand(1, 2, 32, 32), ("TCI_R", "B08")).shape[0] == 1
