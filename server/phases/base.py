"""What a phase is and what it gets: the grid, the config, the run folder and what came before."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flwr.serverapp import Grid

from server.checkpoint import RunCheckpoint
from server.config import ExperimentConfig
from server.messaging import Outcome, Request, Traffic, exchange
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
    traffic: Traffic = field(default_factory=Traffic)  # of the phase that runs now
    node_peak_mb: dict[str, float] = field(default_factory=dict)  # institution -> peak RSS its replies reported

    def note_memory(self, institution: str, metrics: dict[str, float]) -> None:
        """Take a reply's ``peak_rss_mb`` out of its metrics into :attr:`node_peak_mb`."""
        peak = metrics.pop("peak_rss_mb", None)
        if peak is not None:
            self.node_peak_mb[institution] = max(peak, self.node_peak_mb.get(institution, 0.0))

    @property
    def registry_dir(self) -> Path:
        return self.run_dir / "registry"

    @property
    def integrated_run_dir(self) -> Path | None:
        """In integrate mode, the folder of the run being extended (beside this one); else ``None``."""
        return self.run_dir.parent / self.cfg.integrate if self.cfg.integrate else None

    def exchange(self, message_type: str, requests: list[Request]) -> dict[str, Outcome]:
        """:func:`server.messaging.exchange` with the run's reply timeout, counting the phase's traffic."""
        return exchange(self.grid, message_type, requests, self.cfg.federation.reply_timeout_s, self.traffic)

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
