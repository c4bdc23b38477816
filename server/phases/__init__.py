"""The run's phases, in order. Each module exposes ``PHASE`` (see :mod:`server.phases.base`)."""

from server.phases import discover, distill, enrol, evaluate, pretrain, prune, report, train
from server.phases.base import Phase, PhaseContext

PHASES: tuple[Phase, ...] = (discover.PHASE, pretrain.PHASE, train.PHASE, enrol.PHASE, distill.PHASE, evaluate.PHASE,
                             prune.PHASE, report.PHASE)

__all__ = ["PHASES", "Phase", "PhaseContext"]
