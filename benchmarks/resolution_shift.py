"""Resolution shift (issue 21): scene classification on AID and EuroSAT resampled to x0.5, x1 and x2 their GSD.

For each factor, every split (probe-train, val, test) is resampled whole (area averaging, as
``TileDataset(resize=...)`` does: x2 halves each side, x0.5 doubles it; AID's 150 px scenes, read at 64 px
in ``benchmarks/real.py``, are read at 128, 64 and 32 px) and every encoder is probed the same way
(linear probe on pooled features, all labels; the probe is deterministic). Encoders:

- **student**: a student of ``benchmarks/real.py`` as it is today (GSD-blind: the trunk sees the pixels it is given);
- **student (GSD-aware)**: the same weights with the card's working GSD (``distill.gsd_aware``: each proxy
  band's GSD, :meth:`fusion.data.ProxyBatches.band_gsd`), told each split's GSD
  (:func:`fusion.data.dataset_gsd`) and resampling its input to the working GSD before the trunk. The
  distillation with ``distill.gsd_aware`` trains exactly these weights (every proxy tile is at its working GSD,
  so nothing is resampled during distillation): only the card differs;
- **random-init** (the untrained twin, GSD-blind) and **band-stats**, as in every table.

A *loss* is the score at x1 minus the score at the factor. Target (issue 21): at x0.5 and at x2 the GSD-aware
student loses at most half of what today's student loses.

Usage: python benchmarks/resolution_shift.py --student outputs/real/distilled/student [--out outputs/resolution_shift]
Writes benchmarks/results/resolution_shift.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch
from torch import nn

from fusion.baselines import BAND_STATS, RANDOM_INIT, baseline_encoders
from fusion.data import ProxyBatches, dataset_gsd, labelled_loader
from fusion.probes import FeatureSet, probe_features, task_metric
from fusion.student import Student, load_student
from geodata.files import atomic_write_text
from geodata.manifest import Manifest
from geodata.stats import load_or_compute_stats
from pipeline.samples import PROXY_SETS, build_samples, proxy_union

log = logging.getLogger("benchmarks.resolution_shift")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
FACTORS = (0.5, 1.0, 2.0)
AWARE = "student (GSD-aware)"
ENCODERS = ("student", AWARE, RANDOM_INIT, BAND_STATS)
# task name, sample set, sensor, task, side at x1 (px) and whether x1 is the tile as stored (no resampling)
TASKS = (("eurosat-scene", "eurosat", "sentinel2_l1c", "scene", 64, True),
         ("aid-scene", "aid", "rgb", "scene", 64, False))
PROXY_SIZE, PROXY_RESIZE = 64, {"rgb": 64}  # benchmarks/real.py's proxy


class Told(nn.Module):
    """``encoder`` told its input's GSD: ``pooled(x, bands)`` is ``encoder.pooled(x, bands, gsd)``."""

    def __init__(self, encoder: Student, gsd: tuple[float, ...]) -> None:
        super().__init__()
        self.encoder, self.gsd = encoder, gsd

    def pooled(self, x: torch.Tensor, bands) -> torch.Tensor:
        return self.encoder.pooled(x, bands, self.gsd)


@torch.no_grad()
def features(encoders: dict[str, nn.Module], loader, desc: str) -> dict[str, FeatureSet]:
    """Every encoder's pooled features of ``loader``'s tiles, reading each tile once."""
    pooled: dict[str, list[torch.Tensor]] = {n: [] for n in encoders}
    targets, ids = [], []
    for batch in loader:
        for name, encoder in encoders.items():
            pooled[name].append(encoder.pooled(batch["image"], batch["bands"]).float())
        targets.append(torch.as_tensor(batch["target"]))
        ids.extend(batch["id"])
    log.info("%s: %d tiles", desc, len(ids))
    return {n: FeatureSet(torch.cat(p), torch.cat(targets), ids) for n, p in pooled.items()}


def shift_task(name: str, manifest: Manifest, sensor: str, task: str, side: int, stored: bool,
               student: Student, aware: Student) -> dict:
    """Scores of every encoder on ``task`` at each factor, and each one's loss against x1."""
    spec = manifest.task(task)
    stats = load_or_compute_stats(manifest, sensor, "train")
    splits = [s for s in ("train", "val", "test") if manifest.select(sensor, s, task)]
    scores: dict[str, dict[str, float]] = {}
    sizes = {}
    for factor in FACTORS:
        size = round(side / factor)
        resize = None if stored and factor == 1.0 else size
        loaders = {s: labelled_loader(manifest, sensor, task, s, None, 64, stats, resize=resize) for s in splits}
        gsd = dataset_gsd(loaders["train"].dataset)
        sizes[str(factor)] = {"px": size, "gsd_m": sorted(set(round(g, 3) for g in gsd))}
        encoders = {"student": student, AWARE: Told(aware, gsd), **baseline_encoders(stats, student)}
        feats = {s: features(encoders, loader, f"{name} x{factor:g} {s}") for s, loader in loaders.items()}
        for enc in encoders:
            result = probe_features(enc, name, spec, feats["train"][enc], feats["test"][enc],
                                    feats["val"][enc] if "val" in feats else None, (1.0,), (0,), ("linear",))[0]
            scores.setdefault(enc, {})[str(factor)] = result.mean
    losses = {e: {str(f): scores[e]["1.0"] - scores[e][str(f)] for f in FACTORS if f != 1.0} for e in scores}
    return {"task": name, "metric": task_metric(spec), "sensor": sensor, "sizes": sizes,
            "tiles": {s: len(manifest.select(sensor, s, task)) for s in splits}, "scores": scores, "losses": losses}


def targets(tasks: list[dict]) -> list[dict]:
    out = []
    for record in tasks:
        for factor in ("0.5", "2.0"):
            today, aware = record["losses"]["student"][factor], record["losses"][AWARE][factor]
            limit = max(0.0, 0.5 * today)
            out.append({"target": f"{record['task']} at x{float(factor):g} GSD: loss of the GSD-aware student "
                                  f"<= half the loss of today's student ({today:+.4f})",
                        "value": round(aware, 4), "threshold": f"<= {limit:.4f}", "met": aware <= limit + 1e-9})
    return out


def markdown(record: dict) -> str:
    lines = ["# Resolution shift: AID and EuroSAT at x0.5, x1, x2 their GSD", "",
             f"Student: `{record['student']}` ({record['student_recipe']}); GSD-aware: the same weights with the "
             f"working GSD of the proxy bands on its card ({record['working_gsd']}), told each split's GSD. "
             "Every split (probe-train, val, test) resampled whole; linear probe on pooled features, all labels "
             f"(deterministic). Runtime {record['runtime_s'] / 60:.1f} min, 1 thread, load {record['load']}.", "",
             "| task | encoder | x0.5 | x1 | x2 | loss at x0.5 | loss at x2 |", "|---|---|---|---|---|---|---|"]
    for t in record["tasks"]:
        for enc in ENCODERS:
            s, l = t["scores"][enc], t["losses"][enc]
            lines.append(f"| {t['task']} ({t['metric']}) | {enc} | {s['0.5']:.4f} | {s['1.0']:.4f} | {s['2.0']:.4f} | "
                         f"{l['0.5']:+.4f} | {l['2.0']:+.4f} |")
    lines += ["", "Sizes: " + "; ".join(f"{t['task']} " + ", ".join(f"x{float(f):g} {v['px']} px ({v['gsd_m']} m)"
                                                                   for f, v in t["sizes"].items())
                                       for t in record["tasks"]),
              "", "## Targets", "", "| target | value | threshold | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:+.4f} | {t['threshold']} | {'yes' if t['met'] else '**no**'} |"
              for t in record["targets"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, default=Path("outputs/real/distilled/student"),
                        help="a student of benchmarks/real.py (its distilled/student folder)")
    parser.add_argument("--out", type=Path, default=Path("outputs/resolution_shift"), help="sample manifests")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    begin = time.perf_counter()
    paths = build_samples(DATA, args.out / "samples")
    manifests = {n: Manifest.load(p) for n, p in paths.items()}
    proxy = proxy_union({n: manifests[n] for n in PROXY_SETS}, args.out / "samples" / "proxy")
    working = ProxyBatches(proxy, None, None, PROXY_SIZE, resize=PROXY_RESIZE).band_gsd()
    student = load_student(args.student).eval()
    if student.card.gsd:
        raise SystemExit(f"{args.student}: already GSD-aware; give a student distilled without distill.gsd_aware")
    aware = load_student(args.student).eval()
    aware.set_gsd(working)
    tasks = [shift_task(name, manifests[set_name], sensor, task, side, stored, student, aware)
             for name, set_name, sensor, task, side, stored in TASKS]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    config = student.card.distill.get("last_config", {})
    record = {"benchmark": "resolution_shift", "student": str(args.student),
              "student_recipe": ", ".join(f"{k} {config.get(k)}" for k in ("epochs", "balance", "init", "crop_sizes")
                                          if k in config),
              "working_gsd": {b: round(g, 3) for b, g in sorted(working.items())}, "factors": list(FACTORS),
              "tasks": tasks, "targets": targets(tasks), "runtime_s": time.perf_counter() - begin, "load": load,
              "setup": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1}}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "resolution_shift.json", json.dumps(record, indent=1))
    atomic_write_text(args.results / "resolution_shift.md", markdown(record))
    log.info("results in %s\n%s", args.results / "resolution_shift.json", markdown(record))


if __name__ == "__main__":
    main()
