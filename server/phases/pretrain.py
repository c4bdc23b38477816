"""Phase *pretrain* (optional, before *train*): each group pretrains its specialist's encoder by federated
FCMAE on its members' train tiles, labels ignored (``pretrain.rounds`` 0: skipped).

Each round the coordinator sends the group's card and global encoder and FCMAE decoder to every member
(``train.pretrain``); a member runs :func:`specialists.fcmae.pretrain` for ``pretrain.local_epochs`` on its
train tiles, normalised by the card's pooled band statistics, and returns both with its example count and
loss. Replies are checked (same tensors, shapes, dtypes, finite values) and combined by the rules of a
training round (:func:`pipeline.fedavg.combine`); a bad or missing reply is logged and left out. The encoder
is written to ``pretrained/<group>.safetensors`` (its sha256 in the phase result), where phase *train*
starts from it. A group whose specialist card an earlier attempt saved is not pretrained; in integrate mode
neither is a group already enrolled in the extended run's registry.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load as safetensors_state

from geodata.files import atomic_write_bytes
from geodata.names import inside
from pipeline.fedavg import State
from pipeline.pretrain import GroupPretraining, pretrain_config
from server.messaging import Request
from server.phases.base import Phase, PhaseContext, integrated_cards
from wire.messages import PretrainReply, PretrainRequest
from geodata.errors import InputError

__all__ = ["PHASE", "pretrain", "pretrained_path", "pretrained_start"]

log = logging.getLogger(__name__)


def pretrained_path(ctx: PhaseContext, group: str) -> Path:
    """Where group ``group``'s pretrained encoder is kept (``ValueError`` if that leaves the run folder)."""
    return inside(ctx.run_dir, "pretrained", f"{group}.safetensors")


def pretrained_start(ctx: PhaseContext, group: str) -> tuple[State, dict[str, Any]] | None:
    """Group ``group``'s pretrained encoder and what its card records of it, when this run's phase
    *pretrain* made one; ``ValueError`` when the file is not the one the phase recorded."""
    if not ctx.checkpoint.is_done(PHASE.name):
        return None
    entry = ctx.checkpoint.result(PHASE.name)["groups"].get(group)
    if not entry or not entry.get("file"):
        return None
    path = pretrained_path(ctx, group)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise InputError(f"{path}: sha256 differs from the one phase pretrain recorded ({entry['sha256'][:12]}...)")
    return safetensors_state(data), {k: v for k, v in entry.items() if k not in ("file", "history", "members")}


def _round(ctx: PhaseContext, runs: list[GroupPretraining], r: int, failures: list[dict[str, Any]]) -> None:
    roster = ctx.require_roster()
    config = pretrain_config(ctx.cfg.pretrain, ctx.cfg.seed, r)
    requests = []
    for run in runs:  # a group's members share one encoding of its weights
        members = [roster.institutions[name] for name in run.group.members]
        message = PretrainRequest(members[0].record, run.card.shared().to_json(), config, run.encoder, run.decoder)
        requests += [Request(f"{run.group.name}/{m.name}", m.node_id, content)
                     for m, content in zip(members, message.encode_each(m.record for m in members), strict=True)]
    outcomes = ctx.exchange("train.pretrain", requests)
    for run in runs:
        updates = []
        for name in run.group.members:
            source = f"pretrain round {r}, institution {name!r}"
            outcome = outcomes[f"{run.group.name}/{name}"]
            try:
                if not outcome.ok:
                    raise InputError(outcome.error)
                reply = PretrainReply.decode(outcome.content, source)
                ctx.note_memory(name, reply.metrics)
                updates.append((name, *run.check(reply.encoder, reply.decoder, source), reply.metrics))
            except ValueError as exc:
                log.warning("Rejected %s: %s", source, exc)
                failures.append({"phase": "pretrain", "round": r, "institution": name, "reason": str(exc)})
        for name, reason in run.apply(r, config.lr, updates)["refused"].items():
            failures.append({"phase": "pretrain", "round": r, "institution": name, "reason": reason})


def pretrain(ctx: PhaseContext) -> dict[str, Any]:
    settings = ctx.cfg.pretrain
    if settings.rounds == 0:
        log.info("pretrain.rounds is 0: no federated pretraining")
        return {"groups": {}, "failures": [], "skipped": "pretrain.rounds is 0"}
    roster = ctx.require_roster()
    results: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    runs = []
    earlier = integrated_cards(ctx)
    for group in roster.groups.values():
        if group.name in earlier:
            log.info("Group %s: enrolled in run %s, not pretrained", group.name, ctx.cfg.integrate)
            continue
        if ctx.card_path(group.name).is_file():
            log.info("Group %s: specialist already trained, not pretrained", group.name)
            continue
        try:
            runs.append(GroupPretraining.start(group, [roster.institutions[m] for m in group.members], ctx.cfg.train,
                                               settings, ctx.cfg.seed, tolerance_nm=ctx.cfg.tolerance_nm))
        except ValueError as exc:  # one group's bad start must not stop the others
            log.error("Group %s: cannot start pretraining: %s", group.name, exc)
            failures.append({"phase": "pretrain", "group": group.name, "institution": None, "reason": str(exc)})
    for r in range(1, settings.rounds + 1):
        if runs:
            _round(ctx, runs, r, failures)
    for run in runs:
        if run.rounds_done == 0:
            log.error("Group %s: no pretrain round got enough valid updates; train starts without it", run.group.name)
            results[run.group.name] = {"file": None, "history": run.history}
            continue
        data, sha256 = run.encoder_bytes()
        path = pretrained_path(ctx, run.group.name)
        atomic_write_bytes(path, data)
        log.info("Group %s: pretrained encoder (%d of %d rounds applied, sha256 %s...) in %s", run.group.name,
                 run.rounds_done, settings.rounds, sha256[:12], path)
        results[run.group.name] = {**run.record(sha256), "file": str(path.relative_to(ctx.run_dir)),
                                   "members": list(run.group.members), "history": run.history}
    return {"groups": results, "failures": failures}


PHASE = Phase("pretrain", pretrain)
