"""Phase *evaluate*: every institution probes the student, and the ensemble where the coordinator holds
the weights, on its own labelled splits (``evaluate.fusion``); only scores come back.

Each institution gets the student's safetensors and card, plus the registry specialists that can
read its bands (views at ``tolerance_nm``) with their proxy feature statistics: by default only those
its own group trained (a partner's weights reach only the partners it trained with), every one with
``enrol.share_weights: true``; the result says which policy held and who got which weights. Replies
are checked (a list of probe results with finite scores in [0, 1]); a failed or malformed one is
reported and left out, and fewer valid replies than ``evaluate.min_replies`` fail the phase.

A node that hosts several institutions gets their requests in waves (its first institution's, then its
second's, ...): a file it received in an earlier answered request (the student, an identical ensemble)
is not sent again, only referred to (:mod:`wire.held`). Cards travel without their private fields
(:meth:`specialists.artifact.Card.shared`): no partner learns another's scores or counts.
"""

from __future__ import annotations

import logging
from typing import Any

from fusion.registry import Registry
from fusion.student import StudentCard
from server.messaging import Outcome, Request
from server.phases.base import Phase, PhaseContext
from pipeline.roster import Member
from specialists.artifact import CARD_FILE, WEIGHTS_FILE, read_card
from wire.held import held_ids, refer
from wire.messages import FUSION_FILES, EnsembleFiles, FusionEvalReply, FusionEvalRequest, ProbeSettings, StudentFiles
from geodata.errors import InputError

__all__ = ["PHASE", "evaluate"]

log = logging.getLogger(__name__)


def _ensemble(ctx: PhaseContext, registry: Registry, member: Member,
              built: dict[tuple[str, ...], EnsembleFiles]) -> EnsembleFiles | str:
    """The ensemble part of the request for ``member``, or why there is none; members given the same
    specialists share one :class:`EnsembleFiles` (``built``: its records are encoded once, whatever the
    number of institutions)."""
    tolerance = ctx.cfg.tolerance_nm
    readers = registry.readers(member.bands, tolerance)
    local = [e for e in readers if not e.holder]
    if not readers:
        return f"no specialist can read {member.sensor}"
    if not local:
        return "the weights of every specialist that can read it stay home"
    if not ctx.cfg.enrol.share_weights:
        local = [e for e in local if member.name in registry.card(e.name).institutions]
        if not local:
            return "no specialist of its own group can read it (enrol.share_weights is false)"
    names = tuple(entry.name for entry in local)
    if names in built:
        return built[names]
    cards, weights, stats = {}, {}, {}
    for entry in local:
        cards[entry.name] = registry.card(entry.name).shared().to_json()  # no member's counts or scores
        weights[entry.name] = (registry.root / entry.path / WEIGHTS_FILE).read_bytes()
        feature_stats = registry.feature_stats(entry.name)
        if feature_stats is not None:
            stats[entry.name] = feature_stats.to_tensors()
    built[names] = EnsembleFiles(cards, weights, stats, tolerance)
    return built[names]


def _in_waves(ctx: PhaseContext, requests: list[Request]) -> dict[str, Outcome]:
    """Exchange ``requests`` in waves of at most one per node; a request leaves out the files its node kept
    from an earlier answered one."""
    waves: list[list[Request]] = []
    ranks: dict[int, int] = {}
    for request in requests:
        rank = ranks[request.node_id] = ranks.get(request.node_id, -1) + 1
        if rank == len(waves):
            waves.append([])
        waves[rank].append(request)
    holds: dict[int, dict[str, str]] = {}  # node -> record name -> content id it keeps
    outcomes: dict[str, Outcome] = {}
    for wave in waves:
        sent = [Request(r.key, r.node_id, refer(r.content, holds.get(r.node_id, {}))) for r in wave]
        outcomes.update(ctx.exchange("evaluate.fusion", sent))
        for request in wave:
            if outcomes[request.key].ok:
                holds.setdefault(request.node_id, {}).update(held_ids(request.content, FUSION_FILES))
    return {r.key: outcomes[r.key] for r in requests}


def evaluate(ctx: PhaseContext) -> dict[str, Any]:
    roster = ctx.require_roster()
    registry = Registry(ctx.registry_dir)
    ec = ctx.cfg.evaluate
    student = ctx.run_dir / "student"
    card = read_card(student / CARD_FILE, StudentCard).shared()  # no group's hash or distillation record
    files = StudentFiles(card.to_json(), (student / WEIGHTS_FILE).read_bytes())
    built: dict[tuple[str, ...], EnsembleFiles] = {}  # per set of specialists: built (and encoded) once
    requests, no_ensemble, weights_sent = [], {}, {}
    for name, member in roster.institutions.items():
        ensemble = _ensemble(ctx, registry, member, built)
        if isinstance(ensemble, str):
            no_ensemble[name] = ensemble
        else:
            weights_sent[name] = list(ensemble.weights)
        probe = ProbeSettings(list(ec.fractions), list(ec.seeds), ec.batch_size, ctx.cfg.train.device, member.bands)
        request = FusionEvalRequest(member.record, probe, files, None if isinstance(ensemble, str) else ensemble)
        requests.append(Request(name, member.node_id, request.encode()))
    institutions, failures = {}, []
    for name, outcome in _in_waves(ctx, requests).items():
        source = f"evaluation at institution {name!r}"
        try:
            if not outcome.ok:
                raise InputError(f"{source}: {outcome.error}")
            reply = FusionEvalReply.decode(outcome.content, source)
        except ValueError as exc:
            log.warning("Left out %s", exc)
            failures.append({"phase": "evaluate", "institution": name, "reason": str(exc)})
            continue
        ctx.note_memory(name, reply.metrics)
        results = [r.to_dict() for r in reply.results]
        member = roster.institutions[name]
        institutions[name] = {"sensor": member.sensor, "task": member.task, "results": results}
        best = {r["encoder"]: r["mean"] for r in results if r["fraction"] == max(ec.fractions)}
        log.info("Institution %s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in best.items()))
    for name, why in no_ensemble.items():
        log.info("Institution %s: ensemble not evaluated (%s)", name, why)
    if len(institutions) < ec.min_replies:
        raise RuntimeError(f"{len(institutions)} institution(s) returned valid evaluations, evaluate.min_replies "
                           f"is {ec.min_replies}; failures: {failures}")
    policy = "shared with every reader" if ctx.cfg.enrol.share_weights else "own group only"
    return {"institutions": institutions, "ensemble_not_evaluated": no_ensemble, "failures": failures,
            "weights_sharing": {"policy": policy, "sent": weights_sent}}


PHASE = Phase("evaluate", evaluate)
