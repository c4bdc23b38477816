"""A real (loopback) deployment: one SuperLink, two SuperNodes with their own node configs, and the
app submitted with ``flwr run . partners``, as the README's deployment steps describe."""

from __future__ import annotations

import json
from pathlib import Path


from flower_harness import (
    FlowerProcesses,
    isolated_flower,
    flwr_run,
    partner_manifest,
    pids_mentioning,
    run_status,
)
from fusion import Registry


def test_partners_run_through_superlink_and_supernodes(tmp_path: Path, shared_data: Path) -> None:
    data = {name: partner_manifest(shared_data, tmp_path / name, train) for name, train in (("lab-a", 2), ("lab-b", 3))}
    out = tmp_path / "outputs"
    run_config = {
        "experiment": "quick",
        "overrides": (f"~institutions output_dir={out} federation.min_nodes=2 federation.node_wait_s=30 "
                      "train.rounds=1 train.max_steps=1 train.batch_size=8 proxy.tiles_per_institution=6 "
                      "distill.epochs=1 prune.permutations=5"),
        "run-name": "loopback",
    }
    with isolated_flower(tmp_path) as env, FlowerProcesses(env, tmp_path / "procs") as procs:
        procs.insecure_partners(env, data, tmp_path)
        run_id, output = flwr_run(env, "partners", run_config, timeout_s=300)
        status = run_status(env, "partners", run_id)
        assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}\n{procs.logs()}"
    assert not pids_mentioning(str(tmp_path)), "a Flower process outlived the test"

    run_dir = out / "loopback"
    assert f"Outputs: {run_dir}" in output
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert sorted(roster["institutions"]) == ["lab-a", "lab-b"]
    assert roster["institutions"]["lab-a"]["summary"]["tiles"] == {"test": 10, "train": 20, "val": 10}
    assert roster["institutions"]["lab-b"]["summary"]["tiles"] == {"test": 10, "train": 30, "val": 10}
    assert not any(m["simulated"] for m in roster["institutions"].values())
    assert roster["groups"]["sentinel2_l1c-scene"]["members"] == ["lab-a", "lab-b"]
    assert json.loads((run_dir / "checkpoint.json").read_text())["flower_runs"] == [run_id]
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    assert trained["failures"] == []
    group = trained["groups"]["sentinel2_l1c-scene"]
    assert sorted(group["per_institution"]) == ["lab-a", "lab-b"] and "test_accuracy" in group["metrics"]
    registry = Registry(run_dir / "registry")
    assert registry.names == ["sentinel2_l1c-scene"] and registry.load("sentinel2_l1c-scene").card.metrics
    for name in data:  # each partner keeps the group's final weights in its own store
        assert (tmp_path / name / "store" / "specialists" / group["weights_sha256"] / "weights.safetensors").is_file()
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())
    assert sorted(evaluation["institutions"]) == ["lab-a", "lab-b"]
    assert (run_dir / "report.md").is_file() and (run_dir / "report.json").is_file()
