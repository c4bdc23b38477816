"""A partner's machine fails mid-run (loopback, real processes): three SuperNodes form one FedAvg group,
the third one's SuperNode is SIGKILLed once discovery has finished; the run (cut after enrol, to stay
short) completes with the other two, the train phase names the lost node, and a survivor enrols the
specialist. The report phase's listing of phase failures is covered in-process (test_reliability).

A ClientApp that hangs is not simulated here (no node-config key makes it hang, and none is added for
a test); the in-process tests cover raising and silent nodes.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from flower_harness import (
    FlowerProcesses,
    flwr_run,
    isolated_flower,
    partner_manifest,
    pids_mentioning,
    run_status,
)
from fusion import Registry

GROUP = "sentinel2_l1c-scene"


def _kill_after_discover(procs: FlowerProcesses, name: str, discover: Path, timeout_s: float,
                         killed: list[float]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if discover.is_file():
            procs.kill(name)
            killed.append(time.monotonic())
            return
        time.sleep(0.1)


@pytest.mark.e2e
def test_supernode_killed_mid_run_is_reported_and_run_completes(tmp_path: Path, shared_data: Path) -> None:
    names = ("lab-a", "lab-b", "lab-c")
    data = {name: partner_manifest(shared_data, tmp_path / name, 2) for name in names}
    out = tmp_path / "outputs"
    run_dir = out / "faults"
    run_config = {
        "experiment": "quick",
        "overrides": (f"~institutions output_dir={out} federation.min_nodes=3 federation.node_wait_s=30 "
                      "federation.reply_timeout_s=60 train.min_replies=1 stop_after=enrol train.rounds=1 train.max_steps=1 "
                      "train.batch_size=8 proxy.tiles_per_institution=6 distill.epochs=1 prune.permutations=5"),
        "run-name": "faults",
    }
    killed: list[float] = []
    with isolated_flower(tmp_path) as env, FlowerProcesses(env, tmp_path / "procs") as procs:
        procs.insecure_partners(env, data, tmp_path)
        killer = threading.Thread(target=_kill_after_discover, daemon=True,
                                  args=(procs, "lab-c", run_dir / "phases" / "discover.json", 120, killed))
        killer.start()
        run_id, output = flwr_run(env, "partners", run_config, timeout_s=400)
        killer.join(timeout=5)
        status = run_status(env, "partners", run_id)
        assert killed, f"discover never finished\n{output[-4000:]}\n{procs.logs()}"
        assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}\n{procs.logs()}"
    assert not pids_mentioning(str(tmp_path)), "a Flower process outlived the test"

    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert roster["groups"][GROUP]["members"] == list(names)  # lab-c was there before it died
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    lost = [f for f in trained["failures"] if f["institution"] == "lab-c"]
    assert lost and all(f["phase"] == "train" and f["reason"] for f in lost), trained["failures"]
    assert {f["institution"] for f in trained["failures"]} == {"lab-c"}
    group = trained["groups"][GROUP]
    assert sorted(group["per_institution"]) == ["lab-a", "lab-b"]  # trained from the two survivors
    registry = Registry(run_dir / "registry")
    assert registry.names == [GROUP]
    assert registry.load(GROUP).card.weights_sha256 == group["weights_sha256"]
    for name in ("lab-a", "lab-b"):
        assert (tmp_path / name / "store" / "specialists" / group["weights_sha256"] / "weights.safetensors").is_file()
    enrolled = json.loads((run_dir / "phases" / "enrol.json").read_text())["enrolled"][GROUP]
    assert enrolled["holder"] in ("lab-a", "lab-b") and enrolled["weights_sha256"] == group["weights_sha256"]
