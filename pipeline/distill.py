"""The distillation step: fill the teacher cache (measuring, in the same pass, the proxy feature statistics
of the specialists that have none), build (or warm-start) the student, distil it, and save what it produced."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusion.adaptors import Adaptors, TeacherRef, load_adaptors, save_adaptors
from fusion.data import CropSizes, ProxyBatches
from fusion.distill import DistillConfig, DistillHistory, distill_student, plot_history
from fusion.ensemble import Ensemble
from fusion.featstats import FeatureMoments, measured_stats
from fusion.registry import Registry
from fusion.student import Student, StudentCard, band_stats_table, load_student, save_student
from fusion.teacher_cache import TeacherCache, fill_cache
from geodata.files import atomic_write_text
from specialists import Specialist
from specialists.artifact import CARD_FILE, read_card
from specialists.init import RANDOM
from specialists.train import resolve_device

__all__ = ["Distilled", "calibrate", "compare_students", "distil", "redistil", "save_distilled", "save_pruned"]

log = logging.getLogger(__name__)

HISTORY_FILE = "distill_history.json"


@dataclass
class Distilled:
    """What a distillation produced: the student, its adaptor heads, the loss history (its
    ``teacher_extractions`` count every teacher call), how many targets scene pairing added, and the
    teacher calls and seconds of filling the cache before the first epoch."""

    student: Student
    adaptors: Adaptors
    history: DistillHistory
    paired_targets: int
    cache_fill_extractions: int
    cache_fill_s: float


def _uncalibrated(registry: Registry, specialists: dict[str, Specialist]) -> dict[str, Specialist]:
    return {n: s for n, s in specialists.items() if registry.feature_stats(n) is None}


def calibrate(registry: Registry, specialists: dict[str, Specialist], batches: ProxyBatches,
              tolerance_nm: float) -> None:
    """Measure, once, the proxy feature statistics the ensemble standardises with, for every local
    specialist of ``registry`` that has none yet (without distilling; :func:`distil` measures them while it
    fills the teacher cache)."""
    missing = _uncalibrated(registry, specialists)
    if missing:
        for name, stats in Ensemble(missing, tolerance_nm=tolerance_nm).calibrate(batches).items():
            registry.save_feature_stats(name, stats)


def _student(config: DistillConfig, batches: ProxyBatches, name: str, seed: int, init: Path | None,
             tolerance_nm: float) -> tuple[Student, Adaptors | None]:
    proxy_stats = band_stats_table(batches.stats.values())
    if init is None:
        student = Student.create(config.variant, proxy_stats, name=name, seed=seed, depths=config.depths,
                                 catalog=batches.manifest.catalog)  # the proxy's bands, as its manifest means them
        if config.init != RANDOM:
            student.card.distill["init"] = student.start_from(
                config.init, [batches.manifest.sensor(s).image_bands for s in batches.sensors], tolerance_nm,
                config.stem_fit_steps)
        return student, None
    student = load_student(init / "student")
    student.set_band_stats({**proxy_stats, **student.card.band_stats},  # keep what it was trained with
                           batches.manifest.catalog)
    log.info("Student warm-started from %s", init)
    return student, load_adaptors(init / "adaptors")


def distil(registry: Registry, batches: ProxyBatches, cache: TeacherCache, config: DistillConfig, *, seed: int,
           tolerance_nm: float, name: str, pair_scenes: bool = True, init: Path | None = None,
           remote: Sequence[TeacherRef] = ()) -> Distilled:
    """Distil ``registry``'s local specialists (and ``remote`` teachers, whose targets are already in
    ``cache``) into a new student, or into the one saved in ``init`` (a folder with ``student/`` and
    ``adaptors/``: integrate mode). With ``pair_scenes`` the other sensors' tiles of a scene learn
    each teacher's targets too."""
    specialists = registry.load_all(map_location=resolve_device(config.device))
    if not specialists and not remote:
        raise RuntimeError(f"{registry.root}: no teacher: no local specialist and no remote teacher features")
    crops = CropSizes(batches, config.crop_sizes, seed) if config.crop_sizes else None
    if crops and remote:
        log.warning("distill.crop_sizes: remote teachers %s sent features of full tiles only; they teach the batches "
                    "drawn at full size", [t.name for t in remote])
    if crops:  # the cache holds crops: the statistics of full tiles take a pass of their own
        calibrate(registry, specialists, batches, tolerance_nm)
    moments = {n: FeatureMoments() for n in _uncalibrated(registry, specialists)}
    start = time.perf_counter()
    extractions = fill_cache(cache, specialists, crops.every_size() if crops else batches, tolerance_nm, moments)
    fill_s = time.perf_counter() - start
    for teacher, stats in measured_stats(moments).items():
        registry.save_feature_stats(teacher, stats)
    teachers = [TeacherRef.of(s, n) for n, s in specialists.items()] + list(remote)
    paired = (cache.share((crops or batches).scene_partners(), [t.weights_sha256 for t in teachers])
              if pair_scenes else 0)
    student, adaptors = _student(config, batches, name, seed, init, tolerance_nm)
    if config.gsd_aware:
        student.set_gsd({**batches.band_gsd(), **student.card.gsd})  # a warm start keeps its own
    adaptors, history = distill_student(student, teachers, crops or batches, cache, config, seed=seed,
                                        adaptors=adaptors)
    history.teacher_extractions = extractions
    log.info("Student distilled from %s (final loss %.4f)", ", ".join(adaptors.teachers), history.total[-1])
    return Distilled(student, adaptors, history, paired, extractions, fill_s)


def redistil(pruned: Registry, batches: ProxyBatches, cache: TeacherCache, config: DistillConfig, *, full: Path,
             seed: int, tolerance_nm: float, pair_scenes: bool = True) -> Distilled:
    """The pruned student: the full student saved in ``full`` (``student/``, ``adaptors/``) distilled
    ``config.epochs`` more epochs on the teachers of ``pruned`` only (the dropped ones' heads leave the
    objective), from their targets in ``cache``: a kept local specialist is extracted only where the cache
    lacks its targets; a kept teacher whose weights stay home takes part through its cached targets."""
    full_card = read_card(full / "student" / CARD_FILE, StudentCard)
    remote = [TeacherRef(e.name, e.weights_sha256, tuple(pruned.card(e.name).feature_dims))
              for e in pruned.entries if e.holder and cache.num_samples(e.weights_sha256)]
    distilled = distil(pruned, batches, cache, config, seed=seed, tolerance_nm=tolerance_nm, name=full_card.name,
                       pair_scenes=pair_scenes, init=full, remote=remote)
    card = distilled.student.card
    card.name = f"{full_card.name}-pruned"
    card.distill["pruned_from"] = {"student": full_card.weights_sha256,
                                   "teachers_dropped": sorted({t["name"] for t in full_card.teachers}
                                                              - {t["name"] for t in card.teachers})}
    return distilled


def _cost(card: StudentCard, history: Mapping[str, Any]) -> dict[str, Any]:
    return {"teachers": [t["name"] for t in card.teachers], "teacher_extractions": history["teacher_extractions"],
            "targets_read": sum(history["targets_read"].values()) if "targets_read" in history else None,
            "epochs": len(history["total"]), "seconds": round(sum(history["seconds"]), 3)}


def compare_students(full: Path, pruned: Distilled) -> dict[str, dict[str, Any]]:
    """Full student (saved in ``full`` with its ``distill_history.json``) vs pruned student: teachers, teacher
    extractions run, cached targets read and seconds of the distillation epochs."""
    history = json.loads((full / HISTORY_FILE).read_text())
    return {"full": _cost(read_card(full / "student" / CARD_FILE, StudentCard), history),
            "pruned": _cost(pruned.student.card, pruned.history.to_dict())}


def save_pruned(distilled: Distilled, full: Path, out: Path,
                probe: Callable[[dict[str, Student]], dict[str, float]]) -> dict[str, Any]:
    """Save the pruned student of :func:`redistil` in ``out`` and compare it with the full student saved in
    ``full``: their costs (:func:`compare_students`) and each one's ``probe`` score (``{"full", "pruned"}``)."""
    student = distilled.student.cpu()
    save_student(student, out)
    comparison = compare_students(full, distilled)
    for side, score in probe({"full": load_student(full / "student"), "pruned": student}).items():
        comparison[side]["probe"] = score
    return {"weights_sha256": student.card.weights_sha256, "history": distilled.history.to_dict(), **comparison}


def save_distilled(distilled: Distilled, out: Path, plot: Path) -> None:
    """Write ``out/student/``, ``out/adaptors/``, ``out/distill_history.json`` and the loss plot."""
    save_student(distilled.student.cpu(), out / "student")
    save_adaptors(distilled.adaptors.cpu(), out / "adaptors")
    atomic_write_text(out / HISTORY_FILE, json.dumps(distilled.history.to_dict(), indent=1))
    plot_history(distilled.history, plot)
