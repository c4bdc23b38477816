"""The reference benchmark (issue 4, item 6): specialists -> ensemble -> student -> probes -> contributions -> pruning.

Driven by ``configs/benchmark/reference.yaml`` (``--quick`` merges its ``quick`` section: a tiny world
and one epoch, to check the pipeline in about a minute). Stages, each cached under ``--out`` with a
fingerprint of its inputs, so a rerun skips what did not change (and redoes what did):

1. world: the synthetic world preset (``configs/world/reference.yaml``): four training institutions
   with co-registered Sentinel-2, Sentinel-1 and aerial RGBN tiles, and a held-out region ``east``
   that also carries Landsat-8, the sensor no specialist and no proxy batch ever sees;
2. specialists: each trained with ``eosfed train-specialist`` on its institution's own sensor and task,
   one of them on labels shuffled among its tiles (useless by construction); enrolled in a registry
   whose feature statistics are measured on the proxy data;
3. distillation: the student learns every teacher's cached targets on the unlabelled proxy tiles
   (training regions, three sensors, the specialists' train and val splits, labels stripped); with
   ``pair_scenes`` the other sensors' tiles of a scene also learn the targets a teacher computed on
   the tile it can read (:meth:`fusion.teacher_cache.TeacherCache.share`);
4. probes on every downstream task (none was trained on by a specialist), label fractions x seeds:
   the student, the full ensemble, each specialist that can read the task's sensor (views at
   ``tolerance_nm``), and a random-initialised student of the same size. Frozen features are extracted
   once per encoder and split; the ensemble's pooled feature is the concatenation of its members'
   (exactly :meth:`fusion.Ensemble.pooled`), so each specialist runs once per split;
5. contributions per task (Shapley with intervals, leave-one-out, learned gates, CKA), scored on the
   val split (or a held-out fifth of train) so that the test split never steers pruning, with each
   marginal taken against the specialist's untrained random twin (``contributions.baseline``, see
   :mod:`fusion.contrib`); pruning keeps
   the strongest ``keep_fraction`` and the pruned ensemble is probed again; with ``--redistill`` the full
   student is also distilled further on the kept teachers' cached targets only (:func:`pipeline.distill.redistil`,
   ``contributions.redistill_epochs``) and this pruned student is probed like the full one;
6. parameters (student inference vs the N applicable specialists) and throughput (images/s, median
   of alternating runs on one test batch); the cached-distillation and teacher-extraction speed
   ratios come from ``benchmarks/fusion_speed.py``'s stored results (that script measures them);
7. ``reference.json`` and ``reference.md``: every score with its spread over seeds, and each target
   of the issue with its value, threshold and whether it is met.

Usage: python benchmarks/reference.py [--config configs/benchmark/reference.yaml] [--out outputs/reference]
       [--quick] [--results DIR] [--device cpu] [--redistill]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from eosfed.cli import main as eosfed
from fusion import Ensemble, Registry, Student
from fusion.contrib import (CoalitionGame, Contribution, combine_contributions, random_twin,
                           twin_name)
from fusion.data import ProxyBatches, labelled_loader
from fusion.distill import DistillConfig
from fusion.encoders import open_encoder
from fusion.probes import (FeatureSet, ProbeResult, extract_features, linear_probe, probe_features, results_markdown,
                           task_metric)
from fusion.prune import nonpositive_reason
from fusion.student import band_stats_table
from fusion.teacher_cache import TeacherCache
from fusion.views import plan_view
from geodata.files import atomic_write_text
from geodata.manifest import Manifest
from geodata.readers.eurosat import build_eurosat_manifest
from geodata.stats import load_or_compute_stats
from geodata.synth import generate_world, load_world_config
from pipeline.contrib import play, prune_by
from pipeline.distill import calibrate, compare_students, distil, redistil, save_distilled
from pipeline.settings import ExperimentConfig, PruneSettings
from specialists import load_specialist
from specialists.train import TrainConfig

logger = logging.getLogger("reference")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONFIG = ROOT / "configs" / "benchmark" / "reference.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
FUSION_SPEED = RESULTS / "fusion_speed.json"
STAMP = "stage.json"


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialistJob:
    name: str
    institution: str
    sensor: str
    task: str
    shuffled: bool = False


@dataclass(frozen=True)
class Downstream:
    name: str
    source: str  # "world" or "eurosat"
    sensor: str
    task: str
    institution: str | None = None
    unseen: bool = False  # the sensor no specialist was trained on and no proxy batch holds


@dataclass
class BenchmarkConfig:
    """``configs/benchmark/reference.yaml`` (its comments document every field)."""

    world: str
    tolerance_nm: float
    seed: int
    specialists: list[SpecialistJob]
    downstream: list[Downstream]
    train: dict[str, Any]  # specialists.train.TrainConfig fields (eosfed train-specialist flags)
    proxy: dict[str, Any]
    distill: DistillConfig
    eurosat: dict[str, Any]
    probes: dict[str, Any]
    contributions: PruneSettings  # the coalition games; pruning keeps ceil(keep_fraction * N) by Shapley
    keep_fraction: float
    throughput: dict[str, Any]
    world_tiles: int | None = None
    world_workers: int = 2
    threads: int = 1
    probe_threads: int = 1
    quick: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.specialists) < 2 or sum(j.shuffled for j in self.specialists) != 1:
            raise ValueError("benchmark config: needs several specialists, exactly one with 'shuffled: true'")
        names = [j.name for j in self.specialists] + [t.name for t in self.downstream]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark config: specialist and task names must be unique, got {names}")
        for task in self.downstream:
            if task.source not in ("world", "eurosat"):
                raise ValueError(f"benchmark config: task {task.name!r} has source {task.source!r}; "
                                 "expected 'world' or 'eurosat'")
        if self.probes["headline_fraction"] not in self.probes["fractions"]:
            raise ValueError("benchmark config: probes.headline_fraction must be one of probes.fractions")


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (probes fit tiny models: one thread avoids the
    synchronisation cost of several on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: Path, quick: bool) -> BenchmarkConfig:
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a benchmark config must be a YAML mapping")
    if quick:
        raw = _merge(raw, raw.get("quick", {}))
    try:
        raw["specialists"] = [SpecialistJob(**j) for j in raw["specialists"]]
        raw["downstream"] = [Downstream(**t) for t in raw["downstream"]]
        TrainConfig(**raw["train"])  # the same fields and checks as the command it is passed to
        raw["distill"] = DistillConfig(**raw["distill"])
        raw["contributions"] = PruneSettings(**raw["contributions"])
        return BenchmarkConfig(**raw)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: invalid benchmark config: {exc}") from exc


# -- stage caching ---------------------------------------------------------------------------------


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds a finished stage for ``key``; a stale or unfinished one is removed."""
    stamp = folder / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return True
    if folder.exists():
        logger.info("%s is stale or unfinished: recomputing it", folder)
        shutil.rmtree(folder)
    return False


def mark_done(folder: Path, key: str, started: float, record: dict | None = None) -> None:
    """Stamp a finished stage with its key and the seconds it took since ``started`` (``time.perf_counter``)."""
    record = {"key": key, "seconds": time.perf_counter() - started, **(record or {})}
    atomic_write_text(folder / STAMP, json.dumps(record, indent=1))


def stage_record(folder: Path) -> dict:
    return json.loads((folder / STAMP).read_text())


# -- 1. world --------------------------------------------------------------------------------------


def build_world(cfg: BenchmarkConfig, out: Path) -> tuple[Manifest, str]:
    world = load_world_config(cfg.world)
    if cfg.world_tiles is not None:
        world = world.replace(tiles_per_institution=cfg.world_tiles,
                              institutions=tuple(dataclasses.replace(i, tiles=None) for i in world.institutions))
    key = fingerprint(world.to_dict())
    folder = out / "world"
    if not is_done(folder, key):
        start = time.perf_counter()
        generate_world(world, folder, workers=cfg.world_workers)
        mark_done(folder, key, start)
    return Manifest.load(folder / "manifest.json"), key


def shuffled_manifest(world: Manifest, job: SpecialistJob) -> Path:
    """A copy of the world manifest whose ``job.task`` labels are permuted among ``job.institution``'s
    ``job.sensor`` tiles (every split), so a specialist trained on it learns nothing about the task."""
    path = world.root / f"manifest-shuffled-{job.name}.json"
    raw = world.to_dict()
    tiles = [t for t in raw["tiles"] if t.get("institution") == job.institution and t["sensor"] == job.sensor
             and job.task in t["targets"]]
    labels = [t["targets"][job.task] for t in tiles]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
    for tile, i in zip(tiles, order):
        tile["targets"][job.task] = labels[i]
    Manifest.from_dict(raw, root=world.root).save(path)
    return path


def proxy_manifest(cfg: BenchmarkConfig, world: Manifest) -> Manifest:
    """The coordinator's unlabelled proxy data: the proxy sensors' tiles of the training institutions
    in the proxy splits, with every target removed."""
    proxy = cfg.proxy
    tiles = [dataclasses.replace(t, targets={}) for t in world.tiles
             if t.institution in proxy["institutions"] and t.sensor in proxy["sensors"] and t.split in proxy["splits"]]
    manifest = Manifest(tasks={}, tiles=tiles, name=f"{world.name}-proxy")
    manifest.save(world.root / "manifest-proxy.json")
    return manifest


# -- 2. specialists and registry ---------------------------------------------------------------------


def train_specialists(cfg: BenchmarkConfig, world: Manifest, world_key: str, out: Path, device: str) -> list[Path]:
    folders = []
    for job in cfg.specialists:
        folder = out / "specialists" / job.name
        key = fingerprint(world_key, dataclasses.asdict(job), cfg.train)
        if not is_done(folder, key):
            manifest = shuffled_manifest(world, job) if job.shuffled else world.root / "manifest.json"
            args = ["train-specialist", "--manifest", str(manifest), "--sensor", job.sensor, "--task", job.task,
                    "--institution", job.institution, "--name", job.name, "--out", str(folder / "model"), "--overwrite",
                    "--device", device]
            args += [a for k, v in cfg.train.items() for a in (f"--{k.replace('_', '-')}", str(v))]
            start = time.perf_counter()
            if eosfed(args) != 0:
                raise RuntimeError(f"training specialist {job.name} failed")
            mark_done(folder, key, start)
        folders.append(folder / "model")
    return folders


def build_registry(cfg: BenchmarkConfig, folders: list[Path], proxy: Manifest, world_key: str,
                   out: Path) -> tuple[Registry, str]:
    """The registry of every specialist, with feature statistics measured on the proxy data."""
    shas = [load_specialist(f).card.weights_sha256 for f in folders]
    key = fingerprint(shas, cfg.proxy, cfg.tolerance_nm, world_key)
    folder = out / "registry"
    if not is_done(folder, key):
        start = time.perf_counter()
        registry = Registry.create(folder)
        for path in folders:
            registry.add(load_specialist(path))
        batches = ProxyBatches(proxy, cfg.proxy["sensors"], None, batch_size=cfg.proxy["batch_size"], shuffle=False)
        calibrate(registry, registry.load_all(), batches, cfg.tolerance_nm)
        mark_done(folder, key, start)
    return Registry(folder), key


# -- 3. distillation ---------------------------------------------------------------------------------


def distill(cfg: BenchmarkConfig, registry: Registry, registry_key: str, proxy: Manifest, out: Path,
            device: str) -> tuple[Path, dict]:
    folder = out / "distill"
    key = fingerprint(registry_key, dataclasses.asdict(cfg.distill), cfg.seed, cfg.proxy, cfg.tolerance_nm)
    if not is_done(folder, key):
        start = time.perf_counter()
        batches = ProxyBatches(proxy, cfg.proxy["sensors"], None, batch_size=cfg.proxy["batch_size"], seed=cfg.seed)
        config = dataclasses.replace(cfg.distill, device=device)
        distilled = distil(registry, batches, TeacherCache(folder / "teacher_cache"), config, seed=cfg.seed,
                           tolerance_nm=cfg.tolerance_nm, name="student-reference",
                           pair_scenes=cfg.proxy["pair_scenes"])
        save_distilled(distilled, folder, folder / "distill_loss.png")
        history = distilled.history
        record = {**history.to_dict(), "proxy_tiles": len(proxy.tiles), "proxy_batches": len(batches),
                  "teacher_extractions": distilled.cache_fill_extractions, "teacher_fill_seconds": distilled.cache_fill_s,
                  "paired_targets": distilled.paired_targets,
                  "teacher_calls_during_epochs": history.teacher_extractions - distilled.cache_fill_extractions}
        mark_done(folder, key, start, {"history": record})
    return folder / "student", stage_record(folder)["history"]


# -- 4-6. downstream probes, contributions, pruning, cost ---------------------------------------------


def eurosat_manifest(cfg: BenchmarkConfig, out: Path) -> Manifest:
    folder = out / "eurosat"
    key = fingerprint(cfg.eurosat, str(DATA))
    if not is_done(folder, key):
        start = time.perf_counter()
        e = cfg.eurosat
        manifest = build_eurosat_manifest(DATA / "eurosat-ms", folder, e["train_per_class"], e["val_per_class"])
        if e.get("per_class") is not None:
            seen: dict[int, int] = {}
            kept = []
            for tile in manifest.tiles:  # the release's order: a class's train tiles come first
                label = tile.targets["scene"]
                seen[label] = seen.get(label, 0) + 1
                if seen[label] <= e["per_class"]:
                    kept.append(tile)
            manifest = Manifest(tasks=manifest.tasks, tiles=kept, name=manifest.name,
                                allow_outside_paths=manifest.allow_outside_paths)
            manifest.save(folder / "manifest.json")
        mark_done(folder, key, start)
    return Manifest.load(folder / "manifest.json")


def single(ensemble: Ensemble, name: str) -> Ensemble:
    """A one-member ensemble sharing ``ensemble``'s loaded specialist and its feature statistics."""
    return Ensemble({name: ensemble.specialists[name]}, {name: ensemble.stats[name]},
                    tolerance_nm=ensemble.tolerance_nm)


def first_images(loader, count: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    images, bands = [], None
    for batch in loader:
        images.append(batch["image"])
        bands = batch["bands"]
        if sum(len(i) for i in images) >= count:
            break
    return torch.cat(images)[:count], bands


def throughput(encoders: dict[str, Any], x: torch.Tensor, bands: tuple[str, ...], repeats: int) -> dict[str, float]:
    """Images/s of each encoder's ``pooled`` on the same batch: median of ``repeats`` runs, the encoders
    alternating run by run so that load from other processes hits them alike."""
    rates: dict[str, list[float]] = {n: [] for n in encoders}
    with torch.inference_mode():
        for encoder in encoders.values():
            encoder.pooled(x, bands)  # warm-up (the student generates its stem kernel once here)
        for _ in range(repeats):
            for name, encoder in encoders.items():
                start = time.perf_counter()
                encoder.pooled(x, bands)
                rates[name].append(x.shape[0] / (time.perf_counter() - start))
    return {n: statistics.median(r) for n, r in rates.items()}


@dataclass
class TaskFeatures:
    """Frozen features of one downstream task: per encoder (student, random, each applicable specialist)
    and split (train, test, and val where the task has one)."""

    features: dict[str, dict[str, FeatureSet]]
    applicable: list[str]


def selection_split(train: dict[str, FeatureSet], val: dict[str, FeatureSet] | None, key: str | None = None,
                    seed: int = 0) -> tuple:
    """Choices (contributions, the best specialist) fit on train and score on val, or without val on a held-out
    fifth of train, never on test. With ``key``, the (fit, score) pair of that entry."""
    if val is None:
        n = len(next(iter(train.values())))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        cut = max(1, n // 5)
        val = {k: f.subset(order[:cut]) for k, f in train.items()}
        train = {k: f.subset(order[cut:]) for k, f in train.items()}
    return (train, val) if key is None else (train[key], val[key])


def task_loaders(cfg: BenchmarkConfig, task: Downstream, manifest: Manifest) -> tuple[dict, Any]:
    """The task's labelled loaders per split (train, test, val where it has one) and its train statistics."""
    stats = load_or_compute_stats(manifest, task.sensor, "train", institution=task.institution)
    splits = ["train", "test"] + (["val"] if manifest.select(task.sensor, "val", task.task, task.institution) else [])
    return {s: labelled_loader(manifest, task.sensor, task.task, s, batch_size=cfg.probes["batch_size"],
                               stats=stats, institution=task.institution) for s in splits}, stats


def probe_task(cfg: BenchmarkConfig, task: Downstream, manifest: Manifest, student: Student, ensemble: Ensemble,
               device: str) -> tuple[dict, TaskFeatures]:
    spec = manifest.task(task.task)
    if spec.type == "segmentation":
        raise ValueError(f"task {task.name!r}: segmentation downstream tasks are not part of this benchmark")
    loaders, stats = task_loaders(cfg, task, manifest)
    bands = loaders["train"].dataset.bands
    applicable = ensemble.applicable(bands)
    random = Student.create(cfg.distill.variant, depths=cfg.distill.depths, seed=0).to(device).eval()
    random.set_band_stats(band_stats_table([stats]))  # the same-size baseline normalised with the task's own stats
    encoders = {"student": student, "random": random, **{n: single(ensemble, n) for n in applicable}}
    if cfg.contributions.baseline == "random_twin":  # contributions are scored against untrained twins
        twins = {twin_name(n): random_twin(ensemble.specialists[n].card, cfg.train["seed"]) for n in applicable}
        encoders |= {name: Ensemble({name: twin}, tolerance_nm=cfg.tolerance_nm) for name, twin in twins.items()}
    features = {name: {s: extract_features(enc, loader, False, device, f"{task.name} {name} {s}")
                       for s, loader in loaders.items()} for name, enc in encoders.items()}
    fractions, seeds = cfg.probes["fractions"], cfg.probes["seeds"]
    results = []
    with torch_threads(cfg.probe_threads):
        for name in ["student", "random", *applicable]:
            results += probe_features(name, task.name, spec, features[name]["train"], features[name]["test"], None,
                                      fractions, seeds)
        if applicable:
            full = {s: FeatureSet.concat([features[n][s] for n in applicable]) for s in ("train", "test")}
            results += probe_features("ensemble", task.name, spec, full["train"], full["test"], None, fractions,
                                      seeds)
        selection = {}  # which specialist is "the best" is decided on val, never on test
        for n in applicable:
            held_out = {n: features[n]["val"]} if "val" in features[n] else None
            selection[n] = linear_probe(*selection_split({n: features[n]["train"]}, held_out, n), spec)
    if applicable:
        x, _ = first_images(loaders["test"], cfg.throughput["batch"])
        speed = throughput({"student": student, "ensemble": ensemble}, x.to(device), bands, cfg.throughput["repeats"])
    else:
        speed = {"student": None, "ensemble": None}
    n_split = {s: len(loader.dataset) for s, loader in loaders.items()}
    logger.info("%s: %s, %d applicable specialists %s, tiles %s", task.name, task.sensor, len(applicable), applicable,
                n_split)
    record = {
        **dataclasses.asdict(task), "type": spec.type, "metric": task_metric(spec), "bands": list(bands),
        "tiles": n_split, "applicable": applicable,
        "applicable_at_default_tolerance": [n for n in ensemble.names if plan_view(
            n, ensemble.specialists[n].bands, bands, ExperimentConfig.tolerance_nm).applicable],
        "params": {"student": student.inference_params(bands),
                   "ensemble": ensemble.num_params(bands) if applicable else None},
        "img_per_s": speed, "selection_scores": selection,
        "results": [r.to_dict() for r in results],
    }
    return record, TaskFeatures(features, applicable)


def task_contributions(cfg: BenchmarkConfig, task: Downstream, spec, data: TaskFeatures):
    """Shapley, leave-one-out and gates of the task's applicable specialists, and their CKA."""
    members = {k: data.features[k] for n in data.applicable for k in (n, twin_name(n)) if k in data.features}
    fit, score = selection_split({n: f["train"] for n, f in members.items()},
                                 {n: f["val"] for n, f in members.items()} if all("val" in f for f in members.values())
                                 else None)
    with torch_threads(cfg.probe_threads):
        return play(fit, score, spec, task.name, cfg.contributions, seed=0)


def probe_pruned(cfg: BenchmarkConfig, record: dict, spec, data: TaskFeatures, kept: list[str]) -> list[dict]:
    """Probe the kept specialists that can read the task. Where none can, the pruned ensemble has nothing to
    offer: it scores what predicting the training prior scores (the empty coalition's value)."""
    members = [n for n in data.applicable if n in kept]
    record["applicable_pruned"] = members
    if not members:
        student = data.features["student"]
        prior = CoalitionGame({"none": student["train"]}, {"none": student["test"]}, spec)(frozenset())
        seeds = cfg.probes["seeds"]
        return [ProbeResult("ensemble-pruned", record["name"], method, float(f), record["metric"], prior, 0.0,
                            [prior] * len(seeds)).to_dict()
                for method in ("linear", "knn") for f in cfg.probes["fractions"]]
    full = {s: FeatureSet.concat([data.features[n][s] for n in members]) for s in ("train", "test")}
    with torch_threads(cfg.probe_threads):
        results = probe_features("ensemble-pruned", record["name"], spec, full["train"], full["test"], None,
                                 cfg.probes["fractions"], cfg.probes["seeds"])
    return [r.to_dict() for r in results]


def redistill_pruned(cfg: BenchmarkConfig, pruned: Registry, proxy: Manifest, student_dir: Path,
                     device: str) -> tuple[Student, dict]:
    """``--redistill``: the full student distilled ``contributions.redistill_epochs`` more epochs on the kept
    teachers' targets in the distillation stage's cache (:func:`pipeline.distill.redistil`), and what each
    student's distillation cost (:func:`pipeline.distill.compare_students`)."""
    folder = student_dir.parent
    batches = ProxyBatches(proxy, cfg.proxy["sensors"], None, batch_size=cfg.proxy["batch_size"], seed=cfg.seed)
    config = dataclasses.replace(cfg.distill, device=device, epochs=cfg.contributions.redistill_epochs)
    distilled = redistil(pruned, batches, TeacherCache(folder / "teacher_cache"), config, full=folder, seed=cfg.seed,
                         tolerance_nm=cfg.tolerance_nm, pair_scenes=cfg.proxy["pair_scenes"])
    return distilled.student.eval(), compare_students(folder, distilled)


def probe_student_pruned(cfg: BenchmarkConfig, task: Downstream, manifest: Manifest, student: Student,
                         device: str) -> list[dict]:
    """The pruned student's probes on ``task``, as the full student's."""
    loaders, _ = task_loaders(cfg, task, manifest)
    features = {s: extract_features(student, loaders[s], False, device, f"{task.name} student-pruned {s}")
                for s in ("train", "test")}
    with torch_threads(cfg.probe_threads):
        results = probe_features("student-pruned", task.name, manifest.task(task.task), features["train"],
                                 features["test"], None, cfg.probes["fractions"], cfg.probes["seeds"])
    return [r.to_dict() for r in results]


# -- 7. summary and targets -------------------------------------------------------------------------


def headline(record: dict, fraction: float, method: str = "linear") -> dict[str, dict]:
    return {r["encoder"]: r for r in record["results"] if r["method"] == method and r["fraction"] == fraction}


def mean_of(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def summarise(cfg: BenchmarkConfig, tasks: list[dict], fraction: float) -> dict:
    """Per task at ``fraction`` (linear probe): every encoder's mean/std, the best readable specialist;
    means over tasks."""
    specialists = [j.name for j in cfg.specialists]
    rows = []
    for record in tasks:
        scores = headline(record, fraction)
        readable = {n: scores[n] for n in record["applicable"] if n in scores}
        chosen = record["selection_scores"]
        best = max(chosen, key=chosen.get) if chosen else None
        oracle = max(readable, key=lambda n: readable[n]["mean"]) if readable else None
        row = {"task": record["name"], "sensor": record["sensor"], "metric": record["metric"],
               "applicable": len(record["applicable"]), "best_specialist": best, "best_on_test": oracle}
        for name in ("student", "student-pruned", "ensemble", "ensemble-pruned", "random", *specialists):
            row[name] = {k: scores[name][k] for k in ("mean", "std")} if name in scores else None
        row["best_specialist_score"] = row[best] if best else None
        row["best_on_test_score"] = row[oracle] if oracle else None
        rows.append(row)

    def over(key: str) -> float | None:
        return mean_of([r[key]["mean"] if r[key] else None for r in rows])

    return {"fraction": fraction, "rows": rows,
            "means": {k: over(k) for k in ("student", "student-pruned", "ensemble", "ensemble-pruned", "random",
                                           "best_specialist_score", "best_on_test_score")}}


def target(name: str, value: float | None, threshold: str, met: bool | None, note: str = "") -> dict:
    return {"target": name, "value": value, "threshold": threshold, "met": met, "note": note}


def check_targets(cfg: BenchmarkConfig, tasks: list[dict], summary: dict, combined: list[dict],
                  fusion_speed: dict | None, redistill: dict | None = None) -> list[dict]:
    means = summary["means"]
    out = []
    s, e, b = means["student"], means["ensemble"], means["best_specialist_score"]
    out.append(target("student mean / full-ensemble mean", s / e if s is not None and e else None, ">= 0.98",
                      s is not None and e is not None and s >= 0.98 * e,
                      f"linear probe, {summary['fraction']:g} of the labels, mean over {len(tasks)} tasks"))
    out.append(target("student mean - mean of per-task best specialist", s - b if s is not None and b is not None
                      else None, ">= 0", s is not None and b is not None and s >= b,
                      "each task's best specialist among those that can read it, chosen on val (held-out train without "
                      f"val); with the best chosen on test instead: {s - means['best_on_test_score']:+.4f}"))
    params = [r["params"]["student"] * len(r["applicable"]) / r["params"]["ensemble"] for r in tasks if r["applicable"]]
    out.append(target("max over tasks of student params / (ensemble params / N)", max(params), "<= 1",
                      max(params) <= 1, "N = specialists applicable to the task's input; the student runs as one "
                      "specialist on the input's bands, so 1/N of the ensemble is smaller where a member's stem reads "
                      "fewer bands"))
    speed = [r["img_per_s"]["student"] / (len(r["applicable"]) / 2 * r["img_per_s"]["ensemble"])
             for r in tasks if r["applicable"]]
    out.append(target("min over tasks of student img/s / (N/2 x ensemble img/s)", min(speed), ">= 1", min(speed) >= 1,
                      f"batch {cfg.throughput['batch']}, median of {cfg.throughput['repeats']}"))
    by_task = {r["task"]: r for r in summary["rows"]}
    for record in (r for r in tasks if r["unseen"]):
        row = by_task[record["name"]]
        student, random = row["student"]["mean"], row["random"]["mean"]
        best = row["best_specialist_score"]["mean"] if row["best_specialist_score"] else None
        out.append(target(f"unseen sensor {record['sensor']}: student - random-init", student - random, "> 0",
                          student > random))
        out.append(target(f"unseen sensor {record['sensor']}: student - best specialist via equivalences",
                          student - best if best is not None else None, "> 0", best is None or student > best,
                          f"{row['best_specialist']} at {cfg.tolerance_nm:g} nm" if best is not None
                          else f"no specialist reads it at {cfg.tolerance_nm:g} nm"))
    useless = next(j.name for j in cfg.specialists if j.shuffled)
    ranked = sorted(combined, key=lambda c: c["shapley"])
    mine = next(c for c in combined if c["name"] == useless)
    out.append(target(f"useless specialist ({useless}) has the lowest Shapley", mine["shapley"],
                      "lowest", ranked[0]["name"] == useless,
                      "ranking: " + ", ".join(f"{c['name']} {c['shapley']:.4f}" for c in ranked)))
    out.append(target(f"useless specialist ({useless}) Shapley interval upper bound", mine["ci_high"], "<= 0",
                      mine["ci_high"] <= 0, f"interval [{mine['ci_low']:.4f}, {mine['ci_high']:.4f}], marginals against: "
                      f"{mine['baseline']}"))
    pruned, full = means["ensemble-pruned"], means["ensemble"]
    unreadable = [r["name"] for r in tasks if r["applicable"] and not r["applicable_pruned"]]
    out.append(target("pruned-ensemble mean / full-ensemble mean", pruned / full, ">= 0.99", pruned >= 0.99 * full,
                      f"no kept specialist reads {unreadable} (scored as the training prior)" if unreadable
                      else "every task readable"))
    if redistill is not None:
        student, kept = means["student-pruned"], redistill["pruned"]
        out.append(target("pruned student mean / full student mean", student / s, ">= 0.99", student >= 0.99 * s,
                          f"warm-started from the full student, {kept['epochs']} epochs on {len(kept['teachers'])} of "
                          f"{len(redistill['full']['teachers'])} teachers' cached targets"))
        out.append(target("pruned student: teacher extractions", kept["teacher_extractions"], "0",
                          kept["teacher_extractions"] == 0, f"full student: {redistill['full']['teacher_extractions']}"
                          f"; cached targets read {kept['targets_read']} vs {redistill['full']['targets_read']}"))
    if fusion_speed is not None:
        epoch = fusion_speed["cached_distill_epoch_vs_plain_epoch"]["ratio_median"]
        extraction = fusion_speed["teacher_extraction_vs_bare_timm"]["ratio_median"]
        source = "from benchmarks/results/fusion_speed.json (benchmarks/fusion_speed.py)"
        out.append(target("cached distillation epoch / plain student epoch", epoch, "<= 1.15", epoch <= 1.15, source))
        out.append(target("teacher extraction / bare timm throughput", extraction, ">= 0.9", extraction >= 0.9, source))
    return out


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def score_cell(score: dict | None) -> str:
    return "-" if score is None else f"{score['mean']:.4f} ± {score['std']:.4f}"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + \
        ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]


def markdown(record: dict) -> str:
    cfg = record["config"]
    summary = record["summary"]
    lines = [f"# Reference benchmark{' (quick pipeline check)' if record['quick'] else ''}", "",
             f"Synthetic world `{cfg['world']}` ({record['world']['tiles']} tiles, {record['world']['tile_size']}x"
             f"{record['world']['tile_size']} px) with {len(cfg['specialists'])} specialists, the student distilled on "
             f"{record['distill']['proxy_tiles']} unlabelled proxy tiles ({', '.join(cfg['proxy']['sensors'])}; scene "
             f"pairing {'on' if cfg['proxy']['pair_scenes'] else 'off'}), probed on {len(record['tasks'])} downstream "
             f"tasks; {len(cfg['probes']['seeds'])} seeds; band equivalence tolerance {cfg['tolerance_nm']:g} nm. "
             f"Full pipeline {record['pipeline_s']['total'] / 60:.1f} min ({record['setup']['threads']} thread, "
             f"{record['setup']['machine']}).", "", "## Targets", ""]
    lines += table(["target", "value", "threshold", "met", "note"],
                   [[t["target"], t["value"], t["threshold"], t["met"], t["note"]] for t in record["targets"]])
    specialists = [j["name"] for j in cfg["specialists"]]
    lines += ["", f"## Downstream tasks (linear probe, {summary['fraction']:g} of the labels, mean ± std over seeds)",
              ""]
    rows = [[r["task"], r["sensor"], r["metric"], r["applicable"], score_cell(r["student"]), score_cell(r["ensemble"]),
             f"{r['best_specialist'] or '-'} {score_cell(r['best_specialist_score'])}",
             f"{r['best_on_test'] or '-'} {score_cell(r['best_on_test_score'])}", score_cell(r["random"]),
             score_cell(r["ensemble-pruned"])] for r in summary["rows"]]
    means = summary["means"]
    rows.append(["**mean**", "", "", "", means["student"], means["ensemble"], means["best_specialist_score"],
                 means["best_on_test_score"], means["random"], means["ensemble-pruned"]])
    lines += table(["task", "sensor", "metric", "N", "student", "ensemble", "best specialist (chosen on val)",
                    "best specialist (on test, oracle)", "random-init", "pruned ensemble"], rows)
    lines += ["", "Each specialist that can read the task (same probe):", ""]
    lines += table(["task", *specialists], [[r["task"], *[score_cell(r[n]) for n in specialists]]
                                            for r in summary["rows"]])
    lines += ["", "## Label fractions (linear probe, mean over tasks)", ""]
    lines += table(["labels", "student", "ensemble", "best specialist", "random-init", "pruned ensemble",
                    "student / ensemble"],
                   [[f"{s['fraction']:g}", s["means"]["student"], s["means"]["ensemble"],
                     s["means"]["best_specialist_score"], s["means"]["random"], s["means"]["ensemble-pruned"],
                     s["means"]["student"] / s["means"]["ensemble"] if s["means"]["student"] is not None
                     and s["means"]["ensemble"] else None] for s in record["fractions"]])
    lines += ["", "## Cost (student vs the N applicable specialists)", ""]
    lines += table(["task", "N", f"N at {ExperimentConfig.tolerance_nm:g} nm", "student params", "ensemble params",
                    "student img/s", "ensemble img/s", "pruned ensemble runs"],
                   [[t["name"], len(t["applicable"]), len(t["applicable_at_default_tolerance"]), t["params"]["student"],
                     t["params"]["ensemble"], t["img_per_s"]["student"], t["img_per_s"]["ensemble"],
                     ", ".join(t["applicable_pruned"]) or "-"] for t in record["tasks"]])
    contrib = record["contributions"]
    against = {c["baseline"] for c in contrib["combined"]}
    lines += ["", "## Contributions (Shapley averaged over the tasks each specialist can read; scored on val)", "",
              f"Marginals taken against: {', '.join(sorted(against))} (`contributions.baseline`; a random twin is the "
              "untrained encoder of the specialist's variant and bands, so a score says what its training adds).", ""]
    keep_fraction = record["config"]["keep_fraction"]
    lines += table(["specialist", "Shapley", "interval", "leave-one-out", "gate", "tasks",
                    f"pruning (top {keep_fraction:.0%})", "drop-nonpositive rule"],
                   [[c["name"], c["shapley"], f"[{c['ci_low']:.4f}, {c['ci_high']:.4f}]", c["loo"], c["gate"],
                     len(c["tasks"]), "kept" if c["name"] in contrib["kept"] else "dropped",
                     f"drops: {reason}" if (reason := nonpositive_reason(Contribution(**c))) else "keeps"]
                    for c in sorted(contrib["combined"], key=lambda c: -c["shapley"])])
    for task, cka in contrib["cka"].items():
        lines += ["", f"Linear CKA of pooled test features, {task}:", ""]
        lines += table(["", *cka["names"]], [[n, *[f"{v:.2f}" for v in row]] for n, row in zip(cka["names"],
                                                                                           cka["matrix"])])
    lines += ["", "## Specialists", ""]
    lines += table(["specialist", "institution", "sensor", "task", "shuffled labels", "test metric (own task)",
                    "train s"],
                   [[s["name"], s["institution"], s["sensor"], s["task"], s["shuffled"], s["test_metric"],
                     s["train_seconds"]] for s in record["specialists"]])
    d = record["distill"]
    lines += ["", "## Distillation", "",
              f"{len(d['total'])} epochs over {d['proxy_batches']} proxy batches; teacher cache filled once "
              f"({d['teacher_extractions']} extractions, {d['teacher_fill_seconds']:.1f} s), {d['paired_targets']} "
              f"targets shared by scene pairing, {d['teacher_calls_during_epochs']} teacher calls during epochs; epoch "
              f"seconds {', '.join(f'{s:.0f}' for s in d['seconds'])}; loss {d['total'][0]:.4f} -> "
              f"{d['total'][-1]:.4f}."]
    if record.get("redistill"):
        r, means = record["redistill"], summary["means"]
        lines += ["", f"Pruned student (`--redistill`): warm-started from the full student, {r['pruned']['epochs']} "
                      f"epochs on the cached targets of {', '.join(r['pruned']['teachers'])} "
                      f"({r['pruned']['seconds']:.0f} s, "
                      f"{r['pruned']['teacher_extractions']} teacher extractions); linear-probe mean "
                      f"{fmt(means['student-pruned'])} vs the full student's {fmt(means['student'])}."]
    if record["fusion_speed"] is not None:
        fs = record["fusion_speed"]
        lines += ["", f"Speed ratios from `benchmarks/fusion_speed.py` (stored results, setup: {fs['setup']}): cached "
                      f"distillation epoch / plain epoch {fs['cached_distill_epoch_vs_plain_epoch']['ratio_median']}, "
                      f"teacher extraction / bare timm {fs['teacher_extraction_vs_bare_timm']['ratio_median']}."]
    lines += ["", "## Runtime (s)", "", "Each stage as computed (cached stages: when they were computed) and in this "
              "run (cached stages take ~0).", ""]
    lines += table(["stage", "computed", "this run"], [[k, v, record["runtime_s"].get(k)]
                                                       for k, v in record["pipeline_s"].items()])
    lines += ["", "## All probes", "", results_markdown([ProbeResult(**r) for t in record["tasks"]
                                                        for r in t["results"]])]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------


def run(cfg: BenchmarkConfig, out: Path, results_dir: Path, quick: bool, device: str, redistill: bool = False) -> dict:
    torch.set_num_threads(cfg.threads)
    runtime: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        runtime[stage] = now - clock
        clock = now

    start = clock
    world, world_key = build_world(cfg, out)
    proxy = proxy_manifest(cfg, world)
    lap("world")
    folders = train_specialists(cfg, world, world_key, out, device)
    lap("specialists")
    registry, registry_key = build_registry(cfg, folders, proxy, world_key, out)
    lap("registry")
    student_dir, history = distill(cfg, registry, registry_key, proxy, out, device)
    lap("distill")
    eurosat = eurosat_manifest(cfg, out)
    student = open_encoder(student_dir, cfg.tolerance_nm, map_location=device)
    ensemble = Ensemble.from_registry(registry, tolerance_nm=cfg.tolerance_nm, map_location=device)
    tasks, data, specs = [], {}, {}
    for task in cfg.downstream:
        manifest = world if task.source == "world" else eurosat
        specs[task.name] = manifest.task(task.task)
        record, data[task.name] = probe_task(cfg, task, manifest, student, ensemble, device)
        tasks.append(record)
    lap("probes")
    per_task, cka = [], {}
    for task in cfg.downstream:
        if data[task.name].applicable:
            scores, matrix = task_contributions(cfg, task, specs[task.name], data[task.name])
            per_task.append(scores)
            if matrix is not None:
                cka[task.name] = {"names": matrix[0], "matrix": matrix[1]}
    combined = combine_contributions(per_task)
    rule = dataclasses.replace(cfg.contributions, keep_top_k=math.ceil(cfg.keep_fraction * len(registry)),
                               drop_nonpositive=False)
    if (out / "registry-pruned").exists():
        shutil.rmtree(out / "registry-pruned")
    first_cka = next(iter(cka.values()), None)
    pruned, _ = prune_by(registry, combined, out / "registry-pruned", rule,
                         (first_cka["names"], first_cka["matrix"]) if first_cka else None)
    pruned_ensemble = Ensemble.from_registry(pruned, tolerance_nm=cfg.tolerance_nm, map_location=device)
    for record, task in zip(tasks, cfg.downstream):
        record["results"] += probe_pruned(cfg, record, specs[task.name], data[task.name], pruned.names)
        record["params"]["ensemble_pruned"] = pruned_ensemble.num_params(record["bands"]) \
            if record["applicable_pruned"] else None
    lap("contributions_and_pruning")
    costs = None
    if redistill:
        student_pruned, costs = redistill_pruned(cfg, pruned, proxy, student_dir, device)
        for record, task in zip(tasks, cfg.downstream):
            record["results"] += probe_student_pruned(cfg, task, world if task.source == "world" else eurosat,
                                                      student_pruned, device)
        lap("redistill")
    runtime["total"] = time.perf_counter() - start
    compute = {"world": stage_record(out / "world")["seconds"],
               "specialists": sum(stage_record(f.parent)["seconds"] for f in folders),
               "registry": stage_record(registry.root)["seconds"],
               "distill": stage_record(student_dir.parent)["seconds"],
               "eurosat": stage_record(out / "eurosat")["seconds"],
               "probes": runtime["probes"], "contributions_and_pruning": runtime["contributions_and_pruning"],
               **({"redistill": runtime["redistill"]} if redistill else {})}
    compute["total"] = sum(compute.values())

    fractions = [summarise(cfg, tasks, f) for f in cfg.probes["fractions"]]
    summary = next(s for s in fractions if s["fraction"] == cfg.probes["headline_fraction"])
    combined_dicts = [c.to_dict() for c in combined]
    fusion_speed = json.loads(FUSION_SPEED.read_text()) if FUSION_SPEED.is_file() else None
    specialists = []
    for job, folder in zip(cfg.specialists, folders):
        card = load_specialist(folder).card
        metric = {"classification": "test_accuracy", "multilabel": "test_map"}.get(card.task_type, "test_miou")
        specialists.append({**dataclasses.asdict(job), "bands": card.bands, "params": card.num_params,
                            "test_metric": card.metrics.get(metric), "metrics": card.metrics,
                            "train_seconds": stage_record(folder.parent).get("seconds")})
    world_cfg = json.loads((world.root / "world.json").read_text())
    record = {
        "benchmark": "reference", "quick": quick,
        "config": {**dataclasses.asdict(cfg), "quick": None},
        "setup": {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": cfg.threads,
                  "probe_threads": cfg.probe_threads,
                  "device": device, "torch": torch.__version__, "load_average": list(os.getloadavg())},
        "world": {"preset": cfg.world, "tiles": len(world.tiles), "tile_size": world_cfg["tile_size"],
                  "institutions": [i["name"] for i in world_cfg["institutions"]]},
        "specialists": specialists, "distill": history, "tasks": tasks, "summary": summary, "fractions": fractions,
        "contributions": {"per_task": [[c.to_dict() for c in scores] for scores in per_task],
                          "combined": combined_dicts, "kept": pruned.names, "cka": cka},
        "redistill": costs, "fusion_speed": fusion_speed,
        "targets": check_targets(cfg, tasks, summary, combined_dicts, fusion_speed, costs),
        "runtime_s": runtime, "pipeline_s": compute,
    }
    name = "reference_quick" if quick else "reference"
    atomic_write_text(results_dir / f"{name}.json", json.dumps(record, indent=1))
    atomic_write_text(results_dir / f"{name}.md", markdown(record))
    logger.info("wrote %s and .md; targets met: %d of %d", results_dir / f"{name}.json",
                sum(bool(t["met"]) for t in record["targets"]), len(record["targets"]))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, help="work folder (default outputs/reference, or outputs/reference-quick)")
    parser.add_argument("--quick", action="store_true", help="merge the config's 'quick' section: a pipeline check")
    parser.add_argument("--results", type=Path, help="where reference.{json,md} go (default benchmarks/results; "
                                                     "with --quick, the work folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--redistill", action="store_true", help="also distil the pruned student (warm-started from "
                        "the full one, kept teachers' cached targets) and probe it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or ROOT / "outputs" / ("reference-quick" if args.quick else "reference")
    results = args.results or (out if args.quick else RESULTS)
    run(load_config(args.config, args.quick), out, results, args.quick, args.device, args.redistill)


if __name__ == "__main__":
    main()
