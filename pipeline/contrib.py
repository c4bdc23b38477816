"""The contribution step: the coalition games on the members' frozen features (and their random twins'),
their Shapley / leave-one-out scores and CKA, and the pruning decision. Phase *prune* and ``eosfed prune``
both build and play their games here (:func:`play_games`): they differ only in which games (the proxy's
sensors, or ``--eval TASK@SENSOR``) and whether a teacher cache serves the members' features."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fusion.contrib import (CoalitionGame, Contribution, cka_matrix, contributions, extract_member_features,
                            random_twin, twin_name)
from fusion.data import labelled_loader
from fusion.ensemble import Ensemble
from fusion.probes import FeatureSet, extract_features
from fusion.prune import prune, select_kept
from fusion.registry import Registry
from fusion.teacher_cache import TeacherCache
from geodata.manifest import Manifest, TaskSpec, TileEntry
from pipeline.settings import PruneSettings

__all__ = ["Cka", "Game", "play", "play_games", "prune_by", "solo_scores", "student_scores"]

log = logging.getLogger(__name__)

Cka = tuple[list[str], list[list[float]]]


@dataclass(frozen=True)
class Game:
    """One coalition game: a probe for ``task`` on features of ``sensor``'s tiles, fit on ``fit``, scored on
    ``score``; ``size``: tiles centre-cropped to it (``None``: as they are)."""

    task: str
    sensor: str
    fit: Sequence[TileEntry]
    score: Sequence[TileEntry]
    size: int | None = None

    @property
    def name(self) -> str:
        return f"{self.task}@{self.sensor}"


def _stack(sets: Sequence[FeatureSet]) -> FeatureSet:
    """Feature sets of one encoder on different samples, one after the other."""
    maps = [torch.cat(scale) for scale in zip(*(s.maps for s in sets))] if all(s.maps is not None for s in sets) \
        else None
    return FeatureSet(torch.cat([s.pooled for s in sets]), torch.cat([s.targets for s in sets]),
                      [i for s in sets for i in s.ids], maps)


def _tile_features(manifest: Manifest, game: Game, batch_size: int,
                   extract: Callable[[DataLoader], dict[str, FeatureSet]]) -> dict[str, dict[str, FeatureSet]]:
    """``{"train": {name: features of game.fit}, "test": {... of game.score}}``; ``extract`` runs once per
    manifest split the game's tiles come from."""
    found: dict[str, list[FeatureSet]] = {}
    for split in sorted({t.split for t in [*game.fit, *game.score]}):
        loader = labelled_loader(manifest, game.sensor, game.task, split, game.size, batch_size)
        for name, features in extract(loader).items():
            found.setdefault(name, []).append(features)
    out: dict[str, dict[str, FeatureSet]] = {"train": {}, "test": {}}
    for name, sets in found.items():
        every = _stack(sets)
        row = {sample: i for i, sample in enumerate(every.ids)}
        for part, tiles in (("train", game.fit), ("test", game.score)):
            out[part][name] = every.subset(torch.tensor([row[t.id] for t in tiles]))
    return out


def _cached(cache: TeacherCache, sha: str, tiles: Sequence[TileEntry], task: str, spec: TaskSpec) -> FeatureSet:
    """A teacher's cached pooled features of ``tiles`` with their labels (a class index, or a multi-hot row)."""
    ids = [t.id for t in tiles]
    if spec.type == "classification":
        labels = torch.tensor([t.targets[task] for t in tiles])
    else:
        labels = torch.zeros(len(tiles), spec.num_classes)
        for row, tile in enumerate(tiles):
            labels[row, tile.targets[task]] = 1.0
    return FeatureSet(cache.get(sha, ids)["pooled"].float(), labels, ids)


def play_games(games: Sequence[Game], manifest: Manifest, registry: Registry, settings: PruneSettings, *, seed: int,
               tolerance_nm: float, batch_size: int,
               cache: TeacherCache | None = None) -> tuple[list[list[Contribution]], Cka | None, list[Game]]:
    """Play every game whose sensor some specialist of ``registry`` reads (within ``tolerance_nm``) and that has
    fit and score tiles: the scores per game, the CKA of the first game with several players, the games played.

    A player's features are its raw pooled features in ``cache`` where that holds them for every tile of the game
    (no teacher runs again; a specialist whose weights stay home takes part this way), else its standardised
    features, its local weights run on the tiles (a player with neither sits out, logged). With ``baseline:
    random_twin`` each player's untrained twin (built from its card) runs on the tiles too."""
    maps = settings.method == "segmentation"
    per_game, cka, played = [], None, []
    loaded: dict[str, Ensemble] = {}  # each local specialist loaded once, with its feature statistics
    for game in games:
        if not game.fit or not game.score:
            log.info("game %s: no %s tiles; not played", game.name, "fit" if not game.fit else "score")
            continue
        tiles = [t.id for t in [*game.fit, *game.score]]
        readers = registry.readers(manifest.sensor(game.sensor).image_bands, tolerance_nm)
        cached = {e.name: e.weights_sha256 for e in readers
                  if cache is not None and not maps and cache.has(e.weights_sha256, tiles)}
        local = [e.name for e in readers if e.name not in cached and not e.holder]
        absent = [e.name for e in readers if e.name not in cached and e.holder]
        if absent:
            log.warning("game %s: %s sit out (weights at their holders, no cached features for its tiles)",
                        game.name, absent)
        players = [*cached, *local]
        if not players:
            continue
        spec = manifest.task(game.task)
        train = {n: _cached(cache, sha, game.fit, game.task, spec) for n, sha in cached.items()}  # type: ignore
        test = {n: _cached(cache, sha, game.score, game.task, spec) for n, sha in cached.items()}  # type: ignore
        loaded |= {n: Ensemble.from_registry(registry, [n], tolerance_nm=tolerance_nm)
                   for n in local if n not in loaded}
        run = {n: loaded[n].specialists[n] for n in local}
        stats = {n: loaded[n].stats[n] for n in local}
        if settings.baseline == "random_twin":
            run |= {twin_name(n): random_twin(registry.card(n), seed) for n in players}
        if run:
            ensemble = Ensemble(run, stats, tolerance_nm=tolerance_nm)
            parts = _tile_features(manifest, game, batch_size,
                                   lambda loader: extract_member_features(ensemble, loader, maps))
            train, test = train | parts["train"], test | parts["test"]
        scores, matrix = play(train, test, spec, game.name, settings, seed)
        per_game.append(scores)
        cka = cka or matrix
        played.append(game)
    return per_game, cka, played


def student_scores(games: Sequence[Game], manifest: Manifest, students: Mapping[str, torch.nn.Module],
                   settings: PruneSettings, *, seed: int, batch_size: int) -> dict[str, float]:
    """Each student's score alone with the games' probe (:func:`solo_scores`), averaged over ``games``."""
    totals = dict.fromkeys(students, 0.0)
    maps = settings.method == "segmentation"
    for game in games:
        parts = _tile_features(manifest, game, batch_size,
                               lambda loader: {n: extract_features(s, loader, maps) for n, s in students.items()})
        for name, score in solo_scores(parts["train"], parts["test"], manifest.task(game.task), settings,
                                       seed).items():
            totals[name] += score / len(games)
    return totals


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
