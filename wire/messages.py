"""Every message between the coordinator and the institutions, as typed dataclasses.

Each Flower message type has a request and a reply class with ``encode() -> RecordDict`` and
``decode(content, source)``. Records use Flower's native types: scalars and lists in ``ConfigRecord``,
tensors in ``ArrayRecord`` (a file, e.g. safetensors weights, as one 1-D uint8 tensor), measured
numbers in ``MetricRecord``; a card travels as its JSON document. The records of each message:

=====================  =========================================================================
``query.identify``     request ``identify`` {node}; reply ``identity`` {kind, partition-id,
                       num-partitions} (+ ``institution``, ``summary`` from a declared node)
``query.describe``     request ``institution``; reply ``summary``
``train.specialist``   request ``institution``, ``card`` {json}, ``train`` {settings},
                       ``encoder``, ``head`` (tensors); reply ``encoder``, ``head``, ``metrics``
``evaluate.specialist`` request as ``train.specialist`` + ``keep`` {specialist}; reply ``metrics``
``train.pretrain``     request ``institution``, ``card`` {json}, ``pretrain`` {settings},
                       ``encoder``, ``decoder`` (tensors); reply ``encoder``, ``decoder``, ``metrics``
``query.enrol``        request ``institution``, ``request`` {sha256, weights}; reply ``card``
                       {json} (+ ``weights`` {safetensors})
``query.features``     request ``institution``, ``request`` {sha256, bands, ids, tolerance_nm},
                       ``images`` {x}; reply ``ids`` {ids}, ``targets`` (tensors)
``evaluate.fusion``    request ``institution``, ``probe``, ``student_card`` {json},
                       ``student_weights`` {safetensors} (+ ``ensemble`` {names, cards,
                       tolerance_nm}, ``ensemble_weights`` {<name>/weights, <name>/stats/<key>});
                       reply ``results`` (one list per column), ``metrics``
=====================  =========================================================================

Decoding checks all that the message alone shows (records and fields present, none unknown, types,
element types, finite numbers, non-empty lists, consistent lengths and shapes) and raises
:class:`WireError` naming the message, the record and the field; checks against the receiver's
state (tensors against its model, ids it sent, bands of the declared sensor) stay with the receiver.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterable, NoReturn, Self

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fusion.probes import ProbeResult
from geodata.dataset import MAX_TILE_PX
from geodata.names import NAME_RULE, is_safe_name
from geodata.sensors import Catalog
from specialists.card import MAX_CLASSES
from specialists.fcmae import FcmaeConfig
from specialists.io import bytes_tensor, tensor_bytes
from specialists.train import TrainConfig
from geodata.errors import InputError

__all__ = [
    "WireError", "State", "INSTITUTION_KEYS", "TRAIN_MAXIMA", "SIZE_MAXIMA", "NODE_KINDS", "DataSummary", "RoundTraining", "ProbeSettings",
    "StudentFiles", "EnsembleFiles", "IdentifyRequest", "IdentifyReply", "DescribeRequest", "DescribeReply",
    "TrainRequest", "TrainReply", "PretrainRequest", "PretrainReply", "EvaluateRequest", "EvaluateReply",
    "EnrolRequest", "EnrolReply",
    "FeaturesRequest", "FeaturesReply", "FUSION_FILES", "FusionEvalRequest", "FusionEvalReply",
]

State = dict[str, torch.Tensor]
INSTITUTION_KEYS = ("institution", "sensor", "task", "data-path", "region", "world", "cache-dir", "store",
                    "sensors", "resize")
"""Keys of the institution record (node-config style, see :mod:`clients.institution`); the first three
are required safe names (:mod:`geodata.names`: they become folder names)."""
NODE_KINDS = ("declared", "simulated", "unconfigured")


class WireError(InputError):
    """A message that breaks the protocol; the text names the message, the record and the field."""


# ---------------------------------------------------------------------------------------------
# Field rules and the checked reading of a message's records


@dataclass(frozen=True)
class _Rule:
    """What a field's value must be (``what`` completes "must be ...")."""

    ok: Callable[[Any], bool]
    what: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _list(item: _Rule, what: str, unique: bool = False, most: int | None = None) -> _Rule:
    """A non-empty list of ``item`` values (``unique``: no repeats; ``most``: at most that many)."""
    return _Rule(lambda v: isinstance(v, list) and bool(v) and (most is None or len(v) <= most)
                 and all(item.ok(x) for x in v) and (not unique or len(set(v)) == len(v)),
                 what if most is None else f"{what}, at most {most} (SIZE_MAXIMA)")


SIZE_MAXIMA = {"classes": MAX_CLASSES, "bands": 64, "fractions": 16, "seeds": 16, "seed": 2**32 - 1, "ids": 65536,
               "image_px": MAX_TILE_PX}
"""The most entries of a list (classes, bands, probe fractions and seeds, feature ids), the largest
probe seed and image side a message may hold: beyond these it is refused as malformed, before anything
is allocated for it."""

TEXT = _Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
STRING = _Rule(lambda v: isinstance(v, str), "a string")
FLAG = _Rule(lambda v: isinstance(v, bool), "true or false")
INT = _Rule(_is_int, "an integer")
COUNT = _Rule(lambda v: _is_int(v) and v >= 0, "a non-negative integer")
POSITIVE_INT = _Rule(lambda v: _is_int(v) and v > 0, "a positive integer")
NUMBER = _Rule(_is_number, "a finite number")
POSITIVE = _Rule(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE = _Rule(lambda v: _is_number(v) and v >= 0, "a non-negative finite number")
SCORE = _Rule(lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
FRACTION = _Rule(lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
SHA256 = _Rule(lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
               "a sha256 hex digest")
NAME = _Rule(is_safe_name, f"a safe name ({NAME_RULE})")
KIND = _Rule(lambda v: v in NODE_KINDS, f"one of {list(NODE_KINDS)}")
NAMES = _list(TEXT, "a non-empty list of unique non-empty strings", unique=True)
CLASSES = _list(TEXT, "a non-empty list of unique non-empty strings", unique=True, most=SIZE_MAXIMA["classes"])
BANDS = _list(TEXT, "a non-empty list of unique non-empty strings", unique=True, most=SIZE_MAXIMA["bands"])
TEXTS = _list(TEXT, "a non-empty list of non-empty strings")
NUMBERS = _list(NUMBER, "a non-empty list of finite numbers")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Reader:
    """The records of one received message, checked as they are read; errors say where."""

    def __init__(self, content: RecordDict, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> None:
        self.content, self.where = content, where
        required = set(required)
        unknown = sorted(set(content) - required - set(optional))
        if unknown:
            self.fail(f"unknown record(s) {unknown}")
        missing = sorted(required - set(content))
        if missing:
            self.fail(f"record {missing[0]} is missing")

    def fail(self, problem: str) -> NoReturn:
        raise WireError(f"{self.where}: {problem}")

    def has(self, name: str) -> bool:
        return name in self.content

    def config(self, name: str, required: dict[str, _Rule], optional: dict[str, _Rule] | None = None) -> dict[str, Any]:
        """The fields of config record ``name``: ``required`` ones present, none outside ``optional``."""
        return self._fields(name, self._record(name, self.content.config_records, "ConfigRecord"), required,
                            optional or {})

    def metrics(self, name: str, required: dict[str, _Rule] | None = None) -> dict[str, int | float]:
        """Metric record ``name``: any keys, every value a finite number (``required`` ones as ruled)."""
        record = self._record(name, self.content.metric_records, "MetricRecord")
        return self._fields(name, record, required or {}, {key: NUMBER for key in record})

    def arrays(self, name: str, keys: set[str] | None = None, max_bytes: int | None = None) -> State:
        """The tensors of array record ``name`` (at least one). Before anything is deserialised: only
        ``keys`` (when given), and at most ``max_bytes`` in all (the record's size, every key counted)."""
        record = self._record(name, self.content.array_records, "ArrayRecord")
        if keys is not None and set(record) != keys:
            self.fail(f"{name} must hold just {sorted(keys)}, got {sorted(record)[:5]}")
        if max_bytes is not None and record.count_bytes() > max_bytes:
            self.fail(f"{name} of {record.count_bytes()} bytes exceeds the limit of {max_bytes} bytes")
        try:
            tensors = dict(record.to_torch_state_dict())
        except (TypeError, ValueError) as exc:
            self.fail(f"{name} does not hold tensors: {exc}")
        if not tensors:
            self.fail(f"{name} holds no tensor")
        return tensors

    def file(self, name: str, key: str, tensors: State) -> bytes:
        """The file that ``tensors[key]`` of record ``name`` carries (see :func:`specialists.io.bytes_tensor`)."""
        if key not in tensors:
            self.fail(f"{name}.{key} is missing")
        try:
            return tensor_bytes(tensors[key], f"{name}.{key}")
        except ValueError as exc:
            self.fail(str(exc))

    def tensor(self, name: str, key: str, value: torch.Tensor, rows: int, shape: str) -> None:
        """``value`` is a floating tensor of finite values with ``rows`` rows (``shape`` describes it)."""
        if not value.is_floating_point() or value.dim() < 2 or value.shape[0] != rows:
            self.fail(f"{name}.{key} must be a floating tensor {shape}, got {value.dtype}{list(value.shape)}")
        if not bool(torch.isfinite(value).all()):
            self.fail(f"{name}.{key} holds non-finite values")

    def _record(self, name: str, records: Any, kind: str) -> Any:
        if name not in records:
            self.fail(f"record {name} must be a {kind}, got a {type(self.content[name]).__name__}")
        return records[name]

    def _fields(self, name: str, record: Any, required: dict[str, _Rule], optional: dict[str, _Rule]) -> dict[str, Any]:
        unknown = sorted(set(record) - set(required) - set(optional))
        if unknown:
            self.fail(f"{name} has unknown field(s) {unknown}")
        missing = [key for key in required if key not in record]
        if missing:
            self.fail(f"{name}.{missing[0]} is missing")
        rules = {**optional, **required}
        for key, value in record.items():
            if not rules[key].ok(value):
                self.fail(f"{name}.{key} must be {rules[key].what}, got {_show(value)}")
        return {key: list(value) if isinstance(value, list) else value for key, value in record.items()}


class _Message:
    """A request or reply of one message type; ``decode`` errors start with ``<source>: <type> <side>``."""

    MESSAGE_TYPE: ClassVar[str]
    SIDE: ClassVar[str]

    @classmethod
    def _read(cls, content: RecordDict, source: str, required: Iterable[str], optional: Iterable[str] = ()) -> _Reader:
        return _Reader(content, f"{source}: {cls.MESSAGE_TYPE} {cls.SIDE}", required, optional)


def _institution(read: _Reader) -> dict[str, str]:
    rules = {key: TEXT for key in INSTITUTION_KEYS[3:]}
    required = {key: NAME for key in INSTITUTION_KEYS[:3]}
    return read.config("institution", required, rules)


def _card(read: _Reader, name: str = "card") -> str:
    return read.config(name, {"json": TEXT})["json"]


def _json_record(text: str) -> ConfigRecord:
    return ConfigRecord({"json": text})


def _file_record(data: bytes) -> ArrayRecord:
    return ArrayRecord({"safetensors": bytes_tensor(data)})


# ---------------------------------------------------------------------------------------------
# Parts shared by several messages


@dataclass(frozen=True)
class DataSummary:
    """What an institution tells about its labelled data: task, classes, bands, tiles per split, the
    train split's per-band mean and std, and its sensor, every band fully described (the mapping of a
    sensor YAML file, :meth:`geodata.sensors.Sensor.describe`): what its band names mean, for the
    coordinator and the student, which need no sensor file of it."""

    institution: str
    task_type: str
    classes: list[str]
    bands: list[str]
    tiles: dict[str, int]
    norm_mean: list[float]
    norm_std: list[float]
    manifest: str
    sensor: dict[str, Any] = field(default_factory=dict)

    def catalog(self) -> Catalog:
        """The summary's sensor and its bands as a catalog (empty without a sensor)."""
        return Catalog.from_records(sensors=[self.sensor], source=f"institution {self.institution!r}: summary.sensor") \
            if self.sensor else Catalog()

    def record(self) -> ConfigRecord:
        return ConfigRecord({
            "sensor": json.dumps(self.sensor),
            "institution": self.institution, "task_type": self.task_type, "classes": list(self.classes),
            "bands": list(self.bands), "splits": list(self.tiles), "tiles": [int(n) for n in self.tiles.values()],
            "norm_mean": [float(x) for x in self.norm_mean], "norm_std": [float(x) for x in self.norm_std],
            "manifest": self.manifest,
        })

    @classmethod
    def read(cls, read: _Reader) -> DataSummary:
        f = read.config("summary", {
            "institution": NAME, "task_type": TEXT, "classes": CLASSES, "bands": BANDS, "splits": NAMES,
            "tiles": _list(COUNT, "a non-empty list of non-negative integers"), "norm_mean": NUMBERS,
            "norm_std": _list(NON_NEGATIVE, "a non-empty list of non-negative finite numbers"), "manifest": STRING,
            "sensor": _Rule(lambda v: isinstance(v, str) and len(v) <= MAX_SENSOR_JSON, "a sensor descriptor (JSON) "
                            f"of at most {MAX_SENSOR_JSON} characters")})
        if len(f["tiles"]) != len(f["splits"]):
            read.fail(f"summary.tiles must hold one count per split ({len(f['splits'])}), got {len(f['tiles'])}")
        tiles = dict(zip(f["splits"], f["tiles"]))
        if not tiles.get("train"):
            read.fail(f"summary.tiles must count some 'train' tiles, got {tiles}")
        for key in ("norm_mean", "norm_std"):
            if len(f[key]) != len(f["bands"]):
                read.fail(f"summary.{key} must hold one value per band ({len(f['bands'])}), got {len(f[key])}")
        summary = cls(f["institution"], f["task_type"], f["classes"], f["bands"], tiles, f["norm_mean"], f["norm_std"],
                      f["manifest"], _sensor_descriptor(read, f["sensor"]))
        try:
            sensor = summary.catalog().sensor(summary.sensor["name"])
        except ValueError as exc:
            read.fail(f"summary.sensor is refused: {exc}")
        foreign = [b for b in summary.bands if b not in sensor.image_bands]
        if foreign:
            read.fail(f"summary.bands {foreign} are not image bands of its sensor {sensor.name!r} {list(sensor.image_bands)}")
        return summary


MAX_SENSOR_JSON = 65536  # characters of a summary's sensor descriptor (64 bands of a few hundred characters each)


def _sensor_descriptor(read: _Reader, text: str) -> dict[str, Any]:
    """The JSON object of a summary's sensor descriptor; its contents are checked by :class:`Catalog`."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        read.fail(f"summary.sensor is not JSON: {exc}")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        read.fail("summary.sensor must be a JSON object naming its sensor")
    return value


TRAIN_MAXIMA = {"epochs": 1000, "batch_size": 1024, "max_steps": 1_000_000, "warmup_epochs": 1000}
"""The most a node does for one request: a ``train`` record beyond these is refused as malformed
(bounds what a coordinator can make a partner's machine do)."""


def _bounded(key: str, low: int, kind: _Rule = INT) -> _Rule:
    """``kind`` values in [``low``, ``TRAIN_MAXIMA[key]``]."""
    top = TRAIN_MAXIMA[key]
    return _Rule(lambda v: kind.ok(v) and low <= v <= top, f"{kind.what} in [{low}, {top}] (TRAIN_MAXIMA)")


_TRAIN_RULES = {"epochs": _bounded("epochs", 1), "batch_size": _bounded("batch_size", 1), "lr": POSITIVE,
                "weight_decay": NON_NEGATIVE, "warmup_epochs": _bounded("warmup_epochs", 0, NUMBER), "seed": INT,
                "device": TEXT, "amp": FLAG, "max_steps": _bounded("max_steps", 0),
                "clipping_norm": NON_NEGATIVE}


@dataclass(frozen=True)
class RoundTraining:
    """How an institution trains (or evaluates) a specialist in one round (the fields of
    :class:`specialists.train.TrainConfig` that travel); ``max_steps`` 0: no cap; ``clipping_norm``: the L2
    norm the member clips its update to before replying (``train.dp.mode`` ``client``; 0: no clipping)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    seed: int
    device: str
    amp: bool
    max_steps: int
    clipping_norm: float = 0.0

    @classmethod
    def of(cls, config: TrainConfig, clipping_norm: float = 0.0) -> RoundTraining:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if f.name != "clipping_norm"},
                   clipping_norm=float(clipping_norm))

    def record(self) -> ConfigRecord:
        return ConfigRecord(asdict(self))

    @classmethod
    def read(cls, read: _Reader) -> RoundTraining:
        return cls(**read.config("train", _TRAIN_RULES))


@dataclass(frozen=True)
class ProbeSettings:
    """How an institution probes the received encoders, and the bands its data has (as it reported them)."""

    fractions: list[float]
    seeds: list[int]
    batch_size: int
    device: str
    bands: list[str]

    def record(self) -> ConfigRecord:
        return ConfigRecord({"fractions": [float(x) for x in self.fractions], "seeds": [int(s) for s in self.seeds],
                             "batch_size": self.batch_size, "device": self.device, "bands": list(self.bands)})

    @classmethod
    def read(cls, read: _Reader) -> ProbeSettings:
        seed = _Rule(lambda v: _is_int(v) and 0 <= v <= SIZE_MAXIMA["seed"], "")
        return cls(**read.config("probe", {
            "fractions": _list(FRACTION, "a non-empty list of numbers in (0, 1]", most=SIZE_MAXIMA["fractions"]),
            "seeds": _list(seed, f"a non-empty list of integers in [0, {SIZE_MAXIMA['seed']}]",
                           most=SIZE_MAXIMA["seeds"]),
            "batch_size": _bounded("batch_size", 1), "device": TEXT, "bands": BANDS}))


@dataclass(frozen=True)
class StudentFiles:
    """The student's card (JSON) and safetensors weights; encoded once however many requests carry it."""

    card: str
    weights: bytes

    @cached_property
    def records(self) -> dict[str, ConfigRecord | ArrayRecord]:
        return {"student_card": _json_record(self.card), "student_weights": _file_record(self.weights)}

    @classmethod
    def read(cls, read: _Reader) -> StudentFiles:
        return cls(_card(read, "student_card"), read.file("student_weights", "safetensors",
                                                          read.arrays("student_weights")))


@dataclass(frozen=True)
class EnsembleFiles:
    """Specialists an institution can probe as an ensemble: per name its card (JSON), safetensors
    weights and feature-statistics tensors (where measured); encoded once however many requests carry it."""

    cards: dict[str, str]
    weights: dict[str, bytes]
    stats: dict[str, State]
    tolerance_nm: float

    @cached_property
    def records(self) -> dict[str, ConfigRecord | ArrayRecord]:
        tensors = {f"{name}/weights": bytes_tensor(data) for name, data in self.weights.items()}
        for name, stats in self.stats.items():
            tensors.update({f"{name}/stats/{key}": value for key, value in stats.items()})
        return {"ensemble": ConfigRecord({"names": list(self.cards), "cards": list(self.cards.values()),
                                          "tolerance_nm": float(self.tolerance_nm)}),
                "ensemble_weights": ArrayRecord(tensors)}

    @classmethod
    def read(cls, read: _Reader) -> EnsembleFiles:
        f = read.config("ensemble", {"names": NAMES, "cards": TEXTS, "tolerance_nm": NON_NEGATIVE})
        if len(f["cards"]) != len(f["names"]):
            read.fail(f"ensemble.cards must hold one card per name ({len(f['names'])}), got {len(f['cards'])}")
        tensors = read.arrays("ensemble_weights")
        weights, stats = {}, {}
        for name in f["names"]:
            weights[name] = read.file("ensemble_weights", f"{name}/weights", tensors)
            prefix = f"{name}/stats/"
            own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
            if own:
                stats[name] = own
        known = {f"{n}/weights" for n in weights} | {f"{n}/stats/{k}" for n, s in stats.items() for k in s}
        if set(tensors) - known:
            read.fail(f"ensemble_weights has tensors of no ensemble member: {sorted(set(tensors) - known)[:5]}")
        return cls(dict(zip(f["names"], f["cards"])), weights, stats, f["tolerance_nm"])


# ---------------------------------------------------------------------------------------------
# query.identify, query.describe


class _Request(_Message):
    SIDE = "request"

    def encode_each(self, institutions: Iterable[dict[str, str]]) -> list[RecordDict]:
        """:meth:`encode` once per institution record of ``institutions`` (in place of this request's own,
        for a request that carries one): the other records, the weights among them, are encoded once and
        shared by every content, so a group's round costs one copy of its weights, not one per member."""
        shared = self.encode()
        if "institution" not in shared:
            raise TypeError(f"{type(self).__name__} carries no institution record")
        return [RecordDict({**shared, "institution": ConfigRecord(institution)}) for institution in institutions]


class _Reply(_Message):
    SIDE = "reply"


@dataclass(frozen=True)
class IdentifyRequest(_Request):
    """Who are you? (to node ``node``)"""

    MESSAGE_TYPE = "query.identify"
    node: int

    def encode(self) -> RecordDict:
        return RecordDict({"identify": ConfigRecord({"node": self.node})})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        return cls(cls._read(content, source, {"identify"}).config("identify", {"node": INT})["node"])


@dataclass(frozen=True)
class IdentifyReply(_Reply):
    """A node's role: a declared institution (its record and data summary), a simulated host (its
    partition), or unconfigured."""

    MESSAGE_TYPE = "query.identify"
    kind: str
    institution: dict[str, str] = field(default_factory=dict)
    partition_id: int = -1
    num_partitions: int = 0
    summary: DataSummary | None = None

    def encode(self) -> RecordDict:
        identity: dict[str, Any] = {"kind": self.kind}
        if self.kind == "simulated":
            identity.update({"partition-id": self.partition_id, "num-partitions": self.num_partitions})
        content = RecordDict({"identity": ConfigRecord(identity)})
        if self.institution:
            content["institution"] = ConfigRecord(self.institution)
        if self.summary is not None:
            content["summary"] = self.summary.record()
        return content

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"identity"}, {"institution", "summary"})
        identity = read.config("identity", {"kind": KIND}, {"partition-id": COUNT, "num-partitions": COUNT})
        kind, simulated = identity["kind"], identity["kind"] == "simulated"
        if simulated != ("partition-id" in identity) or (not simulated and "num-partitions" in identity):
            read.fail(f"identity.partition-id and num-partitions are for simulated nodes only (and the id is required "
                      f"there); a {kind} node sent {sorted(identity)}")
        declared = kind == "declared"
        for name in ("institution", "summary"):
            if read.has(name) != declared:
                read.fail(f"record {name} is missing" if declared else f"record {name} is for declared nodes only")
        return cls(kind, _institution(read) if declared else {}, identity.get("partition-id", -1),
                   identity.get("num-partitions", 0), DataSummary.read(read) if declared else None)


@dataclass(frozen=True)
class DescribeRequest(_Request):
    """Open this (simulated) institution's data and summarise it."""

    MESSAGE_TYPE = "query.describe"
    institution: dict[str, str]

    def encode(self) -> RecordDict:
        return RecordDict({"institution": ConfigRecord(self.institution)})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        return cls(_institution(cls._read(content, source, {"institution"})))


@dataclass(frozen=True)
class DescribeReply(_Reply):
    MESSAGE_TYPE = "query.describe"
    summary: DataSummary

    def encode(self) -> RecordDict:
        return RecordDict({"summary": self.summary.record()})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        return cls(DataSummary.read(cls._read(content, source, {"summary"})))


# ---------------------------------------------------------------------------------------------
# train.specialist, evaluate.specialist

_JOB_RECORDS = {"institution", "card", "train", "encoder", "head"}


def _job_content(institution: dict[str, str], card: str, train: RoundTraining, encoder: State,
                 head: State) -> RecordDict:
    return RecordDict({"institution": ConfigRecord(institution), "card": _json_record(card), "train": train.record(),
                       "encoder": ArrayRecord(encoder), "head": ArrayRecord(head)})


def _read_job(read: _Reader) -> tuple[dict[str, str], str, RoundTraining, State, State]:
    return _institution(read), _card(read), RoundTraining.read(read), read.arrays("encoder"), read.arrays("head")


@dataclass(frozen=True)
class TrainRequest(_Request):
    """One FedAvg round: the group's card and global weights, and how to train them."""

    MESSAGE_TYPE = "train.specialist"
    institution: dict[str, str]
    card: str
    train: RoundTraining
    encoder: State
    head: State

    def encode(self) -> RecordDict:
        return _job_content(self.institution, self.card, self.train, self.encoder, self.head)

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        return cls(*_read_job(cls._read(content, source, _JOB_RECORDS)))


@dataclass(frozen=True)
class TrainReply(_Reply):
    """The locally trained weights and the round's metrics (``num_examples`` positive)."""

    MESSAGE_TYPE = "train.specialist"
    encoder: State
    head: State
    metrics: dict[str, float]

    def encode(self) -> RecordDict:
        return RecordDict({"encoder": ArrayRecord(self.encoder), "head": ArrayRecord(self.head),
                           "metrics": MetricRecord(self.metrics)})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"encoder", "head", "metrics"})
        return cls(read.arrays("encoder"), read.arrays("head"), read.metrics("metrics", {"num_examples": POSITIVE}))


@dataclass(frozen=True)
class EvaluateRequest(_Request):
    """Measure the final weights on ``val`` and ``test``; ``keep``: and keep the specialist in the store."""

    MESSAGE_TYPE = "evaluate.specialist"
    institution: dict[str, str]
    card: str
    train: RoundTraining
    encoder: State
    head: State
    keep: bool

    def encode(self) -> RecordDict:
        content = _job_content(self.institution, self.card, self.train, self.encoder, self.head)
        content["keep"] = ConfigRecord({"specialist": self.keep})
        return content

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, _JOB_RECORDS | {"keep"})
        return cls(*_read_job(read), read.config("keep", {"specialist": FLAG})["specialist"])


@dataclass(frozen=True)
class EvaluateReply(_Reply):
    MESSAGE_TYPE = "evaluate.specialist"
    metrics: dict[str, float]

    def encode(self) -> RecordDict:
        return RecordDict({"metrics": MetricRecord(self.metrics)})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        return cls(cls._read(content, source, {"metrics"}).metrics("metrics"))


# ---------------------------------------------------------------------------------------------
# train.pretrain

_PRETRAIN_RULES = {"epochs": _bounded("epochs", 1), "batch_size": _bounded("batch_size", 1), "lr": POSITIVE,
                   "weight_decay": NON_NEGATIVE,
                   "mask_ratio": _Rule(lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
                   "patch": _Rule(lambda v: _is_int(v) and 1 <= v <= SIZE_MAXIMA["image_px"],
                                  f"an integer in [1, {SIZE_MAXIMA['image_px']}] (SIZE_MAXIMA)"),
                   "seed": INT, "device": TEXT, "max_steps": _bounded("max_steps", 0)}


@dataclass(frozen=True)
class PretrainRequest(_Request):
    """One round of federated FCMAE: the group's card (its band statistics normalise), the global
    encoder and decoder, and how to pretrain them (``pretrain.max_steps`` 0: no cap)."""

    MESSAGE_TYPE = "train.pretrain"
    institution: dict[str, str]
    card: str
    pretrain: FcmaeConfig
    encoder: State
    decoder: State

    def encode(self) -> RecordDict:
        return RecordDict({"institution": ConfigRecord(self.institution), "card": _json_record(self.card),
                           "pretrain": ConfigRecord(asdict(self.pretrain)), "encoder": ArrayRecord(self.encoder),
                           "decoder": ArrayRecord(self.decoder)})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"institution", "card", "pretrain", "encoder", "decoder"})
        return cls(_institution(read), _card(read), FcmaeConfig(**read.config("pretrain", _PRETRAIN_RULES)),
                   read.arrays("encoder"), read.arrays("decoder"))


@dataclass(frozen=True)
class PretrainReply(_Reply):
    """The locally pretrained encoder and decoder and the round's metrics (``num_examples`` positive,
    ``loss``: the last epoch's masked-patch loss)."""

    MESSAGE_TYPE = "train.pretrain"
    encoder: State
    decoder: State
    metrics: dict[str, float]

    def encode(self) -> RecordDict:
        return RecordDict({"encoder": ArrayRecord(self.encoder), "decoder": ArrayRecord(self.decoder),
                           "metrics": MetricRecord(self.metrics)})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"encoder", "decoder", "metrics"})
        return cls(read.arrays("encoder"), read.arrays("decoder"),
                   read.metrics("metrics", {"num_examples": POSITIVE, "loss": NON_NEGATIVE}))


# ---------------------------------------------------------------------------------------------
# query.enrol, query.features


@dataclass(frozen=True)
class EnrolRequest(_Request):
    """The kept specialist with weights ``sha256``: its card, and its weights if ``weights``."""

    MESSAGE_TYPE = "query.enrol"
    institution: dict[str, str]
    sha256: str
    weights: bool

    def encode(self) -> RecordDict:
        return RecordDict({"institution": ConfigRecord(self.institution),
                           "request": ConfigRecord({"sha256": self.sha256, "weights": self.weights})})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"institution", "request"})
        request = read.config("request", {"sha256": SHA256, "weights": FLAG})
        return cls(_institution(read), request["sha256"], request["weights"])


@dataclass(frozen=True)
class EnrolReply(_Reply):
    """A kept specialist's card (JSON) and, unless its weights stay home, its safetensors weights."""

    MESSAGE_TYPE = "query.enrol"
    card: str
    weights: bytes | None = None

    def encode(self) -> RecordDict:
        content = RecordDict({"card": _json_record(self.card)})
        if self.weights is not None:
            content["weights"] = _file_record(self.weights)
        return content

    @classmethod
    def decode(cls, content: RecordDict, source: str, max_weights_bytes: int | None = None) -> Self:
        """``max_weights_bytes`` refuses a bigger ``weights`` record before it is deserialised."""
        read = cls._read(content, source, {"card"}, {"weights"})
        weights = None
        if read.has("weights"):
            tensors = read.arrays("weights", {"safetensors"}, max_weights_bytes)
            weights = read.file("weights", "safetensors", tensors)
        return cls(_card(read), weights)


@dataclass(frozen=True)
class FeaturesRequest(_Request):
    """Teacher targets of the kept specialist ``sha256`` on proxy ``images`` ([N, bands, H, W], physical
    units), sample ``ids`` in row order."""

    MESSAGE_TYPE = "query.features"
    institution: dict[str, str]
    sha256: str
    bands: list[str]
    ids: list[str]
    tolerance_nm: float
    images: torch.Tensor

    def encode(self) -> RecordDict:
        request = {"sha256": self.sha256, "bands": list(self.bands), "ids": list(self.ids),
                   "tolerance_nm": float(self.tolerance_nm)}
        return RecordDict({"institution": ConfigRecord(self.institution), "request": ConfigRecord(request),
                           "images": ArrayRecord({"x": self.images})})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"institution", "request", "images"})
        ids = _list(TEXT, "a non-empty list of unique non-empty strings", unique=True, most=SIZE_MAXIMA["ids"])
        request = read.config("request", {"sha256": SHA256, "bands": BANDS, "ids": ids, "tolerance_nm": NON_NEGATIVE})
        images = read.arrays("images")
        if set(images) != {"x"}:
            read.fail(f"images must hold just the tensor 'x', got {sorted(images)[:5]}")
        x, n, c = images["x"], len(request["ids"]), len(request["bands"])
        read.tensor("images", "x", x, n, f"[{n} ids, {c} bands, H, W]")
        if x.dim() != 4 or x.shape[1] != c:
            read.fail(f"images.x must be [{n} ids, {c} bands, H, W], got {list(x.shape)}")
        if max(x.shape[2:]) > SIZE_MAXIMA["image_px"]:
            read.fail(f"images.x must be at most {SIZE_MAXIMA['image_px']} px a side (SIZE_MAXIMA), "
                      f"got {list(x.shape[2:])}")
        return cls(_institution(read), request["sha256"], request["bands"], request["ids"], request["tolerance_nm"], x)


@dataclass(frozen=True)
class FeaturesReply(_Reply):
    """Teacher targets (name -> [N, C, ...] tensor) for samples ``ids`` in row order."""

    MESSAGE_TYPE = "query.features"
    ids: list[str]
    targets: State

    def encode(self) -> RecordDict:
        return RecordDict({"ids": ConfigRecord({"ids": list(self.ids)}), "targets": ArrayRecord(self.targets)})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"ids", "targets"})
        ids, targets = read.config("ids", {"ids": NAMES})["ids"], read.arrays("targets")
        for name, value in targets.items():
            read.tensor("targets", name, value, len(ids), f"[{len(ids)} ids, C, ...]")
        return cls(ids, targets)


# ---------------------------------------------------------------------------------------------
# evaluate.fusion

_RESULT_TEXTS = ("encoder", "task", "method", "metric")


FUSION_FILES = ("student_card", "student_weights", "ensemble", "ensemble_weights")
"""The records of an ``evaluate.fusion`` request a node keeps, so that later requests may refer to them
(:mod:`wire.held`)."""


@dataclass(frozen=True)
class FusionEvalRequest(_Request):
    """Probe the student (and the ensemble, where it can read the institution's bands) on local labels."""

    MESSAGE_TYPE = "evaluate.fusion"
    institution: dict[str, str]
    probe: ProbeSettings
    student: StudentFiles
    ensemble: EnsembleFiles | None = None

    def encode(self) -> RecordDict:
        content = RecordDict({"institution": ConfigRecord(self.institution), "probe": self.probe.record(),
                              **self.student.records})
        if self.ensemble is not None:
            content.update(self.ensemble.records)
        return content

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"institution", "probe", "student_card", "student_weights"},
                         {"ensemble", "ensemble_weights"})
        if read.has("ensemble") != read.has("ensemble_weights"):
            read.fail("records ensemble and ensemble_weights come together")
        return cls(_institution(read), ProbeSettings.read(read), StudentFiles.read(read),
                   EnsembleFiles.read(read) if read.has("ensemble") else None)


@dataclass(frozen=True)
class FusionEvalReply(_Reply):
    """The probe scores (only they leave the node) and the node's metrics (e.g. ``peak_rss_mb``)."""

    MESSAGE_TYPE = "evaluate.fusion"
    results: list[ProbeResult]
    metrics: dict[str, float]

    def encode(self) -> RecordDict:
        columns: dict[str, list] = {key: [getattr(r, key) for r in self.results] for key in _RESULT_TEXTS}
        columns.update({key: [float(getattr(r, key)) for r in self.results] for key in ("fraction", "mean", "std")})
        columns["values"] = [float(v) for r in self.results for v in r.values]
        columns["counts"] = [len(r.values) for r in self.results]
        return RecordDict({"results": ConfigRecord(columns), "metrics": MetricRecord(self.metrics)})

    @classmethod
    def decode(cls, content: RecordDict, source: str) -> Self:
        read = cls._read(content, source, {"results", "metrics"})
        f = read.config("results", {
            **{key: TEXTS for key in _RESULT_TEXTS},
            "fraction": _list(FRACTION, "a non-empty list of numbers in (0, 1]"),
            "mean": _list(SCORE, "a non-empty list of probe scores in [0, 1]"),
            "std": _list(NON_NEGATIVE, "a non-empty list of non-negative finite numbers"), "values": NUMBERS,
            "counts": _list(POSITIVE_INT, "a non-empty list of positive integers")})
        n = len(f["encoder"])
        for key, column in f.items():
            if key != "values" and len(column) != n:
                read.fail(f"results.{key} must hold one entry per result ({n}), got {len(column)}")
        if sum(f["counts"]) != len(f["values"]):
            read.fail(f"results.values must hold sum(results.counts) = {sum(f['counts'])} values, "
                      f"got {len(f['values'])}")
        results, start = [], 0
        for i, count in enumerate(f["counts"]):
            results.append(ProbeResult(f["encoder"][i], f["task"][i], f["method"][i], f["fraction"][i], f["metric"][i],
                                       f["mean"][i], f["std"][i], f["values"][start:start + count]))
            start += count
        return cls(results, read.metrics("metrics"))
