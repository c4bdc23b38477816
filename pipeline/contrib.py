"""The contribution step: one coalition game per task on the members' frozen features (and their random
twins'), its Shapley / leave-one-out scores and CKA, and the pruning decision."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from fusion.contrib import CoalitionGame, Contribution, cka_matrix, contributions
from fusion.probes import FeatureSet
from fusion.prune import prune, select_kept
from fusion.registry import Registry
from geodata.manifest import TaskSpec
from pipeline.settings import PruneSettings

__all__ = ["Cka", "play", "prune_by", "solo_scores"]

log = logging.getLogger(__name__)

Cka = tuple[list[str], list[list[float]]]


def play(train: Mapping[str, FeatureSet], test: Mapping[str, FeatureSet], task: TaskSpec, name: str,
         settings: PruneSettings, seed: int) -> tuple[list[Contribution], Cka | None]:
    """Scores of every player of the game fit on ``train`` and scored on ``test`` (feature sets named by
    ``fusion.contrib.twin_name`` are the players' twins), and the players' CKA on ``test`` (with two or more)."""
    game = CoalitionGame(train, test, task, settings.method, weight_decays=(settings.weight_decay,), seed=seed)
    scores = contributions(game, name, settings.permutations, settings.truncation, settings.confidence, seed=seed,
                           gates=settings.gates)
    if len(game.players) < 2:
        return scores, None
    names, matrix = cka_matrix({n: test[n].pooled for n in game.players})
    return scores, (names, matrix.tolist())


def solo_scores(train: Mapping[str, FeatureSet], test: Mapping[str, FeatureSet], task: TaskSpec,
                settings: PruneSettings, seed: int) -> dict[str, float]:
    """Each feature set's score alone, with the games' probe (:func:`play`'s ``method`` and weight decay)."""
    game = CoalitionGame(train, test, task, settings.method, weight_decays=(settings.weight_decay,), seed=seed)
    return {name: game({name}) for name in game.players}


def prune_by(registry: Registry, scores: Sequence[Contribution], out: Path, settings: PruneSettings,
             cka: Cka | None) -> tuple[Registry, str | None]:
    """Write the registry of the specialists ``settings``' rule keeps (``prune_report.{json,md}`` beside);
    when every interval lies at or below zero there is no evidence to choose by: every specialist is kept,
    and the note says so."""
    top_k, drop_nonpositive, note = settings.keep_top_k or None, settings.drop_nonpositive, None
    try:
        select_kept(registry.names, scores, top_k, drop_nonpositive)
    except ValueError as exc:
        if not drop_nonpositive:
            raise
        note = f"{exc}; kept every specialist instead"
        log.warning("Pruning: %s", note)
        drop_nonpositive = False
    return prune(registry, scores, out, top_k or (None if drop_nonpositive else len(registry)), drop_nonpositive,
                 cka), note
