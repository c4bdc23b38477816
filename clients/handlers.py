"""The institution side of each exchange: read the request, act on local data, reply.

Requests and replies carry config records in the node-config key style (see
:mod:`clients.institution`), weights as ``ArrayRecord`` state dicts (NumPy arrays, never pickles)
and results as ``MetricRecord``. An exception here becomes Flower's error reply, whose reason (the
exception's message) the coordinator logs and reports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.data import open_manifest, summarize
from clients.institution import InstitutionSpec, institution_for, node_role
from clients.training import build_model, evaluate_splits, fit, resolve_device
from specialists.card import SpecialistCard
from specialists.train import TrainConfig

__all__ = ["identify", "describe", "train", "evaluate"]

log = logging.getLogger(__name__)
_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def _config(message: Message, name: str) -> dict[str, Any]:
    if name not in message.content.config_records:
        raise ValueError(f"{message.metadata.message_type} request lacks the {name!r} config record")
    return dict(message.content.config_records[name])


def _arrays(message: Message, name: str) -> dict:
    if name not in message.content.array_records:
        raise ValueError(f"{message.metadata.message_type} request lacks the {name!r} array record")
    return message.content.array_records[name].to_torch_state_dict()


def _institution(message: Message, context: Context) -> InstitutionSpec:
    return institution_for(context.node_config, _config(message, "institution"))


def _card(message: Message) -> SpecialistCard:
    return SpecialistCard.from_json(_config(message, "card").get("json", ""), source="request card")


def _train_config(message: Message) -> TrainConfig:
    raw = _config(message, "train")
    unknown = set(raw) - _TRAIN_KEYS
    if unknown:
        raise ValueError(f"train config record has unknown keys {sorted(unknown)}")
    raw["device"] = resolve_device(raw.get("device", "auto"))
    if raw.get("max_steps") == 0:
        raw["max_steps"] = None
    return TrainConfig(**raw)


def _summary_record(spec: InstitutionSpec) -> ConfigRecord:
    summary = summarize(open_manifest(spec), spec)
    log.info("Institution %s: %s %s, tiles %s", spec.name, spec.sensor, spec.task, summary["tiles"])
    return ConfigRecord({"institution": spec.name, "summary": json.dumps(summary)})


def identify(message: Message, context: Context) -> Message:
    """Who this node is, from its node config; a declared institution also summarises its data."""
    role = node_role(context.node_config)
    content = RecordDict({"identity": ConfigRecord(role.to_record())})
    if role.institution is not None:
        content["summary"] = _summary_record(role.institution)
    return Message(content, reply_to=message)


def describe(message: Message, context: Context) -> Message:
    """Open the requested (simulated) institution's data and summarise it."""
    spec = _institution(message, context)
    return Message(RecordDict({"summary": _summary_record(spec)}), reply_to=message)


def train(message: Message, context: Context) -> Message:
    """One FedAvg round: validate the received specialist, train it locally, return the weights."""
    spec, card, cfg = _institution(message, context), _card(message), _train_config(message)
    encoder, head, metrics = fit(spec, card, _arrays(message, "encoder"), _arrays(message, "head"), cfg)
    content = RecordDict({"encoder": ArrayRecord(encoder), "head": ArrayRecord(head),
                          "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """Metrics of the received specialist on this institution's ``val`` and ``test`` splits."""
    spec, card, cfg = _institution(message, context), _card(message), _train_config(message)
    specialist, head = build_model(card, _arrays(message, "encoder"), _arrays(message, "head"))
    specialist.to(cfg.device), head.to(cfg.device)
    metrics = evaluate_splits(open_manifest(spec), spec, card, specialist, head, cfg, ("val", "test"))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)
