"""Phase *train*: each group trains one specialist with FedAvg (a lone institution: local training).

The coordinator builds the group's card (reported bands, the members' train-split band statistics
pooled, task, classes, variant) and a seeded initial encoder and head; the encoder is the one phase
*pretrain* made for the group, when it made one (checked against its recorded sha256; the card's
``extra["pretrain"]`` says so). Each round it sends the
global weights to every member (``train.specialist``); a member first measures them on its ``val``
split, then trains ``train.local_epochs`` epochs and returns its weights. Replies are checked (same
tensors, shapes, dtypes, finite values, positive example count) and averaged weighted by train
examples; a bad or missing reply is logged and left out. With ``train.dp`` the updates are clipped (by the
members, ``client``: the request carries the norm and a longer update is refused; or here, ``server``) and
each round's average noised; the group's epsilon goes in its result and card (:mod:`pipeline.privacy`).
Groups are exchanged together in batches of at most :data:`MAX_MEMBERS_AT_ONCE` members (a larger group
in chunks of that many), each batch's requests sharing one encoding of each group's weights and its replies
decoded and released before the next batch, so the coordinator's memory grows with the batch and the
largest group's decoded updates (the screen and robust aggregation see every member's), not with the federation.
After the last round every member measures the final weights on ``val`` and ``test``
(``evaluate.specialist``) and keeps them in its store (:mod:`clients.store`); the coordinator keeps only
the card, with the weights' sha256, metrics and round history, in ``specialists/<group>/card.json`` (phase *enrol* brings the weights, or not).
A group whose card an earlier attempt saved is not trained again; in integrate mode neither is a
group already enrolled in the extended run's registry.
"""

from __future__ import annotations

import logging
from typing import Any

from geodata.files import atomic_write_text
from pipeline.fedavg import GroupTraining, Update, round_config
from server.messaging import Outcome, Request
from server.phases.base import Phase, PhaseContext, integrated_cards
from server.phases.pretrain import pretrained_start
from specialists.card import SpecialistCard
from specialists.train import MONITOR, TrainConfig
from wire.messages import EvaluateReply, EvaluateRequest, RoundTraining, TrainReply, TrainRequest
from geodata.errors import InputError

__all__ = ["PHASE", "train"]

log = logging.getLogger(__name__)
MAX_MEMBERS_AT_ONCE = 16  # requests (and replies) of at most this many members in flight; a larger group in chunks
Part = tuple[GroupTraining, list[str]]  # a group's training and some of its members


def _requests(ctx: PhaseContext, parts: list[Part], config: TrainConfig, keep: bool = False) -> list[Request]:
    """One request per member of ``parts``; a part's members share one encoding of the group's weights."""
    roster = ctx.require_roster()
    dp = ctx.cfg.train.dp
    settings = RoundTraining.of(config, dp.clipping_norm if dp.mode == "client" and not keep else 0.0)
    requests = []
    for run, names in parts:
        members = [roster.institutions[name] for name in names]
        job = (members[0].record, run.card.shared().to_json(), settings, run.encoder, run.head)  # no member's counts
        message = EvaluateRequest(*job, keep=True) if keep else TrainRequest(*job)
        for member, content in zip(members, message.encode_each(m.record for m in members), strict=True):
            requests.append(Request(f"{run.group.name}/{member.name}", member.node_id, content))
    return requests


def _reply(ctx: PhaseContext, outcome: Outcome, reply: type[TrainReply | EvaluateReply], source: str,
           institution: str) -> TrainReply | EvaluateReply:
    """The decoded reply of a member (its peak memory noted); ``ValueError`` when it failed."""
    if not outcome.ok:
        raise InputError(outcome.error)
    decoded = reply.decode(outcome.content, source)
    ctx.note_memory(institution, decoded.metrics)
    return decoded


def _update(ctx: PhaseContext, run: GroupTraining, outcome: Outcome, source: str, institution: str) -> Update:
    reply = _reply(ctx, outcome, TrainReply, source, institution)
    return run.check(Update(institution, reply.encoder, reply.head, reply.metrics), source)


def _batches(runs: list[GroupTraining], most: int) -> list[list[Part]]:
    """``runs``' members in consecutive batches of at most ``most``: whole groups packed together, a larger
    group in chunks of ``most`` members (its last chunk packed with the groups after it). The coordinator
    holds one batch's requests and replies at a time (each request refers to its group's weights, each
    reply carries a member's), besides the decoded updates of the groups whose round is not complete."""
    batches: list[list[Part]] = []
    size = most
    for run in runs:
        members = list(run.group.members)
        chunks = [members] if len(members) <= most else [members[i:i + most] for i in range(0, len(members), most)]
        for chunk in chunks:
            if size + len(chunk) > most:
                batches.append([])
                size = 0
            batches[-1].append((run, chunk))
            size += len(chunk)
    return batches


def _round(ctx: PhaseContext, runs: list[GroupTraining], r: int, failures: list[dict[str, Any]]) -> None:
    """One round of every group, a batch of members at a time: each reply decoded (checked) as its batch
    returns and its message released; a group's updates screened and aggregated once all its members answered."""
    config = round_config(ctx.cfg.train, ctx.cfg.seed, r)
    updates: dict[str, list[Update]] = {run.group.name: [] for run in runs}
    waiting = {run.group.name: len(run.group.members) for run in runs}
    for batch in _batches(runs, MAX_MEMBERS_AT_ONCE):
        outcomes = ctx.exchange("train.specialist", _requests(ctx, batch, config))
        for run, names in batch:
            for name in names:
                source = f"round {r}, institution {name!r}"
                try:
                    updates[run.group.name].append(_update(ctx, run, outcomes.pop(f"{run.group.name}/{name}"),
                                                           source, name))
                except ValueError as exc:
                    log.warning("Rejected %s: %s", source, exc)
                    failures.append({"phase": "train", "round": r, "institution": name, "reason": str(exc)})
            waiting[run.group.name] -= len(names)
            if waiting[run.group.name] == 0:
                for name, reason in run.apply(r, config.lr, updates.pop(run.group.name))["refused"].items():
                    failures.append({"phase": "train", "round": r, "institution": name, "reason": reason})
        del outcomes


def _finish(ctx: PhaseContext, run: GroupTraining, outcomes: dict[str, Outcome],
            failures: list[dict[str, Any]]) -> dict[str, Any]:
    per_member = {}
    for name in run.group.members:
        source = f"final evaluation, institution {name!r}"
        try:
            per_member[name] = _reply(ctx, outcomes[f"{run.group.name}/{name}"], EvaluateReply, source, name).metrics
        except ValueError as exc:
            log.warning("%s failed: %s", source, exc)
            failures.append({"phase": "train", "round": "final", "institution": name, "reason": str(exc)})
    card = run.finish(per_member, ctx.cfg.train)
    path = ctx.card_path(run.group.name)
    atomic_write_text(path, card.to_json())
    monitor = f"test_{MONITOR[card.task_type]}"
    value = card.metrics.get(monitor)
    log.info("Specialist %s (sha256 %s...) kept by %s; card in %s (%s %s)", card.name, card.weights_sha256[:12],
             ", ".join(card.extra["kept_by"]) or "nobody", path, monitor, "n/a" if value is None else f"{value:.4f}")
    return _group_result(card)


def _group_result(card: SpecialistCard) -> dict[str, Any]:
    return {"specialist": f"specialists/{card.name}", "weights_sha256": card.weights_sha256,
            "members": list(card.institutions), "kept_by": card.extra.get("kept_by", []), "metrics": card.metrics,
            "dp": card.extra.get("dp"),
            **{k: card.extra["federation"][k] for k in ("rounds_applied", "per_institution", "history")}}


def train(ctx: PhaseContext) -> dict[str, Any]:
    roster = ctx.require_roster()
    results: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    runs = []
    earlier = integrated_cards(ctx)
    for group in roster.groups.values():
        path = ctx.card_path(group.name)
        if group.name in earlier:
            log.info("Group %s: enrolled in run %s, not trained again", group.name, ctx.cfg.integrate)
            results[group.name] = {"integrated_from": ctx.cfg.integrate,
                                   "weights_sha256": earlier[group.name].weights_sha256, "members": group.members}
            continue
        if path.is_file():
            card = SpecialistCard.from_json(path.read_text(), source=str(path))
            if sorted(card.institutions) == sorted(group.members):
                log.info("Group %s: specialist already trained (card %s)", group.name, path)
                results[group.name] = _group_result(card)
                continue
        try:
            run = GroupTraining.start(group, [roster.institutions[m] for m in group.members], ctx.cfg.train,
                                      ctx.cfg.seed, tolerance_nm=ctx.cfg.tolerance_nm)
            pretrained = pretrained_start(ctx, group.name)
            if pretrained is not None:
                run.start_from(*pretrained)
                log.info("Group %s: starts from its pretrained encoder (%s, sha256 %s...)", group.name,
                         pretrained[1]["method"], pretrained[1]["sha256"][:12])
            runs.append(run)
        except ValueError as exc:  # one group's bad start must not stop the others
            log.error("Group %s: cannot start training: %s", group.name, exc)
            failures.append({"phase": "train", "group": group.name, "institution": None, "reason": str(exc)})
            results[group.name] = {"specialist": None, "members": group.members, "history": []}
    for r in range(1, ctx.cfg.train.rounds + 1):
        if runs:
            _round(ctx, runs, r, failures)
    trained = [run for run in runs if run.rounds_done > 0]
    for run in runs:
        if run.rounds_done == 0:
            log.error("Group %s: no round got enough valid updates; no specialist", run.group.name)
            results[run.group.name] = {"specialist": None, "members": run.group.members, "history": run.history}
    if trained:
        config = round_config(ctx.cfg.train, ctx.cfg.seed, ctx.cfg.train.rounds)
        for run in trained:
            run.seal()
        outcomes: dict[str, Outcome] = {}
        waiting = {run.group.name: len(run.group.members) for run in trained}
        for batch in _batches(trained, MAX_MEMBERS_AT_ONCE):
            outcomes.update(ctx.exchange("evaluate.specialist", _requests(ctx, batch, config, keep=True)))
            for run, names in batch:
                waiting[run.group.name] -= len(names)
                if waiting[run.group.name] == 0:
                    results[run.group.name] = _finish(ctx, run, outcomes, failures)
    return {"groups": results, "failures": failures}


PHASE = Phase("train", train)
