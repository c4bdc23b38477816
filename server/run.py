"""One eosfed run: resolve the experiment, open (or resume) its folder, run the phases in order."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from flwr.serverapp import Grid

from pipeline.energy import EnergyTracker
from server.checkpoint import RunCheckpoint
from pipeline.samples import prepare_samples
from pipeline.settings import ExperimentConfig, RunSettings, load_experiment
from server.messaging import Traffic
from server.phases import PHASES, PhaseContext
from geodata.errors import InputError
from geodata.sensors import using

__all__ = ["run_experiment"]

log = logging.getLogger(__name__)


def _check_run(cfg: ExperimentConfig, order: list[str], run_dir: Path) -> None:
    """What the settings tree alone cannot check, before the run folder exists: ``stop_after`` names a
    phase, and the ``integrate`` run is a finished run beside this one (its registry enrolled)."""
    if cfg.stop_after and cfg.stop_after not in order:
        raise InputError(f"stop_after {cfg.stop_after!r} is not a phase; phases: {order}")
    if cfg.integrate and not (run_dir.parent / cfg.integrate / "registry" / "index.json").is_file():
        raise InputError(f"integrate: run {cfg.integrate!r} has no enrolled registry in {run_dir.parent}")


def run_experiment(grid: Grid, run_config: Mapping[str, Any], flower_run_id: int) -> Path:
    """Run (or resume) the experiment named by Flower's ``run_config``; returns the run folder."""
    settings = RunSettings.from_run_config(run_config)
    cfg, config_yaml = load_experiment(settings)
    run_dir = Path(cfg.output_dir).expanduser().resolve() / settings.run_name
    cache_dir = Path(cfg.cache_dir).expanduser().resolve()
    order = [phase.name for phase in PHASES]
    _check_run(cfg, order, run_dir)
    log.info("Run %s (experiment %s, Flower run %d): outputs in %s", settings.run_name, settings.experiment,
             flower_run_id, run_dir)
    if cfg.samples.root:
        prepare_samples(Path(cfg.samples.root).expanduser().resolve(), Path(cfg.samples.out).expanduser().resolve(),
                        cfg.samples.labelled_proxy or None, cfg.samples.aid_per_class or None)
    checkpoint = RunCheckpoint.open(run_dir, settings.experiment, config_yaml)
    checkpoint.add_flower_run(flower_run_id)
    phases = PHASES[: order.index(cfg.stop_after) + 1] if cfg.stop_after else PHASES
    ctx = PhaseContext(grid, cfg, run_dir, cache_dir, checkpoint, order, catalog=cfg.catalog())
    energy = EnergyTracker(cfg.energy)
    for i, phase in enumerate(phases, 1):
        step = f"[{i}/{len(phases)}] {phase.name}"
        if checkpoint.is_done(phase.name) and not phase.always:
            log.info("%s: finished in an earlier attempt, skipped", step)
            continue
        log.info("%s ...", step)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        energy.start(phase.name)
        ctx.phase, ctx.traffic, ctx.node_peak_mb = phase.name, Traffic(), {}
        with using(ctx.catalog):  # the federation catalog once discover has built it from the summaries
            result = phase.run(ctx)
        result["traffic"] = {**asdict(ctx.traffic), "node_peak_mb": ctx.node_peak_mb,
                             "coordinator_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        result["energy"] = {**energy.stop().to_dict(), "method": energy.method}
        checkpoint.record(phase.name, result, started, time.perf_counter() - t0)
        log.info("%s finished in %.1f s", step, time.perf_counter() - t0)
    log.info("Run %s finished. Outputs: %s", settings.run_name, run_dir)
    return run_dir
