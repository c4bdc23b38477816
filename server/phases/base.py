"""What a phase is and what it gets: the grid, the config, the run folder and what came before."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flwr.serverapp import Grid

from fusion.registry import Registry, RegistryError
from geodata.names import inside
from geodata.sensors import Catalog

from server.checkpoint import RunCheckpoint
from pipeline.settings import ExperimentConfig
from server.messaging import Outcome, Request, Traffic, exchange
from pipeline.roster import Roster
from specialists.card import SpecialistCard

__all__ = ["Phase", "PhaseContext", "integrated_cards"]

log = logging.getLogger(__name__)


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
    phase: str = ""  # the phase that runs now
    silent_nodes: dict[int, str] = field(default_factory=dict)  # node id -> phase where it first gave no reply
    catalog: Catalog = field(default_factory=Catalog)  # what band names mean in this run (discover: the federation's)

    def note_memory(self, institution: str, metrics: dict[str, float]) -> None:
        """Take a reply's ``peak_rss_mb`` out of its metrics into :attr:`node_peak_mb`."""
        peak = metrics.pop("peak_rss_mb", None)
        if peak is not None:
            self.node_peak_mb[institution] = max(peak, self.node_peak_mb.get(institution, 0.0))

    @property
    def registry_dir(self) -> Path:
        return self.run_dir / "registry"

    def card_path(self, group: str) -> Path:
        """Where the coordinator keeps group ``group``'s card (``ValueError`` if that leaves the run folder)."""
        return inside(self.run_dir, "specialists", group, "card.json")

    @property
    def integrated_run_dir(self) -> Path | None:
        """In integrate mode, the folder of the run being extended (beside this one); else ``None``."""
        return self.run_dir.parent / self.cfg.integrate if self.cfg.integrate else None

    def exchange(self, message_type: str, requests: list[Request]) -> dict[str, Outcome]:
        """:func:`server.messaging.exchange` with the run's reply timeout, counting the phase's traffic.

        A node that gave no reply within the timeout is not asked again in this Flower run (a SuperNode
        handles one message at a time, so it is still stuck on the unanswered one): its requests fail
        at once. A resumed run starts with a new context and asks every node again.
        """
        timeout = self.cfg.federation.reply_timeout_s
        skipped = {r.key: Outcome(r.key, r.node_id, error=f"skipped: no reply within {timeout:.0f} s in phase "
                                                          f"{self.silent_nodes[r.node_id]}")
                   for r in requests if r.node_id in self.silent_nodes}
        for outcome in skipped.values():
            log.warning("%s to node %d (%s) not sent: %s", message_type, outcome.node_id, outcome.key, outcome.error)
        outcomes = exchange(self.grid, message_type, [r for r in requests if r.key not in skipped], timeout,
                            self.traffic)
        for outcome in outcomes.values():
            if outcome.timed_out:
                self.silent_nodes.setdefault(outcome.node_id, self.phase)
        return {r.key: skipped.get(r.key) or outcomes[r.key] for r in requests}

    def require_roster(self) -> Roster:
        if self.roster is None:
            raise RuntimeError("no roster: the discover phase must run first")
        return self.roster


def integrated_cards(ctx: PhaseContext) -> dict[str, SpecialistCard]:
    """In integrate mode, the cards enrolled in the extended run's registry for this run's groups with the same
    members (group name -> card): groups that need no training again; else none."""
    if ctx.integrated_run_dir is None:
        return {}
    try:
        registry = Registry(ctx.integrated_run_dir / "registry")
    except RegistryError as exc:
        raise RuntimeError(f"integrate: run {ctx.cfg.integrate!r} has no enrolled registry ({exc})") from None
    groups = ctx.require_roster().groups
    cards = {name: registry.card(name) for name in registry.names if name in groups}
    return {name: card for name, card in cards.items() if sorted(card.institutions) == sorted(groups[name].members)}


@dataclass(frozen=True)
class Phase:
    """A named step whose JSON result is checkpointed; ``always`` phases rerun on resume (they
    bind the run to this Flower run's nodes)."""

    name: str
    run: Callable[[PhaseContext], dict[str, Any]]
    always: bool = False
