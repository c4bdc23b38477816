"""A real (loopback) deployment: one SuperLink, two SuperNodes with their own node configs, and the
app submitted with ``flwr run . partners``, as the README's deployment steps describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flower_harness import (
    FlowerProcesses,
    isolated_flower,
    flwr_run,
    free_port,
    pids_mentioning,
    run_status,
    write_connection,
)
from geodata.readers.eurosat import build_eurosat_manifest


@pytest.mark.e2e
def test_partners_run_through_superlink_and_supernodes(tmp_path: Path, shared_data: Path) -> None:
    # Two partners with their own data folders (EuroSAT-MS, different train sizes).
    data = {}
    for name, train in (("lab-a", 4), ("lab-b", 6)):
        build_eurosat_manifest(shared_data / "eurosat-ms", tmp_path / name, train_per_class=train, val_per_class=2)
        data[name] = tmp_path / name / "manifest.json"

    out = tmp_path / "outputs"
    run_config = {
        "experiment": "quick",
        "overrides": f"~institutions output_dir={out} federation.min_nodes=2 federation.node_wait_s=30",
        "run-name": "loopback",
    }
    with isolated_flower(tmp_path) as env, FlowerProcesses(env, tmp_path / "procs") as procs:
        superlink = procs.superlink(free_port(), ["--disable-runtime-dependency-installation"])
        for name, manifest in data.items():
            procs.supernode(name, superlink, {"institution": name, "sensor": "sentinel2_l1c", "task": "scene",
                                              "data-path": str(manifest)})
        write_connection(env, "partners", superlink)
        run_id, output = flwr_run(env, "partners", run_config, timeout_s=80)
        status = run_status(env, "partners", run_id)
        assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}\n{procs.logs()}"
    assert not pids_mentioning(str(tmp_path)), "a Flower process outlived the test"

    run_dir = out / "loopback"
    assert f"Outputs: {run_dir}" in output
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert sorted(roster["institutions"]) == ["lab-a", "lab-b"]
    assert roster["institutions"]["lab-a"]["summary"]["tiles"]["train"] == 40
    assert roster["institutions"]["lab-b"]["summary"]["tiles"]["train"] == 60
    assert not any(m["simulated"] for m in roster["institutions"].values())
    assert roster["groups"]["sentinel2_l1c-scene"]["members"] == ["lab-a", "lab-b"]
    assert json.loads((run_dir / "checkpoint.json").read_text())["flower_runs"] == [run_id]
