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
import resource
from typing import Any

import torch

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.data import open_manifest, summarize
from clients.institution import InstitutionSpec, institution_for, node_role
from clients.probing import probe_locally
from clients.store import keep_specialist, kept_specialist
from clients.teacher import teacher_features
from clients.training import build_model, evaluate_splits, fit
from fusion.ensemble import Ensemble
from fusion.featstats import FeatureStats
from fusion.student import student_from_bytes
from geodata.sensors import get_sensor
from specialists.card import SpecialistCard
from specialists.io import bytes_tensor, specialist_from_bytes, specialist_to_bytes, tensor_bytes
from specialists.model import Specialist
from specialists.train import TrainConfig, resolve_device

__all__ = ["identify", "describe", "train", "evaluate", "enrol", "features", "evaluate_fusion"]

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
        try:
            content["summary"] = _summary_record(role.institution)
        except Exception as exc:  # the coordinator knows only the node id: name the institution
            raise ValueError(f"institution {role.institution.name!r}: {exc}") from exc
    return Message(content, reply_to=message)


def describe(message: Message, context: Context) -> Message:
    """Open the requested (simulated) institution's data and summarise it."""
    spec = _institution(message, context)
    return Message(RecordDict({"summary": _summary_record(spec)}), reply_to=message)


def train(message: Message, context: Context) -> Message:
    """One FedAvg round: validate the received specialist, train it locally, return the weights."""
    spec, card, cfg = _institution(message, context), _card(message), _train_config(message)
    encoder, head, metrics = fit(spec, card, _arrays(message, "encoder"), _arrays(message, "head"), cfg)
    metrics["peak_rss_mb"] = _peak_rss_mb()
    content = RecordDict({"encoder": ArrayRecord(encoder), "head": ArrayRecord(head),
                          "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """Metrics of the received specialist on this institution's ``val`` and ``test`` splits; with a
    ``keep`` record, the institution also keeps the specialist in its store."""
    spec, card, cfg = _institution(message, context), _card(message), _train_config(message)
    specialist, head = build_model(card, _arrays(message, "encoder"), _arrays(message, "head"))
    specialist.to(cfg.device), head.to(cfg.device)
    metrics = evaluate_splits(open_manifest(spec), spec, card, specialist, head, cfg, ("val", "test"))
    if "keep" in message.content.config_records:
        keep_specialist(spec, specialist.cpu())
    metrics["peak_rss_mb"] = _peak_rss_mb()
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)


def enrol(message: Message, context: Context) -> Message:
    """The kept specialist with the requested sha256: its card, and its weights unless they stay home."""
    spec, request = _institution(message, context), _config(message, "request")
    specialist = kept_specialist(spec, str(request.get("sha256", "")))
    content = RecordDict({"card": ConfigRecord({"json": specialist.card.to_json()})})
    if request.get("weights"):
        content["weights"] = ArrayRecord({"safetensors": bytes_tensor(specialist_to_bytes(specialist))})
    return Message(content, reply_to=message)


def features(message: Message, context: Context) -> Message:
    """Teacher targets of a kept specialist on the proxy images in the request."""
    spec, request = _institution(message, context), _config(message, "request")
    images = _arrays(message, "images").get("x")
    if images is None:
        raise ValueError("query.features request lacks the 'x' image tensor")
    result = teacher_features(spec, str(request.get("sha256", "")), images.float(), json.loads(request["bands"]),
                              json.loads(request["ids"]), float(request.get("tolerance_nm", 50.0)))
    content = RecordDict({"targets": ArrayRecord(dict(result.targets)),
                          "ids": ConfigRecord({"json": json.dumps(result.ids)})})
    return Message(content, reply_to=message)


def _received_ensemble(message: Message) -> Ensemble | None:
    if "ensemble" not in message.content.config_records:
        return None
    cards = json.loads(_config(message, "ensemble")["cards"])
    arrays = _arrays(message, "ensemble_weights")
    members: dict[str, Specialist] = {}
    stats: dict[str, FeatureStats] = {}
    for name, card_json in cards.items():
        source = f"ensemble member {name!r}"
        members[name] = specialist_from_bytes(card_json, tensor_bytes(arrays[f"{name}/weights"], source), source)
        prefix = f"{name}/stats/"
        own = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if own:
            stats[name] = FeatureStats.from_tensors(own, source=f"{source} feature stats")
    tolerance = float(_config(message, "ensemble").get("tolerance_nm", 50.0))
    return Ensemble(members, stats, tolerance_nm=tolerance)


def evaluate_fusion(message: Message, context: Context) -> Message:
    """Probe the received student (and ensemble) on this institution's labels; reply scores only."""
    spec, probe = _institution(message, context), _config(message, "probe")
    card_json = _config(message, "student")["card"]
    student = student_from_bytes(card_json, tensor_bytes(_arrays(message, "student_weights")["weights"], "student"),
                                 "received student card", "received student weights")
    encoders: dict[str, torch.nn.Module] = {"student": student}
    ensemble = _received_ensemble(message)
    if ensemble is not None and ensemble.applicable(_sensor_bands(spec)):
        encoders["ensemble"] = ensemble
    results = probe_locally(spec, encoders, json.loads(probe["fractions"]), json.loads(probe["seeds"]),
                            int(probe.get("batch_size", 64)), resolve_device(str(probe.get("device", "cpu"))))
    metrics = {f"{r.encoder}/{r.method}@{r.fraction:g}": r.mean for r in results}
    metrics["peak_rss_mb"] = _peak_rss_mb()
    content = RecordDict({"results": ConfigRecord({"json": json.dumps([r.to_dict() for r in results])}),
                          "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=message)


def _sensor_bands(spec: InstitutionSpec) -> tuple[str, ...]:
    return tuple(get_sensor(spec.sensor).image_bands)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
