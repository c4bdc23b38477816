"""Reference benchmark skeleton (issue 4, item 6): specialists -> ensemble -> student -> probes -> prune.

Pipeline (each step writes under ``--out`` and is skipped when its output exists, so a rerun resumes):
1. a synthetic world (preset, default ``default``: S2, S1, aerial RGBN, plus Landsat-8 seen by nobody);
2. ``SPECIALISTS``: >= 5 specialists over >= 3 sensors, two on one sensor with different tasks, and
   one trained on shuffled labels (useless by construction), enrolled in a registry;
3. the student, distilled on the world's train tiles of every sensor except the unseen one;
4. ``DOWNSTREAM`` tasks no specialist was trained on, plus real EuroSAT-MS: probes of the student, the
   full ensemble, each applicable specialist and a random-initialised student (label fractions x seeds);
5. contributions (Shapley, leave-one-out, CKA) on the downstream classification tasks, pruning of the
   weakest half, and the pruned ensemble probed again;
6. ``results.json`` and ``results.md``: scores, per-task best specialist, parameters and throughput.

The task lists below are a starting point for the lead to adjust. ``--quick`` shrinks everything
to check the pipeline end to end in minutes on a CPU.

Usage: python benchmarks/reference.py --out outputs/reference [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from eosfed.cli import main as eosfed
from fusion import Ensemble, Registry, load_student
from fusion.contrib import CoalitionGame, cka_matrix, combine_contributions, contributions, extract_member_features
from fusion.data import labelled_loader
from fusion.encoders import open_encoder
from fusion.probes import ProbeResult, extract_features, probe_features, results_markdown
from fusion.prune import prune
from fusion.student import band_stats_table
from geodata.manifest import Manifest, atomic_write_text
from geodata.readers.eurosat import build_eurosat_manifest
from geodata.stats import load_or_compute_stats
from geodata.synth import generate_world, load_world_config
from specialists import load_specialist

logger = logging.getLogger("reference")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
UNSEEN_SENSOR = "landsat8_oli"


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


SPECIALISTS = (
    SpecialistJob("north-s2-scene", "north_s2", "sentinel2_l2a", "scene"),
    SpecialistJob("south-s2-presence", "south_s2", "sentinel2_l2a", "presence"),  # same sensor, other task
    SpecialistJob("coast-s1-scene", "coast_s1", "sentinel1_grd", "scene"),
    SpecialistJob("city-aerial-scene", "city_aerial", "aerial_rgbn", "scene"),
    SpecialistJob("north-s2-shuffled", "north_s2", "sentinel2_l2a", "scene", shuffled=True),  # useless
)

DOWNSTREAM = (
    Downstream("s2-landcover-south", "world", "sentinel2_l2a", "landcover", "south_s2"),
    Downstream("s2-presence-north", "world", "sentinel2_l2a", "presence", "north_s2"),
    Downstream("s1-presence-north", "world", "sentinel1_grd", "presence", "north_s2"),  # new region for S1
    Downstream("aerial-presence", "world", "aerial_rgbn", "presence", "city_aerial"),
    Downstream("landsat-scene-north", "world", UNSEEN_SENSOR, "scene", "north_s2"),  # unseen sensor
    Downstream("eurosat-scene", "eurosat", "sentinel2_l1c", "scene"),  # real Sentinel-2 L1C
)


def build_world(out: Path, quick: bool) -> Manifest:
    path = out / "world" / "manifest.json"
    if path.is_file():
        return Manifest.load(path)
    overrides = {"tiles_per_institution": 40, "tile_size": 32} if quick else {}
    return generate_world(load_world_config("default", **overrides), out / "world", workers=2)


def shuffled_manifest(world: Manifest, job: SpecialistJob, out: Path) -> Path:
    """A copy of the world manifest whose ``job.task`` labels are permuted among ``job.institution``'s tiles."""
    path = world.root / f"manifest-shuffled-{job.task}-{job.institution}.json"
    if not path.is_file():
        raw = world.to_dict()
        tiles = [t for t in raw["tiles"] if t.get("institution") == job.institution and job.task in t["targets"]]
        labels = [t["targets"][job.task] for t in tiles]
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
        for tile, i in zip(tiles, order):
            tile["targets"][job.task] = labels[i]
        Manifest.from_dict(raw, root=world.root).save(path)
    return path


def train_specialists(world: Manifest, out: Path, quick: bool, device: str) -> Registry:
    registry = Registry.open_or_create(out / "registry")
    for job in SPECIALISTS:
        if job.name in registry:
            continue
        manifest = shuffled_manifest(world, job, out) if job.shuffled else world.root / "manifest.json"
        folder = out / "specialists" / job.name
        if not (folder / "card.json").is_file():
            args = ["train-specialist", "--manifest", str(manifest), "--sensor", job.sensor, "--task", job.task,
                    "--institution", job.institution, "--name", job.name, "--out", str(folder),
                    "--epochs", "2" if quick else "30", "--device", device]
            if eosfed(args) != 0:
                raise RuntimeError(f"training specialist {job.name} failed")
        registry.add(load_specialist(folder))
    return registry


def distill(registry: Registry, world: Manifest, out: Path, quick: bool, device: str) -> Path:
    run = out / "distill"
    if not (run / "student" / "card.json").is_file():
        sensors = sorted({job.sensor for job in SPECIALISTS})  # never the unseen sensor
        args = ["distill", "--registry", str(registry.root), "--proxy", str(world.root / "manifest.json"),
                "--out", str(run), "--sensors", ",".join(sensors), "--epochs", "2" if quick else "30",
                "--device", device]
        if eosfed(args) != 0:
            raise RuntimeError("distillation failed")
    return run / "student"


def downstream_manifest(task: Downstream, world: Manifest, out: Path) -> Manifest:
    if task.source == "world":
        return world
    path = out / "eurosat" / "manifest.json"
    return Manifest.load(path) if path.is_file() else build_eurosat_manifest(DATA / "eurosat-ms", out / "eurosat")


def throughput(encoder, x: torch.Tensor, bands: tuple[str, ...], repeats: int = 5) -> float:
    """Images per second of ``encoder.pooled`` (median of ``repeats``)."""
    rates = []
    with torch.inference_mode():
        encoder.pooled(x, bands)
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.pooled(x, bands)
            rates.append(x.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def probe_task(task: Downstream, manifest: Manifest, encoders: dict, fractions, seeds, device: str) -> dict:
    spec = manifest.task(task.task)
    stats = load_or_compute_stats(manifest, task.sensor, "train", institution=task.institution)
    splits = {s: labelled_loader(manifest, task.sensor, task.task, s, stats=stats, institution=task.institution)
              for s in ("train", "test")}
    bands = splits["train"].dataset.bands
    maps = spec.type == "segmentation"
    results, sizes, speed = [], {}, {}
    batch = next(iter(splits["test"]))["image"][:16].to(device)
    for name, encoder in encoders.items():
        if isinstance(encoder, Ensemble) and not encoder.applicable(bands):
            continue
        if name == "random":
            encoder.set_band_stats(band_stats_table([stats]))
        features = {s: extract_features(encoder, loader, maps, device, f"{name} {s}") for s, loader in splits.items()}
        results += probe_features(name, task.name, spec, features["train"], features["test"], None, fractions, seeds)
        sizes[name] = (encoder.num_params(bands) if isinstance(encoder, Ensemble) else encoder.inference_params(bands))
        speed[name] = throughput(encoder, batch, bands)
    return {"results": [r.to_dict() for r in results], "params": sizes, "img_per_s": speed, "bands": list(bands),
            "applicable_specialists": len(encoders["ensemble"].applicable(bands))}


def contributions_and_prune(registry: Registry, world: Manifest, eurosat: Manifest, out: Path, device: str) -> dict:
    ensemble = Ensemble.from_registry(registry, map_location=device)
    games = []
    for task in DOWNSTREAM:
        manifest = eurosat if task.source == "eurosat" else world
        spec = manifest.task(task.task)
        if spec.type == "segmentation":
            continue
        loaders = {s: labelled_loader(manifest, task.sensor, task.task, s, institution=task.institution)
                   for s in ("train", "test")}
        if not ensemble.applicable(loaders["train"].dataset.bands):
            continue
        members = {s: extract_member_features(ensemble, loader, device=device) for s, loader in loaders.items()}
        game = CoalitionGame(members["train"], members["test"], spec)
        games.append((task.name, contributions(game, task.name, gates=True),
                      cka_matrix({n: f.pooled for n, f in members["test"].items()})))
    combined = combine_contributions([g[1] for g in games])
    keep = math.ceil(len(registry) / 2)
    pruned_dir = out / "registry-pruned"
    pruned = Registry(pruned_dir) if pruned_dir.is_dir() else prune(registry, combined, pruned_dir, keep_top_k=keep,
                                                                     cka=games[0][2] if games else None)
    return {"per_task": {name: [c.to_dict() for c in scores] for name, scores, _ in games},
            "combined": [c.to_dict() for c in combined], "kept": pruned.names, "pruned_registry": str(pruned_dir)}


def summarise(per_task: dict, specialist_names: list[str]) -> list[dict]:
    """Per task, at the largest label fraction with the main probe (linear; segmentation decoder):
    student, ensemble, pruned ensemble, best readable specialist and random, with parameters and speed."""
    rows = []
    for task, record in per_task.items():
        results = [r for r in record["results"] if r["method"] in ("linear", "segmentation")]
        top = max(r["fraction"] for r in results)
        score = {r["encoder"]: r["mean"] for r in results if r["fraction"] == top}
        readable = {n: s for n, s in score.items() if n in specialist_names}
        best = max(readable, key=readable.get) if readable else None
        rows.append({"task": task, "fraction": top, **{k: score.get(k) for k in
                                                          ("student", "ensemble", "ensemble-pruned", "random")},
                     "best_specialist": best, "best_specialist_score": readable.get(best),
                     "applicable_specialists": record["applicable_specialists"],
                     "student_params": record["params"].get("student"),
                     "ensemble_params": record["params"].get("ensemble"),
                     "student_img_per_s": record["img_per_s"].get("student"),
                     "ensemble_img_per_s": record["img_per_s"].get("ensemble")})
    return rows


def summary_markdown(rows: list[dict]) -> str:
    def cell(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    keys = ["task", "student", "ensemble", "ensemble-pruned", "best_specialist", "best_specialist_score", "random",
            "applicable_specialists", "student_params", "ensemble_params", "student_img_per_s", "ensemble_img_per_s"]
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/reference"))
    parser.add_argument("--quick", action="store_true", help="tiny world, 2 epochs, 1 seed: a pipeline check")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fractions, seeds = ((1.0,), (0,)) if args.quick else ((0.01, 0.1, 1.0), (0, 1, 2))
    world = build_world(args.out, args.quick)
    registry = train_specialists(world, args.out, args.quick, args.device)
    student_dir = distill(registry, world, args.out, args.quick, args.device)
    eurosat = downstream_manifest(DOWNSTREAM[-1], world, args.out)
    scoring = contributions_and_prune(registry, world, eurosat, args.out, args.device)
    encoders = {"student": load_student(student_dir, args.device),
                "ensemble": Ensemble.from_registry(registry, map_location=args.device),
                "ensemble-pruned": Ensemble.from_registry(scoring["pruned_registry"], map_location=args.device),
                "random": open_encoder("random:convnextv2_atto", map_location=args.device)}
    encoders.update({n: Ensemble.from_registry(registry, [n], map_location=args.device) for n in registry.names})
    per_task = {t.name: probe_task(t, downstream_manifest(t, world, args.out), encoders, fractions, seeds,
                                   args.device) for t in DOWNSTREAM}
    summary = summarise(per_task, registry.names)
    record = {"quick": args.quick, "specialists": [j.__dict__ for j in SPECIALISTS],
              "downstream": [t.__dict__ for t in DOWNSTREAM], "summary": summary, "probes": per_task,
              "contributions": scoring}
    name = "reference_quick" if args.quick else "reference"
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(record, indent=1))
    rows = [ProbeResult(**r) for task in per_task.values() for r in task["results"]]
    atomic_write_text(RESULTS / f"{name}.md", f"# Reference benchmark{' (quick check)' if args.quick else ''}\n\n"
                      + summary_markdown(summary) + "\n## All probes\n\n" + results_markdown(rows))
    logger.info("wrote %s", RESULTS / f"{name}.md")


if __name__ == "__main__":
    main()
