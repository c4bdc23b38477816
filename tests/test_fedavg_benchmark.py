"""The FedAvg-vs-central benchmark reproduces the train phase exactly and records both scores and their ratio."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from clients.store import kept_specialist
from flower_harness import InProcessGrid
from pipeline.settings import RunSettings, load_experiment
from server.run import run_experiment
from specialists import SpecialistCard

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fedavg_vs_central.py"
S2_PAIR = ("world=tiny ~institutions +institutions.north_s2={sensor:sentinel2_l2a,task:scene} "
           "+institutions.south_s2={sensor:sentinel2_l2a,task:scene} train.batch_size=2")


@pytest.fixture
def benchmark():
    spec = importlib.util.spec_from_file_location("fedavg_vs_central", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(before)


def test_benchmark_writes_fedavg_and_central_scores_with_ratio(benchmark, tmp_path: Path) -> None:
    overrides = f"cache_dir={tmp_path / 'cache'} world.tiles_per_institution=8 train.rounds=1 {S2_PAIR}"
    benchmark.main(["--overrides", overrides, "--seeds", "0", "--out", str(tmp_path / "out")])

    [record] = json.loads((tmp_path / "out" / "fedavg_vs_central.json").read_text())["runs"]
    assert record["group"] == "sentinel2_l2a-scene" and record["members"] == ["north_s2", "south_s2"]
    train = {name: tiles["train"] for name, tiles in record["tiles"].items()}
    assert record["budget"]["samples_per_side"] == sum(train.values()) and record["budget"]["equal_samples"]
    [row] = record["seeds"]
    for method in ("fedavg", "central"):
        score = row[method]["group"]["test_accuracy"]
        assert 0.0 <= score <= 1.0
        assert set(row[method]["per_institution"]) == {"north_s2", "south_s2"}
        [first] = row[method]["history"]
        assert first["lr"] == pytest.approx(1e-3)
    # FedAvg trains each member on its own tiles; central trains one pooled node on all of them
    assert {k: v["num_examples"] for k, v in row["fedavg"]["history"][0]["institutions"].items()} == train
    assert row["central"]["history"][0]["institutions"]["pooled"]["num_examples"] == sum(train.values())
    central = row["central"]["group"]["test_accuracy"]
    if central > 0:
        assert row["ratio"] == pytest.approx(row["fedavg"]["group"]["test_accuracy"] / central)
        assert record["median_ratio"] == pytest.approx(row["ratio"])
    else:
        assert row["ratio"] is None and record["median_ratio"] is None
    assert "| seed | FedAvg test_accuracy | central test_accuracy | ratio |" in (
        tmp_path / "out" / "fedavg_vs_central.md").read_text()


def test_benchmark_fedavg_is_the_train_phase(benchmark, tmp_path: Path) -> None:
    overrides = f"output_dir={tmp_path} world.tiles_per_institution=4 train.rounds=2 stop_after=train {S2_PAIR}"
    nodes = {100 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)}
    run_dir = run_experiment(InProcessGrid(nodes), {"experiment": "default", "overrides": overrides, "run-name": "p"},
                             flower_run_id=1)
    card = SpecialistCard.from_json((run_dir / "specialists" / "sentinel2_l2a-scene" / "card.json").read_text())

    cfg, _ = load_experiment(RunSettings("default", tuple(overrides.split()), "b"))
    roster, specs = benchmark._roster(cfg, tmp_path / "cache")
    group = roster.groups["sentinel2_l2a-scene"]
    members = [specs[m] for m in group.members]
    run, history = benchmark._train(cfg, group, roster, members, "fedavg")
    assert [h["round"] for h in history] == [1, 2]
    phase = kept_specialist(specs["north_s2"], card.weights_sha256)  # the phase's final weights, kept by a member
    torch.testing.assert_close(run.encoder, phase.encoder.state_dict(), rtol=0, atol=0)
    scores = benchmark._scores(run, members, cfg)
    assert scores["group"]["test_accuracy"] == pytest.approx(card.metrics["test_accuracy"])
