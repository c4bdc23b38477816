"""``eosfed run``: its flags map onto Flower's run config, a misspelt override fails before Flower starts,
a run that fails in Flower exits non-zero with its reason on the last line, nothing it started survives."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eosfed.cli import main
from eosfed.commands import run as run_command
from flower_harness import pids_mentioning
from server.local import REPO, local_superlink_ports


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_map_onto_the_run_config() -> None:
    args = parse("--experiment", "quick", "--overrides", "train.rounds=2 'enrol.weights=home'", "--run-name", "demo")
    assert run_command.run_config(args) == {"experiment": "quick", "overrides": "train.rounds=2 'enrol.weights=home'",
                                            "run-name": "demo"}
    named = run_command.run_config(parse())
    assert named["experiment"] == "default" and named["overrides"] == ""
    assert named["run-name"].startswith("default-")  # fixed here, so the ServerApp uses the same folder
    assert parse().state == REPO / ".eosfed"


def test_federation_config_is_passed_per_value() -> None:
    args = parse("--federation-config", "num-supernodes=4", "--federation-config", "client-resources-num-cpus=2")
    assert run_command.federation_args(args.federation_config) == [
        "--federation-config", "num-supernodes=4", "--federation-config", "client-resources-num-cpus=2"]
    assert run_command.federation_args(parse().federation_config) == []


def test_client_cpus_share_the_machine_among_the_supernodes_unless_given() -> None:
    assert run_command.client_cpus(None, cpus=2) == ["client-resources-num-cpus=1"]  # Flower's 2 nodes at once
    assert run_command.client_cpus(["num-supernodes=4"], cpus=16) == ["client-resources-num-cpus=4"]
    assert run_command.client_cpus(["num-supernodes=8 client-resources-num-gpus=0.25"], cpus=2) == [
        "client-resources-num-cpus=1"]  # never below one
    assert run_command.client_cpus(["client-resources-num-cpus=2"], cpus=2) == []  # the user's value stands


def test_misspelt_override_or_bad_run_name_is_one_line_exit_2(capsys, tmp_path: Path) -> None:
    for argv, name in ((["--overrides", "train.roundz=1"], "train.roundz"), (["--run-name", "../x"], "run-name")):
        capsys.readouterr()
        assert main(["run", "--state", str(tmp_path), *argv]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("eosfed run: error: ") and name in lines[0], lines
    assert not (tmp_path / "flwr-home").exists()  # refused before Flower


def test_local_superlink_ports_read_from_the_running_process(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    assert local_superlink_ports(home) is None
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "--port", "4321",
                             "--control-api-address", "127.0.0.1:4322", "--log-file",
                             str(home / "local-superlink" / "superlink.log")])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd (its command line is ours before that)
        while local_superlink_ports(home) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert local_superlink_ports(home) == (4321, 4322)
    finally:
        fake.kill()
        fake.wait()


@pytest.mark.flower  # `eosfed run` in a subprocess drives flwr run
def test_failed_run_exits_non_zero_with_its_reason_last(tmp_path: Path) -> None:
    """The ServerApp refuses ``integrate`` of a run that does not exist (after composition, so the
    refusal happens inside Flower, before any node works): ``flwr ls`` says finished:failed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "eosfed.cli", "run", "--state", str(tmp_path / "state"),
                           "--experiment", "quick", "--overrides", f"output_dir={tmp_path / 'out'} integrate=nope",
                           "--run-name", "fail"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "(fail) is finished:failed" in last and "integrate" in last and "nope" in last, last
    assert "Starting a local SuperLink" in done.stderr
    assert not pids_mentioning(str(tmp_path)), "a process outlived eosfed run"
