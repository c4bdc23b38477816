"""Phase *train*: each group trains one specialist with FedAvg (a lone institution: local training).

The coordinator builds the group's card (reported bands, the members' train-split band statistics
pooled, task, classes, variant) and a seeded initial encoder and head. Each round it sends the
global weights to every member (``train.specialist``); a member first measures them on its ``val``
split, then trains ``train.local_epochs`` epochs and returns its weights. Replies are checked (same
tensors, shapes, dtypes, finite values, positive example count) and averaged weighted by train
examples; a bad or missing reply is logged and left out. After the last round every member
measures the final weights on ``val`` and ``test`` (``evaluate.specialist``) and keeps them in its
store (:mod:`clients.store`); the coordinator keeps only the card, with the weights' sha256, metrics
and round history, in ``specialists/<group>/card.json`` (phase *enrol* brings the weights, or not).
A group whose card an earlier attempt saved is not trained again; in integrate mode neither is a
group already enrolled in the extended run's registry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fusion.registry import Registry, RegistryError
from geodata.files import atomic_write_text
from server.aggregate import State, check_state, fedavg, pool_norm, weighted_metrics
from server.messaging import Outcome, Request
from server.phases.base import Phase, PhaseContext
from server.roster import Group, Roster
from specialists.card import SpecialistCard
from specialists.heads import build_head
from specialists.io import specialist_to_bytes
from specialists.model import Specialist
from specialists.train import MONITOR
from wire.messages import EvaluateReply, EvaluateRequest, TrainReply, TrainRequest, TrainSettings

__all__ = ["PHASE", "train", "group_card", "integrated_cards"]

log = logging.getLogger(__name__)


def group_card(group: Group, roster: Roster, variant: str) -> SpecialistCard:
    """The card a group's specialist starts from (metrics are filled in after training)."""
    members = [roster.institutions[name] for name in group.members]
    counts = [m.summary["tiles"]["train"] for m in members]
    mean, std = pool_norm([m.summary["norm"]["mean"] for m in members],
                          [m.summary["norm"]["std"] for m in members], counts)
    tiles: dict[str, int] = {}
    for m in members:
        for split, n in m.summary["tiles"].items():
            tiles[split] = tiles.get(split, 0) + n
    return SpecialistCard(
        name=group.name, institutions=list(group.members), sensor=group.sensor,
        bands=list(members[0].bands), norm_mean=mean, norm_std=std, task=group.task,
        task_type=group.task_type, classes=list(group.classes), variant=variant,
        data_summary={"tiles": tiles, "institutions": {m.name: m.summary["tiles"] for m in members}},
    )


@dataclass
class _GroupRun:
    group: Group
    card: SpecialistCard
    encoder: State
    head: State
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds_done: int = 0


def _state(module: torch.nn.Module) -> State:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _start(group: Group, roster: Roster, ctx: PhaseContext) -> _GroupRun:
    card = group_card(group, roster, ctx.cfg.train.variant)
    torch.manual_seed(ctx.cfg.seed)
    specialist = Specialist.from_card(card)
    head = build_head(card.task_type, specialist.feature_dims, card.num_classes)
    return _GroupRun(group, card, _state(specialist.encoder), _state(head))


def _train_record(ctx: PhaseContext, round_index: int) -> dict[str, Any]:
    tc = ctx.cfg.train
    lr = tc.lr * 0.5 * (1 + math.cos(math.pi * (round_index - 1) / tc.rounds))
    return {"epochs": tc.local_epochs, "batch_size": tc.batch_size, "lr": lr, "weight_decay": tc.weight_decay,
            "seed": ctx.cfg.seed * 1000 + round_index, "device": tc.device, "amp": tc.amp,
            "max_steps": tc.max_steps}


def _requests(ctx: PhaseContext, runs: list[_GroupRun], train_record: dict[str, Any],
              keep: bool = False) -> list[Request]:
    roster = ctx.require_roster()
    settings = TrainSettings(**train_record)
    requests = []
    for run in runs:
        card_json = run.card.to_json()
        for name in run.group.members:
            member = roster.institutions[name]
            job = (member.record, card_json, settings, run.encoder, run.head)
            message = EvaluateRequest(*job, keep=True) if keep else TrainRequest(*job)
            requests.append(Request(f"{run.group.name}/{name}", member.node_id, message.encode()))
    return requests


def _reply(ctx: PhaseContext, outcome: Outcome, reply: type[TrainReply | EvaluateReply], source: str,
           institution: str) -> TrainReply | EvaluateReply:
    """The decoded reply of a member (its peak memory noted); ``ValueError`` when it failed."""
    if not outcome.ok:
        raise ValueError(outcome.error)
    decoded = reply.decode(outcome.content, source)
    ctx.note_memory(institution, decoded.metrics)
    return decoded


def _update(ctx: PhaseContext, run: _GroupRun, outcome: Outcome, source: str,
            institution: str) -> tuple[State, State, dict[str, float]]:
    reply = _reply(ctx, outcome, TrainReply, source, institution)
    encoder = check_state(run.encoder, reply.encoder, f"{source} encoder")
    head = check_state(run.head, reply.head, f"{source} head")
    return encoder, head, reply.metrics


def _round(ctx: PhaseContext, runs: list[_GroupRun], r: int, failures: list[dict[str, Any]]) -> None:
    tc = ctx.cfg.train
    outcomes = ctx.exchange("train.specialist", _requests(ctx, runs, _train_record(ctx, r)))
    for run in runs:
        updates, per_member = [], {}
        for name in run.group.members:
            source = f"round {r}, institution {name!r}"
            try:
                encoder, head, metrics = _update(ctx, run, outcomes[f"{run.group.name}/{name}"], source, name)
            except ValueError as exc:
                log.warning("Rejected %s: %s", source, exc)
                failures.append({"phase": "train", "round": r, "institution": name, "reason": str(exc)})
                continue
            updates.append((encoder, head, metrics["num_examples"]))
            per_member[name] = metrics
        record = {"round": r, "lr": _train_record(ctx, r)["lr"], "institutions": per_member,
                  "received": weighted_metrics({k: {m: v for m, v in x.items() if m.startswith("val_")}
                                                for k, x in per_member.items()})}
        if len(updates) >= tc.min_replies:
            weights = [n for _, _, n in updates]
            run.encoder = fedavg([e for e, _, _ in updates], weights)
            run.head = fedavg([h for _, h, _ in updates], weights)
            run.rounds_done += 1
        else:
            record["skipped"] = f"{len(updates)} valid update(s), train.min_replies is {tc.min_replies}"
            log.warning("Group %s round %d kept its weights: %s", run.group.name, r, record["skipped"])
        run.history.append(record)
        monitor = f"val_{MONITOR[run.card.task_type]}"
        loss = {m: round(x["train_loss"], 4) for m, x in per_member.items()}
        log.info("Group %s round %d/%d: %s of the received model %s; train loss %s", run.group.name, r, tc.rounds,
                 monitor, _fmt(record["received"].get(monitor)), loss)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _finish(ctx: PhaseContext, run: _GroupRun, outcomes: dict[str, Outcome],
            failures: list[dict[str, Any]]) -> dict[str, Any]:
    per_member = {}
    for name in run.group.members:
        source = f"final evaluation, institution {name!r}"
        try:
            per_member[name] = _reply(ctx, outcomes[f"{run.group.name}/{name}"], EvaluateReply, source, name).metrics
        except ValueError as exc:
            log.warning("%s failed: %s", source, exc)
            failures.append({"phase": "train", "round": "final", "institution": name, "reason": str(exc)})
    card = run.card
    card.metrics.update(weighted_metrics(per_member))
    card.extra["federation"] = {"rounds": ctx.cfg.train.rounds, "rounds_applied": run.rounds_done,
                                "per_institution": per_member, "history": run.history,
                                "train": asdict(ctx.cfg.train)}
    card.extra["kept_by"] = sorted(per_member)
    path = ctx.run_dir / "specialists" / run.group.name / "card.json"
    atomic_write_text(path, card.to_json())
    monitor = f"test_{MONITOR[card.task_type]}"
    log.info("Specialist %s (sha256 %s...) kept by %s; card in %s (%s %s)", card.name, card.weights_sha256[:12],
             ", ".join(card.extra["kept_by"]) or "nobody", path, monitor, _fmt(card.metrics.get(monitor)))
    return _group_result(ctx, card)


def _seal(run: _GroupRun) -> None:
    """Fill the card's sha256 and parameter count from the final weights."""
    specialist = Specialist.from_card(run.card)
    specialist.encoder.load_state_dict(run.encoder, strict=True)
    specialist_to_bytes(specialist)


def _group_result(ctx: PhaseContext, card: SpecialistCard) -> dict[str, Any]:
    return {"specialist": f"specialists/{card.name}", "weights_sha256": card.weights_sha256,
            "members": list(card.institutions), "kept_by": card.extra.get("kept_by", []), "metrics": card.metrics,
            **{k: card.extra["federation"][k] for k in ("rounds_applied", "per_institution", "history")}}


def integrated_cards(ctx: PhaseContext) -> dict[str, SpecialistCard]:
    """In integrate mode, the cards enrolled in the extended run's registry (name -> card); else none."""
    if ctx.integrated_run_dir is None:
        return {}
    try:
        registry = Registry(ctx.integrated_run_dir / "registry")
    except RegistryError as exc:
        raise RuntimeError(f"integrate: run {ctx.cfg.integrate!r} has no enrolled registry ({exc})") from None
    return {name: registry.card(name) for name in registry.names}


def train(ctx: PhaseContext) -> dict[str, Any]:
    roster = ctx.require_roster()
    results: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    runs = []
    earlier = integrated_cards(ctx)
    for group in roster.groups.values():
        path = ctx.run_dir / "specialists" / group.name / "card.json"
        if group.name in earlier and sorted(earlier[group.name].institutions) == sorted(group.members):
            log.info("Group %s: enrolled in run %s, not trained again", group.name, ctx.cfg.integrate)
            results[group.name] = {"integrated_from": ctx.cfg.integrate,
                                   "weights_sha256": earlier[group.name].weights_sha256, "members": group.members}
            continue
        if path.is_file():
            card = SpecialistCard.from_json(path.read_text(), source=str(path))
            if sorted(card.institutions) == sorted(group.members):
                log.info("Group %s: specialist already trained (card %s)", group.name, path)
                results[group.name] = _group_result(ctx, card)
                continue
        runs.append(_start(group, roster, ctx))
    for r in range(1, ctx.cfg.train.rounds + 1):
        if runs:
            _round(ctx, runs, r, failures)
    trained = [run for run in runs if run.rounds_done > 0]
    for run in runs:
        if run.rounds_done == 0:
            log.error("Group %s: no round got enough valid updates; no specialist", run.group.name)
            results[run.group.name] = {"specialist": None, "members": run.group.members, "history": run.history}
    if trained:
        record = _train_record(ctx, ctx.cfg.train.rounds)
        for run in trained:
            _seal(run)
        outcomes = ctx.exchange("evaluate.specialist", _requests(ctx, trained, record, keep=True))
        for run in trained:
            results[run.group.name] = _finish(ctx, run, outcomes, failures)
    return {"groups": results, "failures": failures}


PHASE = Phase("train", train)
