"""The one settings tree of a run (:class:`ExperimentConfig`), composed with Hydra from ``configs/``.

Every setting has its default here, in the dataclasses (the library's own configs,
:class:`specialists.train.OptimConfig` and :class:`fusion.distill.DistillConfig`, are part of the
tree); ``configs/`` holds only what an experiment changes. The tree is registered as Hydra's schema,
so an unknown key or a wrongly typed value fails at composition, naming it, before any node is
contacted. Flower's run config (``[tool.flwr.app.config]``, ``flwr run . -c ...``) names the
experiment (``configs/experiment/<name>.yaml``), extra Hydra overrides (space separated, shell-style
quoting) and the run name.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hydra.core.config_store import ConfigStore

from fusion.distill import DistillConfig
from geodata.dataset import MAX_TILE_PX
from geodata.names import NAME_RULE, is_safe_name
from geodata.sensors import Catalog, default, load_sensor_files
from geodata.synth.config import WorldConfig
from geodata.synth.world import world_tasks
from specialists.fcmae import FcmaeOptim
from specialists.init import BASE, check_init
from specialists.trunk import DEFAULT_VARIANT, check_variant
from specialists.train import OptimConfig
from wire.messages import SIZE_MAXIMA, TRAIN_MAXIMA
from geodata.errors import InputError

__all__ = [
    "AGGREGATIONS",
    "CONFIG_DIR",
    "DP_MODES",
    "DpSettings",
    "EnergySettings",
    "EnrolSettings",
    "EvaluateSettings",
    "ExperimentConfig",
    "FederationSettings",
    "InstitutionSettings",
    "PretrainSettings",
    "ProxySettings",
    "PruneSettings",
    "RunSettings",
    "SamplesSettings",
    "TrainSettings",
    "compose_experiment",
    "load_experiment",
]

AGGREGATIONS = ("fedavg", "median", "trimmed_mean")
"""How phase *train* combines a round's updates (``train.aggregation``)."""
DP_MODES = ("none", "client", "server")
"""Who clips a member's round update under ``train.dp`` (``none``: no differential privacy)."""
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class InstitutionSettings:
    """A simulated institution: the sensor and task it trains on, and where its data comes from.

    By default its data are its own scenes in the synthetic ``world`` (the world's institution of
    the same name); ``manifest`` instead points at an existing manifest (its tiles of ``sensor``
    with ``task`` targets, only in ``region`` when given). ``resize``: its node reads each tile whole,
    resampled to ``resize`` x ``resize`` pixels (0: as it is).
    """

    sensor: str
    task: str
    manifest: str = ""
    region: str = ""
    resize: int = 0


@dataclass
class FederationSettings:
    """How the coordinator waits for nodes and replies: ``min_nodes`` connected SuperNodes, waited for
    at most ``node_wait_s``; a request unanswered after ``reply_timeout_s`` fails; fewer usable
    institutions than ``min_institutions`` stop the run. A group member whose declared band statistics
    lie beyond ``stats_factor`` of the others' is left out (see :func:`pipeline.fedavg.implausible_norms`;
    0: no check)."""

    min_nodes: int = 1
    node_wait_s: float = 120.0
    reply_timeout_s: float = 1800.0
    min_institutions: int = 1
    stats_factor: float = 100.0


@dataclass
class DpSettings:
    """Differential privacy of phase *train* (:mod:`pipeline.privacy`, Flower's fixed clipping): each member's
    round update (its weights minus the round's global weights) is clipped to L2 norm ``clipping_norm`` by
    the member (``mode: client``) or by the coordinator (``server``), and the coordinator adds Gaussian noise
    of std ``noise_multiplier`` x ``clipping_norm`` x the largest member share to the round's weighted mean.
    The epsilon spent at ``delta`` is reported per group. ``none``: off."""

    mode: str = "none"
    clipping_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def check(self) -> None:
        """``ValueError`` naming the first setting out of range."""
        if self.mode not in DP_MODES:
            raise InputError(f"train.dp.mode must be one of {list(DP_MODES)}, got {self.mode!r}")
        for name in ("clipping_norm", "noise_multiplier"):
            if not getattr(self, name) > 0:
                raise InputError(f"train.dp.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.delta < 1:
            raise InputError(f"train.dp.delta must be in (0, 1), got {self.delta}")


@dataclass
class PretrainSettings(FcmaeOptim):
    """Phase *pretrain* (before *train*): per group, ``rounds`` FedAvg rounds of FCMAE
    (:mod:`specialists.fcmae`) on the members' train tiles, labels ignored, ``local_epochs`` each (0 rounds:
    no such phase). The round's learning rate is ``lr`` decayed by a cosine over the rounds (and over each
    round's steps); the group's robustness settings are ``train``'s (``min_replies``, ``max_weight_share``,
    ``update_factor``, ``aggregation``). The group's *train* phase starts from the result."""

    rounds: int = 0
    local_epochs: int = 1

    def check(self) -> None:
        """``ValueError`` naming the first field out of range."""
        for name, ok, what in (("rounds", self.rounds >= 0, ">= 0"),
                               ("local_epochs", 1 <= self.local_epochs <= TRAIN_MAXIMA["epochs"],
                                f"in [1, {TRAIN_MAXIMA['epochs']}]"),
                               ("batch_size", 1 <= self.batch_size <= TRAIN_MAXIMA["batch_size"],
                                f"in [1, {TRAIN_MAXIMA['batch_size']}]"),
                               ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               ("mask_ratio", 0 < self.mask_ratio < 1, "in (0, 1)"),
                               ("patch", 1 <= self.patch <= MAX_TILE_PX, f"in [1, {MAX_TILE_PX}]"),
                               ("max_steps", 0 <= self.max_steps <= TRAIN_MAXIMA["max_steps"],
                                f"in [0, {TRAIN_MAXIMA['max_steps']}]")):
            if not ok:
                raise InputError(f"pretrain.{name} must be {what}, got {getattr(self, name)!r}")


@dataclass
class TrainSettings(OptimConfig):
    """Phase *train*: per group, ``rounds`` FedAvg rounds of ``local_epochs`` local epochs each.

    ``lr`` is the first round's learning rate, decayed by a cosine over the rounds, after a linear
    warm-up over the run's first ``warmup_epochs`` local epochs; ``max_steps`` caps each node's
    optimiser steps per round (0: no cap); a round needs ``min_replies`` valid updates, else the
    group keeps its weights. Members' claims cannot take a group over: a member's weight (its declared
    train tiles) is at most ``max_weight_share`` of the total, an update farther than ``update_factor``
    times the median distance from the round's coordinate-wise median is refused (0: no screening;
    three or more updates), and ``aggregation`` is ``fedavg`` (weighted mean), ``median`` or
    ``trimmed_mean`` (see :mod:`pipeline.fedavg`). ``init``: the checkpoint every group's specialist
    starts from (:mod:`specialists.init`): ``base`` (the shipped base checkpoint), a file or folder (relative to
    the coordinator's working directory) or ``random``. ``dp``: differential privacy (:class:`DpSettings`).
    """

    init: str = BASE
    rounds: int = 5
    local_epochs: int = 1
    variant: str = DEFAULT_VARIANT
    max_steps: int = 0
    min_replies: int = 1
    max_weight_share: float = 0.5
    update_factor: float = 5.0
    aggregation: str = "fedavg"
    dp: DpSettings = field(default_factory=DpSettings)


@dataclass
class EnrolSettings:
    """Phase *enrol*: ``weights: send`` uploads each specialist to the coordinator's registry;
    ``weights: home`` (features-only) enrols its card and asks its holder for features later.
    ``max_upload_mb`` refuses bigger uploads. A specialist's weights go back out (phase *evaluate*) only
    to its own group's members, unless ``share_weights`` lets every institution that can read them have them."""

    weights: str = "send"
    max_upload_mb: float = 256.0
    share_weights: bool = False


@dataclass
class ProxySettings:
    """The unlabelled proxy data the coordinator distils on: a ``manifest`` (its ``split``; empty: all),
    or (default) ``tiles_per_institution`` new scenes of the experiment world's places (world seed +
    ``seed_offset``), every institution observed by every sensor the specialists use; ``resize``: per
    sensor, its tiles read whole and resampled to that size (as its institutions read theirs). With
    ``pair_scenes`` the other sensors' tiles of a scene also learn a teacher's targets."""

    manifest: str = ""
    split: str = ""
    resize: dict[str, int] = field(default_factory=dict)
    tiles_per_institution: int = 48
    seed_offset: int = 1000
    pair_scenes: bool = True
    batch_size: int = 32


@dataclass
class EvaluateSettings:
    """Phase *evaluate*: the probes each institution runs on the student (and ensemble) with its labels:
    label ``fractions`` of its train split, probe ``seeds``; fewer valid replies than ``min_replies``
    fail the phase."""

    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 64
    min_replies: int = 1


@dataclass
class PruneSettings:
    """Contributions and pruning: Shapley (``permutations`` Monte-Carlo permutations, truncated at
    ``truncation``, ``confidence`` intervals) and leave-one-out of a ``method`` probe (weight decay
    ``weight_decay``) on the members' concatenated features, on the proxy's labelled ``task`` (phase
    *prune*); each marginal is taken against the specialist's untrained twin (``baseline: random_twin``)
    or not (``none``); ``gates`` also learns sparse gates. Keep the top ``keep_top_k`` (0: no cap) and/or
    drop those whose interval lies at or below zero (``drop_nonpositive``). With ``redistill``, when a
    specialist was dropped, a pruned student is distilled from the full student's weights on the kept
    teachers' cached targets for ``redistill_epochs`` (3, about a third of ``distill.epochs``' 10: it starts
    from a student that already fits those targets; more not yet measured) and saved in ``student_pruned/``."""

    task: str = "scene"
    baseline: str = "random_twin"
    method: str = "linear"
    permutations: int = 100
    truncation: float = 1e-3
    confidence: float = 0.95
    weight_decay: float = 1e-2
    gates: bool = False
    keep_top_k: int = 0
    drop_nonpositive: bool = True
    redistill: bool = False
    redistill_epochs: int = 3


@dataclass
class SamplesSettings:
    """Real labelled samples for a run on this machine (``experiment=real``): with ``root`` set (relative
    paths, like ``output_dir``, from the coordinator's working directory: the checkout), the coordinator writes their manifests and proxy union
    (:mod:`pipeline.samples`) into ``out`` before the first phase, once; institutions and the proxy
    name them there. ``labelled_proxy`` is the set whose labels the proxy keeps (phase *prune*);
    ``aid_per_class`` caps AID's images per class (0: all 160 of the shared folder)."""

    root: str = ""
    out: str = "${output_dir}/samples"
    labelled_proxy: str = "eurosat"
    aid_per_class: int = 0


@dataclass
class EnergySettings:
    """The energy and carbon measurement per phase (:mod:`pipeline.energy`): the grid's carbon intensity,
    CodeCarbon's figure for ``country_iso_code`` (ISO 3166-1 alpha-3, e.g. ``FRA``) when given, else
    ``grid_g_per_kwh`` gCO2e/kWh (475: CodeCarbon's world average); the fallback estimate's watts per
    busy CPU core and per GB of memory in use (0.375 W/GB is CodeCarbon's figure), used only when
    CodeCarbon cannot run."""

    country_iso_code: str = ""
    grid_g_per_kwh: float = 475.0
    cpu_w_per_core: float = 10.0
    memory_w_per_gb: float = 0.375


@dataclass
class ExperimentConfig:
    """The typed experiment: the one settings tree (each phase reads its own section; ``tolerance_nm``,
    how far apart (nm) two centre wavelengths may be for one band to stand in for the other, is shared by
    the specialists' views in distill, evaluate and prune and by stem adaptation of a starting checkpoint).
    ``stop_after`` names the last phase to run (empty: all). ``integrate`` names a finished run (in
    ``output_dir``) to extend: its enrolled specialists are kept as they are, only groups it lacks are
    trained, and its student is warm-started."""

    seed: int = 0
    stop_after: str = ""
    output_dir: str = "outputs"
    cache_dir: str = "${output_dir}/cache"
    tolerance_nm: float = 50.0  # the one default: no library function has one (the CLI reads this)
    sensor_files: list[str] = field(default_factory=list)  # sensor YAML files or folders (here and at simulated hosts)
    federation: FederationSettings = field(default_factory=FederationSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    enrol: EnrolSettings = field(default_factory=EnrolSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    samples: SamplesSettings = field(default_factory=SamplesSettings)
    energy: EnergySettings = field(default_factory=EnergySettings)
    integrate: str = ""
    # name -> InstitutionSettings (typed in __post_init__: OmegaConf cannot add entries to a typed dict)
    institutions: dict[str, Any] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=dict)

    def catalog(self) -> Catalog:
        """What the coordinator's band and sensor names mean before discover: the default catalog plus
        ``sensor_files`` (read, registering nothing)."""
        return load_sensor_files(self.sensor_files, default())

    def _check_probes(self) -> None:
        """``evaluate``'s probes within what a node does (:data:`wire.messages.SIZE_MAXIMA`) and ``prune``'s
        task and method ones the proxy can have (from the world: its classification task)."""
        ev, top = self.evaluate, SIZE_MAXIMA
        if not 1 <= len(ev.fractions) <= top["fractions"] or not all(0 < f <= 1 for f in ev.fractions):
            raise InputError(f"evaluate.fractions must list 1 to {top['fractions']} numbers in (0, 1], "
                             f"got {ev.fractions}")
        if not 1 <= len(ev.seeds) <= top["seeds"] or not all(0 <= s <= top["seed"] for s in ev.seeds):
            raise InputError(f"evaluate.seeds must list 1 to {top['seeds']} integers in [0, {top['seed']}], "
                             f"got {ev.seeds}")
        if not 1 <= ev.batch_size <= TRAIN_MAXIMA["batch_size"] or not 1 <= self.train.batch_size <= \
                TRAIN_MAXIMA["batch_size"]:
            raise InputError(f"evaluate.batch_size and train.batch_size must be in [1, {TRAIN_MAXIMA['batch_size']}]")
        if not is_safe_name(self.prune.task):
            raise InputError(f"prune.task {self.prune.task!r} must be {NAME_RULE}")
        world = sorted(name for name, task in world_tasks().items() if task.type == "classification")
        if not self.proxy.manifest and self.prune.task not in world:
            raise InputError(f"prune.task {self.prune.task!r} is not a classification task of the world's proxy "
                             f"data {world}")
        if self.prune.method not in ("linear", "knn"):
            raise InputError(f"prune.method must be 'linear' or 'knn', got {self.prune.method!r}")

    @property
    def world_config(self) -> WorldConfig | None:
        """The synthetic world, parsed (``None`` without one)."""
        return WorldConfig.from_dict(self.world, source="world") if self.world else None

    def __post_init__(self) -> None:
        if self.federation.min_nodes < 1 or self.federation.min_institutions < 1:
            raise InputError("federation.min_nodes and federation.min_institutions must be >= 1")
        if self.federation.stats_factor != 0 and not self.federation.stats_factor >= 1:
            raise InputError(f"federation.stats_factor must be 0 (no check) or >= 1, "
                             f"got {self.federation.stats_factor}")
        if min(self.train.rounds, self.train.local_epochs, self.train.batch_size, self.train.min_replies) < 1:
            raise InputError("train.rounds, local_epochs, batch_size and min_replies must be >= 1")
        self.pretrain.check()
        if self.train.warmup_epochs < 0:
            raise InputError("train.warmup_epochs must be >= 0")
        if not 0 < self.train.max_weight_share <= 1 or self.train.update_factor < 0:
            raise InputError("train.max_weight_share must be in (0, 1] and train.update_factor >= 0")
        if self.train.aggregation not in AGGREGATIONS:
            raise InputError(f"train.aggregation must be one of {list(AGGREGATIONS)}, got {self.train.aggregation!r}")
        self.train.dp.check()
        if self.train.dp.mode != "none" and self.train.aggregation != "fedavg":
            raise InputError(f"train.dp.mode {self.train.dp.mode!r} needs train.aggregation 'fedavg' (the privacy "
                             f"accounting bounds a weighted mean), got {self.train.aggregation!r}")
        for name, variant in (("train.variant", self.train.variant), ("distill.variant", self.distill.variant)):
            try:
                check_variant(variant)
            except ValueError as exc:
                raise InputError(f"{name}: {exc}") from None
        self._check_probes()
        check_init(self.train.init, "train.init")
        check_init(self.distill.init, "distill.init")
        if self.enrol.weights not in ("send", "home"):
            raise InputError(f"enrol.weights must be 'send' or 'home', got {self.enrol.weights!r}")
        if self.prune.baseline not in ("random_twin", "none"):
            raise InputError(f"prune.baseline must be 'random_twin' or 'none', got {self.prune.baseline!r}")
        if min(self.energy.cpu_w_per_core, self.energy.memory_w_per_gb, self.energy.grid_g_per_kwh) < 0:
            raise InputError("energy.cpu_w_per_core, memory_w_per_gb and grid_g_per_kwh must be >= 0")
        for sensor, px in self.proxy.resize.items():
            if not 1 <= px <= MAX_TILE_PX:
                raise InputError(f"proxy.resize.{sensor}: a size in pixels, 1..{MAX_TILE_PX}, got {px}")
        if self.integrate and not is_safe_name(self.integrate):
            raise InputError(f"integrate: {self.integrate!r} is not a run name ({NAME_RULE})")
        if self.prune.keep_top_k < 0 or self.prune.permutations < 1 or self.prune.redistill_epochs < 1:
            raise InputError("prune.keep_top_k must be >= 0, prune.permutations and prune.redistill_epochs >= 1")
        if min(self.distill.epochs, self.proxy.tiles_per_institution, self.proxy.batch_size) < 1:
            raise InputError("distill.epochs, proxy.tiles_per_institution and proxy.batch_size must be >= 1")
        world = self.world_config
        for name, inst in list(self.institutions.items()):
            where = f"institutions.{name}"
            if not isinstance(inst, InstitutionSettings):
                try:
                    inst = self.institutions[name] = InstitutionSettings(**inst)
                except TypeError as exc:
                    raise InputError(f"{where}: {exc}") from None
            for what, value in (("institution", name), ("sensor", inst.sensor), ("task", inst.task)):
                if not is_safe_name(value):
                    raise InputError(f"{where}: {what} {value!r} must be {NAME_RULE}")
            if not 0 <= inst.resize <= MAX_TILE_PX:
                raise InputError(f"{where}: resize is a size in pixels, 1..{MAX_TILE_PX} (0: tiles as they are), "
                                 f"got {inst.resize}")
            if inst.manifest:
                continue
            if inst.region:
                raise InputError(f"{where}: 'region' filters a 'manifest'; world institutions have their own region")
            if world is None:
                raise InputError(f"{where}: no 'manifest' and no synthetic 'world' config to generate its data")
            sensors = next((w.sensors for w in world.institutions if w.name == name), None)
            if sensors is None:
                raise InputError(f"{where}: world {world.name!r} has no institution {name!r}; "
                                 f"it has {[w.name for w in world.institutions]}")
            if inst.sensor not in sensors:
                raise InputError(f"{where}: world institution {name!r} observes {list(sensors)}, not {inst.sensor!r}")


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
                raise InputError(f"run config {key!r} must be a string, got {value!r}")
            return value.strip()

        experiment = text("experiment") or "default"
        try:
            overrides = tuple(shlex.split(text("overrides")))
        except ValueError as exc:
            raise InputError(f"run config 'overrides': {exc}") from None
        run_name = text("run-name")
        if not run_name:
            stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
            run_name = f"{experiment}-{stamp}"
        if not is_safe_name(run_name):
            raise InputError(f"run config 'run-name' {run_name!r}: must be {NAME_RULE}")
        return cls(experiment=experiment, overrides=overrides, run_name=run_name)


ConfigStore.instance().store(name="eosfed_schema", node=ExperimentConfig)


def compose_experiment(experiment: str, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """The Hydra tree of ``configs/`` for ``experiment`` with ``overrides`` applied (all resolved)."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None, job_name="eosfed"):
            cfg = compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise InputError(f"experiment {experiment!r} with overrides {list(overrides)}: {exc}") from None
    return cfg


def load_experiment(settings: RunSettings) -> tuple[ExperimentConfig, str]:
    """The typed experiment and its resolved YAML (what the run folder records)."""
    cfg = compose_experiment(settings.experiment, settings.overrides)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), cfg))
    except OmegaConfBaseException as exc:
        raise InputError(f"experiment {settings.experiment!r}: {exc}") from None
    assert isinstance(typed, ExperimentConfig)
    typed.catalog()  # a bad sensor file fails here, naming it
    return typed, OmegaConf.to_yaml(cfg)
