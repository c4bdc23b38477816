"""Phase *enrol*: each trained group's specialist reaches the coordinator's registry (``registry/``).

The coordinator asks an institution that keeps the group's specialist (``query.enrol``; the next
keeper if one fails) for it by the sha256 on the card it recorded in phase *train*. With
``enrol.weights: send`` the reply carries the safetensors weights: refused if bigger than
``enrol.max_upload_mb``, then checked like a file load (hash, bands, tensor names and shapes, finite
values) and against the recorded card (same sha256, sensor and bands) before the registry takes it.
With ``enrol.weights: home`` only the card comes back and is enrolled with its keeper as holder;
later phases ask the holder for features. In integrate mode the registry starts as a byte-identical
copy of the extended run's registry.
"""

from __future__ import annotations

import logging
from typing import Any

from fusion.registry import Registry
from server.messaging import Outcome, Request
from server.phases.base import Phase, PhaseContext
from specialists.card import SpecialistCard
from specialists.io import specialist_from_bytes
from wire.messages import EnrolReply, EnrolRequest
from geodata.errors import InputError

__all__ = ["PHASE", "enrol", "open_registry"]

log = logging.getLogger(__name__)


def open_registry(ctx: PhaseContext) -> Registry:
    """The run's registry; created empty, or in integrate mode as a copy of the extended run's."""
    if (ctx.registry_dir / "index.json").exists():
        return Registry(ctx.registry_dir)
    if ctx.integrated_run_dir is not None:
        source = Registry(ctx.integrated_run_dir / "registry")
        log.info("Integrate mode: registry starts from run %s (%s)", ctx.cfg.integrate, ", ".join(source.names))
        return source.subset(source.names, ctx.registry_dir)
    return Registry.create(ctx.registry_dir)


def _recorded_card(ctx: PhaseContext, group: str) -> SpecialistCard:
    path = ctx.card_path(group)
    return SpecialistCard.from_json(path.read_text(), source=str(path))


def _check_card(received: SpecialistCard, expected: SpecialistCard, source: str) -> None:
    for field in ("weights_sha256", "sensor", "bands", "variant", "task"):
        got, want = getattr(received, field), getattr(expected, field)
        if got != want:
            raise InputError(f"{source}: card field {field!r} is {got!r}, the coordinator recorded {want!r}")


def _admit(ctx: PhaseContext, registry: Registry, group: str, holder: str, outcome: Outcome) -> dict[str, Any]:
    source = f"enrolment of {group!r} from institution {holder!r}"
    if not outcome.ok:
        raise InputError(f"{source}: {outcome.error}")
    expected = _recorded_card(ctx, group)
    reply = EnrolReply.decode(outcome.content, source, int(ctx.cfg.enrol.max_upload_mb * 2**20))
    if ctx.cfg.enrol.weights == "home":
        received = SpecialistCard.from_json(reply.card, source=f"{source} card")
        _check_card(received, expected, source)
        registry.add_card(expected, holder, name=group)
        return {"holder": holder, "weights_sha256": expected.weights_sha256, "weights_bytes": 0}
    if reply.weights is None:
        raise InputError(f"{source}: reply has no 'weights'")
    specialist = specialist_from_bytes(reply.card, reply.weights, source)
    _check_card(specialist.card, expected, source)
    specialist.card = expected  # the coordinator's card (metrics, history) with the verified weights
    registry.add(specialist, name=group)
    return {"holder": holder, "weights_sha256": expected.weights_sha256, "weights_bytes": len(reply.weights)}


def enrol(ctx: PhaseContext) -> dict[str, Any]:
    roster = ctx.require_roster()
    registry = open_registry(ctx)
    carried = registry.names if ctx.cfg.integrate else []
    trained = ctx.checkpoint.result("train")["groups"]
    keepers = {g: list(r.get("kept_by", [])) for g, r in trained.items()
               if r.get("specialist") and g not in registry}
    enrolled: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    send = ctx.cfg.enrol.weights == "send"
    while keepers:
        asked = {g: holders.pop(0) for g, holders in keepers.items() if holders}
        if not asked:
            break
        requests = []
        for group, holder in asked.items():
            member = roster.institutions.get(holder)
            if member is None:
                failures.append({"phase": "enrol", "institution": holder, "reason": "not in this run's roster"})
                continue
            request = EnrolRequest(member.record, _recorded_card(ctx, group).weights_sha256, send)
            requests.append(Request(group, member.node_id, request.encode()))
        for group, outcome in ctx.exchange("query.enrol", requests).items():
            try:
                enrolled[group] = _admit(ctx, registry, group, asked[group], outcome)
                log.info("Enrolled %s from %s (%s)", group, asked[group], "weights" if send else "card only")
            except ValueError as exc:
                log.warning("Refused %s", exc)
                failures.append({"phase": "enrol", "institution": asked[group], "group": group, "reason": str(exc)})
        keepers = {g: h for g, h in keepers.items() if g not in enrolled and h}
    missing = [g for g, r in trained.items() if r.get("specialist") and g not in registry]
    for group in missing:
        log.error("Group %s: no keeper delivered a valid specialist; it is not enrolled", group)
    if not len(registry):
        untrained = {g: r.get("history", []) and r["history"][-1].get("skipped") for g, r in trained.items()
                     if not r.get("specialist")}
        raise RuntimeError(f"no specialist could be enrolled; enrolment failures: {failures}; groups without a "
                           f"trained specialist: {untrained} (see phases/train.json failures)")
    return {"mode": ctx.cfg.enrol.weights, "registry": "registry", "specialists": registry.names,
            "carried_from": ctx.cfg.integrate or None, "carried": carried, "enrolled": enrolled,
            "not_enrolled": missing, "failures": failures}


PHASE = Phase("enrol", enrol)
