"""The institution side of each exchange: decode the request, act on local data, reply.

Requests and replies are the dataclasses of :mod:`wire.messages` (weights as ``ArrayRecord`` state
dicts, never pickles). An exception here, a :class:`wire.messages.WireError` for a malformed
request included, becomes Flower's error reply, whose reason (the exception's message) the
coordinator logs and reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
from collections.abc import Iterator
from typing import Any, Mapping

import torch

from flwr.app import Context, Message

from clients.data import open_manifest, summarize
from clients.institution import InstitutionSpec, institution_for, node_role, weights_policy
from clients.probing import probe_locally
from clients.store import keep_specialist, kept_specialist
from clients.teacher import teacher_features
from clients.training import build_model, evaluate_splits, fit, fit_fcmae
from fusion.ensemble import Ensemble
from fusion.featstats import FeatureStats
from fusion.student import student_from_bytes
from geodata.sensors import using
from pipeline.privacy import clip_update
from specialists.card import SpecialistCard
from specialists.io import specialist_from_bytes, specialist_to_bytes
from specialists.model import Specialist
from specialists.train import TrainConfig, resolve_device
from wire.messages import (DataSummary, DescribeReply, DescribeRequest, EnrolReply, EnrolRequest, EnsembleFiles,
                           EvaluateReply, EvaluateRequest, FeaturesReply, FeaturesRequest, FusionEvalReply,
                           FusionEvalRequest, IdentifyReply, IdentifyRequest, PretrainReply, PretrainRequest,
                           RoundTraining, TrainReply, TrainRequest)
from geodata.errors import InputError

__all__ = ["identify", "describe", "train", "pretrain", "evaluate", "enrol", "features", "evaluate_fusion"]

log = logging.getLogger(__name__)
_SOURCE = "coordinator"  # who sent every request a handler decodes


def _reply(message: Message, reply: Any) -> Message:
    return Message(reply.encode(), reply_to=message)


def _institution(record: Mapping[str, str], context: Context) -> InstitutionSpec:
    return institution_for(context.node_config, record)


@contextlib.contextmanager
def _serving(record: Mapping[str, str], context: Context) -> Iterator[InstitutionSpec]:
    """The institution a request addresses, with its catalog the one band names resolve in."""
    spec = _institution(record, context)
    with using(spec.catalog()):
        yield spec


def _card(card_json: str) -> SpecialistCard:
    return SpecialistCard.from_json(card_json, source="request card")


def _train_config(settings: RoundTraining) -> TrainConfig:
    sent = {k: v for k, v in dataclasses.asdict(settings).items() if k != "clipping_norm"}
    return TrainConfig(**{**sent, "device": resolve_device(settings.device)})


def _summary(spec: InstitutionSpec) -> DataSummary:
    summary = summarize(open_manifest(spec), spec)
    log.info("Institution %s: %s %s, tiles %s", spec.name, spec.sensor, spec.task, summary.tiles)
    return summary


def identify(message: Message, context: Context) -> Message:
    """Who this node is, from its node config; a declared institution also summarises its data."""
    IdentifyRequest.decode(message.content, _SOURCE)
    role = node_role(context.node_config)
    summary = None
    if role.institution is not None:
        try:
            with using(role.institution.catalog()):
                summary = _summary(role.institution)
        except Exception as exc:  # the coordinator knows only the node id: name the institution
            raise InputError(f"institution {role.institution.name!r}: {exc}") from exc
    institution = role.institution.to_record() if role.institution is not None else {}
    return _reply(message, IdentifyReply(role.kind, institution, role.partition_id, role.num_partitions, summary))


def describe(message: Message, context: Context) -> Message:
    """Open the requested (simulated) institution's data and summarise it."""
    request = DescribeRequest.decode(message.content, _SOURCE)
    with _serving(request.institution, context) as spec:
        return _reply(message, DescribeReply(_summary(spec)))


def train(message: Message, context: Context) -> Message:
    """One FedAvg round: validate the received specialist, train it locally, return the weights (the update
    clipped when the request says so)."""
    request = TrainRequest.decode(message.content, _SOURCE)
    with _serving(request.institution, context) as spec:
        encoder, head, metrics = fit(spec, _card(request.card), request.encoder, request.head,
                                     _train_config(request.train))
    if request.train.clipping_norm > 0:  # train.dp.mode client: the update leaves clipped
        (encoder, head), _ = clip_update([request.encoder, request.head], [encoder, head], request.train.clipping_norm)
    metrics["peak_rss_mb"] = _peak_rss_mb()
    return _reply(message, TrainReply(encoder, head, metrics))


def pretrain(message: Message, context: Context) -> Message:
    """One federated FCMAE round: pretrain the received encoder and decoder on the local train tiles, return them."""
    request = PretrainRequest.decode(message.content, _SOURCE)
    with _serving(request.institution, context) as spec:
        encoder, decoder, metrics = fit_fcmae(spec, _card(request.card), request.encoder, request.decoder,
                                              request.pretrain)
    metrics["peak_rss_mb"] = _peak_rss_mb()
    return _reply(message, PretrainReply(encoder, decoder, metrics))


def evaluate(message: Message, context: Context) -> Message:
    """Metrics of the received specialist on this institution's ``val`` and ``test`` splits; with
    ``keep``, the institution also keeps the specialist in its store."""
    request = EvaluateRequest.decode(message.content, _SOURCE)
    with _serving(request.institution, context) as spec:
        card, cfg = _card(request.card), _train_config(request.train)
        specialist, head = build_model(card, request.encoder, request.head)
        specialist.to(cfg.device), head.to(cfg.device)
        metrics = evaluate_splits(open_manifest(spec), spec, card, specialist, head, cfg, ("val", "test"))
        if request.keep:
            keep_specialist(spec, specialist.cpu())
    metrics["peak_rss_mb"] = _peak_rss_mb()
    return _reply(message, EvaluateReply(metrics))


def enrol(message: Message, context: Context) -> Message:
    """The kept specialist with the requested sha256: its card, and its weights unless they stay home (the
    request's choice, refused for weights when the node config says ``weights="home"``)."""
    request = EnrolRequest.decode(message.content, _SOURCE)
    spec = _institution(request.institution, context)
    if request.weights and weights_policy(context.node_config) == "home":
        raise InputError(f"institution {spec.name!r} keeps its specialists' weights home (node config "
                         f"weights=\"home\"); it sends the card only (enrol.weights: home)")
    specialist = kept_specialist(spec, request.sha256)
    weights = specialist_to_bytes(specialist) if request.weights else None
    return _reply(message, EnrolReply(specialist.card.to_json(), weights))


def features(message: Message, context: Context) -> Message:
    """Teacher targets of a kept specialist on the proxy images in the request."""
    request = FeaturesRequest.decode(message.content, _SOURCE)
    with _serving(request.institution, context) as spec:
        result = teacher_features(spec, request.sha256, request.images.float(), request.bands, request.ids,
                                  request.tolerance_nm)
    return _reply(message, FeaturesReply(result.ids, dict(result.targets)))


def _ensemble(files: EnsembleFiles) -> Ensemble:
    members: dict[str, Specialist] = {}
    stats: dict[str, FeatureStats] = {}
    for name, card_json in files.cards.items():
        source = f"ensemble member {name!r}"
        members[name] = specialist_from_bytes(card_json, files.weights[name], source)
        if name in files.stats:
            stats[name] = FeatureStats.from_tensors(files.stats[name], source=f"{source} feature stats")
    return Ensemble(members, stats, tolerance_nm=files.tolerance_nm)


def evaluate_fusion(message: Message, context: Context) -> Message:
    """Probe the received student (and ensemble) on this institution's labels; reply scores only."""
    request = FusionEvalRequest.decode(message.content, _SOURCE)
    probe = request.probe
    with _serving(request.institution, context) as spec:
        student = student_from_bytes(request.student.card, request.student.weights, "received student card",
                                     "received student weights")
        encoders: dict[str, torch.nn.Module] = {"student": student}
        if request.ensemble is not None:
            ensemble = _ensemble(request.ensemble)
            if ensemble.applicable(probe.bands):
                encoders["ensemble"] = ensemble
        results = probe_locally(spec, encoders, probe.fractions, probe.seeds, probe.batch_size,
                                resolve_device(probe.device))
    return _reply(message, FusionEvalReply(results, {"peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
