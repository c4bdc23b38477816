"""A real (loopback) deployment: one SuperLink, SuperNodes with their own node configs, and the app
submitted with ``flwr run . partners``, as the README's deployment steps describe. Two partners hold
Sentinel-2 (one FedAvg group); the third a new sensor declared only in its own node config (``sensors``),
with bands no other process knows: the coordinator is given no sensor file. Weights stay home (each
specialist's features come from its holders). Then a fourth partner with another node-only sensor joins
the finished federation in integrate mode: only it trains, and the warm-started student reads its bands."""

from __future__ import annotations

import json
from pathlib import Path


import pytest
import torch

from flower_harness import (
    FlowerProcesses,
    as_new_sensor,
    isolated_flower,
    flwr_run,
    partner_manifest,
    pids_mentioning,
    run_status,
)
from fusion import Registry, load_student
from geodata.sensors import BandError, get_sensor


def test_partners_run_through_superlink_and_supernodes(tmp_path: Path, shared_data: Path) -> None:
    data = {name: partner_manifest(shared_data, tmp_path / name, train) for name, train in (("lab-a", 2), ("lab-b", 3))}
    data["lab-c"], sensor_yaml = as_new_sensor(partner_manifest(shared_data, tmp_path / "lab-c-eurosat", 1),
                                               tmp_path / "lab-c", "t_labcam", "LAB_")
    nodes = {"lab-c": {"sensor": "t_labcam", "sensors": str(sensor_yaml)}}  # known at lab-c's node only
    lab_d, lab_d_yaml = as_new_sensor(partner_manifest(shared_data, tmp_path / "lab-d-eurosat", 1), tmp_path / "lab-d",
                                      "t_labdam", "LBD_")
    out = tmp_path / "outputs"
    settings = (f"~institutions output_dir={out} federation.node_wait_s=30 enrol.weights=home train.rounds=1 "
                "train.max_steps=1 train.batch_size=8 proxy.tiles_per_institution=6 distill.epochs=1 "
                "distill.stem_fit_steps=5 prune.permutations=5")
    run_config = {"experiment": "quick", "overrides": f"{settings} federation.min_nodes=3", "run-name": "loopback"}
    joined = {"experiment": "quick", "run-name": "loopback-plus",
              "overrides": f"{settings} federation.min_nodes=4 integrate=loopback stop_after=distill"}
    with isolated_flower(tmp_path) as env, FlowerProcesses(env, tmp_path / "procs") as procs:
        superlink = procs.insecure_partners(env, data, tmp_path, nodes)
        run_id, output = flwr_run(env, "partners", run_config, timeout_s=480)
        status = run_status(env, "partners", run_id)
        assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}\n{procs.logs()}"
        procs.supernode("lab-d", superlink, {"institution": "lab-d", "sensor": "t_labdam", "task": "scene",
                                             "data-path": str(lab_d), "sensors": str(lab_d_yaml),
                                             "store": str(tmp_path / "lab-d" / "store")})
        second_id, second_output = flwr_run(env, "partners", joined, timeout_s=480)
        status = run_status(env, "partners", second_id)
        assert status == "finished:completed", f"run {second_id} is {status}\n{second_output[-4000:]}\n{procs.logs()}"
    assert not pids_mentioning(str(tmp_path)), "a Flower process outlived the test"

    run_dir = out / "loopback"
    assert f"Outputs: {run_dir}" in output
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert sorted(roster["institutions"]) == ["lab-a", "lab-b", "lab-c"] and roster["failures"] == []
    assert roster["institutions"]["lab-a"]["summary"]["tiles"] == {"test": 10, "train": 20, "val": 10}
    assert roster["institutions"]["lab-b"]["summary"]["tiles"] == {"test": 10, "train": 30, "val": 10}
    assert not any(m["simulated"] for m in roster["institutions"].values())
    assert roster["groups"]["sentinel2_l1c-scene"]["members"] == ["lab-a", "lab-b"]
    assert roster["groups"]["t_labcam-scene"]["members"] == ["lab-c"]
    assert json.loads((run_dir / "checkpoint.json").read_text())["flower_runs"] == [run_id]
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    assert trained["failures"] == []
    group = trained["groups"]["sentinel2_l1c-scene"]
    assert sorted(group["per_institution"]) == ["lab-a", "lab-b"] and "test_accuracy" in group["metrics"]
    registry = Registry(run_dir / "registry")
    assert sorted(registry.names) == ["sentinel2_l1c-scene", "t_labcam-scene"]
    assert registry.card("sentinel2_l1c-scene").metrics
    assert not list((run_dir / "registry").rglob("*.safetensors"))  # weights home: cards only
    lab_bands = tuple(registry.card("t_labcam-scene").bands)  # LAB_B01 ...: described by the card, known nowhere else
    distilled = json.loads((run_dir / "phases" / "distill.json").read_text())
    assert lab_bands[0] == "LAB_B01" and distilled["failures"] == []
    assert sorted(distilled["remote_teachers"]) == sorted(distilled["teachers"]) == ["sentinel2_l1c-scene", "t_labcam-scene"]
    student = load_student(run_dir / "student")
    assert set(lab_bands) <= set(student.card.band_stats) and student.catalog.band("LAB_B04").wavelength_nm == 664.6
    assert student.pooled(torch.rand(1, len(lab_bands), 32, 32), lab_bands).shape[0] == 1  # the stem reads its bands
    with pytest.raises(BandError):
        get_sensor("t_labcam")  # nothing was registered in this process either
    for name in ("lab-a", "lab-b"):  # each partner keeps the group's final weights in its own store
        assert (tmp_path / name / "store" / "specialists" / group["weights_sha256"] / "weights.safetensors").is_file()
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())
    assert sorted(evaluation["institutions"]) == ["lab-a", "lab-b", "lab-c"]
    assert (run_dir / "report.md").is_file() and (run_dir / "report.json").is_file()

    # Integrate mode: lab-d (sensor t_labdam, known at its node only) joins; the earlier groups are reused.
    plus = out / "loopback-plus"
    assert json.loads((plus / "checkpoint.json").read_text())["flower_runs"] == [second_id]
    trained = json.loads((plus / "phases" / "train.json").read_text())["groups"]
    assert {g: r.get("integrated_from") for g, r in trained.items()} == {
        "sentinel2_l1c-scene": "loopback", "t_labcam-scene": "loopback", "t_labdam-scene": None}
    after = Registry(plus / "registry")
    assert sorted(after.names) == ["sentinel2_l1c-scene", "t_labcam-scene", "t_labdam-scene"]
    assert after.card("t_labdam-scene").band_descriptors["LBD_B04"]["wavelength_nm"] == 664.6
    plus_student = load_student(plus / "student")
    assert plus_student.card.distill["total_epochs"] == 2  # warm-started from the first run's student
    lbd_bands = tuple(after.card("t_labdam-scene").bands)
    assert set(lbd_bands) <= set(plus_student.card.band_stats)
    assert plus_student.pooled(torch.rand(1, len(lbd_bands), 32, 32), lbd_bands).shape[0] == 1
