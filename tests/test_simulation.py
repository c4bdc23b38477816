"""``flwr run .`` on the local simulation, as a user runs it: Flower's own default connection (a
detached local SuperLink, 2 simulated SuperNodes), the quick preset made smaller."""

from __future__ import annotations

import json
from pathlib import Path


from flower_harness import flwr_run, isolated_flower, pids_mentioning, run_status
from fusion import Registry, load_student


def test_quick_preset_through_flwr_run(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    overrides = (f"output_dir={out} world.tiles_per_institution=6 train.rounds=1 train.local_epochs=1 "
                 "proxy.tiles_per_institution=6 distill.epochs=1 prune.permutations=5")
    run_config = {"experiment": "quick", "overrides": overrides, "run-name": "sim"}
    with isolated_flower(tmp_path) as env:
        run_id, output = flwr_run(env, None, run_config, timeout_s=240)
        status = run_status(env, None, run_id)
    assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}"
    assert not pids_mentioning(str(tmp_path)) and not pids_mentioning(env["RAY_TMPDIR"]), "a process outlived the test"

    run_dir = out / "sim"
    assert f"Outputs: {run_dir}" in output
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert sorted(roster["institutions"]) == ["city_aerial", "coast_s1", "north_s2", "south_s2"]
    assert all(m["simulated"] for m in roster["institutions"].values())
    assert len({m["node_id"] for m in roster["institutions"].values()}) == 2  # Flower's default: 2 nodes
    assert roster["groups"]["sentinel2_l2a-scene"]["members"] == ["north_s2", "south_s2"]
    assert sorted(roster["groups"]) == ["aerial_rgbn-landcover", "sentinel1_grd-scene", "sentinel2_l2a-scene"]
    assert len([p for p in (out / "cache" / "worlds").iterdir() if p.is_dir()]) == 5  # 4 institutions + proxy
    phases = json.loads((run_dir / "checkpoint.json").read_text())["phases"]
    assert [name for name, p in phases.items() if p["status"] == "done"] == [
        "discover", "pretrain", "train", "enrol", "distill", "evaluate", "prune", "report"]
    assert sorted(Registry(run_dir / "registry").names) == sorted(roster["groups"])
    assert load_student(run_dir / "student").card.teachers
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())
    assert sorted(evaluation["institutions"]) == sorted(roster["institutions"])
    assert f"Report: {run_dir / 'report.md'}" in output
    assert "## Evaluate" in (run_dir / "report.md").read_text()
