"""The experiment config: configs/ composed with Hydra from Flower's run config, as typed dataclasses.

Flower's run config (``[tool.flwr.app.config]``, overridable with ``flwr run . -c ...``) names the
experiment (``configs/experiment/<name>.yaml``), extra Hydra overrides (space separated, shell-style
quoting) and the run name. The composed tree is merged onto :class:`ExperimentConfig`, so an unknown
key or a wrongly typed value fails here, naming it, before any node is contacted.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from geodata.synth.config import WorldConfig

__all__ = [
    "CONFIG_DIR",
    "ExperimentConfig",
    "DistillPhaseConfig",
    "EnrolPhaseConfig",
    "EvaluatePhaseConfig",
    "FederationConfig",
    "InstitutionConfig",
    "ProxyConfig",
    "PrunePhaseConfig",
    "RunSettings",
    "TrainPhaseConfig",
    "compose_experiment",
    "load_experiment",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class InstitutionConfig:
    """A simulated institution: the sensor and task it trains on, and where its data comes from.

    By default its data are its own scenes in the synthetic ``world`` (the world's institution of
    the same name); ``manifest`` instead points at an existing manifest (its tiles of ``sensor``
    with ``task`` targets, only in ``region`` when given).
    """

    sensor: str
    task: str
    manifest: str = ""
    region: str = ""


@dataclass
class FederationConfig:
    """How the coordinator waits for nodes and replies."""

    min_nodes: int = 1
    node_wait_s: float = 120.0
    reply_timeout_s: float = 1800.0
    min_institutions: int = 1


@dataclass
class TrainPhaseConfig:
    """Phase *train*: per group, ``rounds`` FedAvg rounds of ``local_epochs`` local epochs each.

    ``lr`` is the first round's learning rate, decayed by a cosine over the rounds; ``max_steps``
    caps each node's optimiser steps per round (0: no cap); ``device`` ``auto`` picks the GPU a
    node may use, else the CPU; ``amp`` trains in bfloat16 autocast on GPUs.
    """

    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    variant: str = "convnextv2_atto"
    max_steps: int = 0
    device: str = "auto"
    amp: bool = False
    min_replies: int = 1


@dataclass
class EnrolPhaseConfig:
    """Phase *enrol*: ``weights: send`` uploads each specialist to the coordinator's registry;
    ``weights: home`` (features-only) enrols its card and asks its holder for features later.
    ``max_upload_mb`` refuses bigger uploads before reading them."""

    weights: str = "send"
    max_upload_mb: float = 256.0


@dataclass
class ProxyConfig:
    """The unlabelled proxy data the coordinator distils on: a manifest, or (default) new scenes of the
    experiment world's places, every institution observed by every sensor the specialists use."""

    manifest: str = ""
    split: str = ""
    tiles_per_institution: int = 48
    seed_offset: int = 1000
    pair_scenes: bool = True
    batch_size: int = 32


@dataclass
class DistillPhaseConfig:
    """Phase *distill* (:class:`fusion.distill.DistillConfig`); ``variant`` is the student's trunk."""

    epochs: int = 10
    lr: float = 1e-3
    drop_prob: float = 0.5
    variant: str = "convnextv2_atto"
    tolerance_nm: float = 50.0
    device: str = "cpu"


@dataclass
class EvaluatePhaseConfig:
    """Phase *evaluate*: probes each institution runs on the student (and ensemble) with its labels."""

    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 64
    min_replies: int = 1


@dataclass
class PrunePhaseConfig:
    """Phase *prune*: Shapley contributions on the proxy's labelled ``task``, each marginal taken against
    the specialist's untrained twin (``baseline: random_twin``) or not (``none``); keep the top
    ``keep_top_k`` (0: no cap) and/or drop those whose interval lies at or below zero."""

    task: str = "scene"
    baseline: str = "random_twin"
    permutations: int = 100
    keep_top_k: int = 0
    drop_nonpositive: bool = True


@dataclass
class ExperimentConfig:
    """The typed experiment (each phase reads its own section). ``stop_after`` names the last phase to
    run (empty: all). ``integrate`` names a finished run (in ``output_dir``) to extend: its enrolled
    specialists are kept as they are, only groups it lacks are trained, and its student is warm-started."""

    seed: int = 0
    stop_after: str = ""
    output_dir: str = "outputs"
    cache_dir: str = "outputs/cache"
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainPhaseConfig = field(default_factory=TrainPhaseConfig)
    enrol: EnrolPhaseConfig = field(default_factory=EnrolPhaseConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    distill: DistillPhaseConfig = field(default_factory=DistillPhaseConfig)
    evaluate: EvaluatePhaseConfig = field(default_factory=EvaluatePhaseConfig)
    prune: PrunePhaseConfig = field(default_factory=PrunePhaseConfig)
    integrate: str = ""
    institutions: dict[str, InstitutionConfig] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.federation.min_nodes < 1 or self.federation.min_institutions < 1:
            raise ValueError("federation.min_nodes and federation.min_institutions must be >= 1")
        if min(self.train.rounds, self.train.local_epochs, self.train.batch_size, self.train.min_replies) < 1:
            raise ValueError("train.rounds, local_epochs, batch_size and min_replies must be >= 1")
        if self.enrol.weights not in ("send", "home"):
            raise ValueError(f"enrol.weights must be 'send' or 'home', got {self.enrol.weights!r}")
        if self.prune.baseline not in ("random_twin", "none"):
            raise ValueError(f"prune.baseline must be 'random_twin' or 'none', got {self.prune.baseline!r}")
        if self.integrate and not _RUN_NAME.match(self.integrate):
            raise ValueError(f"integrate: {self.integrate!r} is not a run name")
        if self.prune.keep_top_k < 0 or self.prune.permutations < 1:
            raise ValueError("prune.keep_top_k must be >= 0 and prune.permutations >= 1")
        if min(self.distill.epochs, self.proxy.tiles_per_institution, self.proxy.batch_size) < 1:
            raise ValueError("distill.epochs, proxy.tiles_per_institution and proxy.batch_size must be >= 1")
        world = WorldConfig.from_dict(self.world, source="world") if self.world else None
        for name, inst in self.institutions.items():
            where = f"institutions.{name}"
            if not _RUN_NAME.match(name):
                raise ValueError(f"{where}: institution names may hold only letters, digits, '.', '_', '-'")
            if inst.manifest:
                continue
            if inst.region:
                raise ValueError(f"{where}: 'region' filters a 'manifest'; world institutions have their own region")
            if world is None:
                raise ValueError(f"{where}: no 'manifest' and no synthetic 'world' config to generate its data")
            sensors = next((w.sensors for w in world.institutions if w.name == name), None)
            if sensors is None:
                raise ValueError(f"{where}: world {world.name!r} has no institution {name!r}; "
                                 f"it has {[w.name for w in world.institutions]}")
            if inst.sensor not in sensors:
                raise ValueError(f"{where}: world institution {name!r} observes {list(sensors)}, not {inst.sensor!r}")


@dataclass(frozen=True)
class RunSettings:
    """Flower's run config, parsed: which experiment, which overrides, which run folder."""

    experiment: str
    overrides: tuple[str, ...]
    run_name: str

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], now: datetime | None = None) -> "RunSettings":
        def text(key: str) -> str:
            value = run_config.get(key, "")
            if not isinstance(value, str):
                raise ValueError(f"run config {key!r} must be a string, got {value!r}")
            return value.strip()

        experiment = text("experiment") or "default"
        try:
            overrides = tuple(shlex.split(text("overrides")))
        except ValueError as exc:
            raise ValueError(f"run config 'overrides': {exc}") from None
        run_name = text("run-name")
        if not run_name:
            stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
            run_name = f"{experiment}-{stamp}"
        if not _RUN_NAME.match(run_name):
            raise ValueError(f"run config 'run-name' {run_name!r}: use letters, digits, '.', '_', '-' only")
        return cls(experiment=experiment, overrides=overrides, run_name=run_name)


def compose_experiment(experiment: str, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """The Hydra tree of ``configs/`` for ``experiment`` with ``overrides`` applied (all resolved)."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None, job_name="eosfed"):
            cfg = compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(f"experiment {experiment!r} with overrides {list(overrides)}: {exc}") from None
    return cfg


def load_experiment(settings: RunSettings) -> tuple[ExperimentConfig, str]:
    """The typed experiment and its resolved YAML (what the run folder records)."""
    cfg = compose_experiment(settings.experiment, settings.overrides)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), cfg))
    except OmegaConfBaseException as exc:
        raise ValueError(f"experiment {settings.experiment!r}: {exc}") from None
    assert isinstance(typed, ExperimentConfig)
    return typed, OmegaConf.to_yaml(cfg)
