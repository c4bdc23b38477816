"""``eosfed run``: the federation simulated on this machine, through Flower, in one command.

A thin wrapper over ``flwr run . --stream`` (:mod:`server.local`): the experiment is composed here
first (a misspelt override fails at once, exit 2); runtime dependency installation is off; the Flower
home is this checkout's own (``--state``, so no SuperLink started from elsewhere serves it); the local
SuperLink this home already runs is reused, else one is started on free ports and stopped (with its
process tree) at the end. Each simulated ClientApp gets this machine's CPUs shared among the SuperNodes
(:func:`client_cpus`) unless ``--federation-config`` sets ``client-resources-num-cpus``. Exit 0 only when ``flwr ls`` says the run is ``finished:completed``;
otherwise 1, with the status and its reason on the last line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from eosfed.commands.args import add_settings, overrides_from
from server.local import REPO, flower_env, flwr_run, local_superlink_ports, run_details, stop_local_superlink

log = logging.getLogger(__name__)

COMPLETED = "finished:completed"
DP = "train.dp"  # the settings the --dp-* flags set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default="default", help="configs/experiment/<name>.yaml (run config 'experiment')")
    parser.add_argument("--overrides", default="", metavar="'KEY=VALUE ...'",
                        help="Hydra overrides, space separated (run config 'overrides'), e.g. 'train.rounds=10' (default: none)")
    parser.add_argument("--run-name", default="", help="run folder under output_dir; an existing one is resumed "
                        "(run config 'run-name'; default: <experiment>-<UTC time>)")
    parser.add_argument("--federation-config", action="append", metavar="'KEY=VALUE ...'",
                        help="Flower federation config, e.g. 'num-supernodes=4'; repeatable")
    parser.add_argument("--state", type=Path, default=REPO / ".eosfed",
                        help="this checkout's Flower state: FLWR_HOME is STATE/flwr-home")
    from pipeline.settings import DpSettings  # imports torch: only for this command

    add_settings(parser, DpSettings, "differential privacy of phase train (added to --overrides)", path=DP)


def run_config(args: argparse.Namespace) -> dict[str, str]:
    """Flower's run config (``experiment``, ``overrides`` and the ``--dp-*`` flags' ones, ``run-name``) from the
    flags, checked as the ServerApp checks it (:class:`pipeline.settings.RunSettings`, then composing the
    experiment); the run name is fixed here so the command knows the run folder."""
    from pipeline.settings import DpSettings, RunSettings, load_experiment  # imports torch: only when running

    overrides = " ".join([args.overrides, *overrides_from(args, DpSettings, DP)]).strip()
    settings = RunSettings.from_run_config({"experiment": args.experiment, "overrides": overrides,
                                            "run-name": args.run_name})
    load_experiment(settings)
    return {"experiment": settings.experiment, "overrides": overrides, "run-name": settings.run_name}


def federation_args(configs: list[str] | None) -> list[str]:
    """``--federation-config VALUE`` for each given value."""
    return [arg for value in configs or () for arg in ("--federation-config", value)]


def client_cpus(configs: list[str] | None, cpus: int | None = None) -> list[str]:
    """The simulation's ClientApp CPUs, unless ``configs`` set them: this machine's ``cpus`` shared among the
    ``num-supernodes`` (Flower's 2 unless set), at least 1, so every simulated node works at once (Flower's
    default reserves 2 CPUs per ClientApp: on a 2-CPU machine one node worked at a time). Ray gives each
    ClientApp as many torch threads (``OMP_NUM_THREADS``)."""
    from flwr.common.config import parse_config_args

    given = {k.replace("_", "-"): v for k, v in parse_config_args(list(configs or ())).items()}
    if "client-resources-num-cpus" in given:
        return []
    nodes = int(given.get("num-supernodes", 2))
    return [f"client-resources-num-cpus={max(1, (cpus or os.cpu_count() or 1) // max(nodes, 1))}"]


def run(args: argparse.Namespace) -> int:
    config = run_config(args)
    ports = local_superlink_ports(args.state / "flwr-home")
    env = flower_env(args.state, ports)
    log.info("%s local SuperLink (FLWR_HOME %s)", "Reusing the" if ports else "Starting a", env["FLWR_HOME"])
    try:
        try:
            federation = [*client_cpus(args.federation_config), *(args.federation_config or ())]
            run_id, _ = flwr_run(env, None, config, None, federation_args(federation), sys.stdout.write)
        except RuntimeError as exc:
            log.error("%s before a run started", str(exc).splitlines()[0])
            return 1
        details = run_details(env, None, run_id)
    finally:
        if ports is None:
            stop_local_superlink(env)
        else:
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    status, reason = details.get("status", "unknown"), " ".join(str(details.get("status-details", "")).split())
    line = f"run {run_id} ({config['run-name']}) is {status}" + (f": {reason}" if reason else "")
    if status != COMPLETED:
        log.error(line)
        return 1
    log.info(line)
    return 0
