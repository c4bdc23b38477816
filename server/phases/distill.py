"""Phase *distill*: the coordinator distils the registry's specialists into one student on proxy data.

Teacher targets are cached once (``<cache_dir>/teachers/<proxy key>/``, fp16, keyed by sample and
weights sha256): specialists whose weights are in the registry run here; for one whose weights stay
home the coordinator sends its holder the proxy tiles it can read (``query.features``), already in the
specialist's own bands (the view's stand-ins in place: the holder needs no descriptor of another partner's
sensor), and caches the checked reply (every id it was sent, shapes from the card, finite in float16, ``pooled`` the mean
of ``stage3``); a teacher whose reply fails is left out with its reason in the phase's failures. With
``proxy.pair_scenes`` the other sensors' tiles of a scene learn the targets too. In integrate mode
the extended run's student and adaptor heads are the starting point. Writes ``student/``,
``adaptors/``, ``distill_history.json`` and ``plots/distill_loss.png``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from fusion.adaptors import TeacherRef
from fusion.data import ProxyBatches, proxy_sensors
from fusion.featstats import global_pool
from fusion.registry import Registry
from fusion.teacher_cache import TARGETS, TeacherCache, TeacherFeatures
from fusion.views import plan_view
from pipeline.distill import distil, save_distilled
from pipeline.proxy import proxy_manifest
from server.messaging import Outcome, Request
from server.phases.base import Phase, PhaseContext
from specialists.card import SpecialistCard
from wire.messages import FeaturesReply, FeaturesRequest
from geodata.errors import InputError

__all__ = ["PHASE", "distill", "proxy_batches"]

log = logging.getLogger(__name__)


def proxy_batches(ctx: PhaseContext, registry: Registry) -> tuple[ProxyBatches, str]:
    """Batches of the proxy data for every sensor the registry's specialists use, and the proxy's key."""
    manifest, key = proxy_manifest(ctx.cfg, ctx.cache_dir, sorted({e.sensor for e in registry.entries}))
    pc = ctx.cfg.proxy
    present = proxy_sensors(manifest, pc.split or None)
    resize = {s: px for s, px in pc.resize.items() if manifest.sensor(s).name in present}
    if len(resize) < len(pc.resize):
        log.info("proxy.resize: no proxy tiles of %s; ignored", sorted(set(pc.resize) - set(resize)))
    return ProxyBatches(manifest, split=pc.split or None, batch_size=pc.batch_size, seed=ctx.cfg.seed,
                        resize=resize), key


def _remote_request(ctx: PhaseContext, card: SpecialistCard, holder: str,
                    batches: list[dict]) -> tuple[Request, list[str], tuple[int, int]] | None:
    images, ids, bands = [], [], None
    for batch in batches:
        plan = plan_view(card.name, card.descriptors(), batch["bands"], ctx.cfg.tolerance_nm)
        if plan.applicable and (bands is None or tuple(batch["bands"]) == bands):
            bands = tuple(batch["bands"])
            images.append(plan.select(batch["image"]))  # the holder gets its own bands, stand-ins in place
            ids.extend(batch["id"])
    if not ids:
        return None
    member = ctx.require_roster().institutions[holder]
    request = FeaturesRequest(member.record, card.weights_sha256, list(card.bands), ids, ctx.cfg.tolerance_nm,
                              torch.cat(images))
    return Request(card.name, member.node_id, request.encode()), ids, tuple(request.images.shape[-2:])


def _remote_features(outcome: Outcome, card: SpecialistCard, sent: list[str], size: tuple[int, int],
                     source: str) -> TeacherFeatures:
    """The checked reply to a features request for ``sent`` (images of ``size``): every sent id once,
    each target of the card's channels and strides, within float16's range, and ``pooled`` the spatial
    mean of ``stage3`` (as the teacher computes it); ``ValueError`` naming ``source`` and what is wrong."""
    if not outcome.ok:
        raise InputError(f"{source}: {outcome.error}")
    reply = FeaturesReply.decode(outcome.content, source)  # rows match the ids, values finite
    if sorted(reply.ids) != sorted(sent):
        raise InputError(f"{source}: reply ids are not the {len(sent)} ids sent "
                         f"({len(set(sent) - set(reply.ids))} missing, {len(set(reply.ids) - set(sent))} unexpected)")
    (h2, h3), n = card.feature_reductions[-2:], len(sent)
    shapes = {"stage2": [n, card.feature_dims[-2], size[0] // h2, size[1] // h2],
              "stage3": [n, card.feature_dims[-1], size[0] // h3, size[1] // h3], "pooled": [n, card.feature_dims[-1]]}
    targets = {}
    for name in TARGETS:
        value = reply.targets.get(name)
        if value is None or list(value.shape) != shapes[name]:
            raise InputError(f"{source}: target {name!r} should be {shapes[name]}, "
                             f"got {None if value is None else list(value.shape)}")
        targets[name] = value.half()
        if not bool(torch.isfinite(targets[name]).all()):
            raise InputError(f"{source}: target {name!r} has values beyond the float16 range")
    if not torch.allclose(global_pool(targets["stage3"].float()), targets["pooled"].float(), rtol=0.05, atol=0.05):
        raise InputError(f"{source}: target 'pooled' is not the spatial mean of 'stage3'")
    return TeacherFeatures(reply.ids, targets)


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
        sent[entry.name] = (built[1], built[2], card, entry.holder, ref)
    for name, outcome in ctx.exchange("query.features", requests).items():
        ids, size, card, holder, ref = sent[name]
        source = f"teacher features of {name!r} from institution {holder!r}"
        try:
            cache.put(card.weights_sha256, _remote_features(outcome, card, ids, size, source))
            refs.append(ref)
        except ValueError as exc:
            log.warning("Refused %s", exc)
            failures.append({"phase": "distill", "institution": holder, "group": name, "reason": str(exc)})
    return refs


def distill(ctx: PhaseContext) -> dict[str, Any]:
    registry = Registry(ctx.registry_dir)
    batches, key = proxy_batches(ctx, registry)
    cache = TeacherCache(ctx.cache_dir / "teachers" / key)
    failures: list[dict[str, Any]] = []
    remote = _fetch_remote(ctx, registry, batches, cache, failures)
    distilled = distil(registry, batches, cache, ctx.cfg.distill, seed=ctx.cfg.seed, tolerance_nm=ctx.cfg.tolerance_nm,
                       name=f"student-{ctx.run_dir.name}", pair_scenes=ctx.cfg.proxy.pair_scenes,
                       init=ctx.integrated_run_dir, remote=remote)
    save_distilled(distilled, ctx.run_dir, ctx.run_dir / "plots" / "distill_loss.png")
    teachers = list(distilled.adaptors.teachers)
    remote_names = [r.name for r in remote]
    return {"student": "student", "weights_sha256": distilled.student.card.weights_sha256, "proxy": key,
            "proxy_tiles": len(batches.manifest.tiles), "teachers": teachers,
            "local_teachers": [t for t in teachers if t not in remote_names], "remote_teachers": remote_names,
            "warm_start": ctx.cfg.integrate or None, "history": distilled.history.to_dict(),
            "plot": "plots/distill_loss.png", "failures": failures}


PHASE = Phase("distill", distill)
