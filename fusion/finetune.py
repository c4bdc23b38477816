"""Fine-tuning an encoder with a task head on a manifest task, sealed on disk as one task model.

Any encoder ``open_encoder`` names (student, specialist, registry ensemble, ``random:<variant>``) is
seen through the task's band tuple (:class:`BandView`: a specialist reads each of its bands from the
task's band of that name or its stand-in within ``tolerance_nm``, :func:`fusion.views.plan_view`, as an
ensemble's members do; a student reads any bands), partly unfrozen (``UNFREEZE``: ``none``, the
``last_stage`` or ``all``; an ensemble stays frozen), and trained with its head by
:func:`specialists.train.fit` (early stopping on val). The result, :class:`TaskModel`, is written by
:func:`specialists.artifact.save_state`: ``weights.safetensors`` (encoder + head, plus an ensemble's
feature statistics) and a :class:`~specialists.card.SpecialistCard` whose ``extra`` records the
encoder (kind, source and its own card(s), so the folder alone rebuilds it), the head, the unfreeze
policy and the tile size; ``bands``/``norm_mean``/``norm_std`` are the task data's (what invalid
pixels are filled with and a random-init encoder normalises with). A ``sensors.yaml`` beside the
weights registers the card's sensor when the model is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fusion.encoders import RANDOM_PREFIX, encoder_kind, load_encoder
from fusion.ensemble import Ensemble
from fusion.featstats import FeatureStats
from fusion.student import Student, StudentCard, band_stats_table
from fusion.views import plan_view
from geodata.dataset import TileDataset
from geodata.manifest import Manifest
from geodata.sensors import BandError, Catalog, Sensor, builtin
from geodata.stats import BandStats, load_or_compute_stats
from specialists import Specialist, SpecialistCard
from specialists.encoder import freeze_encoder
from specialists.heads import build_head
from specialists.artifact import ArtifactError, load_state, save_state
from specialists.train import TrainConfig, evaluate, fit, make_loader, record_training, seed_everything
from geodata.errors import InputError

__all__ = ["UNFREEZE", "TASK_MODEL_KIND", "BandView", "TaskModel", "class_balance", "finetune", "save_task_model",
           "load_task_model"]

log = logging.getLogger(__name__)

UNFREEZE = ("none", "last_stage", "all")
TASK_MODEL_KIND = "task_model"
_STATS_PREFIX = "feature_stats."


class BandView(nn.Module):
    """An encoder on a fixed band tuple: ``forward(x)`` with ``x`` ``[B, len(bands), H, W]`` -> 4 scales.

    A specialist's bands come from ``bands`` through its view (:func:`fusion.views.plan_view` within
    ``tolerance_nm``); a specialist that has none is a :class:`~geodata.sensors.BandError` naming its bands.
    A student is told the input's GSD per band (``gsd``) and reads it at ``working_gsd`` (m) when given, else at
    its card's working GSD (:mod:`fusion.student`: nothing is resampled for a GSD-blind student).
    """

    def __init__(self, encoder: nn.Module, bands: tuple[str, ...], tolerance_nm: float | None,
                 gsd: tuple[float, ...] | None = None, working_gsd: float | None = None,
                 catalog: Catalog | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.bands = tuple(bands)
        self.gsd, self.working_gsd = None, None
        self.set_gsd(gsd, working_gsd)
        self.plan = None
        if isinstance(encoder, Specialist):
            if tolerance_nm is None:
                raise InputError(f"specialist {encoder.card.name!r}: reading it through a view needs tolerance_nm")
            self.plan = plan_view(encoder.card.name, encoder.descriptors, self.bands, tolerance_nm, catalog)
            if not self.plan.applicable:
                raise BandError(f"specialist {encoder.card.name!r} cannot read bands {list(self.bands)}: "
                                f"{self.plan.reason}")

    def set_gsd(self, gsd: tuple[float, ...] | None, working_gsd: float | None = None) -> None:
        """The input's GSD per band and, when given, the working GSD a student reads it at (class docstring)."""
        if working_gsd is not None and not isinstance(self.encoder, Student):
            raise InputError(f"a working GSD ({working_gsd} m, --gsd) needs a student encoder; "
                             f"{type(self.encoder).__name__} reads its input as it is")
        if working_gsd is not None and not working_gsd > 0:
            raise InputError(f"the working GSD (--gsd) must be > 0 m, got {working_gsd}")
        self.gsd = gsd
        self.working_gsd = working_gsd if working_gsd is not None else self.working_gsd

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.plan is not None:
            return self.encoder(self.plan.select(x))
        if isinstance(self.encoder, Student):
            return self.encoder(x, self.bands, self.gsd, self.working_gsd)
        features = self.encoder(x, self.bands)
        # the ensemble runs in inference mode; its features become ordinary tensors the head can train on
        return [f.clone() for f in features] if isinstance(self.encoder, Ensemble) else features

    @torch.no_grad()
    def feature_shapes(self, size: int = 64) -> tuple[list[int], list[int]]:
        """Channels and stride of each scale, from one blank input."""
        device = next(self.parameters()).device
        features = self.forward(torch.zeros(1, len(self.bands), size, size, device=device))
        return [int(f.shape[1]) for f in features], [size // int(f.shape[-1]) for f in features]


class TaskModel(nn.Module):
    """An encoder (through its :class:`BandView`) and a task head; ``forward(x)`` gives the head's logits."""

    def __init__(self, encoder: BandView, head: nn.Module, card: SpecialistCard) -> None:
        super().__init__()
        self.encoder, self.head, self.card = encoder, head, card

    @property
    def bands(self) -> tuple[str, ...]:
        return self.encoder.bands

    def catalog(self) -> Catalog:
        """Its bands (the card's descriptors) and, when it is not built in, the sensor it was trained on."""
        sensor = self.card.extra.get("sensor")
        return self.card.catalog().merge(Catalog.from_records(sensors=[sensor], source=f"task model {self.card.name!r}: "
                                                              "field 'extra.sensor'")) if sensor else self.card.catalog()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x), x.shape[-2:], x)


def _open(spec: str, stats: BandStats, seed: int, tolerance_nm: float, device: str,
          init: str | None = None) -> tuple[nn.Module, dict]:
    """The encoder named by ``spec`` (trainable, not wrapped; a new student's trunk from the checkpoint
    ``init`` when given, :mod:`specialists.init`) and the record that rebuilds it."""
    kind = encoder_kind(spec)
    if init is not None and kind != "random":
        raise InputError(f"init_weights {init}: only a new {RANDOM_PREFIX}<variant> encoder starts from a checkpoint")
    encoder = load_encoder(spec, tolerance_nm, seed, device, band_stats_table([stats]))
    if kind == "random" and init is not None:
        encoder.card.distill["init"] = encoder.start_from(init, [stats.bands], tolerance_nm)
    elif kind == "student":
        encoder.set_band_stats({**band_stats_table([stats]), **encoder.card.band_stats})
    return encoder, {"kind": kind, "source": str(spec), **_describe(encoder, tolerance_nm)}


def _describe(encoder: nn.Module, tolerance_nm: float) -> dict[str, Any]:
    """The encoder's record: its card(s), and the tolerance of the view a specialist reads through."""
    if isinstance(encoder, Student):
        return {"card": encoder.card.to_dict()}
    if isinstance(encoder, Specialist):
        return {"card": encoder.card.to_dict(), "tolerance_nm": tolerance_nm}
    return {"members": {n: s.card.to_dict() for n, s in encoder.specialists.items()},
            "tolerance_nm": encoder.tolerance_nm}


def _rebuild(record: dict[str, Any], stats: dict[str, torch.Tensor], source: str) -> nn.Module:
    """An untrained encoder of the architecture ``record`` describes (weights come from the task model)."""
    kind = record.get("kind")
    if kind in ("random", "student"):
        return Student(StudentCard.from_dict(record["card"], source=f"{source} encoder card"))
    if kind == "specialist":
        return Specialist.from_card(SpecialistCard.from_dict(record["card"], source=f"{source} encoder card"))
    if kind == "registry":
        members = {n: Specialist.from_card(SpecialistCard.from_dict(c, source=f"{source} member {n}"))
                   for n, c in record["members"].items()}
        feature_stats = {n: FeatureStats.from_tensors(
            {k[len(f"{_STATS_PREFIX}{n}."):]: v for k, v in stats.items() if k.startswith(f"{_STATS_PREFIX}{n}.")},
            source=f"{source} feature stats of {n}") for n in members}
        return Ensemble(members, feature_stats, tolerance_nm=record["tolerance_nm"])
    raise ArtifactError(f"{source}: unknown encoder kind {kind!r} in field 'extra'")


def _set_trainable(encoder: nn.Module, policy: str, num_stages: int) -> None:
    if policy not in UNFREEZE:
        raise InputError(f"unknown unfreeze policy {policy!r}; expected one of {UNFREEZE}")
    if isinstance(encoder, Ensemble):
        if policy != "none":
            raise InputError("a registry ensemble stays frozen; fine-tune it with unfreeze 'none'")
        return
    trunk = encoder.encoder if isinstance(encoder, Specialist) else encoder.trunk
    freeze_encoder(trunk, {"none": "backbone", "last_stage": f"stages:{num_stages - 1}", "all": "none"}[policy])
    if isinstance(encoder, Student):
        encoder.stem.requires_grad_(policy == "all")


def class_balance(dataset: TileDataset) -> list[float]:
    """Loss weights against class imbalance: ``total / (K * count)`` per class (segmentation pixels,
    classification tiles; 0 for an absent class), or ``negatives / positives`` per label (multilabel)."""
    spec = dataset.task_spec
    counts = np.zeros(spec.num_classes)
    for sample in dataset:
        target = torch.as_tensor(sample["target"])
        if spec.type == "multilabel":
            counts += target.numpy()
        else:
            kept = target[target != spec.ignore_index].flatten()
            counts += np.bincount(kept.numpy(), minlength=spec.num_classes)
    if spec.type == "multilabel":
        return [float((len(dataset) - c) / c) if c else 1.0 for c in counts]
    return [float(counts.sum() / (spec.num_classes * c)) if c else 0.0 for c in counts]


def finetune(
    encoder_spec: str, manifest: Manifest, sensor: Sensor, task_name: str, cfg: TrainConfig,
    *, tolerance_nm: float, unfreeze: str = "none", decoder: str = "upernet", size: int | None = None,
    balance: bool = False, name: str | None = None, gsd: float | None = None,
) -> tuple[TaskModel, list[dict[str, Any]]]:
    """Fine-tune ``encoder_spec`` with a task head on ``manifest``'s ``train`` tiles (early stopping on
    ``val``, test metrics on ``test`` when present); ``balance``: class weights from :func:`class_balance`;
    ``gsd``: a student's working GSD (m; :class:`BandView`), recorded in the card's ``extra["gsd"]``."""
    task = manifest.task(task_name)
    stats = load_or_compute_stats(manifest, sensor, "train")
    datasets: dict[str, Dataset] = {}
    for split in ("train", "val", "test"):
        if manifest.select(sensor=sensor.name, split=split, task=task_name):
            datasets[split] = TileDataset(manifest, sensor, split=split, task=task_name, size=size, stats=stats)
    if "train" not in datasets:
        raise InputError(f"manifest {manifest.name!r}: no train tiles of sensor {sensor.name!r} for task {task_name!r}")
    if balance:
        cfg.class_weights = class_balance(datasets["train"])
        log.info("class weights %s", [round(w, 3) for w in cfg.class_weights])
    seed_everything(cfg.seed)
    encoder, record = _open(encoder_spec, stats, cfg.seed, tolerance_nm, cfg.device, cfg.init_weights)
    input_gsd = tuple(sensor.band_gsd(b) for b in stats.bands)
    view = BandView(encoder, stats.bands, tolerance_nm, input_gsd, gsd).to(cfg.device)
    if view.plan is not None and view.plan.substitutions:
        log.info("specialist %s reads %s", encoder.card.name, view.plan.stand_ins())
    dims, reductions = view.feature_shapes()
    _set_trainable(encoder, unfreeze, len(dims))
    head = build_head(task.type, dims, task.num_classes, decoder, len(stats.bands)).to(cfg.device)
    first = datasets["train"].tiles[0]
    card = SpecialistCard(
        name=name or f"{manifest.name}-{task_name}", institutions=[manifest.name], sensor=sensor.name,
        bands=list(stats.bands), norm_mean=list(stats.mean), norm_std=list(stats.std), task=task_name,
        task_type=task.type, classes=list(task.classes),
        variant=record["card"]["variant"] if "card" in record else next(iter(record["members"].values()))["variant"],
        feature_dims=dims, feature_reductions=reductions, data_summary={"manifest": manifest.name},
        extra={"kind": TASK_MODEL_KIND, "encoder": record, "head": {"decoder": decoder}, "unfreeze": unfreeze,
               "ignore_index": task.ignore_index, "gsd": {"input": list(input_gsd), "working": gsd},
               "tile_size": size or (first.window[2] if first.window is not None else None),
               **({} if builtin().sensors.get(sensor.name) == sensor else {"sensor": sensor.describe()})},
    )
    history, best = fit(view, head, datasets["train"], datasets.get("val"), task.type, task.num_classes, cfg,
                        task.ignore_index, name=f"{card.name} ({record['kind']} {card.variant}, unfreeze {unfreeze})")
    record_training(card, history, best, datasets["train"], datasets.get("val"), cfg)
    card.metrics["trainable_params"] = sum(p.numel() for m in (view, head) for p in m.parameters() if p.requires_grad)
    if "test" in datasets:
        scores = evaluate(view, head, make_loader(datasets["test"], cfg, shuffle=False), task.type, task.num_classes,
                          cfg, task.ignore_index, desc="test")
        card.metrics.update({f"test_{k}": v for k, v in scores.items()})
    return TaskModel(view, head, card).eval(), history


def save_task_model(model: TaskModel, directory: str | Path) -> Path:
    """Seal ``model`` into ``directory`` (its card describes its bands and, unless built in, its sensor)."""
    directory = Path(directory)
    state = dict(model.state_dict())
    if isinstance(model.encoder.encoder, Ensemble):
        for name, stats in model.encoder.encoder.stats.items():
            state.update({f"{_STATS_PREFIX}{name}.{k}": v for k, v in stats.to_tensors().items()})
    save_state(model.card, state, directory)
    return directory


def load_task_model(directory: str | Path, map_location: str = "cpu") -> TaskModel:
    """A sealed task model (in eval mode), checked against its card; its bands mean what its card says."""
    directory = Path(directory)
    card, state = load_state(directory, SpecialistCard)
    source = str(directory / "card.json")
    if card.extra.get("kind") != TASK_MODEL_KIND:
        raise ArtifactError(f"{source}: not a fine-tuned task model (field 'extra' has no kind "
                                      f"{TASK_MODEL_KIND!r}); a specialist or student is an --encoder")
    stats = {k: v for k, v in state.items() if k.startswith(_STATS_PREFIX)}
    record = card.extra["encoder"]
    # finetune records the tolerance of a specialist's view; a student or an ensemble needs none here
    gsd = card.extra.get("gsd") or {}  # absent from task models written before GSD-aware students
    view = BandView(_rebuild(record, stats, source), tuple(card.bands), record.get("tolerance_nm"),
                    tuple(gsd["input"]) if gsd.get("input") else None, gsd.get("working"), catalog=card.catalog())
    head = build_head(card.task_type, card.feature_dims, card.num_classes, card.extra["head"]["decoder"],
                      len(card.bands))
    model = TaskModel(view, head, card)
    try:
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_STATS_PREFIX)}, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{directory / 'weights.safetensors'}: does not match {source}: "
                                      f"{' '.join(str(exc).split())[:300]}") from exc
    return model.to(map_location).eval()
