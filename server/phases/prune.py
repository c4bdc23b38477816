"""Phase *prune*: each specialist's contribution, and the pruning decision, on the labelled proxy data.

For every proxy sensor, the specialists that can read it play a coalition game: a linear probe on
the concatenation of their cached pooled teacher features (the distill phase's cache, so no
teacher runs again and weights that stay home take part too), fitted on the proxy's ``train``
tiles and scored on the others, for the classification task ``prune.task``. With ``prune.baseline:
random_twin`` the game also holds each player's untrained twin, built here from its card (so it needs
no weights) and run on the same tiles, and every marginal is taken against it (:mod:`fusion.contrib`).
Leave-one-out and Monte-Carlo Shapley (with a confidence interval) per game are averaged over games; redundancy is
linear CKA. :func:`fusion.prune.prune` then writes ``registry_pruned/`` (with
``prune_report.{json,md}``): the top ``prune.keep_top_k`` and/or those whose interval is above zero.
With ``prune.redistill``, when a specialist was dropped, :func:`pipeline.distill.redistil` warm-starts a
pruned student from the full one and distils it on the kept teachers' cached targets (the distill phase's
proxy batches and cache) into ``student_pruned/``; both students are then scored with the games' probe.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from fusion.contrib import Contribution, combine_contributions, extract_member_features, random_twin, twin_name
from fusion.data import labelled_loader
from fusion.ensemble import Ensemble
from fusion.probes import FeatureSet, extract_features
from fusion.prune import REPORT_MD
from fusion.registry import Registry
from fusion.student import Student
from fusion.teacher_cache import TeacherCache
from geodata.manifest import Manifest, TileEntry
from server.phases.base import Phase, PhaseContext
from server.phases.distill import proxy_batches
from pipeline.contrib import play, prune_by, solo_scores
from pipeline.distill import redistil, save_pruned
from pipeline.proxy import proxy_manifest
from geodata.errors import InputError

__all__ = ["PHASE", "prune_phase"]

log = logging.getLogger(__name__)


def _features(cache: TeacherCache, sha: str, ids: list[str], labels: list[int]) -> FeatureSet:
    return FeatureSet(cache.get(sha, ids)["pooled"].float(), torch.tensor(labels), list(ids))


Splits = dict[str, list[TileEntry]]  # "train" (the probe's fit) and "test" (its score): a game's tiles


def _tile_features(ctx: PhaseContext, manifest: Manifest, sensor: str, splits: Splits,
                   extract: Callable[[DataLoader], dict[str, FeatureSet]]) -> dict[str, dict[str, FeatureSet]]:
    """``{part: {name: features}}`` on the tiles of each part of ``splits``; ``extract`` runs once per split."""
    rows: dict[str, dict[str, torch.Tensor]] = {}
    for split in sorted({t.split for tiles in splits.values() for t in tiles}):
        loader = labelled_loader(manifest, sensor, ctx.cfg.prune.task, split, batch_size=ctx.cfg.proxy.batch_size)
        for name, features in extract(loader).items():
            rows.setdefault(name, {}).update(zip(features.ids, features.pooled))
    return {part: {name: FeatureSet(torch.stack([by_id[t.id] for t in tiles]),
                                    torch.tensor([t.targets[ctx.cfg.prune.task] for t in tiles]), [t.id for t in tiles])
                   for name, by_id in rows.items()} for part, tiles in splits.items()}


def _twin_features(ctx: PhaseContext, registry: Registry, players: list[str], manifest: Manifest, sensor: str,
                   splits: Splits) -> dict[str, dict[str, FeatureSet]]:
    """``{split: {twin name: features}}`` of the players' random twins on the tiles of each split."""
    twins = Ensemble({twin_name(n): random_twin(registry.card(n), ctx.cfg.seed) for n in players},
                     tolerance_nm=ctx.cfg.tolerance_nm)
    return _tile_features(ctx, manifest, sensor, splits, lambda loader: extract_member_features(twins, loader))


def _games(ctx: PhaseContext, registry: Registry, manifest: Manifest,
           cache: TeacherCache) -> tuple[list[list[Contribution]], tuple | None, dict[str, Splits]]:
    """Contributions per proxy sensor, CKA between the players of the first game with several, and each
    game's tiles by sensor."""
    pc, tolerance = ctx.cfg.prune, ctx.cfg.tolerance_nm
    task = manifest.task(pc.task)
    if task.type != "classification":
        raise InputError(f"prune.task {pc.task!r} is a {task.type} task of the proxy data; choose a classification task")
    per_game, cka, played = [], None, {}
    for sensor in sorted({manifest.sensor(t.sensor).name for t in manifest.tiles}):
        tiles = manifest.select(sensor=sensor, task=pc.task)
        fit = [t for t in tiles if t.split == "train"]
        score = [t for t in tiles if t.split != "train"]
        bands = manifest.sensor(sensor).image_bands
        players = [e for e in registry.readers(bands, tolerance) if cache.has(e.weights_sha256, [t.id for t in tiles])]
        if not players or not fit or not score:
            continue
        train = {e.name: _features(cache, e.weights_sha256, [t.id for t in fit], [t.targets[pc.task] for t in fit])
                 for e in players}
        test = {e.name: _features(cache, e.weights_sha256, [t.id for t in score], [t.targets[pc.task] for t in score])
                for e in players}
        if pc.baseline == "random_twin":
            twins = _twin_features(ctx, registry, [e.name for e in players], manifest, sensor,
                                   {"train": fit, "test": score})
            train, test = train | twins["train"], test | twins["test"]
        scores, matrix = play(train, test, task, f"{pc.task}@{sensor}", pc, ctx.cfg.seed)
        per_game.append(scores)
        cka = cka or matrix
        played[sensor] = {"train": fit, "test": score}
    return per_game, cka, played


def _student_scores(ctx: PhaseContext, manifest: Manifest, played: dict[str, Splits],
                    students: dict[str, Student]) -> dict[str, float]:
    """Each student's probe score (the games' probe on its pooled features, alone), averaged over the games."""
    task, totals = manifest.task(ctx.cfg.prune.task), dict.fromkeys(students, 0.0)
    for sensor, splits in played.items():
        parts = _tile_features(ctx, manifest, sensor, splits,
                               lambda loader: {n: extract_features(s, loader) for n, s in students.items()})
        for name, score in solo_scores(parts["train"], parts["test"], task, ctx.cfg.prune, ctx.cfg.seed).items():
            totals[name] += score / len(played)
    return totals


def _redistil(ctx: PhaseContext, registry: Registry, pruned: Registry, manifest: Manifest, cache: TeacherCache,
              played: dict[str, Splits]) -> dict[str, Any]:
    """The pruned student (``student_pruned/``), distilled on the distill phase's proxy batches and teacher
    ``cache``, and its comparison with the full student."""
    batches, _ = proxy_batches(ctx, registry)
    config = dataclasses.replace(ctx.cfg.distill, epochs=ctx.cfg.prune.redistill_epochs)
    distilled = redistil(pruned, batches, cache, config, full=ctx.run_dir, seed=ctx.cfg.seed,
                         tolerance_nm=ctx.cfg.tolerance_nm, pair_scenes=ctx.cfg.proxy.pair_scenes)
    record = save_pruned(distilled, ctx.run_dir, ctx.run_dir / "student_pruned",
                         lambda students: _student_scores(ctx, manifest, played, students))
    log.info("Pruned student in student_pruned/: %s", {side: record[side] for side in ("full", "pruned")})
    return {"student": "student_pruned", "probe_task": f"{ctx.cfg.prune.task}, {ctx.cfg.prune.method} probe",
            **record}


def prune_phase(ctx: PhaseContext) -> dict[str, Any]:
    registry = Registry(ctx.registry_dir)
    manifest, key = proxy_manifest(ctx.cfg, ctx.cache_dir, sorted({e.sensor for e in registry.entries}))
    cache = TeacherCache(ctx.cache_dir / "teachers" / key)
    per_game, cka, played = _games(ctx, registry, manifest, cache)
    if not per_game:
        why = (f"not available: no proxy sensor has cached teacher features on both 'train' and other tiles with "
               f"task {ctx.cfg.prune.task!r} labels (proxy too small?); every specialist kept")
        log.warning("Pruning %s", why)
        return {"registry": None, "kept": registry.names, "dropped": [], "note": why, "report": None, "games": [],
                "scores": [], "redistill": None}
    scores = combine_contributions(per_game)
    out = ctx.run_dir / "registry_pruned"
    for folder in (out, ctx.run_dir / "student_pruned"):  # left by an attempt that stopped before recording
        if folder.exists():  # the phase: made again, from the same cache
            shutil.rmtree(folder)
    pruned, note = prune_by(registry, scores, out, ctx.cfg.prune, cka)
    report = (out / REPORT_MD).read_text()
    log.info("Pruning kept %s of %s\n%s", pruned.names, registry.names, report)
    dropped = [n for n in registry.names if n not in pruned.names]
    redistilled = (_redistil(ctx, registry, pruned, manifest, cache, played) if ctx.cfg.prune.redistill and dropped
                   else None)
    return {"registry": "registry_pruned", "kept": pruned.names, "dropped": dropped, "note": note,
            "report": "registry_pruned/prune_report.md", "games": [[c.to_dict() for c in g] for g in per_game],
            "scores": [c.to_dict() for c in sorted(scores, key=lambda c: c.shapley, reverse=True)],
            "redistill": redistilled}


PHASE = Phase("prune", prune_phase)
