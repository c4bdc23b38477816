"""Partners' machines fail mid-run (loopback, real processes): four SuperNodes form one FedAvg group,
and once discovery has finished two of them fail, each its own way, in the same deployment; the run
(cut after enrol, to stay short) completes with the other two, the train phase names both lost nodes,
and a survivor enrols the specialist. The report phase's listing of phase failures is covered in-process
(test_reliability).

- Killed: lab-c's SuperNode (and its tree) gets SIGKILL.
- Hung: every ClientApp process lab-d's SuperNode starts after discovery is frozen (SIGSTOP), so the
  process lives but never answers, while the SuperNode keeps its heartbeat to the SuperLink. No
  node-config key or code path makes a node hang; the test only sends signals.

What Flower 1.41 does with a hung ClientApp (measured with this test's setup):

- The SuperNode starts one ``flwr-clientapp`` process per message (through its ``flower-superexec``
  child) and handles one message at a time: it waits for the reply before it pulls the next message,
  so messages sent to it later queue behind the unanswered one.
- The SuperLink answers for an online but silent node only when the message's TTL runs out
  ("Message Unavailable", code 3). ``server.messaging.exchange`` gives messages a TTL 10 s beyond
  its own wait, so the coordinator's ``reply_timeout_s`` ends first: "no reply within N s".
- A ClientApp frozen before it reported running (the case here: it is frozen as it starts) is given
  up by its SuperNode after 30 s and the message is started again in a new ClientApp (frozen again
  here; freezing only the first one let the restarted ClientApp answer, too late for the train
  round, and lab-d then passed the final evaluation). By Flower's source, one frozen while running
  is answered by its SuperNode with "ClientApp stopped responding" after 60 s without heartbeat. A
  handler that hangs in a live process (its heartbeat thread still runs) is never given up, which
  is what freezing every new ClientApp reproduces: lab-d answers nothing more in the run.
- Asked again, lab-d cost the group's final evaluation a second full timeout (train phase 61 s
  instead of 49 s with a 30 s timeout); the coordinator now asks a node that timed out nothing more
  in the run, and records "skipped: no reply within N s in phase train".
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable


from flower_harness import (
    FlowerProcesses,
    descendants,
    flwr_run,
    isolated_flower,
    partner_manifest,
    pids_mentioning,
    run_status,
)
from fusion import Registry

GROUP = "sentinel2_l1c-scene"
NAMES = ("lab-a", "lab-b", "lab-c", "lab-d")  # lab-c is killed, lab-d hangs
HANG_TIMEOUT_S = 45  # a healthy 1-step train reply took ~20 s on 2 loaded cores

Fault = Callable[[FlowerProcesses, Path, threading.Event, list[int]], None]


def _wait_for(path: Path, done: threading.Event, timeout_s: float = 300) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if done.is_set() or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _clientapps(supernode: int) -> set[int]:
    found = set()
    for pid in descendants(supernode):
        try:
            if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


def _kill_and_freeze_after_discover(procs: FlowerProcesses, discover: Path, done: threading.Event,
                                    acted: list[int]) -> None:
    """Once discovery has finished: SIGKILL lab-c's SuperNode and its tree, and SIGSTOP every ClientApp
    lab-d's SuperNode starts from then on (one still finishing its discovery reply is left alone), until
    ``done``; then SIGKILL those."""
    hung = procs.process("lab-d").pid
    if not _wait_for(discover, done):
        return
    before = _clientapps(hung)
    acted.append(procs.process("lab-c").pid)
    procs.kill("lab-c")
    frozen: list[int] = []
    try:
        while not done.is_set():
            for pid in _clientapps(hung) - before - set(frozen):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
            time.sleep(0.05)
    finally:
        acted.extend(frozen)
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _run_with_fault(tmp_path: Path, shared_data: Path, reply_timeout_s: int, fault: Fault) -> tuple[Path, list[int]]:
    """Run the three partners to enrol while ``fault`` acts in a thread; returns the run folder and the
    PIDs the fault acted on, once the run completed and every process it started is gone."""
    data = {name: partner_manifest(shared_data, tmp_path / name, 2) for name in NAMES}
    out = tmp_path / "outputs"
    run_dir = out / "faults"
    run_config = {
        "experiment": "quick",
        "overrides": (f"~institutions output_dir={out} federation.min_nodes=4 federation.node_wait_s=30 "
                      f"federation.reply_timeout_s={reply_timeout_s} train.min_replies=1 stop_after=enrol "
                      "train.rounds=1 train.max_steps=1 train.batch_size=8 proxy.tiles_per_institution=6 "
                      "distill.epochs=1 prune.permutations=5"),
        "run-name": "faults",
    }
    acted: list[int] = []
    done = threading.Event()
    with isolated_flower(tmp_path) as env, FlowerProcesses(env, tmp_path / "procs") as procs:
        procs.insecure_partners(env, data, tmp_path)
        thread = threading.Thread(target=fault, args=(procs, run_dir / "phases" / "discover.json", done, acted),
                                  daemon=True)
        thread.start()
        try:
            run_id, output = flwr_run(env, "partners", run_config, timeout_s=400)
            status = run_status(env, "partners", run_id)
        finally:
            done.set()
            thread.join(timeout=10)
        assert acted, f"the fault never acted (discover never finished?)\n{output[-4000:]}\n{procs.logs()}"
        assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}\n{procs.logs()}"
    assert not pids_mentioning(str(tmp_path)), "a Flower process outlived the test"
    deadline = time.monotonic() + 10
    while any(map(_running, acted)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, acted)), "a frozen ClientApp outlived the test"
    return run_dir, acted


def test_a_killed_supernode_and_a_hung_clientapp_are_reported_and_the_run_completes(tmp_path: Path,
                                                                                    shared_data: Path) -> None:
    run_dir, acted = _run_with_fault(tmp_path, shared_data, HANG_TIMEOUT_S, _kill_and_freeze_after_discover)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert roster["groups"][GROUP]["members"] == list(NAMES)  # lab-c and lab-d were there before they failed
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    assert {f["institution"] for f in trained["failures"]} == {"lab-c", "lab-d"}
    group = trained["groups"][GROUP]
    assert sorted(group["per_institution"]) == ["lab-a", "lab-b"] and group["rounds_applied"] == 1
    registry = Registry(run_dir / "registry")
    assert registry.names == [GROUP]
    assert registry.load(GROUP).card.weights_sha256 == group["weights_sha256"]
    for name in ("lab-a", "lab-b"):
        assert (tmp_path / name / "store" / "specialists" / group["weights_sha256"] / "weights.safetensors").is_file()
    enrolled = json.loads((run_dir / "phases" / "enrol.json").read_text())["enrolled"][GROUP]
    assert enrolled["holder"] in ("lab-a", "lab-b") and enrolled["weights_sha256"] == group["weights_sha256"]
    lost = [f for f in trained["failures"] if f["institution"] == "lab-c"]
    assert lost and all(f["phase"] == "train" and f["reason"] for f in lost), lost
    hung = [(f["phase"], f["round"], f["reason"]) for f in trained["failures"] if f["institution"] == "lab-d"]
    assert hung == [("train", 1, f"no reply within {HANG_TIMEOUT_S} s"),
                    ("train", "final", f"skipped: no reply within {HANG_TIMEOUT_S} s in phase train")], hung
    assert len(acted) > 1  # lab-c's SuperNode, and the train message's ClientApp(s) of lab-d, alive but frozen
