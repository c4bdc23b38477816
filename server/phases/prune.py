"""Phase *prune*: each specialist's contribution, and the pruning decision, on the labelled proxy data.

For every proxy sensor, the specialists that can read it play a coalition game
(:func:`pipeline.contrib.play_games`, as ``eosfed prune`` does): a linear probe on
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
from typing import Any

from fusion.contrib import combine_contributions
from fusion.prune import REPORT_MD
from fusion.registry import Registry
from fusion.teacher_cache import TeacherCache
from geodata.manifest import Manifest
from server.phases.base import Phase, PhaseContext
from server.phases.distill import proxy_batches
from pipeline.contrib import Game, play_games, prune_by, student_scores
from pipeline.distill import redistil, save_pruned
from pipeline.proxy import proxy_manifest
from geodata.errors import InputError

__all__ = ["PHASE", "prune_phase"]

log = logging.getLogger(__name__)


def _games(ctx: PhaseContext, manifest: Manifest) -> list[Game]:
    """One game per proxy sensor: ``prune.task`` probed, fit on its ``train`` tiles and scored on the others."""
    name = ctx.cfg.prune.task
    task = manifest.task(name)
    if task.type != "classification":
        raise InputError(f"prune.task {name!r} is a {task.type} task of the proxy data; choose a classification task")
    games = []
    for sensor in sorted({manifest.sensor(t.sensor).name for t in manifest.tiles}):
        tiles = manifest.select(sensor=sensor, task=name)
        games.append(Game(name, sensor, [t for t in tiles if t.split == "train"],
                          [t for t in tiles if t.split != "train"]))
    return games


def _redistil(ctx: PhaseContext, registry: Registry, pruned: Registry, manifest: Manifest, cache: TeacherCache,
              played: list[Game]) -> dict[str, Any]:
    """The pruned student (``student_pruned/``), distilled on the distill phase's proxy batches and teacher
    ``cache``, and its comparison with the full student."""
    batches, _ = proxy_batches(ctx, registry)
    config = dataclasses.replace(ctx.cfg.distill, epochs=ctx.cfg.prune.redistill_epochs)
    distilled = redistil(pruned, batches, cache, config, full=ctx.run_dir, seed=ctx.cfg.seed,
                         tolerance_nm=ctx.cfg.tolerance_nm, pair_scenes=ctx.cfg.proxy.pair_scenes)
    record = save_pruned(distilled, ctx.run_dir, ctx.run_dir / "student_pruned",
                         lambda students: student_scores(played, manifest, students, ctx.cfg.prune, seed=ctx.cfg.seed,
                                                         batch_size=ctx.cfg.proxy.batch_size))
    log.info("Pruned student in student_pruned/: %s", {side: record[side] for side in ("full", "pruned")})
    return {"student": "student_pruned", "probe_task": f"{ctx.cfg.prune.task}, {ctx.cfg.prune.method} probe",
            **record}


def prune_phase(ctx: PhaseContext) -> dict[str, Any]:
    registry = Registry(ctx.registry_dir)
    manifest, key = proxy_manifest(ctx.cfg, ctx.cache_dir, sorted({e.sensor for e in registry.entries}))
    cache = TeacherCache(ctx.cache_dir / "teachers" / key)
    per_game, cka, played = play_games(_games(ctx, manifest), manifest, registry, ctx.cfg.prune, seed=ctx.cfg.seed,
                                       tolerance_nm=ctx.cfg.tolerance_nm, batch_size=ctx.cfg.proxy.batch_size,
                                       cache=cache)
    if not per_game:
        why = (f"not available: no proxy sensor has a specialist that reads it (its features cached or its weights "
               f"here) and both 'train' and other tiles with task {ctx.cfg.prune.task!r} labels (proxy too small?); "
               f"every specialist kept")
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
