"""The wire protocol: every message round-trips through its records (and Flower's protobuf), and a
malformed one is refused at decode with an error naming the message, the record and the field."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest
import torch
from geodata.sensors import default
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from fusion.probes import ProbeResult
from specialists.io import bytes_tensor
from wire.messages import (DataSummary, DescribeReply, DescribeRequest, EnrolReply, EnrolRequest, EnsembleFiles,
                           EvaluateReply, EvaluateRequest, FeaturesReply, FeaturesRequest, FusionEvalReply,
                           FusionEvalRequest, IdentifyReply, IdentifyRequest, PretrainReply, PretrainRequest,
                           ProbeSettings, StudentFiles, RoundTraining, TrainReply, TrainRequest, WireError)
from specialists.fcmae import FcmaeConfig

SHA = "ab" * 32
NAN, INF = float("nan"), float("inf")


def _examples() -> dict[str, Any]:
    """One message of each kind (fresh objects: a test may tamper with their records)."""
    institution = {"institution": "lab", "sensor": "sentinel2_l2a", "task": "scene", "world": "{}",
                   "cache-dir": "/tmp/cache"}
    summary = DataSummary("lab", "classification", ["forest", "water"], ["B02", "B03"], {"test": 3, "train": 8},
                          [0.1, 0.2], [0.3, 0.4], "tiny", default().describe("sentinel2_l2a"))
    settings = RoundTraining(epochs=1, batch_size=2, lr=1e-3, weight_decay=0.05, warmup_epochs=0.5, seed=1001, device="cpu", amp=False,
                             max_steps=0)
    state = {"stem.weight": torch.randn(4, 2, 3, 3), "stem.steps": torch.tensor(3)}
    head = {"fc.weight": torch.randn(2, 4)}
    probe = ProbeSettings([0.5, 1.0], [0, 1], 8, "cpu", ["B02", "B03"])
    ensemble = EnsembleFiles({"s2": '{"name": "s2"}', "s1": '{"name": "s1"}'}, {"s2": b"weights-s2", "s1": b"w1"},
                             {"s2": {"pooled.mean": torch.zeros(4), "pooled.std": torch.ones(4)}}, 50.0)
    result = ProbeResult("student", "scene", "linear", 1.0, "accuracy", 0.5, 0.1, [0.4, 0.6])
    return {
        "identify request": IdentifyRequest(7),
        "identify reply (declared)": IdentifyReply("declared", institution, summary=summary),
        "identify reply (simulated)": IdentifyReply("simulated", partition_id=1, num_partitions=2),
        "identify reply (unconfigured)": IdentifyReply("unconfigured"),
        "describe request": DescribeRequest(institution),
        "describe reply": DescribeReply(summary),
        "train request": TrainRequest(institution, '{"name": "g"}', settings, state, head),
        "train reply": TrainReply(state, head, {"num_examples": 8, "train_loss": 0.5, "peak_rss_mb": 120.5}),
        "pretrain request": PretrainRequest(institution, '{"name": "g"}', FcmaeConfig(epochs=1, batch_size=2, seed=1001),
                                            state, head),
        "pretrain reply": PretrainReply(state, head, {"num_examples": 8, "loss": 0.7, "steps": 4}),
        "evaluate request": EvaluateRequest(institution, '{"name": "g"}', settings, state, head, keep=True),
        "evaluate reply": EvaluateReply({"val_accuracy": 0.5, "val_count": 2}),
        "enrol request": EnrolRequest(institution, SHA, True),
        "enrol reply": EnrolReply('{"name": "g"}', b"\x00safetensors\xff"),
        "enrol reply (card only)": EnrolReply('{"name": "g"}'),
        "features request": FeaturesRequest(institution, SHA, ["B02", "B03"], ["t1", "t2", "t3"], 50.0,
                                            torch.rand(3, 2, 4, 4)),
        "features reply": FeaturesReply(["t1", "t3"], {"stage2": torch.rand(2, 3, 2, 2).half(),
                                                       "pooled": torch.rand(2, 3).half()}),
        "fusion request": FusionEvalRequest(institution, probe, StudentFiles('{"name": "st"}', b"student"), ensemble),
        "fusion request (student only)": FusionEvalRequest(institution, probe, StudentFiles("{}", b"st")),
        "fusion reply": FusionEvalReply([result, dataclasses.replace(result, encoder="ensemble", values=[0.5])],
                                        {"peak_rss_mb": 100.0}),
    }


def _same(a: Any, b: Any) -> bool:
    """Equal values, tensors compared by dtype, shape and content."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _decode(message: Any, content: RecordDict) -> Any:
    return type(message).decode(content, "test")


@pytest.mark.parametrize("name", sorted(_examples()))
def test_every_message_round_trips(name: str) -> None:
    message = _examples()[name]
    assert _same(_decode(message, message.encode()), message)
    wired = recorddict_from_proto(recorddict_to_proto(message.encode()))  # what a real Flower link carries
    assert _same(_decode(message, wired), message)


@pytest.mark.parametrize("name", ["train request", "evaluate request", "pretrain request"])
def test_encode_each_gives_each_institution_its_request_and_shares_the_weights(name: str) -> None:
    message = _examples()[name]
    others = [{**message.institution, "institution": n} for n in ("a", "b")]
    contents = message.encode_each(others)
    for institution, content in zip(others, contents, strict=True):
        assert _same(_decode(message, content), dataclasses.replace(message, institution=institution))
        assert list(content) == list(message.encode())
    assert contents[0]["encoder"] is contents[1]["encoder"] and contents[0]["institution"] is not contents[1]["institution"]
    with pytest.raises(TypeError, match="IdentifyRequest carries no institution record"):
        _examples()["identify request"].encode_each(others)


# (example, tamper with its encoded records, what the error must say)
Tamper = Callable[[RecordDict], None]


def _set(record: str, key: str, value: Any) -> Tamper:
    return lambda content: content[record].__setitem__(key, value)


def _drop(record: str, key: str | None = None) -> Tamper:
    return lambda content: content.__delitem__(record) if key is None else content[record].__delitem__(key)


def _arrays(record: str, tensors: dict[str, torch.Tensor]) -> Tamper:
    return lambda content: content.__setitem__(record, ArrayRecord(tensors))


CASES: list[tuple[str, Tamper, str]] = [
    ("identify request", _drop("identify", "node"), "query.identify request: identify.node is missing"),
    ("identify request", _set("identify", "node", "7"), "identify.node must be an integer, got '7'"),
    ("identify request", _set("identify", "colour", 1), "identify has unknown field(s) ['colour']"),
    ("identify request", _set("identify", "node", NAN), "identify.node must be an integer, got nan"),
    ("identify reply (declared)", _drop("summary", "bands"), "query.identify reply: summary.bands is missing"),
    ("identify reply (declared)", _set("summary", "tiles", ["8", "3"]),
     "summary.tiles must be a non-empty list of non-negative integers"),
    ("identify reply (declared)", _set("identity", "colour", "red"), "identity has unknown field(s) ['colour']"),
    ("identify reply (declared)", _set("summary", "norm_mean", [NAN, 0.2]),
     "summary.norm_mean must be a non-empty list of finite numbers"),
    ("identify reply (declared)", _drop("summary"), "record summary is missing"),
    ("identify reply (simulated)", _drop("identity", "partition-id"),
     "a simulated node sent ['kind', 'num-partitions']"),
    ("identify reply (unconfigured)", _set("identity", "kind", "alien"), "identity.kind must be one of"),
    ("describe request", _drop("institution", "sensor"), "query.describe request: institution.sensor is missing"),
    ("describe request", _set("institution", "task", 3), "institution.task must be a safe name"),
    ("describe request", _set("institution", "task", "x/../../y"), "institution.task must be a safe name"),
    ("describe request", _set("institution", "colour", "x"), "institution has unknown field(s) ['colour']"),
    ("describe request", _set("institution", "region", NAN), "institution.region must be a non-empty string"),
    ("describe reply", _drop("summary", "splits"), "query.describe reply: summary.splits is missing"),
    ("describe reply", _set("summary", "bands", ["B02", "B02"]),
     "summary.bands must be a non-empty list of unique non-empty strings"),
    ("describe reply", lambda c: c.__setitem__("extra", ConfigRecord()), "unknown record(s) ['extra']"),
    ("describe reply", _set("summary", "norm_std", [INF, 1.0]), "summary.norm_std must be a non-empty list of"),
    ("describe reply", _set("summary", "tiles", [3, 0]), "summary.tiles must count some 'train' tiles"),
    ("describe reply", _set("summary", "norm_mean", [0.1]), "summary.norm_mean must hold one value per band (2)"),
    ("train request", _drop("train", "lr"), "train.specialist request: train.lr is missing"),
    ("train request", _set("train", "epochs", "1"),
     "train.epochs must be an integer in [1, 1000] (TRAIN_MAXIMA), got '1'"),
    ("train request", _set("train", "batch_size", 10**6), "train.batch_size must be an integer in [1, 1024]"),
    ("train request", _set("train", "momentum", 0.9), "train has unknown field(s) ['momentum']"),
    ("train request", _set("train", "lr", NAN), "train.lr must be a positive number, got nan"),
    ("train request", _drop("card", "json"), "card.json is missing"),
    ("train reply", _set("metrics", "num_examples", -1),
     "train.specialist reply: metrics.num_examples must be a positive number, got -1"),
    ("train reply", _drop("encoder"), "train.specialist reply: record encoder is missing"),
    ("train reply", _set("metrics", "train_loss", [0.5]), "metrics.train_loss must be a finite number"),
    ("train reply", _set("metrics", "train_loss", INF), "metrics.train_loss must be a finite number, got inf"),
    ("train reply", lambda c: c.__setitem__("extra", ConfigRecord()), "unknown record(s) ['extra']"),
    ("pretrain request", _set("pretrain", "mask_ratio", 1.0),
     "train.pretrain request: pretrain.mask_ratio must be a number in (0, 1), got 1.0"),
    ("pretrain request", _set("pretrain", "patch", 0), "pretrain.patch must be an integer in [1, "),
    ("pretrain request", _set("pretrain", "epochs", 5000), "pretrain.epochs must be an integer in [1, 1000]"),
    ("pretrain request", _set("pretrain", "lr", NAN), "pretrain.lr must be a positive number, got nan"),
    ("pretrain request", _drop("pretrain", "max_steps"), "pretrain.max_steps is missing"),
    ("pretrain request", _set("pretrain", "warmup_epochs", 1.0), "pretrain has unknown field(s) ['warmup_epochs']"),
    ("pretrain request", _drop("decoder"), "train.pretrain request: record decoder is missing"),
    ("pretrain reply", _set("metrics", "loss", NAN), "train.pretrain reply: metrics.loss must be a non-negative finite number, got nan"),
    ("pretrain reply", _set("metrics", "loss", -1.0), "metrics.loss must be a non-negative finite number, got -1.0"),
    ("pretrain reply", _drop("metrics", "num_examples"), "metrics.num_examples is missing"),
    ("pretrain reply", _arrays("decoder", {}), "train.pretrain reply: decoder holds no tensor"),
    ("evaluate request", _drop("keep", "specialist"), "evaluate.specialist request: keep.specialist is missing"),
    ("evaluate request", _set("keep", "specialist", "yes"), "keep.specialist must be true or false"),
    ("evaluate request", _set("keep", "also", True), "keep has unknown field(s) ['also']"),
    ("evaluate request", _set("train", "weight_decay", INF), "train.weight_decay must be a non-negative finite"),
    ("evaluate reply", _set("metrics", "val_accuracy", NAN), "evaluate.specialist reply: metrics.val_accuracy must be"),
    ("evaluate reply", lambda c: c.__setitem__("metrics", ConfigRecord({"val_accuracy": 0.5})),
     "record metrics must be a MetricRecord, got a ConfigRecord"),
    ("enrol request", _drop("request", "sha256"), "query.enrol request: request.sha256 is missing"),
    ("enrol request", _set("request", "weights", 1), "request.weights must be true or false, got 1"),
    ("enrol request", _set("request", "extra", "x"), "request has unknown field(s) ['extra']"),
    ("enrol request", _set("request", "sha256", "xyz"), "request.sha256 must be a sha256 hex digest"),
    ("enrol reply", _drop("card", "json"), "query.enrol reply: card.json is missing"),
    ("enrol reply", _arrays("weights", {"safetensors": torch.zeros(4)}), "weights.safetensors: expected a 1-D uint8"),
    ("enrol reply", _arrays("weights", {"safetensors": bytes_tensor(b"x"), "pickle": bytes_tensor(b"y")}),
     "weights must hold just ['safetensors'], got ['pickle', 'safetensors']"),
    ("features request", _drop("request", "ids"), "query.features request: request.ids is missing"),
    ("features request", _set("request", "bands", "B02"), "request.bands must be a non-empty list of unique"),
    ("features request", _set("request", "colour", "x"), "request has unknown field(s) ['colour']"),
    ("features request", _set("request", "tolerance_nm", NAN), "request.tolerance_nm must be a non-negative finite"),
    ("features request", _arrays("images", {"x": torch.full((3, 2, 4, 4), NAN)}), "images.x holds non-finite values"),
    ("features request", _arrays("images", {"x": torch.rand(3, 5, 4, 4)}), "images.x must be [3 ids, 2 bands, H, W]"),
    ("features reply", _set("ids", "ids", ["t1", "t1"]), "query.features reply: ids.ids must be a non-empty list"),
    ("features reply", _arrays("targets", {"pooled": torch.rand(3, 3)}), "targets.pooled must be a floating tensor"),
    ("features reply", _arrays("targets", {"pooled": torch.full((2, 3), INF)}), "targets.pooled holds non-finite"),
    ("features reply", _set("ids", "extra", 1), "ids has unknown field(s) ['extra']"),
    ("fusion request", _set("probe", "fractions", [0.0]), "evaluate.fusion request: probe.fractions must be"),
    ("fusion request", _set("probe", "seeds", [0.5]), "probe.seeds must be a non-empty list of integers"),
    ("fusion request", _set("probe", "colour", "x"), "probe has unknown field(s) ['colour']"),
    ("fusion request", _set("probe", "fractions", [NAN]), "probe.fractions must be a non-empty list of numbers"),
    ("fusion request", _drop("probe", "bands"), "probe.bands is missing"),
    ("fusion request", _drop("ensemble_weights"), "records ensemble and ensemble_weights come together"),
    ("fusion request", _arrays("ensemble_weights", {"s2/weights": bytes_tensor(b"w")}),
     "ensemble_weights.s1/weights is missing"),
    ("fusion reply", _set("results", "mean", [NAN, 0.5]), "evaluate.fusion reply: results.mean must be a non-empty"),
    ("fusion reply", _set("results", "mean", [1.5, 0.5]), "results.mean must be a non-empty list of probe scores"),
    ("fusion reply", _set("results", "counts", [1, 1]), "results.values must hold sum(results.counts) = 2 values"),
    ("fusion reply", _set("results", "extra", [1]), "results has unknown field(s) ['extra']"),
    ("fusion reply", _drop("results", "metric"), "results.metric is missing"),
    ("fusion reply", _set("results", "encoder", ["student"]), "results.task must hold one entry per result (1), got 2"),
]


@pytest.mark.parametrize("name, tamper, error", CASES, ids=[f"{c[0]}: {c[2][:40]}" for c in CASES])
def test_malformed_message_is_refused_naming_the_field(name: str, tamper: Tamper, error: str) -> None:
    message = _examples()[name]
    content = message.encode()
    tamper(content)
    with pytest.raises(WireError) as caught:
        type(message).decode(content, "node 3")
    assert error in str(caught.value)
    assert str(caught.value).startswith(f"node 3: {message.MESSAGE_TYPE} {message.SIDE}: ")


def test_every_message_type_has_malformed_cases() -> None:
    kinds = {type(m) for m in _examples().values()}
    assert {type(_examples()[name]) for name, _, _ in CASES} == kinds


def test_enrol_reply_refuses_weights_over_the_limit_before_deserialising(monkeypatch) -> None:
    content = EnrolReply("{}", bytes(100)).encode()
    size = content.array_records["weights"].count_bytes()
    assert size >= 100
    assert EnrolReply.decode(content, "t", max_weights_bytes=size).weights == bytes(100)
    monkeypatch.setattr(ArrayRecord, "to_torch_state_dict", lambda self: pytest.fail("deserialised"))
    with pytest.raises(WireError, match=f"weights of {size} bytes exceeds the limit of {size - 1} bytes"):
        EnrolReply.decode(content, "t", max_weights_bytes=size - 1)


def test_shared_files_are_encoded_once() -> None:
    request = _examples()["fusion request"]
    other = dataclasses.replace(request, institution={**request.institution, "institution": "other"})
    first, second = request.encode(), other.encode()
    assert first["ensemble_weights"] is second["ensemble_weights"]
    assert first["student_weights"] is second["student_weights"]
