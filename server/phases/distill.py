"""Phase *distill*: the coordinator distils the registry's specialists into one student on proxy data.

Teacher targets are cached once (``<cache_dir>/teachers/<proxy key>/``, fp16, keyed by sample and
weights sha256): specialists whose weights are in the registry run here; for one whose weights stay
home the coordinator sends its holder the proxy tiles it can read (``query.features``) and caches
the checked reply (ids it was sent, shapes from the card, finite values). With
``proxy.pair_scenes`` the other sensors' tiles of a scene learn the targets too. In integrate mode
the extended run's student and adaptor heads are the starting point. Writes ``student/``,
``adaptors/``, ``distill_history.json`` and ``plots/distill_loss.png``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from fusion.adaptors import TeacherRef, load_adaptors, save_adaptors
from fusion.data import ProxyBatches, scene_partners
from fusion.ensemble import Ensemble
from fusion.distill import DistillConfig, distill_student, plot_history
from fusion.registry import Registry
from fusion.student import Student, band_stats_table, load_student, save_student
from fusion.teacher_cache import TARGETS, TeacherCache, TeacherFeatures, fill_cache
from fusion.views import plan_view
from geodata.files import atomic_write_text
from server.messaging import Outcome, Request
from server.phases.base import Phase, PhaseContext
from server.proxy import proxy_manifest
from specialists.card import SpecialistCard
from wire.messages import FeaturesReply, FeaturesRequest

__all__ = ["PHASE", "distill"]

log = logging.getLogger(__name__)


def _proxy_batches(ctx: PhaseContext, registry: Registry) -> tuple[ProxyBatches, str]:
    """Batches of the proxy data for every sensor the registry's specialists use, and the proxy's key."""
    manifest, key = proxy_manifest(ctx.cfg, ctx.cache_dir, sorted({e.sensor for e in registry.entries}))
    pc = ctx.cfg.proxy
    return ProxyBatches(manifest, split=pc.split or None, batch_size=pc.batch_size, seed=ctx.cfg.seed), key


def _remote_request(ctx: PhaseContext, card: SpecialistCard, holder: str,
                    batches: list[dict]) -> tuple[Request, list[str]] | None:
    images, ids, bands = [], [], None
    for batch in batches:
        plan = plan_view(card.name, card.bands, batch["bands"], ctx.cfg.distill.tolerance_nm)
        if plan.applicable and (bands is None or tuple(batch["bands"]) == bands):
            bands = tuple(batch["bands"])
            images.append(batch["image"])
            ids.extend(batch["id"])
    if not ids:
        return None
    member = ctx.require_roster().institutions[holder]
    request = FeaturesRequest(member.record, card.weights_sha256, list(bands), ids, ctx.cfg.distill.tolerance_nm,
                              torch.cat(images))
    return Request(card.name, member.node_id, request.encode()), ids


def _remote_features(outcome: Outcome, card: SpecialistCard, sent: list[str], source: str) -> TeacherFeatures:
    if not outcome.ok:
        raise ValueError(f"{source}: {outcome.error}")
    reply = FeaturesReply.decode(outcome.content, source)  # rows match the ids, values finite
    if set(reply.ids) - set(sent):
        raise ValueError(f"{source}: reply ids were not sent")
    dims = {"stage2": card.feature_dims[-2], "stage3": card.feature_dims[-1], "pooled": card.feature_dims[-1]}
    for name in TARGETS:
        value = reply.targets.get(name)
        if value is None or value.shape[1] != dims[name]:
            raise ValueError(f"{source}: target {name!r} should have {dims[name]} channels, "
                             f"got {None if value is None else list(value.shape)}")
    return TeacherFeatures(reply.ids, {name: reply.targets[name].half() for name in TARGETS})


def _fetch_remote(ctx: PhaseContext, registry: Registry, batches: ProxyBatches, cache: TeacherCache,
                  failures: list[dict[str, Any]]) -> list[TeacherRef]:
    roster = ctx.require_roster()
    requests, sent, refs = [], {}, []
    proxy: list[dict] | None = None  # the proxy tiles, read once for every remote teacher that needs them
    for entry in registry.entries:
        if not entry.holder:
            continue
        card = registry.card(entry.name)
        ref = TeacherRef(entry.name, entry.weights_sha256, tuple(card.feature_dims))
        if cache.num_samples(entry.weights_sha256):
            refs.append(ref)
            continue
        if entry.holder not in roster.institutions:
            failures.append({"phase": "distill", "institution": entry.holder, "group": entry.name,
                             "reason": "holder is not in this run; its specialist cannot teach"})
            continue
        proxy = list(batches) if proxy is None else proxy
        built = _remote_request(ctx, card, entry.holder, proxy)
        if built is None:
            failures.append({"phase": "distill", "institution": entry.holder, "group": entry.name,
                             "reason": "no proxy tile it can read"})
            continue
        requests.append(built[0])
        sent[entry.name] = (built[1], card, entry.holder, ref)
    for name, outcome in ctx.exchange("query.features", requests).items():
        ids, card, holder, ref = sent[name]
        source = f"teacher features of {name!r} from institution {holder!r}"
        try:
            cache.put(card.weights_sha256, _remote_features(outcome, card, ids, source))
            refs.append(ref)
        except ValueError as exc:
            log.warning("Refused %s", exc)
            failures.append({"phase": "distill", "institution": holder, "group": name, "reason": str(exc)})
    return refs


def _student(ctx: PhaseContext, batches: ProxyBatches):
    proxy_stats = band_stats_table(batches.stats.values())
    previous = ctx.integrated_run_dir
    if previous is not None:
        student = load_student(previous / "student")
        student.set_band_stats({**proxy_stats, **student.card.band_stats})
        log.info("Integrate mode: student warm-started from run %s", ctx.cfg.integrate)
        return student, load_adaptors(previous / "adaptors")
    dc = ctx.cfg.distill
    return Student.create(dc.variant, proxy_stats, name=f"student-{ctx.run_dir.name}", seed=ctx.cfg.seed), None


def distill(ctx: PhaseContext) -> dict[str, Any]:
    registry = Registry(ctx.registry_dir)
    dc = ctx.cfg.distill
    batches, key = _proxy_batches(ctx, registry)
    cache = TeacherCache(ctx.cache_dir / "teachers" / key)
    failures: list[dict[str, Any]] = []
    local = registry.load_all()
    uncalibrated = [n for n in local if registry.feature_stats(n) is None]
    if uncalibrated:  # the ensemble's standardisation, measured once on the proxy data
        for name, stats in Ensemble({n: local[n] for n in uncalibrated}, tolerance_nm=dc.tolerance_nm
                                    ).calibrate(batches).items():
            registry.save_feature_stats(name, stats)
    extractions = fill_cache(cache, local, batches, dc.tolerance_nm)
    remote = _fetch_remote(ctx, registry, batches, cache, failures)
    if not local and not remote:
        raise RuntimeError(f"no teacher has features on the proxy data; failures: {failures}")
    if ctx.cfg.proxy.pair_scenes:
        cache.share(scene_partners(batches.manifest, split=ctx.cfg.proxy.split or None))
    student, adaptors = _student(ctx, batches)
    config = DistillConfig(epochs=dc.epochs, lr=dc.lr, drop_prob=dc.drop_prob, seed=ctx.cfg.seed, device=dc.device)
    adaptors, history = distill_student(student, local, batches, cache, config, adaptors, remote, dc.tolerance_nm)
    history.teacher_extractions += extractions
    save_student(student.cpu(), ctx.run_dir / "student")
    save_adaptors(adaptors.cpu(), ctx.run_dir / "adaptors")
    atomic_write_text(ctx.run_dir / "distill_history.json", json.dumps(history.to_dict(), indent=1))
    plot_history(history, ctx.run_dir / "plots" / "distill_loss.png")
    log.info("Student distilled from %s (final loss %.4f): %s", ", ".join(adaptors.teachers),
             history.total[-1], ctx.run_dir / "student")
    return {"student": "student", "weights_sha256": student.card.weights_sha256, "proxy": key,
            "proxy_tiles": len(batches.manifest.tiles), "teachers": list(adaptors.teachers),
            "local_teachers": list(local), "remote_teachers": [r.name for r in remote],
            "warm_start": ctx.cfg.integrate or None, "history": history.to_dict(),
            "plot": "plots/distill_loss.png", "failures": failures}


PHASE = Phase("distill", distill)
