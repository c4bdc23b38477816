"""What a phase is and what it gets: the grid, the config, the run folder and what came before."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flwr.serverapp import Grid

from server.checkpoint import RunCheckpoint
from server.config import ExperimentConfig
from server.roster import Roster

__all__ = ["Phase", "PhaseContext"]


@dataclass
class PhaseContext:
    grid: Grid
    cfg: ExperimentConfig
    run_dir: Path
    cache_dir: Path
    checkpoint: RunCheckpoint
    phase_order: list[str]
    roster: Roster | None = None

    def require_roster(self) -> Roster:
        if self.roster is None:
            raise RuntimeError("no roster: the discover phase must run first")
        return self.roster


@dataclass(frozen=True)
class Phase:
    """A named step whose JSON result is checkpointed; ``always`` phases rerun on resume (they
    bind the run to this Flower run's nodes)."""

    name: str
    run: Callable[[PhaseContext], dict[str, Any]]
    always: bool = False
