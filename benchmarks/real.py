"""The real-data benchmark (issue 14): specialists on the real samples -> student -> probes beside both baselines.

Every number here is on real imagery (``../shared/data``, see :mod:`pipeline.samples` for the sets and
their fixed splits: no scene, event or spatial block on both sides of train and test). Stages:

1. manifests of the sample sets (:func:`pipeline.samples.build_samples`) and the unlabelled proxy, the
   union of every set's train and val images with labels stripped (:func:`pipeline.samples.proxy_union`);
2. one specialist per task (``eosfed train-specialist`` on its train split, early stopping on val);
3. the registry, its proxy feature statistics and the student distilled from every specialist on the
   proxy (:func:`pipeline.distill.distil`, the run's own step);
4. probes on each task's test split, label fractions x seeds, all with the same protocol (linear probe
   on pooled features for classification, the light FPN decoder for segmentation): the student
   (normalised with its card's proxy statistics), the ensemble, every specialist that can read the
   task's bands, a random-init student of the same size and the band-statistics baseline
   (:mod:`fusion.baselines`), under two protocols: *deep* (the frozen features alone) and *+input*
   (every learned encoder's pooled features with the input's per-band mean and std appended; for
   segmentation the input bands, pooled onto the finest map's grid, appended to that map). The "best specialist" of a task is chosen on val (a
   held-out fifth of train without val), never on test;
5. ``real.json`` / ``real.md`` in ``--results``: every score with its spread, and the issue's targets.

Usage: python benchmarks/real.py [--out outputs/real] [--results benchmarks/results] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eosfed.cli import main as eosfed
from fusion import Ensemble, Registry
from fusion.baselines import BAND_STATS, RANDOM_INIT, baseline_encoders
from fusion.data import ProxyBatches, labelled_loader
from fusion.distill import BALANCES, DistillConfig
from fusion.probes import FeatureSet, extract_features, linear_probe, probe_features, segmentation_probe, task_metric
from fusion.student import load_student
from fusion.teacher_cache import TeacherCache
from geodata.files import atomic_write_text
from geodata.manifest import Manifest
from geodata.stats import load_or_compute_stats
from pipeline.distill import calibrate, distil, save_distilled
from pipeline.samples import PROXY_SETS, WILDFIRE_SENSOR, build_samples, proxy_union
from pipeline.settings import ExperimentConfig
from specialists import load_specialist

log = logging.getLogger("benchmarks.real")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
TOLERANCE_NM = ExperimentConfig.tolerance_nm  # the run setting's one default


@dataclass(frozen=True)
class RealTask:
    name: str
    set: str
    sensor: str
    task: str
    resize: int | None = None  # whole scene resampled (AID's 150 px scenes train and probe at 64 px on this CPU)


TASKS = (
    RealTask("eurosat-scene", "eurosat", "sentinel2_l1c", "scene"),
    RealTask("aid-scene", "aid", "rgb", "scene", resize=64),
    RealTask("wildfire-burned", "wildfire", WILDFIRE_SENSOR, "burned"),
    RealTask("eolearn-lulc", "eolearn", "sentinel2_l1c", "lulc"),
)
PROXY_SIZE = 64


def run_cli(*args: str) -> None:
    if eosfed(list(args)) != 0:
        raise RuntimeError(f"eosfed {' '.join(args)} failed")


def train_specialists(manifests: dict[str, Path], out: Path, epochs: int, init: str) -> list[Path]:
    folders = []
    for t in TASKS:
        folder = out / "specialists" / t.name
        if not (folder / "card.json").exists():
            run_cli("train-specialist", "--manifest", str(manifests[t.set]), "--sensor", t.sensor, "--task", t.task,
                    "--name", t.name, "--out", str(folder), "--overwrite", "--epochs", str(epochs), "--patience", "8",
                    "--batch-size", "32", *(["--resize", str(t.resize)] if t.resize else []),
                    *(["--init-weights", init] if init != "random" else []))
        folders.append(folder)
    return folders


def selection_score(train: FeatureSet, val: FeatureSet | None, spec, seed: int = 0) -> float:
    """A specialist's score for choosing the best: fit on train, score on val (or a held-out fifth of train)."""
    if val is None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        cut = max(1, len(train) // 5)
        train, val = train.subset(order[cut:]), train.subset(order[:cut])
    if spec.type == "segmentation":
        return segmentation_probe(train, val, spec, seed=seed)
    return linear_probe(train, val, spec)


PLUS = "+input"  # suffix of an encoder's row under the features ⊕ input protocol


def plus_input(features: FeatureSet, band_stats: FeatureSet) -> FeatureSet:
    """``features`` ⊕ the input: the band statistics appended to the pooled features, the input bands
    (band-stats' stride-4 map) pooled onto the finest map's grid appended to its channels."""
    maps = None
    if features.maps is not None:
        maps = [torch.cat([F.adaptive_avg_pool2d(band_stats.maps[0].float(), features.maps[0].shape[-2:]).half(),
                          features.maps[0]], dim=1),
                *features.maps[1:]]
    return FeatureSet(torch.cat([features.pooled, band_stats.pooled], dim=1), features.targets, features.ids, maps)


def probe_task(t: RealTask, manifest: Manifest, student, ensemble: Ensemble | None, fractions, seeds, device: str,
               reuse: dict | None = None) -> dict:
    """Every encoder on task ``t`` under both protocols (deep features; features ⊕ input), the best specialist
    of each protocol chosen on val. With ``reuse`` (this task's record of an earlier run on the same specialists
    and splits) only the student and both baselines are probed; the specialists' and ensemble's results, and the
    best specialist, are that record's."""
    spec = manifest.task(t.task)
    seg = spec.type == "segmentation"
    stats = load_or_compute_stats(manifest, t.sensor, "train")
    splits = [s for s in ("train", "val", "test") if manifest.select(t.sensor, s, t.task)]
    loaders = {s: labelled_loader(manifest, t.sensor, t.task, s, None, 64, stats, resize=t.resize)
               for s in splits}
    bands = loaders["train"].dataset.bands
    applicable = reuse["applicable"] if reuse else ensemble.applicable(bands)
    encoders = {"student": student, **baseline_encoders(stats, student),
                **{n: Ensemble({n: ensemble.specialists[n]}, {n: ensemble.stats[n]}, tolerance_nm=TOLERANCE_NM)
                   for n in ([] if reuse else applicable)}}
    features = {name: {s: extract_features(enc, loader, seg, device, f"{t.name} {name} {s}")
                       for s, loader in loaders.items()} for name, enc in encoders.items()}
    if len(applicable) > 1 and not reuse:
        features["ensemble"] = {s: FeatureSet.concat([features[n][s] for n in applicable]) for s in splits}
    learned = [n for n in features if n != BAND_STATS]
    features |= {n + PLUS: {s: plus_input(features[n][s], features[BAND_STATS][s]) for s in splits} for n in learned}
    results = []
    for name, f in features.items():
        results += probe_features(name, t.name, spec, f["train"], f["test"], f.get("val"), fractions, seeds,
                                  methods=("segmentation",) if seg else ("linear",))
    results = [r.to_dict() for r in results]
    if reuse:
        probed = {r["encoder"] for r in results}
        results += [r for r in reuse["results"] if r["encoder"] not in probed]
        best, ensemble_params = reuse["best_specialist"], reuse["params"]["ensemble"]
    else:
        best = {}
        for suffix in ("", PLUS):
            selection = {n: selection_score(features[n + suffix]["train"], features[n + suffix].get("val"), spec)
                         for n in applicable}
            best[suffix or "deep"] = max(selection, key=selection.get) + suffix if selection else None
        ensemble_params = ensemble.num_params(bands) if applicable else None
    return {**asdict(t), "type": spec.type, "metric": task_metric(spec), "bands": list(bands),
            "tiles": {s: len(loader.dataset) for s, loader in loaders.items()}, "applicable": applicable,
            "best_specialist": best, "params": {"student": student.inference_params(bands),
                                                "ensemble": ensemble_params},
            "results": results}


def scores_at(record: dict, fraction: float) -> dict[str, dict]:
    """Each encoder's linear (classification) or segmentation probe result at ``fraction`` of the labels."""
    return {r["encoder"]: r for r in record["results"]
            if r["fraction"] == fraction and r["method"] in ("linear", "segmentation")}


COLUMNS = ("student", "ensemble", "best specialist", RANDOM_INIT, BAND_STATS)


def summarise(tasks: list[dict], fraction: float, protocol: str) -> dict:
    """Per task and mean over tasks of each column under ``protocol`` (``deep`` or ``+input``); a task that no
    second specialist reads has no ensemble: its ensemble is its one specialist."""
    suffix = PLUS if protocol == PLUS else ""
    rows = []
    for record in tasks:
        s = scores_at(record, fraction)
        best = record["best_specialist"][protocol]
        names = {"student": "student" + suffix, RANDOM_INIT: RANDOM_INIT + suffix, BAND_STATS: BAND_STATS,
                 "best specialist": best,
                 "ensemble": "ensemble" + suffix if "ensemble" + suffix in s else best}
        rows.append({"task": record["name"], "metric": record["metric"], "best_specialist": best,
                     **{k: ({"mean": s[n]["mean"], "std": s[n]["std"]} if n in s else None) for k, n in names.items()}})
    means = {k: float(np.mean([r[k]["mean"] for r in rows if r[k]])) for k in COLUMNS}
    return {"fraction": fraction, "protocol": protocol, "rows": rows, "means": means}


def targets(tasks: list[dict], summary: dict, full: bool) -> list[dict]:
    """Issue 19's targets under ``summary``'s protocol: every one at all the labels (``full``), the
    band-statistics margin alone at fewer."""
    m, where = summary["means"], f"{summary['protocol']} protocol, {summary['fraction']:g} of the labels"

    def target(name: str, value: float, threshold: float, strict: bool = False) -> dict:
        return {"target": f"{name}, {where}", "value": value, "threshold": f"{'>' if strict else '>='} {threshold:g}",
                "met": bool(value > threshold if strict else value >= threshold)}

    margin = 0.03 if full else 0.0
    out = [target("student mean - band-statistics baseline mean", m["student"] - m[BAND_STATS], margin)]
    if not full:
        return out
    out.append(target("student mean - mean of per-task best specialist (chosen on val)",
                      m["student"] - m["best specialist"], 0))
    rows = {r["task"]: r for r in summary["rows"]}
    for task, threshold in (("aid-scene", 0.10), ("wildfire-burned", 0.0)):
        out.append(target(f"{task}: student - band-stats", rows[task]["student"]["mean"] - rows[task][BAND_STATS]["mean"],
                          threshold))
    if summary["protocol"] == "deep":
        ratios = [r["params"]["student"] * len(r["applicable"]) / r["params"]["ensemble"] for r in tasks
                  if r["applicable"]]
        out.append({"target": "max over tasks of student params / (ensemble params / N)", "value": max(ratios),
                    "threshold": "<= 1", "met": max(ratios) <= 1})
    for row in summary["rows"]:
        out.append(target(f"{row['task']}: student - random-init", row["student"]["mean"] - row[RANDOM_INIT]["mean"],
                          0, strict=True))
    for t in out:
        t["note"] = f"probe at {summary['fraction']:g} of the labels, mean over seeds, {len(summary['rows'])} real tasks"
    return out


def markdown(record: dict) -> str:
    lines = [f"# Real-data benchmark{' (quick check)' if record['quick'] else ''}", "",
             f"Real samples of `../shared/data` only; {len(record['tasks'])} tasks, seeds {record['seeds']}, "
             f"specialists and student started from {record['distill']['init']} weights, "
             f"{record['specialist_epochs']} specialist epochs, {record['distill']['epochs']} distillation epochs on "
             f"{record['proxy_tiles']} unlabelled proxy tiles ({', '.join(PROXY_SETS)}). Runtime "
             f"{record['runtime_s'] / 60:.1f} min ({record['setup']['threads']} thread). Protocols: **deep** probes "
             "the frozen features alone (classification: every stage's channel means and stds, `pyramid_pool`); **+input** appends the input's per-band mean and std to pooled features and "
             "the input bands (pooled onto the finest map's grid) to the maps, for every learned encoder alike."
             + (f" The specialists' and ensemble's rows (and the best specialist) are those of `{Path(record['reused']).name}` "
                "(the same specialists and splits); the student and both baselines were probed here."
                if record.get("reused") else ""), "", "## Targets", "",
             "| target | value | threshold | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:+.4f} | {t['threshold']} | {'yes' if t['met'] else 'no'} |"
              for t in record["targets"]]
    for summary in record["summaries"]:
        lines += ["", f"## {summary['protocol']} protocol, {summary['fraction']:g} of the labels (test split, "
                      "mean ± std over seeds)", "",
                  "| task | metric | " + " | ".join(COLUMNS) + " |", "|---" * (2 + len(COLUMNS)) + "|"]
        for row in summary["rows"]:
            cells = ["-" if row[k] is None else f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in COLUMNS]
            cells[2] = f"{row['best_specialist']} {cells[2]}"
            lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | | " + " | ".join(f"{summary['means'][k]:.4f}" for k in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/real"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="1 epoch each, one seed: a pipeline check")
    parser.add_argument("--specialist-epochs", type=int, default=30)
    parser.add_argument("--distill-epochs", type=int, default=20)
    parser.add_argument("--depths", default="2,2,5,2", help="student blocks per stage (atto has 2,2,6,2)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fractions", default="0.1,1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init", default="base", choices=("random", "base"),
                        help="where specialists and the student's trunk start (specialists.init): the shipped "
                             "synthetic base, as in a run (real.json), or random (real_random.json)")
    parser.add_argument("--balance", default=DistillConfig.balance, choices=BALANCES,
                        help="distill.balance: teacher standardisation per channel, or PHI-S "
                             "(results in real[_<init>]_phi_s.json)")
    parser.add_argument("--crop-sizes", default="",
                        help="distill.crop_sizes: multi-resolution distillation on proxy centre crops of these "
                             "sizes, e.g. 32,48,64 (results in real[...]_crops.json); empty: one size, 64")
    parser.add_argument("--work", type=Path, default=None,
                        help="where samples, registry, teacher cache and student go (default: --out); the "
                             "specialists are read from (or trained into) --out")
    parser.add_argument("--cache-from", type=Path, action="append", default=[],
                        help="another run's teacher cache, read (never written): its targets are not recomputed")
    parser.add_argument("--student", type=Path,
                        help="a student this benchmark distilled before (its distilled/student folder): probed, not "
                             "distilled again; with --reuse")
    parser.add_argument("--reuse", type=Path,
                        help="an earlier result of this benchmark on the same specialists and splits: only the student "
                             "and both baselines are probed, the specialists' and ensemble's rows are taken from it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    begin = time.perf_counter()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    fractions = [1.0] if args.quick else [float(f) for f in args.fractions.split(",")]
    epochs = 1 if args.quick else args.specialist_epochs
    config = DistillConfig(epochs=1 if args.quick else args.distill_epochs, depths=[int(d) for d in args.depths.split(",")],
                           device=args.device, init=args.init, balance=args.balance,
                           crop_sizes=[int(c) for c in args.crop_sizes.split(",") if c])
    work = args.work or args.out

    paths = build_samples(DATA, work / "samples")
    manifests = {name: Manifest.load(path) for name, path in paths.items()}
    proxy = proxy_union({n: manifests[n] for n in PROXY_SETS}, work / "samples" / "proxy")
    folders = train_specialists(paths, args.out / args.init, epochs, args.init)

    reused = {t["name"]: t for t in json.loads(args.reuse.read_text())["tasks"]} if args.reuse else {}
    if args.student is not None:
        if not reused:
            parser.error("--student probes a saved student beside the rows of --reuse; give both")
        student, ensemble = load_student(args.student).eval(), None
        config = DistillConfig(**{**student.card.distill["last_config"], "device": args.device})
    else:
        for stale in ("registry", "cache"):  # rebuilt each run from the specialists on disk
            shutil.rmtree(work / stale, ignore_errors=True)
        registry = Registry.create(work / "registry")
        for folder in folders:
            registry.add(load_specialist(folder))
        batches = ProxyBatches(proxy, None, None, PROXY_SIZE, batch_size=32, seed=0,
                               resize={t.sensor: t.resize for t in TASKS if t.resize})
        calibrate(registry, registry.load_all(), batches, TOLERANCE_NM)
        distilled = distil(registry, batches, TeacherCache(work / "cache", read_from=args.cache_from), config, seed=0,
                           tolerance_nm=TOLERANCE_NM, name="student")
        save_distilled(distilled, work / "distilled", work / "distilled" / "history.png")
        student = distilled.student.cpu().eval()
        ensemble = Ensemble.from_registry(registry, tolerance_nm=TOLERANCE_NM)

    tasks = [probe_task(t, manifests[t.set], student, ensemble, fractions, seeds, args.device, reused.get(t.name))
             for t in TASKS]
    summaries = [summarise(tasks, f, p) for p in ("deep", PLUS) for f in sorted(fractions, reverse=True)]
    record = {"benchmark": "real", "quick": args.quick, "seeds": seeds, "fractions": fractions,
              "specialist_epochs": epochs, "distill": asdict(config), "proxy_tiles": len(proxy.tiles),
              "setup": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
              "tasks": tasks, "summaries": summaries,
              "targets": [t for p in summaries for t in targets(tasks, p, p["fraction"] == max(fractions))],
              "runtime_s": time.perf_counter() - begin,
              "reused": str(args.reuse) if args.reuse else None, "student": str(args.student) if args.student else None}
    args.results.mkdir(parents=True, exist_ok=True)
    name = (("real_quick" if args.quick else "real") + ("" if args.init == "base" else f"_{args.init}")
            + ("" if args.balance == DistillConfig.balance else f"_{args.balance}")
            + ("_crops" if config.crop_sizes else ""))
    atomic_write_text(args.results / f"{name}.json", json.dumps(record, indent=1))
    atomic_write_text(args.results / f"{name}.md", markdown(record))
    log.info("results in %s\n%s", args.results / f"{name}.json", markdown(record))


if __name__ == "__main__":
    main()
